"""The HubSpot connector: contacts, deals, tasks, calls and notes through hubspot-api-client 12.

How it keeps HubSpot clean:

- **One contact per caller.** HubSpot dedupes contacts by email only, and its search index lags
  writes, so search-then-create is racy. The connector creates a unique contact property (default
  ``textback_phone_e164``, ``hasUniqueValue``) and upserts through ``batch/upsert`` with it as
  ``idProperty``: one atomic call that also says whether the contact is new.
- **One deal per lead.** Deals carry textback's marker in the unique deal property ``textback_key``;
  a create that already happened answers 409 and is looked up by that key instead of repeated.
- **Tasks, calls and notes** carry ``Ref: <marker>`` in their body; ``find_record`` searches for it
  after an interrupted create. They are created with inline associations: one call each, or, for
  leads whose jobs were claimed together, one ``batch/create`` per object type (``create_records``).
- **Callers of texts claimed together** are looked up in one contacts search (``find_contacts``).

Every request goes through the SDK's generated ``ApiClient.call_api`` with a path from
``connectors.hubspot.paths`` (HubSpot is moving to date-versioned paths; the SDK's typed wrappers
hard-code ``/crm/v3``), with ``_request_timeout=(3, context.timeout)`` and no urllib3 retries: the
outbox owns retries. Bodies are read raw (``_preload_content=False``), so an HTML page is classified,
never parsed as success, and the SDK never logs response bodies.

The properties (and the deal pipelines) are checked once per process and created when missing, at
``check()`` or on first use. Once they exist a lone new lead costs five calls: the lookup before
the text, contact, deal, call (the first text written into it) and task.

Auth: a private-app or service-key token (``access_token``), or OAuth (``client_id``,
``client_secret``, ``refresh_token``) with the access token kept in the shared TokenStore: refreshed
before it expires, and once after a 401 EXPIRED_AUTHENTICATION, single-flight across workers.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import urllib3
from hubspot import HubSpot

from connectors import http_errors
from connectors import manifest as manifest_mod
from connectors.base import Connector, ConnectorContext
from connectors.hubspot import batch, mappers, paths
from core.connector_state import Token
from core.crm import ActivityData, CheckResult, ContactData, DealData, NewRecord, Remote, TaskData
from core.errors import (
    AuthError,
    ConnectorConfigError,
    JobError,
    RateLimited,
    Rejected,
    TransientError,
)

log = logging.getLogger("textback.connectors.hubspot")

MANIFEST = Path(__file__).resolve().parents[2] / "manifests" / "hubspot.yaml"
VENDOR = "HubSpot"
CONNECT_TIMEOUT = 3.0
TOKEN_MARGIN_S = 60
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
OAUTH_KEYS = ("client_id", "client_secret", "refresh_token")
SCHEMA_WRITE_SCOPES = {"contacts": "crm.schemas.contacts.write", "deals": "crm.schemas.deals.write"}


@lru_cache(maxsize=1)
def allowed_hosts() -> tuple[str, ...]:
    return manifest_mod.load(MANIFEST).allowed_hosts


class _Expired(AuthError):
    """401 EXPIRED_AUTHENTICATION: an OAuth access token to refresh (an AuthError if it escapes)."""


@dataclass(frozen=True)
class _Answer:
    status: int
    headers: dict[str, str]
    body: bytes | str | None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def fields(self) -> tuple[str, str, str]:
        return mappers.error_fields(mappers.parse_json(self.body))


@dataclass(frozen=True)
class _ContactSchema:
    lead_source: bool  # the account has a writable ``leadsource`` property


# What this process already knows exists in an account: the custom properties and the deal pipelines.
# Keyed by (account, what); an account is the API host plus a hash of the credentials.
_KNOWN: dict[tuple[str, str], Any] = {}
_KNOWN_LOCKS: dict[tuple[str, str], threading.Lock] = {}
_KNOWN_GUARD = threading.Lock()


def _lock_for(key: tuple[str, str]) -> threading.Lock:
    with _KNOWN_GUARD:
        return _KNOWN_LOCKS.setdefault(key, threading.Lock())


class HubSpotConnector(Connector):
    id = "hubspot"
    MANIFEST = MANIFEST
    # HubSpot meters its search endpoints separately (about 4 per second per token), on top of the
    # 10-second burst window every call counts against.
    scoped_limits = frozenset({"search"})
    # The first text goes into the missed call's activity when both are pushed together: one call
    # less per lead.
    folds_first_text = True

    def __init__(self, config: Mapping[str, Any], context: ConnectorContext) -> None:
        super().__init__(config, context)
        cfg = self.config
        self.base_url = self._base_url(cfg.get("api_base_url"))
        self.phone_property = str(cfg.get("phone_property") or mappers.PHONE_PROPERTY)
        if not self.phone_property.replace("_", "a").isalnum() or not self.phone_property[0].isalpha():
            raise ConnectorConfigError("phone_property must be a HubSpot property name (a-z, 0-9, _)")
        self.portal_id = str(cfg["portal_id"]) if cfg.get("portal_id") not in (None, "") else None
        self.pipeline = str(cfg.get("pipeline") or "default")
        self.owner_id = str(cfg["owner_id"]) if cfg.get("owner_id") not in (None, "") else None
        oauth = [k for k in OAUTH_KEYS if cfg.get(k)]
        self._static_token: str | None = str(cfg["access_token"]) if cfg.get("access_token") else None
        if self._static_token and oauth:
            raise ConnectorConfigError(
                "give either access_token (private app or service key) or the OAuth client_id, "
                "client_secret and refresh_token, not both"
            )
        if not self._static_token and len(oauth) != len(OAUTH_KEYS):
            missing = [k for k in OAUTH_KEYS if k not in oauth]
            raise ConnectorConfigError(
                "HubSpot needs access_token (a private app or service key token) or OAuth client_id, "
                f"client_secret and refresh_token; missing: {', '.join(missing)}"
            )
        identity = self._static_token or f"{cfg.get('client_id')}|{cfg.get('refresh_token')}"
        digest = hashlib.sha256(f"{self.base_url}|{identity}".encode()).hexdigest()[:16]
        self._account = f"{self.base_url}#{self.portal_id or ''}#{digest}"
        self._api_client: Any = None
        self._lock = threading.Lock()
        # The OAuth access token this instance holds: (token, expires at, epoch seconds). Without a
        # TokenStore (kit tests) it is the only copy, refreshed in-process.
        self._local_token: tuple[str, float] | None = None
        self._local_refresh: str | None = None

    # -- configuration ----------------------------------------------------------------------------
    @staticmethod
    def _base_url(raw: Any) -> str:
        if not raw:
            return paths.DEFAULT_BASE_URL
        text = str(raw).strip().rstrip("/")
        try:
            parts = urlsplit(text)
            host = (parts.hostname or "").lower()
        except ValueError:
            raise ConnectorConfigError("api_base_url is not a URL") from None
        if parts.username or parts.password or parts.query or parts.fragment or parts.path not in ("", "/"):
            raise ConnectorConfigError("api_base_url must be just scheme://host[:port]")
        if parts.scheme not in ("http", "https"):
            raise ConnectorConfigError("api_base_url must start with https://")
        if host in LOOPBACK or host.startswith("127."):
            return text
        if host in allowed_hosts() and parts.scheme == "https":
            return text
        raise ConnectorConfigError(
            f"api_base_url host {host!r} is not allowed: use https://{allowed_hosts()[0]} (the default) or "
            "a local emulator on 127.0.0.1"
        )

    @property
    def _oauth(self) -> bool:
        return self._static_token is None

    def _api(self) -> Any:
        if self._api_client is None:
            # retry=False: urllib3 neither retries nor follows redirects; the outbox owns retries.
            client = HubSpot(access_token=self._static_token, host=self.base_url, retry=False)
            self._api_client = client.crm.objects.basic_api.api_client
        return self._api_client

    # -- HTTP -------------------------------------------------------------------------------------
    def _send(
        self,
        method: str,
        path: str,
        *,
        token: str | None,
        params: dict[str, str] | None = None,
        query: dict[str, str] | None = None,
        body: Any = None,
        form: dict[str, str] | None = None,
        search: bool = False,
    ) -> _Answer:
        """One HTTP request through the SDK; returns whatever HubSpot answered (errors included)."""
        if form is None:
            # Not for the OAuth token call: it runs under the token row lock, and SQLite has one writer.
            if search:
                self.context.throttle(1, "search")
            else:
                self.context.throttle(1)
        self.api_calls += 1
        headers = {"Accept": "application/json"}
        if form is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        auth: dict[str, Any] = {}
        if token:
            auth = {
                "auth_settings": ["oauth2"],
                "_request_auth": {
                    "in": "header",
                    "type": "oauth2",
                    "key": "Authorization",
                    "value": f"Bearer {token}",
                },
            }
        raw = None
        try:
            raw = self._api().call_api(
                path,
                method,
                path_params=params,
                query_params=list(query.items()) if query else None,
                header_params=headers,
                body=body,
                post_params=list(form.items()) if form else None,
                response_types_map={},
                _return_http_data_only=False,
                _preload_content=False,
                _request_timeout=(CONNECT_TIMEOUT, self.context.timeout),
                **auth,
            )
            return _Answer(int(raw.status), dict(raw.headers), raw.data)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise http_errors.network_error(VENDOR, exc) from None
        except Exception as exc:
            # Each generated package has its own ApiException: duck-type status/body/headers.
            status = getattr(exc, "status", None)
            if isinstance(status, int) and status > 0 and hasattr(exc, "body"):
                return _Answer(status, dict(getattr(exc, "headers", None) or {}), exc.body)
            if isinstance(status, int):  # status 0: TLS failure or a request the SDK could not build
                raise TransientError(f"{VENDOR} could not be reached ({type(exc).__name__})") from None
            raise
        finally:
            if raw is not None:
                raw.release_conn()

    def _call(self, method: str, path: str, *, search: bool = False, **kwargs: Any) -> _Answer:
        """A CRM call with the current token; after 401 EXPIRED_AUTHENTICATION, refresh once, retry once."""
        token = self._token()
        answer = self._send(method, path, token=token, search=search, **kwargs)
        if answer.status == 401 and self._oauth and answer.fields()[0] == "EXPIRED_AUTHENTICATION":
            token = self._refresh(stale=token)
            answer = self._send(method, path, token=token, search=search, **kwargs)
        return answer

    def _data(self, answer: _Answer) -> Any:
        """The JSON of a successful answer, or the error it stands for, raised."""
        if not answer.ok:
            raise self._error(answer)
        if answer.status == 204 or not answer.body:
            return {}
        data = mappers.parse_json(answer.body)
        if not isinstance(data, dict | list):
            raise TransientError(
                f"{VENDOR} answered HTTP {answer.status} with {http_errors.describe(answer.body)}"
                + ("" if http_errors.looks_like_html(answer.body) else ", not JSON")
            )
        return data

    def _do(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._data(self._call(method, path, **kwargs))

    def _error(self, answer: _Answer) -> JobError:
        status, headers = answer.status, answer.headers
        body = mappers.parse_json(answer.body)
        if not isinstance(body, dict):
            return http_errors.classify(VENDOR, status, headers, answer.body)
        category, raw_message, policy = mappers.error_fields(body)
        message = mappers.clean_message(raw_message) or http_errors.describe(answer.body)
        label = f"HTTP {status}" + (f" {category}" if category else "")
        if status == 429:
            if policy == "DAILY":
                wait = mappers.seconds_until_daily_reset()
                return RateLimited(
                    f"{VENDOR}'s daily API limit for this account is used up; paused for {wait / 3600:.1f} h "
                    "(it resets at midnight in the account's time zone)",
                    retry_after=wait,
                    code="DAILY",
                )
            lowered = {k.lower() for k in headers}
            if "retry-after" in lowered:
                wait = http_errors.retry_after(headers)
            else:
                wait = mappers.interval_seconds(headers) or (1.0 if policy == "SECONDLY" else 10.0)
            return RateLimited(
                f"{VENDOR} rate limit ({policy or 'burst'}): {message}",
                retry_after=wait,
                code=policy or status,
            )
        if status == 401:
            if category == "EXPIRED_AUTHENTICATION":
                return _Expired(f"{VENDOR} says the access token expired ({label})", code=category)
            return AuthError(
                f"{VENDOR} rejected the credentials ({label}): {message}. Check the access token, or "
                "reconnect HubSpot",
                code=category or status,
            )
        if status == 403 and category == "MISSING_SCOPES":
            scopes = mappers.required_scopes(body)
            return ConnectorConfigError(
                f"the HubSpot app or token lacks the scope(s) {', '.join(scopes) or '(not named)'}: grant "
                "them in HubSpot (private app / service key scopes, or the OAuth app's scopes and "
                "reconnect), then run `textback connectors check hubspot`",
                code=category,
            )
        if 400 <= status < 500 and status not in (401, 403, 408, 425):
            return Rejected(f"{VENDOR} rejected the request ({label}): {message}", code=category or status)
        return http_errors.classify(VENDOR, status, headers, answer.body)

    # -- OAuth ------------------------------------------------------------------------------------
    def _token(self) -> str | None:
        """The access token to send: the static one, or the OAuth one (refreshed before it expires).

        The TokenStore (shared by every worker) is read only when the copy this instance holds is
        about to expire, not on every call.
        """
        if self._static_token:
            return self._static_token
        held = self._local_token
        if held and held[1] - TOKEN_MARGIN_S > time.time():
            return held[0]
        tokens = self.context.tokens
        if tokens is not None:
            current = tokens.valid(margin=timedelta(seconds=TOKEN_MARGIN_S))
            return self._hold(current or tokens.refresh(self._do_refresh))
        with self._lock:
            held = self._local_token
            if held and held[1] - TOKEN_MARGIN_S > time.time():
                return held[0]
            return self._refresh_locally()

    def _refresh(self, stale: str | None) -> str:
        """A new access token after ``stale`` was refused; single-flight through the TokenStore."""
        tokens = self.context.tokens
        if tokens is not None:
            return self._hold(tokens.refresh(self._do_refresh, stale=stale))
        with self._lock:
            held = self._local_token
            if held and held[0] != stale and held[1] - TOKEN_MARGIN_S > time.time():
                return held[0]
            return self._refresh_locally()

    def _hold(self, token: Token) -> str:
        expires = token.expires_at.timestamp() if token.expires_at else time.time() + 300
        self._local_token = (token.access_token, expires)
        return token.access_token

    def _refresh_locally(self) -> str:
        access, expires_in, new_refresh = self._do_refresh(self._local_refresh)
        self._local_token = (access, time.time() + expires_in)
        if new_refresh:
            self._local_refresh = new_refresh
        return access

    def _do_refresh(self, stored_refresh: str | None) -> tuple[str, int, str | None]:
        """POST /oauth/v1/token (grant_type=refresh_token) -> (access token, expires_in, refresh token).

        The stored refresh token comes first; the configured one is the fallback (a reinstall with a
        new refresh token replaces one HubSpot revoked).
        """
        configured = str(self.config.get("refresh_token") or "")
        candidates = [t for t in dict.fromkeys([stored_refresh, configured]) if t]
        if not candidates:
            raise AuthError("no HubSpot refresh token: reconnect HubSpot and install the connector again")
        answer: _Answer | None = None
        for refresh in candidates:
            answer = self._send(
                "POST",
                paths.OAUTH_TOKEN,
                token=None,
                form={
                    "grant_type": "refresh_token",
                    "client_id": str(self.config["client_id"]),
                    "client_secret": str(self.config["client_secret"]),
                    "refresh_token": refresh,
                },
            )
            if answer.ok:
                data = self._data(answer)
                access = data.get("access_token") if isinstance(data, dict) else None
                if not access:
                    raise TransientError(f"{VENDOR}'s token endpoint answered without an access token")
                expires_in = int(data.get("expires_in") or 1800)
                return str(access), expires_in, data.get("refresh_token") or refresh
            if answer.fields()[0] != "BAD_REFRESH_TOKEN":
                break
        assert answer is not None
        raise self._oauth_error(answer)

    def _oauth_error(self, answer: _Answer) -> JobError:
        code, _message, _policy = answer.fields()
        if answer.status == 429 or answer.status >= 500 or answer.status in (408, 425):
            return self._error(answer)
        if code == "BAD_REFRESH_TOKEN":
            return AuthError(
                "reconnect HubSpot: it refused the refresh token (BAD_REFRESH_TOKEN; the app was "
                "uninstalled or its access revoked). Install the connector again with a new refresh token",
                code=code,
            )
        if code in ("BAD_CLIENT_ID", "BAD_CLIENT_SECRET"):
            return AuthError(
                f"HubSpot refused the OAuth app's {code.removeprefix('BAD_').lower()} ({code}): check "
                "client_id and client_secret",
                code=code,
            )
        if not mappers.parse_json(answer.body):
            return http_errors.classify(VENDOR, answer.status, answer.headers, answer.body)
        return AuthError(
            f"HubSpot refused to refresh the access token (HTTP {answer.status} {code}): reconnect HubSpot",
            code=code or answer.status,
        )

    # -- what exists in the account (once per process) --------------------------------------------
    def _known(self, what: str, load: Any, force: bool = False) -> Any:
        key = (self._account, what)
        if not force and key in _KNOWN:
            return _KNOWN[key]
        with _lock_for(key):
            if not force and key in _KNOWN:
                return _KNOWN[key]
            value = load()
            _KNOWN[key] = value
            return value

    def _forget(self, what: str) -> None:
        _KNOWN.pop((self._account, what), None)

    def _contact_schema(self, force: bool = False) -> _ContactSchema:
        return self._known(f"contacts:{self.phone_property}", self._load_contact_schema, force)

    def _load_contact_schema(self) -> _ContactSchema:
        data = self._do("GET", paths.PROPERTY_LIST, params={"objectType": "contacts"})
        defs = {d.get("name"): d for d in data.get("results", []) if isinstance(d, dict)}
        phone = defs.get(self.phone_property)
        if phone is None:
            self._create_property("contacts", mappers.phone_property_definition(self.phone_property))
        elif not phone.get("hasUniqueValue"):
            raise ConnectorConfigError(
                f"the HubSpot contact property {self.phone_property!r} exists but is not unique "
                "(hasUniqueValue is false, and HubSpot cannot change that): set phone_property to a new "
                "name and textback creates it"
            )
        if mappers.OPTED_OUT_PROPERTY not in defs:
            self._create_property("contacts", mappers.opted_out_property_definition())
        source = defs.get(mappers.LEAD_SOURCE_PROPERTY)
        writable = bool(
            source
            and not source.get("calculated")
            and not (source.get("modificationMetadata") or {}).get("readOnlyValue")
            and source.get("type") == "string"
        )
        return _ContactSchema(lead_source=writable)

    def _deal_schema(self, force: bool = False) -> bool:
        return bool(self._known("deals:key", self._load_deal_schema, force))

    def _load_deal_schema(self) -> bool:
        answer = self._call(
            "GET", paths.PROPERTY, params={"objectType": "deals", "propertyName": mappers.DEAL_KEY_PROPERTY}
        )
        if answer.status == 404:
            self._create_property("deals", mappers.deal_key_property_definition())
            return True
        found = self._data(answer)
        if not found.get("hasUniqueValue"):
            raise ConnectorConfigError(
                f"the HubSpot deal property {mappers.DEAL_KEY_PROPERTY!r} exists but is not unique; "
                "archive it in HubSpot (Settings > Properties) and run `textback connectors check hubspot`"
            )
        return True

    def _create_property(self, object_type: str, definition: dict[str, Any]) -> None:
        answer = self._call("POST", paths.PROPERTY_LIST, params={"objectType": object_type}, body=definition)
        if answer.ok or answer.status == 409:  # 409: another worker created it first
            if answer.ok:
                log.info("created HubSpot %s property %s", object_type, definition["name"])
            return
        error = self._error(answer)
        if isinstance(error, ConnectorConfigError) and answer.fields()[0] == "MISSING_SCOPES":
            scope = SCHEMA_WRITE_SCOPES[object_type]
            raise ConnectorConfigError(
                f"textback needs to create the unique {object_type[:-1]} property {definition['name']!r} "
                f"once, and the HubSpot app or token lacks the scope {scope}: grant it (or create the "
                f"property by hand: single-line text, 'Require unique values' on), then run "
                "`textback connectors check hubspot`",
                code="MISSING_SCOPES",
            ) from None
        raise error

    def _pipelines(self, force: bool = False) -> dict[str, dict[str, Any]]:
        return self._known("deals:pipelines", self._load_pipelines, force)

    def _load_pipelines(self) -> dict[str, dict[str, Any]]:
        data = self._do("GET", paths.DEAL_PIPELINES)
        out: dict[str, dict[str, Any]] = {}
        for p in data.get("results", []):
            if isinstance(p, dict) and p.get("id") and not p.get("archived"):
                stages = [
                    (str(s["id"]), str(s.get("label") or s["id"]))
                    for s in p.get("stages", [])
                    if isinstance(s, dict) and s.get("id") and not s.get("archived")
                ]
                out[str(p["id"])] = {"label": str(p.get("label") or p["id"]), "stages": stages}
        return out

    def _check_stage(self, pipeline: str, stage: str) -> None:
        for attempt in range(2):
            known = self._pipelines(force=attempt == 1)
            found = known.get(pipeline)
            if found is not None and stage in {s for s, _ in found["stages"]}:
                return
        if found is None:
            listed = "; ".join(f"{pid} ({p['label']})" for pid, p in known.items()) or "none"
            raise ConnectorConfigError(
                f"HubSpot has no deal pipeline {pipeline!r}; its pipelines are: {listed}. Fix `pipeline` in "
                "the connector settings (or sync.pipeline)"
            )
        valid = ", ".join(f"{sid} ({label})" for sid, label in found["stages"])
        raise ConnectorConfigError(
            f"deal stage {stage!r} is not a stage of HubSpot pipeline {pipeline!r}; valid stage ids: "
            f"{valid}. Fix sync.stages in the connector settings"
        )

    # -- contacts ---------------------------------------------------------------------------------
    def _contact_remote(self, data: Mapping[str, Any], created: bool | None) -> Remote:
        oid = str(data["id"])
        return Remote(
            oid, mappers.record_url(self.portal_id, mappers.CONTACT_TYPE_ID, oid), "contact", created
        )

    def find_contact(self, phone: str) -> Remote | None:
        self._contact_schema()
        return self._contact_by_phone(phone)

    def _contact_by_phone(self, phone: str) -> Remote | None:
        answer = self._call(
            "GET",
            paths.OBJECT_BY_ID,
            params={"objectType": "contacts", "objectId": phone},
            query={"idProperty": self.phone_property, "properties": "firstname,lastname,email"},
        )
        if answer.status == 404:
            return None
        data = self._data(answer)
        props = data.get("properties") or {}
        name = " ".join(p for p in (props.get("firstname"), props.get("lastname")) if p) or None
        remote = self._contact_remote(data, None)
        return Remote(remote.id, remote.url, remote.kind, None, name)

    def find_contacts(self, phones: list[str]) -> dict[str, Remote]:
        """Many callers in one contacts search (an IN filter, up to 100 numbers per request).

        For texts claimed together: one request instead of one lookup each. HubSpot's search index
        lags its writes by a few seconds, so a contact created moments ago may not be found yet.
        """
        wanted = sorted({p for p in phones if p.startswith("+")})
        if not wanted:
            return {}
        self._contact_schema()
        found: dict[str, Remote] = {}
        for part in batch.chunks(wanted):
            data = self._do(
                "POST",
                paths.SEARCH,
                params={"objectType": "contacts"},
                body=batch.lookup_body(self.phone_property, part),
                search=True,
            )
            for row in data.get("results") or []:
                props = row.get("properties") or {}
                phone = str(props.get(self.phone_property) or "")
                if phone not in part:
                    continue
                name = " ".join(p for p in (props.get("firstname"), props.get("lastname")) if p) or None
                remote = self._contact_remote(row, None)
                found[phone] = Remote(remote.id, remote.url, remote.kind, None, name)
        return found

    def upsert_contact(self, contact: ContactData, existing: Remote | None) -> Remote:
        if not contact.phone.startswith("+"):
            raise Rejected("the contact's phone is not in E.164 form")
        schema = self._contact_schema()
        props = mappers.contact_properties(
            contact, self.phone_property, first_sync=existing is None, lead_source=schema.lead_source
        )
        return self._upsert_contact(contact.phone, props, retry_schema=True)

    def upsert_contacts(self, items: list[tuple[ContactData, Remote | None]]) -> list[Remote]:
        """Many contacts in one ``batch/upsert`` call (up to 100), for jobs that queued up together.

        Anything unusual (an email conflict, a missing property, a partial answer) falls back to
        one call per contact, which knows how to handle it.
        """
        if not items or len(items) > 100 or any(not c.phone.startswith("+") for c, _ in items):
            return [self.upsert_contact(c, e) for c, e in items]
        schema = self._contact_schema()
        inputs: dict[str, dict[str, Any]] = {}
        for contact, existing in items:
            props = mappers.contact_properties(
                contact, self.phone_property, first_sync=existing is None, lead_source=schema.lead_source
            )
            inputs[contact.phone] = {
                "idProperty": self.phone_property,
                "id": contact.phone,
                "properties": props,
            }
        answer = self._call(
            "POST",
            paths.BATCH_UPSERT,
            params={"objectType": "contacts"},
            body={"inputs": list(inputs.values())},
        )
        if answer.status in (400, 409) or answer.status == 207:
            return [self.upsert_contact(c, e) for c, e in items]
        data = self._data(answer)
        by_phone = {
            str((r.get("properties") or {}).get(self.phone_property)): r for r in data.get("results") or []
        }
        if set(by_phone) != set(inputs):
            return [self.upsert_contact(c, e) for c, e in items]
        return [self._contact_remote(by_phone[c.phone], bool(by_phone[c.phone].get("new"))) for c, _ in items]

    def _upsert_contact(self, phone: str, props: dict[str, str], retry_schema: bool = False) -> Remote:
        body = {"inputs": [{"idProperty": self.phone_property, "id": phone, "properties": props}]}
        answer = self._call("POST", paths.BATCH_UPSERT, params={"objectType": "contacts"}, body=body)
        _category, message, _ = answer.fields()
        if answer.status == 409 and "email" in props:
            return self._email_taken(phone, props, message)
        if answer.status == 400 and retry_schema and self.phone_property in message:
            # The unique property went missing (archived in HubSpot?): create it again, then retry once.
            self._forget(f"contacts:{self.phone_property}")
            self._contact_schema()
            return self._upsert_contact(phone, props)
        data = self._data(answer)
        results = data.get("results") or []
        if not results:
            raise self._batch_error(data)
        return self._contact_remote(results[0], bool(results[0].get("new")))

    def _email_taken(self, phone: str, props: dict[str, str], message: str) -> Remote:
        """409: another contact has this email. It is the same person unless our phone contact exists."""
        other = mappers.existing_id(message)
        without_email = {k: v for k, v in props.items() if k != "email"}
        if other is None or self._contact_by_phone(phone) is not None:
            return self._upsert_contact(phone, without_email)
        # Adopt the contact HubSpot knows by email: it gets our phone key (and stays as it was otherwise).
        # Its own phone field, status and source stay; the caller's number goes into our key property.
        adopt = {
            k: v
            for k, v in props.items()
            if k not in ("phone", "hs_lead_status", mappers.LEAD_SOURCE_PROPERTY)
        }
        if props.get(mappers.OPTED_OUT_PROPERTY):
            adopt.update(mappers.opted_out_properties())
        answer = self._call(
            "PATCH",
            paths.OBJECT_BY_ID,
            params={"objectType": "contacts", "objectId": other},
            body={"properties": adopt},
        )
        if answer.status == 409:  # our phone key was taken meanwhile: keep that contact instead
            return self._upsert_contact(phone, without_email)
        return self._contact_remote(self._data(answer), False)

    def _batch_error(self, data: Mapping[str, Any]) -> JobError:
        errors = data.get("errors") or []
        first = errors[0] if errors and isinstance(errors[0], dict) else {}
        category = str(first.get("category") or "")
        message = mappers.clean_message(str(first.get("message") or "no result and no error"))
        return Rejected(
            f"{VENDOR} did not upsert the contact ({category or 'no result'}): {message}",
            code=category or None,
        )

    def mark_opted_out(self, contact: Remote) -> None:
        self._contact_schema()
        answer = self._call(
            "PATCH",
            paths.OBJECT_BY_ID,
            params={"objectType": "contacts", "objectId": contact.id},
            body={"properties": mappers.opted_out_properties()},
        )
        if answer.status == 404:
            log.warning("HubSpot contact %s no longer exists; opt-out not recorded there", contact.id)
            return
        self._data(answer)

    # -- deals ------------------------------------------------------------------------------------
    def _deal_remote(self, oid: str, created: bool | None = None) -> Remote:
        return Remote(oid, mappers.record_url(self.portal_id, mappers.DEAL_TYPE_ID, oid), "deal", created)

    def upsert_deal(
        self, marker: str, deal: DealData, contact: Remote | None, existing: Remote | None
    ) -> Remote:
        pipeline = deal.pipeline or self.pipeline
        self._check_stage(pipeline, deal.stage)
        owner = deal.owner or self.owner_id
        if existing is not None:
            answer = self._call(
                "PATCH",
                paths.OBJECT_BY_ID,
                params={"objectType": "deals", "objectId": existing.id},
                body={"properties": mappers.deal_properties(deal, marker, pipeline, owner, create=False)},
            )
            if answer.status == 404:
                log.warning("HubSpot deal %s was deleted; its stage is not updated", existing.id)
                return existing
            self._data(answer)
            return self._deal_remote(existing.id, False)
        self._deal_schema()
        body = {
            "properties": mappers.deal_properties(deal, marker, pipeline, owner, create=True),
            "associations": mappers.associations((contact.id if contact else None, mappers.DEAL_TO_CONTACT)),
        }
        answer = self._call("POST", paths.OBJECT, params={"objectType": "deals"}, body=body)
        if answer.status == 409:
            # The deal with this marker exists (an earlier try got through): use it, make sure it's linked.
            found = self._deal_by_key(marker)
            if found is None:
                raise self._error(answer)
            if contact is not None:
                self._associate("deals", found.id, "contacts", contact.id, mappers.DEAL_TO_CONTACT)
            return found
        return self._deal_remote(str(self._data(answer)["id"]), True)

    def _deal_by_key(self, marker: str) -> Remote | None:
        answer = self._call(
            "GET",
            paths.OBJECT_BY_ID,
            params={"objectType": "deals", "objectId": marker},
            query={"idProperty": mappers.DEAL_KEY_PROPERTY},
        )
        if answer.status == 404:
            return None
        return self._deal_remote(str(self._data(answer)["id"]), False)

    def _associate(self, from_type: str, from_id: str, to_type: str, to_id: str, type_id: int) -> None:
        self._do(
            "PUT",
            paths.ASSOCIATION,
            params={
                "objectType": from_type,
                "objectId": from_id,
                "toObjectType": to_type,
                "toObjectId": to_id,
            },
            body=[{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": type_id}],
        )

    # -- tasks and activities ---------------------------------------------------------------------
    def create_task(self, marker: str, task: TaskData, contact: Remote | None, deal: Remote | None) -> Remote:
        body = {
            "properties": mappers.task_properties(marker, task, task.owner or self.owner_id),
            "associations": mappers.associations(
                (contact.id if contact else None, mappers.TASK_TO_CONTACT),
                (deal.id if deal else None, mappers.TASK_TO_DEAL),
            ),
        }
        data = self._do("POST", paths.OBJECT, params={"objectType": "tasks"}, body=body)
        return Remote(str(data["id"]), None, "task", True)

    def log_activity(
        self,
        marker: str,
        activity: ActivityData,
        contact: Remote | None,
        deal: Remote | None,
        existing: Remote | None,
    ) -> Remote:
        kind = activity.kind if activity.kind in mappers.ACTIVITY_OBJECT else "note"
        object_type = mappers.ACTIVITY_OBJECT[kind]
        if object_type == "calls":
            props = mappers.call_properties(marker, activity)
        else:
            props = mappers.note_properties(marker, activity)
        if existing is not None:
            answer = self._call(
                "PATCH",
                paths.OBJECT_BY_ID,
                params={"objectType": object_type, "objectId": existing.id},
                body={"properties": props},
            )
            if answer.status == 404:
                log.warning("HubSpot %s %s was deleted; not updated", object_type[:-1], existing.id)
                return existing
            self._data(answer)
            return Remote(existing.id, existing.url, activity.kind, False)
        body = {
            "properties": props,
            "associations": mappers.activity_associations(
                kind, contact.id if contact else None, deal.id if deal else None
            ),
        }
        data = self._do("POST", paths.OBJECT, params={"objectType": object_type}, body=body)
        return Remote(str(data["id"]), None, activity.kind, True)

    def create_records(self, records: list[NewRecord]) -> list[Remote | JobError]:
        """Deals, tasks, calls and notes of many leads: one ``batch/create`` per object type.

        Each answer lines up with ``records``: the created record, or the error that kept it from
        being created (a 207's failed inputs). An error for the whole request is raised; a
        ``TransientError`` then means some records may exist (look them up by marker).
        """
        out: dict[int, Remote | JobError] = {}
        by_type: dict[str, list[int]] = {}
        for i, record in enumerate(records):
            by_type.setdefault(batch.object_type(record), []).append(i)
        if "deals" in by_type:
            self._deal_schema()
        for otype, indexes in by_type.items():
            for part in batch.chunks(indexes):
                out.update(self._create_batch(otype, [(i, records[i]) for i in part]))
        return [out[i] for i in range(len(records))]

    def _batch_deal_properties(self, record: NewRecord, deal: DealData) -> dict[str, str]:
        pipeline = deal.pipeline or self.pipeline
        self._check_stage(pipeline, deal.stage)
        owner = deal.owner or self.owner_id
        return mappers.deal_properties(deal, record.marker, pipeline, owner, create=True)

    def _create_batch(self, otype: str, items: list[tuple[int, NewRecord]]) -> dict[int, Remote | JobError]:
        inputs = [batch.create_input(r, self._batch_deal_properties, self.owner_id) for _, r in items]
        answer = self._call("POST", paths.BATCH_CREATE, params={"objectType": otype}, body={"inputs": inputs})
        if answer.status == 207:
            data = mappers.parse_json(answer.body)
            data = data if isinstance(data, dict) else {}
        else:
            data = self._data(answer)
        markers = {r.marker for _, r in items}
        made: dict[str, str] = {}
        for row in data.get("results") or []:
            marker = batch.marker_of(otype, row, markers)
            if marker is not None and row.get("id") is not None:
                made[marker] = str(row["id"])
        refused: dict[str, JobError] = {}
        for error in data.get("errors") or []:
            if not isinstance(error, dict):
                continue
            message = mappers.clean_message(str(error.get("message") or "refused"))
            category = str(error.get("category") or "") or None
            context = error.get("context") or {}
            traces = [error.get("objectWriteTraceId"), *(context.get("objectWriteTraceId") or [])]
            for trace in traces:
                if isinstance(trace, str) and trace in markers:
                    refused[trace] = Rejected(
                        f"{VENDOR} did not create the {otype[:-1]}: {message}", code=category
                    )
        out: dict[int, Remote | JobError] = {}
        for i, record in items:
            oid = made.get(record.marker)
            if oid is not None:
                url = mappers.record_url(self.portal_id, mappers.DEAL_TYPE_ID, oid)
                out[i] = Remote(oid, url if otype == "deals" else None, record.kind, True)
            elif answer.status == 207 and record.marker in refused:
                out[i] = refused[record.marker]
            else:
                # Not in the answer and not named as refused: it may exist; the caller looks it up.
                out[i] = TransientError(f"{VENDOR} did not say whether the {otype[:-1]} was created")
        return out

    def find_record(self, kind: str, marker: str) -> Remote | None:
        """The record an interrupted create may have left, by its marker (used only after one)."""
        object_type = mappers.KIND_OBJECT.get(kind)
        if object_type is None:
            return None
        if object_type == "deals":
            self._deal_schema()
            return self._deal_by_key(marker)
        prop = mappers.MARKER_PROPERTY[object_type]
        data = self._do(
            "POST",
            paths.SEARCH,
            params={"objectType": object_type},
            body=mappers.marker_search(object_type, marker),
            search=True,
        )
        for row in data.get("results", []):
            if marker in str((row.get("properties") or {}).get(prop) or ""):
                return Remote(str(row["id"]), None, kind, False)
        return None

    # -- check ------------------------------------------------------------------------------------
    def check(self) -> CheckResult:
        host = urlsplit(self.base_url).netloc
        details: list[str] = []
        try:
            self._contact_schema(force=True)
            details.append(f"contacts are upserted by the unique property {self.phone_property} (present)")
            details.append(f"opt-outs are recorded in {mappers.OPTED_OUT_PROPERTY} and hs_lead_status")
            self._deal_schema(force=True)
            details.append(f"deals carry the unique property {mappers.DEAL_KEY_PROPERTY} (present)")
            pipelines = self._pipelines(force=True)
            found = pipelines.get(self.pipeline)
            if found is None:
                listed = ", ".join(pipelines) or "none"
                return CheckResult(
                    False, f"HubSpot has no deal pipeline {self.pipeline!r} (pipelines: {listed})", details
                )
            stages = ", ".join(sid for sid, _ in found["stages"])
            details.append(f"pipeline {self.pipeline!r} ({found['label']}) has stages: {stages}")
            if self.owner_id:
                answer = self._call("GET", paths.OWNER, params={"ownerId": self.owner_id})
                if answer.status == 404:
                    return CheckResult(False, f"HubSpot has no owner with id {self.owner_id}", details)
                owner = self._data(answer)
                details.append(f"tasks and deals go to owner {self.owner_id} ({owner.get('email', '?')})")
        except _Expired:
            return CheckResult(False, "HubSpot says the access token expired: create a new token", details)
        except AuthError as exc:
            return CheckResult(False, f"HubSpot rejected the credentials: {exc}", details)
        except ConnectorConfigError as exc:
            return CheckResult(False, str(exc), details)
        except RateLimited as exc:
            return CheckResult(
                False, f"HubSpot is rate limiting this account; try again in {exc.retry_after:.0f} s", details
            )
        except TransientError as exc:
            return CheckResult(False, f"HubSpot at {host} could not be reached or failed: {exc}", details)
        except Rejected as exc:
            return CheckResult(False, f"HubSpot refused a check request: {exc}", details)
        auth = "a private app / service key token" if self._static_token else "OAuth (token refreshed)"
        return CheckResult(True, f"connected to HubSpot at {host} with {auth}", details)
