"""Google Calendar: free/busy for bookable slots, and bookings as events with deterministic ids.

- The client is google-api-python-client with the Calendar discovery document it ships: nothing is
  fetched at run time, and the document is read and parsed once per process. Every call is
  ``execute(num_retries=0)`` because the outbox owns retries; httplib2 carries ``context.timeout``.
- Auth: a service account (optionally acting for a Workspace user through domain-wide delegation), or
  OAuth user credentials. Tokens are minted by this module through google-auth's grant functions
  with retries off. A service account's private key is parsed once per process (the signer is
  immutable, so connectors share it); its tokens stay per connector. OAuth access tokens live in the
  shared :class:`~core.connector_state.TokenStore` so that many workers refreshing at once cause one
  call to Google's token endpoint; a 401 refreshes once (naming the rejected token) and replays the
  call once.
- Bookings: the event id is base32hex of SHA-1 of the booking key, so a retried insert answers 409
  ``duplicate``, which counts as success (the existing event is returned).
"""

from __future__ import annotations

import functools
import hashlib
import http.client
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import google_auth_httplib2
import httplib2
from google.auth import credentials as google_credentials
from google.auth import crypt, jwt
from google.auth.exceptions import GoogleAuthError, RefreshError, TransportError
from google.oauth2 import _client as oauth_client
from googleapiclient import discovery_cache
from googleapiclient import errors as api_errors
from googleapiclient.discovery import build_from_document, fix_method_name

from connectors import http_errors
from connectors import manifest as manifest_mod
from connectors.base import Connector, ConnectorContext
from connectors.google_calendar import mappers
from core.crm import BookingData, CheckResult, Remote, Slot
from core.errors import AuthError, ConnectorConfigError, JobError, Rejected, TransientError

MANIFEST = Path(__file__).resolve().parents[2] / "manifests" / "google_calendar.yaml"
VENDOR = mappers.VENDOR
SCOPES = (
    "https://www.googleapis.com/auth/calendar.events",
    "https://www.googleapis.com/auth/calendar.freebusy",
)
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"  # noqa: S105 (a URL, not a secret)
# Refresh a little before Google's own "stale" threshold (3 min 45 s), so a stored token handed to
# google-auth is never one it considers expired.
TOKEN_MARGIN = timedelta(minutes=5)
AUTH_KINDS = ("service_account", "oauth")

Mint = Callable[[Any, "str | None"], "tuple[str, datetime | None]"]


@functools.cache
def _allowed_hosts() -> tuple[str, ...]:
    return manifest_mod.load(MANIFEST).allowed_hosts


# Parsed private keys kept per process: a handful of businesses share a worker, so a small bound is
# plenty, and an LRU keeps a rotated-away key from living forever.
_SIGNER_CACHE_SIZE = 16
_signers: OrderedDict[str, crypt.Signer] = OrderedDict()
_signers_lock = threading.Lock()


def _signer(info: Mapping[str, Any]) -> crypt.Signer:
    """The key file's signer, parsed once per process (parsing and validating an RSA key costs ~50 ms).

    A signer is immutable, so connectors and threads may share it; tokens are not shared (each
    connector's credentials mint and hold their own). The cache is keyed by a digest of the key, so
    it keeps no second copy of the key's text, and a changed key is parsed afresh. Parse failures are
    not cached.
    """
    digest = hashlib.sha256(repr((info.get("private_key_id"), info.get("private_key"))).encode()).hexdigest()
    # Parse under the lock: twenty workers starting at once then wait for one parse instead of
    # each doing their own.
    with _signers_lock:
        signer = _signers.get(digest)
        if signer is None:
            signer = crypt.RSASigner.from_service_account_info(info)
            _signers[digest] = signer
            if len(_signers) > _SIGNER_CACHE_SIZE:
                _signers.popitem(last=False)
        else:
            _signers.move_to_end(digest)
        return signer


_discovery_lock = threading.Lock()
_discovery: dict[str, Any] | None = None


def _calendar_discovery() -> dict[str, Any]:
    """The shipped Calendar v3 discovery document, read and parsed once per process.

    Every thread's client is built from this one dict. The client library adds its own parameters
    to each method's description the first time it builds that method (inserting keys into
    shared dicts, which would break a thread iterating them), so every resource is built once here,
    before the dict is handed out; later builds only overwrite those keys with equal values.
    """
    global _discovery
    with _discovery_lock:
        if _discovery is None:
            content = discovery_cache.get_static_doc("calendar", "v3")
            if not content:  # pragma: no cover (the document ships with google-api-python-client)
                raise ConnectorConfigError("google-api-python-client ships no Calendar v3 discovery document")
            doc: dict[str, Any] = json.loads(content)
            _build_every_resource(build_from_document(doc, http=httplib2.Http()), doc)
            _discovery = doc
        return _discovery


def _build_every_resource(resource: Any, description: Mapping[str, Any]) -> None:
    for name, nested in description.get("resources", {}).items():
        _build_every_resource(getattr(resource, fix_method_name(name))(), nested)


def _naive_utc(moment: datetime | None) -> datetime | None:
    """google-auth compares expiries with a naive UTC clock."""
    if moment is None:
        return None
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


class _MintedCredentials(google_credentials.Credentials):
    """Bearer credentials whose tokens come from the connector's ``mint`` (no hidden retries)."""

    def __init__(self, mint: Mint) -> None:
        super().__init__()
        self._mint = mint
        self._lock = threading.Lock()

    def refresh(self, request: Any) -> None:
        with self._lock:
            if self.valid:  # another thread refreshed while this one waited
                return
            self._store(*self._mint(request, None))

    def replace_rejected(self, request: Any, rejected: str | None) -> None:
        """After a 401: get a token other than ``rejected`` (refreshing unless someone already did)."""
        with self._lock:
            if self.token and self.token != rejected and self.valid:
                return
            self._store(*self._mint(request, rejected))

    def forget(self, rejected: str | None) -> None:
        """Drop a token the API rejected, so the next call mints a new one."""
        with self._lock:
            if rejected is not None and self.token == rejected:
                self.token = None

    def _store(self, token: str, expiry: datetime | None) -> None:
        self.token = token
        self.expiry = _naive_utc(expiry)


class GoogleCalendarConnector(Connector):
    id = "google_calendar"
    MANIFEST = MANIFEST

    def __init__(self, config: Mapping[str, Any], context: ConnectorContext) -> None:
        super().__init__(config, context)
        cfg = self.config
        self.calendar_id = str(cfg.get("calendar_id") or "primary")
        kind = cfg.get("auth_kind") or ("oauth" if cfg.get("refresh_token") else "service_account")
        if kind not in AUTH_KINDS:
            raise ConnectorConfigError(f"auth_kind must be one of {', '.join(AUTH_KINDS)}, not {kind!r}")
        self.auth_kind: str = kind
        self.invite_attendees = bool(cfg.get("invite_attendees", False))
        self.delegated_subject = str(cfg.get("delegated_subject") or "") or None
        base = cfg.get("api_base_url")
        self._api_base = mappers.check_base_url(str(base), _allowed_hosts(), "api_base_url") if base else None
        token_uri = cfg.get("token_uri")
        self._token_uri = (
            mappers.check_base_url(str(token_uri), _allowed_hosts(), "token_uri") if token_uri else None
        )
        self._secrets = [
            str(cfg[k])
            for k in ("service_account_json", "client_id", "client_secret", "refresh_token")
            if cfg.get(k)
        ]
        self._refresh_token: str | None = str(cfg["refresh_token"]) if cfg.get("refresh_token") else None
        self._creds: _MintedCredentials | None = None
        self._creds_lock = threading.Lock()
        self._local = threading.local()

    # -- credentials ----------------------------------------------------------------------------
    def _credentials(self) -> _MintedCredentials:
        with self._creds_lock:
            if self._creds is None:
                mint = (
                    self._service_account_mint() if self.auth_kind == "service_account" else self._oauth_mint
                )
                self._creds = _MintedCredentials(mint)
            return self._creds

    def _service_account_mint(self) -> Mint:
        raw = self.config.get("service_account_json")
        if not raw:
            raise ConnectorConfigError("service_account_json is missing (paste the JSON key file's text)")
        try:
            info = json.loads(raw) if isinstance(raw, str | bytes) else dict(raw)
        except (ValueError, TypeError):
            raise ConnectorConfigError(
                "service_account_json is not JSON (paste the key file's text)"
            ) from None
        if not isinstance(info, dict) or not info.get("client_email") or not info.get("private_key"):
            raise ConnectorConfigError(
                "service_account_json is not a Google service-account key (it needs client_email and "
                "private_key; create a JSON key for the service account in the Cloud console)"
            )
        private_key = str(info["private_key"])
        self._secrets.append(private_key)
        try:
            signer = _signer(info)
        except (ValueError, TypeError, GoogleAuthError):
            raise ConnectorConfigError("the private key in service_account_json cannot be read") from None
        email = str(info["client_email"])
        token_uri = self._token_uri or mappers.check_base_url(
            str(info.get("token_uri") or GOOGLE_TOKEN_URI), _allowed_hosts(), "the key file's token_uri"
        )
        subject = self.delegated_subject

        def mint(request: Any, _rejected: str | None) -> tuple[str, datetime | None]:
            now = int(time.time())
            claims: dict[str, Any] = {
                "iss": email,
                "scope": " ".join(SCOPES),
                "aud": token_uri,
                "iat": now,
                "exp": now + 3600,
            }
            if subject:
                claims["sub"] = subject
            assertion = jwt.encode(signer, claims)
            access, expiry, _ = self._grant(
                lambda: oauth_client.jwt_grant(request, token_uri, assertion, can_retry=False), oauth=False
            )
            return access, expiry.replace(tzinfo=UTC) if expiry else None

        return mint

    def _oauth_mint(self, request: Any, rejected: str | None) -> tuple[str, datetime | None]:
        store = self.context.tokens
        if store is None:  # no shared store (kit tests, one-off checks): refresh in memory
            access, expires_in, new_refresh = self._refresh_grant(request, None)
            if new_refresh:
                self._refresh_token = new_refresh
            return access, datetime.now(UTC) + timedelta(seconds=expires_in)
        if rejected is None:
            token = store.valid(TOKEN_MARGIN)
            if token is not None:
                return token.access_token, token.expires_at
        token = store.refresh(
            lambda stored: self._refresh_grant(request, stored), stale=rejected, margin=TOKEN_MARGIN
        )
        return token.access_token, token.expires_at

    def _refresh_grant(self, request: Any, stored: str | None) -> tuple[str, int, str | None]:
        """The refresh_token grant: ``(access_token, expires_in, new_refresh_token_or_None)``.

        Tries the stored refresh token (it may have been rotated), then the configured one (an admin
        may have reconnected since).
        """
        client_id = self.config.get("client_id")
        client_secret = self.config.get("client_secret")
        candidates = [t for t in dict.fromkeys([stored, self._refresh_token]) if t]
        if not client_id or not client_secret or not candidates:
            raise ConnectorConfigError("OAuth needs client_id, client_secret and refresh_token")
        token_uri = self._token_uri or GOOGLE_TOKEN_URI
        for i, refresh_token in enumerate(candidates):
            try:
                grant = functools.partial(
                    oauth_client.refresh_grant,
                    request,
                    token_uri,
                    refresh_token,
                    client_id,
                    client_secret,
                    can_retry=False,
                )
                access, _, _, data = self._grant(grant, oauth=True)
            except AuthError as exc:
                if exc.code == "invalid_grant" and i + 1 < len(candidates):
                    continue
                raise
            expires_in = int(data.get("expires_in") or 3600) if isinstance(data, dict) else 3600
            rotated = data.get("refresh_token") if isinstance(data, dict) else None
            if rotated is None and refresh_token != stored:
                rotated = refresh_token  # remember the configured token that worked
            return access, expires_in, rotated
        raise AssertionError("unreachable")  # pragma: no cover

    def _grant(self, call: Callable[[], Any], *, oauth: bool) -> Any:
        """One token-endpoint request, with its failures mapped onto core.errors."""
        self.api_calls += 1
        try:
            return call()
        except RefreshError as exc:
            data = exc.args[1] if len(exc.args) > 1 else (exc.args[0] if exc.args else None)
            raise mappers.grant_error(
                data, bool(getattr(exc, "retryable", False)), oauth=oauth, secrets=self._secrets
            ) from None
        except (TransportError, httplib2.HttpLib2Error, http.client.HTTPException, OSError) as exc:
            raise http_errors.network_error("Google's token endpoint", exc) from None
        except (KeyError, TypeError, ValueError):
            raise TransientError("Google's token endpoint answered without an access token") from None

    # -- HTTP -----------------------------------------------------------------------------------
    def _service(self) -> Any:
        """The API client of this thread (httplib2 connections are not shared between threads)."""
        service = getattr(self._local, "service", None)
        if service is None:
            raw = httplib2.Http(timeout=self.context.timeout)
            # refresh_status_codes=(): no hidden refresh-and-replay on 401; _call decides.
            authed = google_auth_httplib2.AuthorizedHttp(
                self._credentials(), http=raw, refresh_status_codes=()
            )
            options = {"api_endpoint": f"{self._api_base}/calendar/v3/"} if self._api_base else None
            service = build_from_document(_calendar_discovery(), http=authed, client_options=options)
            self._local.service = service
            self._local.raw = raw
        return service

    def _call(
        self,
        make: Callable[[Any], Any],
        operation: str,
        *,
        missing_calendar: bool = False,
        gone_ok: bool = False,
        expect_object: bool = True,
    ) -> Any:
        service = self._service()
        replayed = False
        while True:
            self.context.throttle(1)
            self.api_calls += 1
            try:
                answer = make(service).execute(num_retries=0)
            except api_errors.HttpError as exc:
                status = int(exc.resp.status)
                if status == 401:
                    creds = self._credentials()
                    if self.auth_kind == "oauth" and not replayed:
                        # Refresh once, naming the rejected token (other workers may have refreshed
                        # it already), and replay the call once.
                        replayed = True
                        creds.replace_rejected(google_auth_httplib2.Request(self._local.raw), creds.token)
                        continue
                    creds.forget(creds.token)  # a service account mints afresh on the next job
                if gone_ok and status in (404, 410):
                    return None
                headers = {str(k): str(v) for k, v in dict(exc.resp).items()}
                raise mappers.api_error(
                    status,
                    headers,
                    exc.content,
                    calendar_id=self.calendar_id,
                    operation=operation,
                    missing_calendar=missing_calendar,
                    secrets=self._secrets,
                ) from None
            except JobError:
                raise
            except (TransportError, httplib2.HttpLib2Error, http.client.HTTPException, OSError) as exc:
                raise http_errors.network_error(VENDOR, exc) from None
            except (ValueError, api_errors.Error):
                answer = "(unreadable)"
            # The client hands back the text of a 2xx body that is not JSON (an HTML page from a
            # proxy): that is not success. Only a delete may answer with nothing.
            if isinstance(answer, dict) or (not expect_object and answer in ("", None, {})):
                return answer
            raise TransientError(
                f"{VENDOR} {operation}: a success status, but the body is not the API's JSON: "
                f"{http_errors.describe(answer if isinstance(answer, str | bytes) else repr(answer))}"
            )

    # -- capabilities ---------------------------------------------------------------------------
    def free_busy(self, start: datetime, end: datetime) -> list[Slot]:
        """Busy intervals (UTC) of the configured calendar between ``start`` and ``end``."""
        body = mappers.freebusy_body(self.calendar_id, start, end)
        answer = self._call(lambda s: s.freebusy().query(body=body), "freeBusy.query", missing_calendar=True)
        return mappers.busy_slots(answer, self.calendar_id)

    def create_booking(self, booking: BookingData, contact: Remote | None) -> Remote:
        body = mappers.event_body(booking, self.invite_attendees)
        event_id = body["id"]
        cal = self.calendar_id
        try:
            event = self._call(
                lambda s: s.events().insert(calendarId=cal, body=body, sendUpdates="none"),
                "events.insert",
                missing_calendar=True,
            )
            created = True
        except Rejected as exc:
            if exc.code != "duplicate":
                raise
            # A retry (or a concurrent worker) already made it: the deterministic id finds it.
            event = self._call(lambda s: s.events().get(calendarId=cal, eventId=event_id), "events.get")
            created = False
            if isinstance(event, dict) and event.get("status") == "cancelled":
                # Booked again after a cancellation: Google keeps the id, so restore the event.
                restore = {key: body[key] for key in ("summary", "description", "start", "end")}
                restore["status"] = "confirmed"
                event = self._call(
                    lambda s: s.events().patch(
                        calendarId=cal, eventId=event_id, body=restore, sendUpdates="none"
                    ),
                    "events.patch",
                )
        event_ref, link = mappers.remote(event)
        return Remote(id=event_ref, url=link, kind="event", created=created)

    def move_booking(self, remote: Remote, booking: BookingData) -> Remote:
        body = mappers.times(booking)
        cal = self.calendar_id
        event = self._call(
            lambda s: s.events().patch(calendarId=cal, eventId=remote.id, body=body, sendUpdates="none"),
            "events.patch",
        )
        event_ref, link = mappers.remote(event)
        if event.get("status") == "cancelled":
            raise Rejected(
                f"{VENDOR}: the event was cancelled in the calendar, so it cannot be moved; book again"
            )
        return Remote(id=event_ref, url=link, kind="event", created=False)

    def cancel_booking(self, remote: Remote) -> None:
        cal = self.calendar_id
        self._call(
            lambda s: s.events().delete(calendarId=cal, eventId=remote.id, sendUpdates="none"),
            "events.delete",
            gone_ok=True,
            expect_object=False,
        )

    def check(self) -> CheckResult:
        details = [
            f"auth: {self.auth_kind}"
            + (f" acting for {self.delegated_subject}" if self.delegated_subject else ""),
            f"calendar: {self.calendar_id}",
            f"attendee invites: {'on' if self.invite_attendees else 'off'}",
        ]
        now = datetime.now(UTC)
        try:
            busy = self.free_busy(now, now + timedelta(hours=1))
        except JobError as exc:
            return CheckResult(False, f"Google Calendar check failed: {exc}", details)
        return CheckResult(
            True,
            f"Google Calendar answered for calendar {self.calendar_id!r} "
            f"({len(busy)} busy block(s) in the next hour)",
            [*details, "write access is confirmed by the first booking"],
        )
