"""Salesforce: callers as Leads (or Contacts with Opportunities), calls and texts as Tasks.

How it talks to Salesforce
    simple-salesforce in its direct ``session_id`` mode over one ``requests.Session`` of ours. The
    session throttles and counts every request, applies the timeout, keeps traffic on Salesforce
    hosts (or on the local emulator, through :mod:`connectors.salesforce.loopback`), and raises on
    any non-2xx or non-JSON REST answer before the SDK sees it, so the SDK's own re-login (which
    can recurse forever on ``INVALID_SESSION_ID``) never runs. A 401 ``INVALID_SESSION_ID`` renews
    the token once per operation (single-flight, see :mod:`connectors.salesforce.auth`); a second
    one is an :class:`~core.errors.AuthError`.

Modes
    ``lead`` (default): an unknown caller becomes a Lead (LastName from the caller's name or
    "Caller 1234", Company = ``company_placeholder``). A caller who already is a Contact or a Lead
    is used as they are. The "deal" is the Lead's Status: ``upsert_deal`` moves it to the stage of
    the install's ``sync.stages`` (Lead statuses) without converting the Lead.
    ``contact``: an unknown caller becomes a Contact (with an Account named after them, so the
    Contact is not private; ``create_account: false`` turns that off) and the deal an Opportunity
    in the configured stage, linked through an OpportunityContactRole.

Dedupe
    A unique External ID text field (``external_id_field``, default ``Phone_E164__c``) holds the
    E.164 phone on Lead and Contact. One composite request looks the caller up on both; people
    made before textback (without the field) are then found by a SOSL phone search. A new Lead is
    an upsert ``PATCH /sobjects/Lead/Phone_E164__c/%2B1...`` (201 created, 200 updated), so
    concurrent workers make one Lead. Several matches (HTTP 300, or several search hits) are
    reported, never guessed. Without the field (empty setting, or the org lacks it) only the SOSL
    search is left; its index lags behind new records, so ``check`` says duplicates are possible.

Records
    Existing people are never overwritten: textback only fills empty fields and replaces its own
    "Caller 1234" placeholder once the caller's name is known. Calls are completed Tasks with
    TaskSubtype Call and CallType Inbound; texts and notes completed Tasks (TaskSubtype Task);
    the callback is an open Task due within the SLA. Created records carry ``Ref: <marker>`` in
    their Description; since SOQL cannot filter long text areas, ``find_record`` scans the last
    day's newest records for it. Opt-outs set ``opt_out_field`` (a custom
    checkbox such as ``SMS_Opt_Out__c``) when configured, else log one completed Task "Opted out
    of text messages": the standard DoNotCall and HasOptedOutOf* fields mean other things.

Errors
    ``[{"message","errorCode","fields"}]`` bodies map onto core.errors (see mappers.api_error):
    403 REQUEST_LIMIT_EXCEEDED is RateLimited for 15 minutes (the daily allocation refills slowly),
    UNABLE_TO_LOCK_ROW and 5xx are transient, other 4xx are Rejected with Salesforce's message.
    Composite answers are always HTTP 200: every sub-response's status is checked.
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar, cast
from urllib.parse import quote, urlsplit

import requests
from simple_salesforce import Salesforce, SFType, format_soql
from simple_salesforce.exceptions import SalesforceError
from simple_salesforce.format import format_external_id

from connectors import http_errors
from connectors import manifest as manifest_mod
from connectors.base import Connector, ConnectorContext
from connectors.salesforce import mappers
from connectors.salesforce.auth import SalesforceAuth
from connectors.salesforce.loopback import LoopbackAdapter
from core.crm import ActivityData, CheckResult, ContactData, DealData, Remote, TaskData
from core.errors import AuthError, ConnectorConfigError, JobError, Rejected, TransientError

MANIFEST = Path(__file__).resolve().parents[2] / "manifests" / "salesforce.yaml"
VENDOR = mappers.VENDOR
DEFAULT_API_VERSION = "62.0"
DEFAULT_EXTERNAL_ID_FIELD = "Phone_E164__c"
DEFAULT_COMPANY = "[not provided]"
T = TypeVar("T")


@functools.cache
def _allowed_hosts() -> tuple[str, ...]:
    return manifest_mod.load(MANIFEST).allowed_hosts


class ApiFailure(Exception):
    """A REST answer that is not success (raised by the session, classified by the connector)."""

    def __init__(self, response: requests.Response) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.status = response.status_code
        self.headers = dict(response.headers)
        self.raw = response.content
        self.body = mappers.parse_body(response.content)


class _Session(requests.Session):
    """Every HTTP request of one connector: throttled, counted, timed out, kept on allowed hosts."""

    def __init__(self, connector: SalesforceConnector, timeout: float, emulator_url: str | None,
                 allowed_hosts: Iterable[str]) -> None:
        super().__init__()
        self._connector = connector
        self._timeout = timeout
        self._allowed = tuple(allowed_hosts)
        self._emulator = emulator_url is not None
        if emulator_url is not None:
            # simple-salesforce builds https:// URLs itself: the adapter sends them to the emulator.
            self.trust_env = False
            adapter = LoopbackAdapter(emulator_url, timeout=timeout, pool_maxsize=32)
            self.mount("https://", adapter)
            self.mount("http://", adapter)

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        target = url.decode() if isinstance(url, bytes) else url
        parts = urlsplit(target)
        if not self._emulator and (parts.scheme != "https"
                                   or not mappers.host_allowed(parts.hostname or "", self._allowed)):
            raise ConnectorConfigError(f"{VENDOR}: refusing to call {parts.hostname!r}, which is not a "
                                       "Salesforce host")
        self._connector.context.throttle(1)
        self._connector.api_calls += 1
        kwargs.setdefault("timeout", self._timeout)
        try:
            response = super().request(method, url, *args, **kwargs)
        except requests.RequestException as exc:
            raise http_errors.network_error(VENDOR, exc) from None
        limit = response.headers.get("Sforce-Limit-Info", "")
        if limit.startswith("api-usage="):
            self._connector.api_usage = limit.split("=", 1)[1]
        if "/services/data/" in parts.path:
            if response.status_code >= 300:
                raise ApiFailure(response)
            if response.content.strip() and mappers.parse_body(response.content) is None:
                raise ApiFailure(response)  # a 2xx HTML page from a proxy is not success
        return response


class SalesforceConnector(Connector):
    id = "salesforce"
    MANIFEST = MANIFEST

    def __init__(self, config: Mapping[str, Any], context: ConnectorContext) -> None:
        super().__init__(config, context)
        cfg = self.config
        self.mode = str(cfg.get("mode") or "lead")
        if self.mode not in ("lead", "contact"):
            raise ConnectorConfigError(f"mode must be 'lead' or 'contact', not {self.mode!r}")
        self.api_version = str(cfg.get("api_version") or DEFAULT_API_VERSION).lstrip("vV")
        try:
            if float(self.api_version) < 46.0:
                raise ConnectorConfigError("api_version must be 46.0 or later (upserts report created)")
        except ValueError:
            raise ConnectorConfigError(f"api_version {self.api_version!r} is not like '62.0'") from None
        field = cfg.get("external_id_field", DEFAULT_EXTERNAL_ID_FIELD)
        self.external_id_field: str | None = (str(field).strip() or None) if field is not None else None
        self.company = str(cfg.get("company_placeholder") or DEFAULT_COMPANY)
        self.lead_source = str(cfg.get("lead_source") or "") or None
        self.opt_out_field = str(cfg.get("opt_out_field") or "") or None
        self.create_account = bool(cfg.get("create_account", True))
        self.close_in_days = int(cfg.get("close_date_days", 30))
        self.auth_kind = str(cfg.get("auth_kind") or self._infer_kind(cfg))
        allowed = _allowed_hosts()
        base = cfg.get("api_base_url")
        emulator = mappers.check_url(str(base), allowed, "api_base_url") if base else None
        instance = cfg.get("instance_url")
        self.instance_url = (mappers.check_url(str(instance), allowed, "instance_url",
                                               loopback_ok=emulator is not None) if instance else None)
        timeout = float(cfg.get("timeout_seconds") or context.timeout)
        self.api_usage: str | None = None
        self._http = _Session(self, timeout, emulator, allowed)
        self._auth = SalesforceAuth(self.auth_kind, cfg, self._http, allowed_hosts=allowed,
                                    api_version=self.api_version, tokens=context.tokens,
                                    instance_url=self.instance_url)
        self._missing_ext: set[str] = set()  # objects whose external-id field the org lacks
        self._applied: dict[str, tuple[Any, ...]] = {}  # record id -> details already filled in
        self._lock = threading.Lock()
        self._client: tuple[str, Salesforce] | None = None

    @staticmethod
    def _infer_kind(cfg: Mapping[str, Any]) -> str:
        if cfg.get("private_key"):
            return "jwt_bearer"
        if cfg.get("refresh_token"):
            return "oauth"
        if cfg.get("security_token"):
            return "legacy_password"
        return "client_credentials"

    # -- plumbing ----------------------------------------------------------------------------------
    def _sf(self) -> tuple[Salesforce, str]:
        grant = self._auth.current()
        with self._lock:
            if self._client is None or self._client[0] != grant.access_token:
                instance = grant.instance_url or self.instance_url or "https://login.salesforce.com"
                client = Salesforce(instance_url=instance, session_id=grant.access_token, session=self._http,
                                    version=self.api_version)
                self._client = (grant.access_token, client)
            return self._client[1], grant.access_token

    def _call(self, what: str, fn: Callable[[Salesforce], T]) -> T:
        """One REST request. INVALID_SESSION_ID renews the token once; a second one is an AuthError."""
        renewed = False
        while True:
            sf, token = self._sf()
            try:
                return fn(sf)
            except ApiFailure as failure:
                error = mappers.api_error(failure.status, failure.headers, failure.body, failure.raw, what)
                if isinstance(error, mappers.SessionExpired):
                    if not renewed:
                        renewed = True
                        self._auth.renew(token)
                        continue
                    raise AuthError(f"{VENDOR} ({what}) rejected a freshly issued session "
                                    "(INVALID_SESSION_ID twice); check the integration user's API access "
                                    "and IP restrictions", code="INVALID_SESSION_ID") from None
                raise error from None
            except SalesforceError as exc:  # not expected: the session raises first
                raise mappers.api_error(exc.status, None, exc.content, None, what) from None

    @property
    def _instance(self) -> str | None:
        return self._auth.instance_url or self.instance_url

    def _remote(self, record_id: str, created: bool | None = None) -> Remote:
        sobject = mappers.sobject_of(record_id) or "Task"
        return Remote(record_id, mappers.record_url(self._instance, sobject, record_id), sobject, created)

    def _composite(self, what: str, subs: list[dict[str, Any]], all_or_none: bool = False
                   ) -> list[dict[str, Any]]:
        answer = self._call(what, lambda sf: sf.restful(
            "composite", method="POST", json={"allOrNone": all_or_none, "compositeRequest": subs}))
        results = answer.get("compositeResponse") if isinstance(answer, dict) else None
        if not isinstance(results, list) or len(results) != len(subs):
            raise mappers.api_error(200, None, answer, json.dumps(answer), what)
        return results

    @staticmethod
    def _ok(sub: Mapping[str, Any], what: str) -> Any:
        """A composite sub-response's body, or its error (the composite itself is always 200)."""
        status = int(sub.get("httpStatusCode") or 0)
        if not 200 <= status < 300:
            raise mappers.api_error(status, sub.get("httpHeaders"), sub.get("body"), None, what)
        return sub.get("body")

    @classmethod
    def _all_ok(cls, results: list[dict[str, Any]], what: str) -> list[Any]:
        """The bodies of an all-or-none composite, or the error that rolled it back."""
        failed = [r for r in results if not 200 <= int(r.get("httpStatusCode") or 0) < 300]
        cause = [r for r in failed if not mappers.has_error(r.get("body"), "PROCESSING_HALTED")]
        for result in cause or failed:
            cls._ok(result, what)
        return [r.get("body") for r in results]

    def _sub(self, ref: str, method: str, path: str, body: Any = None) -> dict[str, Any]:
        return mappers.composite_sub(self.api_version, ref, method, path, body)

    # -- people ------------------------------------------------------------------------------------
    def upsert_contact(self, contact: ContactData, existing: Remote | None) -> Remote:
        if existing is not None and mappers.sobject_of(existing.id) in ("Lead", "Contact"):
            refreshed = self._fill_in_known(existing, contact)
            if refreshed is not None:
                return refreshed
        found = self._lookup(contact.phone)
        if found is not None:
            sobject, record = found
            self._fill_in(sobject, record, contact)
            return self._remote(str(record["Id"]), created=False)
        return self._create_person(contact)

    def _lookup(self, phone: str) -> tuple[str, dict[str, Any]] | None:
        """The caller's existing Contact (first) or Lead, by external id, else by phone search."""
        objects = ["Contact", "Lead"] if self.mode == "lead" else ["Contact"]
        field = self.external_id_field
        usable = [o for o in objects if field and o not in self._missing_ext]
        found: dict[str, dict[str, Any]] = {}
        if usable and field:
            value = quote(phone, safe="")
            subs = [self._sub(o.lower(), "GET", f"sobjects/{o}/{field}/{value}?fields="
                              + ",".join(mappers.person_fields(o, self.opt_out_field))) for o in usable]
            what = "looking the caller up"
            for sobject, sub in zip(usable, self._composite(what, subs), strict=True):
                status, body = int(sub.get("httpStatusCode") or 0), sub.get("body")
                if mappers.is_missing_external_id(status, body):
                    self._missing_ext.add(sobject)
                elif not mappers.is_not_found(status, body):
                    found[sobject] = self._ok(sub, f"{what} among {sobject}s by {field}")
        for sobject in objects:
            if sobject in found:
                return sobject, found[sobject]
        # Records made before textback (or without the field) are found by their phone number.
        return self._search(phone)

    def _search(self, phone: str) -> tuple[str, dict[str, Any]] | None:
        """SOSL over phone fields, formatting ignored. Its index lags behind new records, which is
        why it is not the primary match when the external-id field exists."""
        query = mappers.phone_search(phone, self.mode, self.opt_out_field)
        answer = self._call("searching the caller's phone", lambda sf: sf.search(query))
        records = answer.get("searchRecords", []) if isinstance(answer, dict) else []
        for sobject in ("Contact", "Lead"):
            hits = [r for r in records if (r.get("attributes") or {}).get("type") == sobject]
            if len(hits) > 1:
                raise Rejected(f"{VENDOR}: {len(hits)} {sobject}s have this phone number; merge them in "
                               "Salesforce (textback never guesses which one)", code="MULTIPLE_CHOICES")
            if hits:
                return sobject, hits[0]
        return None

    def _person_body(self, contact: ContactData, sobject: str) -> dict[str, Any]:
        return mappers.person_body(contact, sobject, company=self.company, lead_source=self.lead_source,
                                   opt_out_field=self.opt_out_field)

    def _create_person(self, contact: ContactData) -> Remote:
        sobject = "Lead" if self.mode == "lead" else "Contact"
        body = self._person_body(contact, sobject)
        field = self.external_id_field if sobject not in self._missing_ext else None
        if sobject == "Contact" and self.create_account:
            return self._create_contact_with_account(contact, body, field)
        if field:
            key = format_external_id(field, contact.phone)
            try:
                response = self._call(f"upserting the {sobject} by {field}",
                                      lambda sf: _type(sf, sobject).upsert(key, body, raw_response=True))
            except Rejected as exc:
                if exc.code != "DUPLICATE_VALUE":
                    raise
                # Two upserts of one new value can race inside Salesforce: the other one won.
                found = self._lookup(contact.phone)
                if found is None:
                    raise TransientError(str(exc), code=exc.code) from None
                return self._remote(str(found[1]["Id"]), created=False)
            data = mappers.parse_body(response.content) or {}
            if not isinstance(data, dict) or not data.get("id"):
                raise mappers.api_error(response.status_code, response.headers, data, response.content,
                                        f"upserting the {sobject}")
            created = response.status_code == 201 or bool(data.get("created"))
            return self._remote(str(data["id"]), created=created)
        made = self._call(f"creating the {sobject}", lambda sf: _type(sf, sobject).create(body))
        return self._remote(str(made["id"]), created=True)

    def _create_contact_with_account(self, contact: ContactData, body: dict[str, Any], field: str | None
                                     ) -> Remote:
        """Account and Contact in one all-or-none composite; the unique field stops a twin Contact."""
        contact_body = {**body, "AccountId": "@{account.id}"}
        if field:
            contact_body[field] = contact.phone
        subs = [self._sub("account", "POST", "sobjects/Account", {"Name": mappers.account_name(contact)}),
                self._sub("contact", "POST", "sobjects/Contact", contact_body)]
        what = "creating the Contact and its Account"
        results = self._composite(what, subs, all_or_none=True)
        if any(mappers.has_error(r.get("body"), "DUPLICATE_VALUE") for r in results):
            found = self._lookup(contact.phone)  # another worker created them first
            if found is not None:
                return self._remote(str(found[1]["Id"]), created=False)
        made = self._all_ok(results, what)[1]
        return self._remote(str(made["id"]), created=True)

    def _fill_in_known(self, existing: Remote, contact: ContactData) -> Remote | None:
        """A person the ledger knows: add what textback learned (None: the record is gone)."""
        wanted = (contact.first_name, contact.last_name, contact.email,
                  bool(self.opt_out_field and contact.opted_out))
        if not any(wanted) or self._applied.get(existing.id) == wanted:
            return existing
        sobject = str(mappers.sobject_of(existing.id))
        fields = ",".join(mappers.person_fields(sobject, self.opt_out_field))
        try:
            record = self._call(f"reading the {sobject}",
                                lambda sf: _type(sf, sobject).get(existing.id, params={"fields": fields}))
        except Rejected as exc:
            if exc.code == "NOT_FOUND" or exc.code == "ENTITY_IS_DELETED":
                return None  # merged or deleted in Salesforce: look the caller up again
            raise
        self._fill_in(sobject, record, contact)
        return self._remote(existing.id, created=False)

    def _fill_in(self, sobject: str, record: Mapping[str, Any], contact: ContactData) -> None:
        patch = mappers.fill_in(record, contact, self.opt_out_field)
        record_id = str(record["Id"])
        if patch and not record.get("IsConverted"):  # a converted Lead is read-only
            self._call(f"updating the {sobject}", lambda sf: _type(sf, sobject).update(record_id, patch))
        self._applied[record_id] = (contact.first_name, contact.last_name, contact.email,
                                    bool(self.opt_out_field and contact.opted_out))

    def mark_opted_out(self, contact: Remote) -> None:
        sobject = mappers.sobject_of(contact.id)
        if sobject not in ("Lead", "Contact"):
            return
        if self.opt_out_field:
            field = self.opt_out_field
            self._call(f"marking the {sobject} opted out",
                       lambda sf: _type(sf, sobject).update(contact.id, {field: True}))
            return
        query = format_soql("SELECT Id FROM Task WHERE WhoId = {} AND Subject = {} LIMIT 1",
                            contact.id, mappers.OPT_OUT_SUBJECT)
        logged = self._call("looking for the opt-out note", lambda sf: sf.query(query))
        if not logged.get("records"):
            body = mappers.opt_out_task(contact.id)
            self._call("logging the opt-out", lambda sf: _type(sf, "Task").create(body))

    # -- deals -------------------------------------------------------------------------------------
    def upsert_deal(self, marker: str, deal: DealData, contact: Remote, existing: Remote | None) -> Remote:
        target = existing or contact
        sobject = mappers.sobject_of(target.id)
        if sobject == "Lead":
            self._move(target.id, "Lead", "Status", deal.stage, ("IsConverted",))
            return self._remote(target.id, created=False)
        if sobject == "Opportunity":
            self._move(target.id, "Opportunity", "StageName", deal.stage, ("IsClosed",))
            return existing or target
        if sobject == "Contact" and existing is None and self.mode == "contact":
            return self._create_opportunity(marker, deal, contact)
        # Lead mode and a caller who already is a Contact: Lead statuses do not apply to them.
        return target

    def _move(self, record_id: str, sobject: str, field: str, stage: str, closed: tuple[str, ...]) -> None:
        """Set the stage, unless it is already there or the record is closed or converted."""
        fields = ",".join((field, *closed))
        record = self._call(f"reading the {sobject}",
                            lambda sf: _type(sf, sobject).get(record_id, params={"fields": fields}))
        if record.get(field) == stage or any(record.get(flag) for flag in closed):
            return
        self._call(f"moving the {sobject} to {stage!r}",
                   lambda sf: _type(sf, sobject).update(record_id, {field: stage}))

    def _create_opportunity(self, marker: str, deal: DealData, contact: Remote) -> Remote:
        """The Opportunity (on the Contact's Account) and its contact role in one round trip."""
        body = mappers.opportunity_body(marker, deal, self.close_in_days)
        body["AccountId"] = "@{person.AccountId}"  # the Contact's Account, read in the same request
        subs = [self._sub("person", "GET", f"sobjects/Contact/{contact.id}?fields=Id,AccountId"),
                self._sub("opportunity", "POST", "sobjects/Opportunity", body),
                self._sub("role", "POST", "sobjects/OpportunityContactRole",
                          {"OpportunityId": "@{opportunity.id}", "ContactId": contact.id, "IsPrimary": True})]
        what = "creating the Opportunity"
        made = self._all_ok(self._composite(what, subs, all_or_none=True), what)[1]
        return self._remote(str(made["id"]), created=True)

    # -- tasks and activities ------------------------------------------------------------------------
    def create_task(self, marker: str, task: TaskData, contact: Remote | None, deal: Remote | None) -> Remote:
        body = mappers.task_body(marker, task, contact.id if contact else None, deal.id if deal else None)
        created = self._call("creating the callback Task", lambda sf: _type(sf, "Task").create(body))
        return self._remote(str(created["id"]), created=True)

    def log_activity(self, marker: str, activity: ActivityData, contact: Remote | None, deal: Remote | None,
                     existing: Remote | None) -> Remote:
        who, what_id = (contact.id if contact else None), (deal.id if deal else None)
        if existing is not None:
            patch = mappers.activity_body(marker, activity, who, what_id, update=True)
            self._call(f"updating the {activity.kind} Task",
                       lambda sf: _type(sf, "Task").update(existing.id, patch))
            return existing
        body = mappers.activity_body(marker, activity, who, what_id)
        created = self._call(f"logging the {activity.kind} as a Task",
                             lambda sf: _type(sf, "Task").create(body))
        return self._remote(str(created["id"]), created=True)

    def find_record(self, kind: str, marker: str) -> Remote | None:
        """A record an interrupted create may have made, by the ``Ref: <marker>`` in its Description."""
        if kind == "deal" and self.mode == "lead":
            return None  # a Lead-mode deal is a status change: nothing was created
        sobject = "Opportunity" if kind == "deal" else "Task"
        since = datetime.now(UTC) - timedelta(days=1)
        query = mappers.find_by_marker(sobject, since)
        answer = self._call(f"looking for an earlier {sobject}", lambda sf: sf.query(query))
        ref = mappers.ref_line(marker)
        for record in answer.get("records", []):
            if ref in str(record.get("Description") or ""):
                return self._remote(str(record["Id"]), created=False)
        return None

    # -- check -------------------------------------------------------------------------------------
    def check(self) -> CheckResult:
        details = [f"sign-in: {self.auth_kind.replace('_', ' ')}", f"API version {self.api_version}",
                   f"mode: {self.mode} ({'Leads' if self.mode == 'lead' else 'Contacts and Opportunities'})"]
        if self.auth_kind == "legacy_password":
            details.append("warning: the SOAP username/password/security-token login is retiring "
                           "(Summer '27) and is off in orgs created from Winter '26; switch to "
                           "client_credentials or jwt_bearer")
        subs = [self._sub("limits", "GET", "limits"),
                self._sub("lead", "GET", "sobjects/Lead/describe"),
                self._sub("contact", "GET", "sobjects/Contact/describe")]
        try:
            results = self._composite("checking the connection", subs)
            limits = self._ok(results[0], "reading the org's limits")
            described = {"Lead": self._ok(results[1], "describing Lead"),
                         "Contact": self._ok(results[2], "describing Contact")}
        except JobError as exc:
            return CheckResult(False, f"Salesforce check failed: {exc}", details)
        daily = (limits or {}).get("DailyApiRequests") or {}
        used = f"{daily.get('Max', 0) - daily.get('Remaining', 0)} of {daily.get('Max', '?')}"
        details += self._dedupe_report(described)
        if self.opt_out_field:
            details.append(self._field_report(described, self.opt_out_field, "opt-out checkbox"))
        else:
            details.append("opt-outs are logged as a completed Task on the person (set opt_out_field to a "
                           "checkbox such as SMS_Opt_Out__c to flag the record instead)")
        remaining = daily.get("Remaining")
        cap = daily.get("Max")
        if isinstance(remaining, int) and isinstance(cap, int) and remaining < cap // 10:
            details.append(f"warning: only {remaining} API requests are left in the org's daily allocation")
        where = self._instance or "the org"
        return CheckResult(True, f"connected to Salesforce at {where}; {used} daily API requests used",
                           details)

    def _dedupe_report(self, described: Mapping[str, Any]) -> list[str]:
        primary = "Lead" if self.mode == "lead" else "Contact"
        field = self.external_id_field
        if not field:
            return ["warning: no external_id_field is set, so callers are matched by a phone search (SOSL) "
                    "whose index lags behind new records: duplicates are possible"]
        lines = []
        for sobject in ("Lead", "Contact") if self.mode == "lead" else ("Contact",):
            info = _field(described.get(sobject), field)
            if info is None or not info.get("externalId"):
                self._missing_ext.add(sobject)
                state = "has no" if info is None else "has a field but not an External ID"
                if sobject == primary:
                    lines.append(f"warning: {sobject} {state} {field}, so callers are matched by a phone "
                                 "search (SOSL) whose index lags behind new records: duplicates are "
                                 f"possible. Add a unique External ID text field {field} to {sobject}")
                else:
                    lines.append(f"{sobject} {state} {field}: known {sobject}s are not matched by phone")
                continue
            self._missing_ext.discard(sobject)
            if info.get("unique"):
                lines.append(f"{sobject}s are deduplicated by upsert on {field} (unique External ID)")
            else:
                lines.append(f"warning: {sobject}.{field} is an External ID but not Unique: records "
                             "sharing a phone are reported, not merged; mark it Unique")
        return lines

    def _field_report(self, described: Mapping[str, Any], name: str, label: str) -> str:
        missing = [o for o in ("Lead", "Contact") if (_field(described.get(o), name) or {}).get("type")
                   != "boolean"]
        if missing:
            return f"warning: {' and '.join(missing)} lack the {label} {name}; opt-outs will fail"
        return f"opt-outs set {name} on the person"

    def __repr__(self) -> str:
        return f"<SalesforceConnector {self.context.business_id} {self.mode} mode via {self.auth_kind}>"


def _type(sf: Salesforce, name: str) -> SFType:
    return cast(SFType, getattr(sf, name))


def _field(describe: Any, name: str) -> dict[str, Any] | None:
    if not isinstance(describe, dict):
        return None
    for item in describe.get("fields") or []:
        if isinstance(item, dict) and str(item.get("name", "")).lower() == name.lower():
            return item
    return None
