"""Pipedrive: persons, deals (or leads), call activities, call logs and notes for every lead.

API v2 for persons, person search, item search, deals, activities and stages; v1 only where v2 has
no endpoint (notes, leads, call logs, ``users/me``). HTTP lives in :mod:`client`, pure mapping in
:mod:`mappers`; docs/pipedrive.md says what was chosen and why.

Dedupe. Pipedrive has no upsert and no unique constraint, and its search index lags writes. A
person is found by an exact E.164 phone search; creates for one phone are serialised inside the
process (striped locks keyed by phone) with the deciding search made under the lock right before
the create, and the person a create made is remembered for a while so a lagging index cannot
hide it. Across processes the sync engine's ordering key runs one lead's jobs for one connector
one at a time, so two workers never upsert the same caller at once.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from connectors import manifest as manifest_mod
from connectors.base import Connector, ConnectorContext
from connectors.pipedrive import mappers
from connectors.pipedrive.client import API_BASE_URL, OAUTH_BASE_URL, PipedriveClient
from core.crm import ActivityData, CheckResult, ContactData, DealData, Remote, TaskData
from core.errors import (
    AuthError,
    ConnectorConfigError,
    JobError,
    RateLimited,
    Rejected,
    TransientError,
)

MANIFEST = Path(__file__).resolve().parents[2] / "manifests" / "pipedrive.yaml"
log = logging.getLogger("textback.connectors.pipedrive")

#: how long a person this process created is trusted over a search that does not show it yet
RECENT_TTL = 15 * 60.0
#: recent records scanned by find_record (the rare path after an interrupted create)
FIND_PAGES = 4
STAGES_TTL = 600.0

_STRIPES = [threading.Lock() for _ in range(64)]
_recent_lock = threading.Lock()
_recent: dict[tuple[str, str], tuple[float, int | None]] = {}  # (account, phone) -> (when, person id)
_company_lock = threading.Lock()
_companies: dict[str, str | None] = {}  # account -> company domain


@functools.cache
def _allowed_hosts() -> tuple[str, ...]:
    return manifest_mod.load(MANIFEST).allowed_hosts


def _stripe(key: tuple[str, str]) -> threading.Lock:
    digest = hashlib.sha256("\x00".join(key).encode()).digest()
    return _STRIPES[digest[0] % len(_STRIPES)]


def _remember(key: tuple[str, str], person: int | None) -> None:
    now = time.monotonic()
    with _recent_lock:
        for stale in [k for k, (at, _) in _recent.items() if now - at > RECENT_TTL]:
            del _recent[stale]
        _recent[key] = (now, person)


def _recalled(key: tuple[str, str]) -> tuple[float, int | None] | None:
    with _recent_lock:
        entry = _recent.get(key)
    if entry is None or time.monotonic() - entry[0] > RECENT_TTL:
        return None
    return entry


class PipedriveConnector(Connector):
    id = "pipedrive"
    MANIFEST = MANIFEST

    def __init__(self, config: Mapping[str, Any], context: ConnectorContext) -> None:
        super().__init__(config, context)
        cfg = self.config
        self.company = mappers.company_host(cfg.get("company_domain"))
        hosts = list(_allowed_hosts()) + ([f"{self.company}.pipedrive.com"] if self.company else [])
        base = mappers.check_base_url(str(cfg.get("api_base_url") or API_BASE_URL), hosts, "api_base_url")
        loopback = mappers.is_loopback(urlsplit(base).hostname or "")
        oauth_base = mappers.check_base_url(
            str(cfg.get("oauth_base_url") or (base if loopback else OAUTH_BASE_URL)), hosts, "oauth_base_url"
        )
        self.pipeline_id = mappers.as_id(cfg.get("pipeline_id"), "pipeline_id")
        self.owner_id = mappers.as_id(cfg.get("owner_id"), "owner_id")
        self.use_leads = bool(cfg.get("use_leads", False))
        self.business_number = str(cfg.get("business_number") or "") or None
        oauth = None
        if not cfg.get("api_token"):
            parts = (cfg.get("client_id"), cfg.get("client_secret"), cfg.get("refresh_token"))
            if not all(parts):
                raise ConnectorConfigError(
                    "Pipedrive needs api_token, or client_id + client_secret + refresh_token (OAuth)"
                )
            oauth = (str(parts[0]), str(parts[1]), str(parts[2]))
        self.client = PipedriveClient(
            base_url=base,
            timeout=float(context.timeout),
            throttle=context.throttle,
            count=self._count,
            api_token=str(cfg["api_token"]) if cfg.get("api_token") else None,
            oauth=oauth,
            oauth_base_url=oauth_base,
            tokens=context.tokens,
        )
        # The Pipedrive account, for process-wide memos (never the credential itself).
        who = str(cfg.get("api_token") or cfg.get("client_id") or "")
        self._account = base + "#" + hashlib.sha256(who.encode()).hexdigest()[:16]
        self._calls_lock = threading.Lock()
        self._stages: dict[int, dict[str, Any]] = {}
        self._stages_at = 0.0

    def _count(self) -> None:
        with self._calls_lock:
            self.api_calls += 1

    # -- helpers ---------------------------------------------------------------------------------
    def _company(self) -> str | None:
        """The company subdomain for record links: configured, or asked once per process."""
        if self.company:
            return self.company
        with _company_lock:
            if self._account in _companies:
                return _companies[self._account]
        try:
            me = self.client.get("/v1/users/me").get("data") or {}
        except (TransientError, Rejected):
            return None  # links are a nicety; never fail a push over them (auth errors still raise)
        domain = me.get("company_domain") if isinstance(me, dict) else None
        try:
            company = mappers.company_host(domain) if isinstance(domain, str) else None
        except ConnectorConfigError:
            company = None
        with _company_lock:
            _companies[self._account] = company
        return company

    def _person_remote(self, pid: int, created: bool | None) -> Remote:
        return Remote(str(pid), mappers.record_url(self._company(), "person", pid), "contact", created)

    def _get(self, path: str, params: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
        """``data`` of a GET, or None when the record is gone (404/410)."""
        try:
            data = self.client.get(path, params).get("data")
        except Rejected as exc:
            if exc.code in (404, 410):
                return None
            raise
        return data if isinstance(data, dict) else None

    def _stage_table(self) -> dict[int, dict[str, Any]]:
        if not self._stages or time.monotonic() - self._stages_at > STAGES_TTL:
            stages: dict[int, dict[str, Any]] = {}
            cursor: str | None = None
            for _ in range(10):
                params: dict[str, Any] = {"limit": 500}
                if cursor:
                    params["cursor"] = cursor
                answer = self.client.get("/api/v2/stages", params)
                for stage in answer.get("data") or []:
                    if isinstance(stage, dict) and mappers.numeric(stage.get("id")) is not None:
                        stages[int(stage["id"])] = stage
                cursor = (answer.get("additional_data") or {}).get("next_cursor")
                if not cursor:
                    break
            self._stages, self._stages_at = stages, time.monotonic()
        return self._stages

    def _stage_id(self, stage: str | None, pipeline_id: int | None) -> int | None:
        """A stage id from sync settings: a number, or a stage name in the pipeline ("Booked")."""
        if not stage:
            return None
        number = mappers.numeric(stage)
        if number is not None:
            return number
        return mappers.stage_by_name(self._stage_table().values(), stage, pipeline_id)

    # -- persons ---------------------------------------------------------------------------------
    def _search(self, phone: str) -> dict[str, Any] | None:
        answer = self.client.get(
            "/api/v2/persons/search",
            {"term": phone, "fields": "phone", "exact_match": "true", "limit": 20},
        )
        data = answer.get("data") or {}
        return mappers.pick_person(data.get("items") or [] if isinstance(data, dict) else [], phone)

    def _lookup(self, phone: str) -> tuple[int, bool] | None:
        """``(person id, made by this process recently)`` for ``phone``, or None."""
        key = (self._account, phone)
        found = self._search(phone)
        recalled = _recalled(key)
        if found is not None:
            return int(found["id"]), recalled is not None
        if recalled is not None and recalled[1] is not None:
            # Created here moments ago and not in the search index yet: check it still exists.
            person = self._get(f"/api/v2/persons/{recalled[1]}")
            if person is not None and mappers.has_phone(person.get("phones") or [], phone):
                return recalled[1], True
        return None

    def find_contact(self, phone: str) -> Remote | None:
        e164 = mappers.e164(phone)
        item = self._search(e164)
        if item is None:
            return None
        remote = self._person_remote(int(item["id"]), None)
        return Remote(remote.id, remote.url, remote.kind, None, str(item.get("name") or "") or None)

    def _complete(self, pid: int, person: Mapping[str, Any] | None, contact: ContactData, phone: str) -> bool:
        """Fill what the person lacks (never overwrite). False when the person no longer exists."""
        if person is None:
            person = self._get(f"/api/v2/persons/{pid}")
            if person is None:
                return False
        patch = mappers.person_patch(person, contact, phone)
        if patch:
            self.client.patch(f"/api/v2/persons/{pid}", patch)
        return True

    def upsert_contact(self, contact: ContactData, existing: Remote | None) -> Remote:
        phone = mappers.e164(contact.phone)
        if existing is not None and mappers.numeric(existing.id) is not None:
            pid = int(existing.id)
            if self._complete(pid, None, contact, phone):
                return self._person_remote(pid, False)
            # Deleted in Pipedrive since: find or create again, and the ledger learns the new id.
        key = (self._account, phone)
        with _stripe(key):
            # Under the per-phone lock, the search that decides runs right before any create.
            found = self._lookup(phone)
            if found is not None:
                pid, ours = found
                if self._complete(pid, None, contact, phone):
                    # ``created`` stays True for a person this process made moments ago (a retry of
                    # our own create), so the engine does not take it for an existing customer.
                    return self._person_remote(pid, ours)
            _remember(key, None)  # a create is under way: a lost answer still counts as ours
            answer = self.client.post("/api/v2/persons", mappers.person_create(contact, phone, self.owner_id))
            data = answer.get("data") or {}
            pid = mappers.person_id(data.get("id"))
            _remember(key, pid)
        return self._person_remote(pid, True)

    def mark_opted_out(self, contact: Remote) -> None:
        pid = mappers.person_id(contact)
        try:
            self.client.patch(f"/api/v2/persons/{pid}", {"marketing_status": "unsubscribed"})
            return
        except Rejected as exc:
            if exc.code in (404, 410):
                return  # the person was deleted in Pipedrive: nothing left to mark
            # Accounts without Campaigns may refuse marketing_status: say it in a note instead.
            log.info("pipedrive: marketing_status refused; writing an opt-out note", extra={"code": exc.code})
        notes = self.client.get("/v1/notes", {"person_id": pid, "limit": 100}).get("data") or []
        if any(
            mappers.has_marker(n.get("content"), mappers.OPT_OUT_MARKER) for n in notes if isinstance(n, dict)
        ):
            return
        self.client.post("/v1/notes", mappers.opt_out_note(pid))

    # -- deals and leads -------------------------------------------------------------------------------
    def upsert_deal(
        self, marker: str, deal: DealData, contact: Remote | None, existing: Remote | None
    ) -> Remote:
        pipeline_id = mappers.as_id(deal.pipeline, "sync.pipeline") or self.pipeline_id
        owner_id = mappers.as_id(deal.owner, "sync.owner") or self.owner_id
        if existing is not None:
            if mappers.is_lead_id(existing.id):
                # Leads have no pipeline or stage in Pipedrive: they stay in the Leads Inbox until someone
                # converts them (docs/pipedrive.md).
                return Remote(existing.id, existing.url, "lead", False)
            return self._move_deal(existing, deal, pipeline_id)
        if contact is None:
            raise Rejected("Pipedrive: a deal needs the person it belongs to")
        person = mappers.person_id(contact)
        if self.use_leads:
            answer = self.client.post("/v1/leads", mappers.lead_create(deal, marker, person, owner_id))
            lead_id = str((answer.get("data") or {}).get("id") or "")
            if not mappers.is_lead_id(lead_id):
                raise TransientError("Pipedrive created a lead but did not return its id")
            return Remote(lead_id, mappers.record_url(self._company(), "lead", lead_id), "lead", True)
        stage_id = self._stage_id(deal.stage, pipeline_id)
        body = mappers.deal_create(deal, marker, person, pipeline_id, stage_id, owner_id)
        data = self.client.post("/api/v2/deals", body).get("data") or {}
        did = mappers.numeric(data.get("id"))
        if did is None:
            raise TransientError("Pipedrive created a deal but did not return its id")
        return Remote(str(did), mappers.record_url(self._company(), "deal", did), "deal", True)

    def _move_deal(self, existing: Remote, deal: DealData, pipeline_id: int | None) -> Remote:
        remote = Remote(existing.id, existing.url, "deal", False)
        did = mappers.numeric(existing.id)
        target = self._stage_id(deal.stage, pipeline_id)
        if did is None or target is None:
            return remote
        current = self._get(f"/api/v2/deals/{did}")
        if current is None:
            log.info("pipedrive: the deal was deleted in Pipedrive; not recreating it")
            return remote
        stages = self._stage_table()
        if target not in stages:
            self._stages_at = 0.0  # a stage added since: look again once
            stages = self._stage_table()
        if mappers.should_move(current, target, stages):
            self.client.patch(f"/api/v2/deals/{did}", {"stage_id": target})
        return remote

    # -- tasks and activities --------------------------------------------------------------------------
    def create_task(self, marker: str, task: TaskData, contact: Remote | None, deal: Remote | None) -> Remote:
        person = mappers.person_id(contact) if contact is not None else None
        owner_id = mappers.as_id(task.owner, "sync.owner") or self.owner_id
        data = (
            self.client.post(
                "/api/v2/activities", mappers.task_body(marker, task, person, deal, owner_id)
            ).get("data")
            or {}
        )
        aid = mappers.numeric(data.get("id"))
        if aid is None:
            raise TransientError("Pipedrive created an activity but did not return its id")
        return Remote(str(aid), None, "task", True)

    def log_activity(
        self,
        marker: str,
        activity: ActivityData,
        contact: Remote | None,
        deal: Remote | None,
        existing: Remote | None,
    ) -> Remote:
        person = mappers.person_id(contact) if contact is not None else None
        if existing is not None:
            return self._update_activity(marker, activity, person, deal, existing)
        if activity.kind == "call":
            body = mappers.call_log_body(marker, activity, person, deal, self.owner_id, self.business_number)
            data = self.client.post("/v1/callLogs", body).get("data") or {}
            log_id = str(data.get("id") or "")
            if not log_id:
                raise TransientError("Pipedrive created a call log but did not return its id")
            return Remote(log_id, None, "call", True)
        data = (
            self.client.post("/v1/notes", mappers.note_body(marker, activity, person, deal)).get("data") or {}
        )
        nid = mappers.numeric(data.get("id"))
        if nid is None:
            raise TransientError("Pipedrive created a note but did not return its id")
        return Remote(str(nid), None, activity.kind, True)

    def _update_activity(
        self, marker: str, activity: ActivityData, person: int | None, deal: Remote | None, existing: Remote
    ) -> Remote:
        if mappers.is_call_log_id(existing.id):
            # Call logs cannot be edited: what the call learned later (voicemail, transcript) goes into one
            # note next to it, itself kept up to date.
            call_log = self._get(f"/v1/callLogs/{existing.id}")
            wanted = mappers.with_ref(activity.body, marker)
            if call_log is None or call_log.get("note") == wanted:
                return existing
            if person is None and not mappers.deal_link(deal):
                return existing
            self._upsert_note(marker, activity, person, deal)
            return existing
        nid = mappers.numeric(existing.id)
        if nid is None:
            return existing
        try:
            self.client.put(f"/v1/notes/{nid}", {"content": mappers.note_content(marker, activity)})
        except Rejected as exc:
            if exc.code not in (404, 410):
                raise
            log.info("pipedrive: the note was deleted in Pipedrive; not recreating it")
        return existing

    def _upsert_note(
        self, marker: str, activity: ActivityData, person: int | None, deal: Remote | None
    ) -> None:
        link: dict[str, Any] = {"person_id": person} if person is not None else mappers.deal_link(deal)
        notes = self.client.get("/v1/notes", {**link, "limit": 500}).get("data") or []
        content = mappers.note_content(marker, activity)
        for note in notes:
            if isinstance(note, dict) and mappers.has_marker(note.get("content"), marker):
                if note.get("content") != content:
                    self.client.put(f"/v1/notes/{note['id']}", {"content": content})
                return
        self.client.post("/v1/notes", mappers.note_body(marker, activity, person, deal))

    # -- find_record: the records an interrupted create may have left ------------------------------
    def find_record(self, kind: str, marker: str) -> Remote | None:
        if kind == "deal":
            return self._find_deal(marker)
        if kind == "task":
            return self._scan(
                "/api/v2/activities",
                {"sort_by": "id", "sort_direction": "desc"},
                "note",
                marker,
                "task",
                cursor=True,
            )
        if kind == "call":
            return self._scan("/v1/callLogs", {}, "note", marker, "call", cursor=False, limit=50)
        if kind in ("sms", "note"):
            return self._scan("/v1/notes", {"sort": "add_time DESC"}, "content", marker, kind, cursor=False)
        return None

    def _find_deal(self, marker: str) -> Remote | None:
        item_type = "lead" if self.use_leads else "deal"
        answer = self.client.get(
            "/api/v2/itemSearch", {"term": marker, "item_types": item_type, "fields": "title", "limit": 20}
        )
        data = answer.get("data") or {}
        for hit in data.get("items") or [] if isinstance(data, dict) else []:
            item = hit.get("item") if isinstance(hit, dict) else None
            if (
                isinstance(item, dict)
                and item.get("type") == item_type
                and mappers.title_has_marker(item.get("title"), marker)
            ):
                rid = str(item["id"])
                return Remote(rid, mappers.record_url(self._company(), item_type, rid), item_type, False)
        return None

    def _scan(
        self,
        path: str,
        params: dict[str, Any],
        field: str,
        marker: str,
        kind: str,
        *,
        cursor: bool,
        limit: int = 500,
    ) -> Remote | None:
        """Newest records first, a few pages deep, for one whose ``field`` carries ``marker``."""
        start: Any = None
        for _ in range(FIND_PAGES):
            query = {**params, "limit": limit}
            if start is not None:
                query["cursor" if cursor else "start"] = start
            answer = self.client.get(path, query)
            for record in answer.get("data") or []:
                if isinstance(record, dict) and mappers.has_marker(record.get(field), marker):
                    return Remote(str(record["id"]), None, kind, False)
            more = answer.get("additional_data") or {}
            start = more.get("next_cursor") if cursor else (more.get("pagination") or {}).get("next_start")
            if not start:
                return None
        return None

    # -- check -----------------------------------------------------------------------------------------
    def check(self) -> CheckResult:
        auth = "OAuth app" if self.client.oauth else "API token"
        host = self.client.base_url
        try:
            me = self.client.get("/v1/users/me").get("data") or {}
        except AuthError as exc:
            fix = (
                "reconnect the Pipedrive app and install again with the new refresh_token"
                if self.client.oauth
                else "copy the token again from Pipedrive: Settings > Personal preferences > API"
            )
            return CheckResult(False, f"Pipedrive rejected the {auth}: {fix}", [str(exc)])
        except RateLimited as exc:
            return CheckResult(
                False,
                f"Pipedrive is rate limiting this account; try again in {exc.retry_after:.0f} s",
                [str(exc)],
            )
        except (TransientError, ConnectorConfigError) as exc:
            text = str(exc)
            if "HTML" in text:
                summary = (
                    f"{host} answered with a web page, not Pipedrive's API (a proxy, a captive portal "
                    "or a wrong api_base_url)"
                )
            elif "could not be reached" in text:
                summary = f"{host} could not be reached (network, DNS or firewall)"
            else:
                summary = f"Pipedrive at {host} did not answer properly"
            return CheckResult(False, summary, [text])
        except JobError as exc:
            return CheckResult(False, f"Pipedrive refused the check: {exc}", [str(exc)])
        company = me.get("company_domain") if isinstance(me, dict) else None
        details = [
            f"auth: {auth}",
            f"user: {me.get('name')} (id {me.get('id')})",
            f"company: {me.get('company_name')} ({company}.pipedrive.com)",
        ]
        if not self.company and company:
            details.append(f"tip: set company_domain: {company} for links to records")
        ok = True
        details.append("records: " + ("leads (Leads Inbox)" if self.use_leads else "deals"))
        if self.pipeline_id is not None:
            try:
                pipeline = self._get(f"/api/v2/pipelines/{self.pipeline_id}")
            except JobError as exc:
                pipeline, ok = None, False
                details.append(f"pipeline {self.pipeline_id}: could not be read ({exc})")
            if pipeline is None and ok:
                ok = False
                details.append(f"pipeline_id {self.pipeline_id} does not exist in this Pipedrive account")
            elif pipeline is not None:
                details.append(f"pipeline: {pipeline.get('name')} (id {self.pipeline_id})")
        summary = (
            f"connected to Pipedrive as {me.get('name')}" if ok else "connected, but the settings need a fix"
        )
        return CheckResult(ok, summary, details)
