"""A local Google Calendar v3 emulator for the real ``google-api-python-client`` and ``google-auth``.

Google side (point the client at it with ``client_options={"api_endpoint": f"{url}/calendar/v3/"}``):

- ``POST /token``: OAuth 2.0 token endpoint (service-account JWT bearer and refresh-token grants);
- ``POST /calendar/v3/freeBusy``;
- ``GET|POST /calendar/v3/calendars/{calendarId}/events`` and
  ``GET|PATCH|DELETE /calendar/v3/calendars/{calendarId}/events/{eventId}``.

Emulator side (besides ``/_emulator/requests|state|faults|reset|health`` from :class:`EmulatorApp`):

- ``GET|POST /_emulator/config``: auth switches, token expiry/revocation, busy seeds, extra calendars;
- ``GET /_emulator/service-account``: the sandbox service-account info with ``token_uri`` set to this
  emulator, for processes other than the emulator's own (the sandbox key is generated per process).

State lives in memory and is guarded by ``emulator.lock``.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Iterable
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfoNotFoundError

from flask import Response, jsonify, request

from connectors.emulator.base import EmulatorApp, Hosted, serve_foreground
from connectors.google_calendar.emulator_auth import (
    SANDBOX_OAUTH,
    SANDBOX_SERVICE_ACCOUNT,
    SANDBOX_USER_EMAIL,
    GrantError,
    Identity,
    TokenAuthority,
    service_account_info,
)
from connectors.google_calendar.emulator_model import (
    ApiError,
    Calendar,
    not_found,
    now_rfc3339,
    parse_rfc3339,
    rfc3339,
    time_range_empty,
    zone,
)

__all__ = [
    "SANDBOX_OAUTH",
    "SANDBOX_SERVICE_ACCOUNT",
    "GoogleCalendarEmulator",
    "run",
    "service_account_info",
]

log = logging.getLogger(__name__)

_API = "/calendar/v3"
_UNAUTHENTICATED = (
    "Request had invalid authentication credentials. Expected OAuth 2 access token, "
    "login cookie or other valid authentication credential. See "
    "https://developers.google.com/identity/sign-in/web/devconsole-project."
)
_DEFAULTS: dict[str, Any] = {"require_auth": True, "service_account_can_invite": False}
_MAX_CALENDARS = 50  # FreeBusyRequest.calendarExpansionMax upper bound


def _unauthenticated() -> ApiError:
    return ApiError(
        401,
        "authError",
        _UNAUTHENTICATED,
        status="UNAUTHENTICATED",
        detail_message="Invalid Credentials",
        location="Authorization",
        locationType="header",
    )


def _insufficient_scopes() -> ApiError:
    return ApiError(
        403,
        "insufficientPermissions",
        "Request had insufficient authentication scopes.",
        status="PERMISSION_DENIED",
        detail_message="Insufficient Permission",
    )


def _forbidden_for_service_accounts() -> ApiError:
    return ApiError(
        403,
        "forbiddenForServiceAccounts",
        "Service accounts cannot invite attendees without Domain-Wide Delegation of Authority.",
        domain="calendar",
    )


class GoogleCalendarEmulator(Hosted):
    """Google Calendar on 127.0.0.1: serve ``.app`` (e.g. with ``serve_in_thread``)."""

    def __init__(self, calendars: Iterable[str] = ("primary",), time_zone: str = "America/Chicago") -> None:
        zone(time_zone)  # fail at construction, not on the first request
        self.time_zone = time_zone
        self.calendar_ids = list(calendars)
        self.calendars: dict[str, Calendar] = {}
        self.auth = TokenAuthority()
        self.config: dict[str, Any] = dict(_DEFAULTS)
        self.emulator = EmulatorApp("google_calendar", state=self._state, reset=self._reset)
        self._reset()
        self._install()

    # -- shared-surface callbacks (called under the lock) --------------------------------------
    def _state(self) -> dict[str, Any]:
        return {
            "events": {cid: [dict(e) for e in cal.events.values()] for cid, cal in self.calendars.items()},
            "tokens_issued": dict(self.auth.issued),
            "subjects": list(self.auth.subjects),
            "busy": {
                cid: [{"start": rfc3339(s), "end": rfc3339(e)} for s, e in cal.busy_seeds]
                for cid, cal in self.calendars.items()
                if cal.busy_seeds
            },
            "config": self._config_view(),
        }

    def _reset(self) -> None:
        self.calendars = {cid: Calendar(cid, self.time_zone, SANDBOX_USER_EMAIL) for cid in self.calendar_ids}
        self.config = dict(_DEFAULTS)
        self.auth.reset()

    def _config_view(self) -> dict[str, Any]:
        return {
            **self.config,
            "revoked": self.auth.revoked,
            "token_ttl": self.auth.token_ttl,
            "calendars": list(self.calendars),
        }

    # -- routing --------------------------------------------------------------------------------
    def _install(self) -> None:
        app = self.app
        app.add_url_rule("/token", view_func=self._token, methods=["POST"])
        app.add_url_rule(f"{_API}/freeBusy", view_func=self._freebusy, methods=["POST"])
        app.add_url_rule(
            f"{_API}/calendars/<calendar_id>/events", view_func=self._events, methods=["GET", "POST"]
        )
        app.add_url_rule(
            f"{_API}/calendars/<calendar_id>/events/<event_id>",
            view_func=self._event,
            methods=["GET", "PATCH", "DELETE"],
        )
        app.add_url_rule("/_emulator/config", view_func=self._config_route, methods=["GET", "POST"])
        app.add_url_rule("/_emulator/service-account", view_func=self._service_account, methods=["GET"])
        app.register_error_handler(ApiError, self._api_error)

    @staticmethod
    def _api_error(exc: ApiError) -> tuple[Response, int]:
        response = jsonify(exc.body())
        if exc.code == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="https://accounts.google.com/"'
        return response, exc.code

    def _identify(self, scope_key: str) -> Identity:
        """Who is calling (under the lock), or the 401/403 Google would answer."""
        identity = self.auth.identify(request.headers.get("Authorization"))
        if identity is None:
            if self.config["require_auth"]:
                raise _unauthenticated()
            identity = Identity("anonymous", SANDBOX_USER_EMAIL)
        if not identity.allows(scope_key):
            raise _insufficient_scopes()
        return identity

    def _calendar(self, calendar_id: str) -> Calendar:
        calendar = self.calendars.get(calendar_id)
        if calendar is None:
            raise not_found()
        return calendar

    @staticmethod
    def _body() -> dict[str, Any]:
        body = request.get_json(silent=True, force=True) if request.get_data() else {}
        if not isinstance(body, dict):
            raise ApiError(400, "parseError", "Parse Error")
        return body

    def _check_invite(self, identity: Identity, body: dict[str, Any]) -> None:
        can_invite = self.config["service_account_can_invite"]
        if body.get("attendees") and identity.is_service_account and not can_invite:
            raise _forbidden_for_service_accounts()

    # -- OAuth ----------------------------------------------------------------------------------
    def _token(self) -> tuple[Response, int]:
        form = request.form.to_dict()
        auth = request.authorization
        basic = None
        if auth is not None and auth.type == "basic":
            basic = (str(auth.username or ""), str(auth.password or ""))
        with self.lock:
            try:
                return jsonify(self.auth.grant(form, basic)), 200
            except GrantError as exc:
                return jsonify(exc.body()), exc.status

    # -- Calendar API ---------------------------------------------------------------------------
    def _freebusy(self) -> Response:
        with self.lock:
            self._identify("freebusy.query")  # Google authenticates before it looks at the body
        body = self._body()
        for name in ("timeMin", "timeMax"):
            if not body.get(name):
                raise ApiError(400, "required", f"Missing {name} parameter.")
        time_min = parse_rfc3339(body["timeMin"], "timeMin")
        time_max = parse_rfc3339(body["timeMax"], "timeMax")
        if time_min >= time_max:
            raise time_range_empty("timeMax")
        try:
            tz = zone(str(body.get("timeZone") or "UTC"))
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ApiError(400, "invalid", "Invalid value for: timeZone") from exc
        items = body.get("items") or []
        if len(items) > _MAX_CALENDARS:
            raise ApiError(
                400,
                "tooManyCalendarsRequested",
                "The number of calendars requested is too large for a single query.",
                domain="calendar",
            )
        calendars: dict[str, Any] = {}
        with self.lock:
            for item in items:
                cid = str((item or {}).get("id") or "")
                calendar = self.calendars.get(cid)
                if calendar is None:
                    calendars[cid] = {"errors": [{"domain": "global", "reason": "notFound"}], "busy": []}
                    continue
                calendars[cid] = {
                    "busy": [
                        {"start": rfc3339(s, tz), "end": rfc3339(e, tz)}
                        for s, e in calendar.busy(time_min, time_max)
                    ]
                }
        return jsonify(
            {
                "kind": "calendar#freeBusy",
                "timeMin": rfc3339(time_min, millis=True),
                "timeMax": rfc3339(time_max, millis=True),
                "calendars": calendars,
            }
        )

    def _events(self, calendar_id: str) -> Response:
        if request.method == "POST":
            with self.lock:
                identity = self._identify("events.write")
                body = self._body()
                calendar = self._calendar(calendar_id)
                self._check_invite(identity, body)
                return jsonify(calendar.insert(body, identity.subject or identity.email))
        args = request.args.to_dict(flat=False)
        try:
            max_results = min(int((args.get("maxResults") or ["250"])[-1]), 2500)
            offset = int(base64.urlsafe_b64decode((args.get("pageToken") or ["MA=="])[-1]).decode())
        except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
            raise ApiError(400, "invalid", "Invalid value for: maxResults or pageToken") from exc
        if max_results < 1 or offset < 0:
            raise ApiError(400, "invalid", "Invalid value for: maxResults or pageToken")
        with self.lock:
            self._identify("events.read")
            calendar = self._calendar(calendar_id)
            items = calendar.matching(args)
            page = [dict(e) for e in items[offset : offset + max_results]]
            updated = max((e["updated"] for e in calendar.events.values()), default=now_rfc3339())
        result: dict[str, Any] = {
            "kind": "calendar#events",
            "etag": f'"{int(datetime.fromisoformat(updated).timestamp() * 1_000_000)}"',
            "summary": calendar.email if calendar_id == "primary" else calendar_id,
            "description": "",
            "updated": updated,
            "timeZone": (args.get("timeZone") or [calendar.time_zone])[-1],
            "accessRole": "owner",
            "defaultReminders": [],
            "items": page,
        }
        if offset + max_results < len(items):
            result["nextPageToken"] = base64.urlsafe_b64encode(str(offset + max_results).encode()).decode()
        return jsonify(result)

    def _event(self, calendar_id: str, event_id: str) -> Response | tuple[str, int]:
        if request.method == "GET":
            with self.lock:
                self._identify("events.read")
                return jsonify(self._calendar(calendar_id).get(event_id))
        with self.lock:
            identity = self._identify("events.write")
            body = self._body() if request.method == "PATCH" else {}
            calendar = self._calendar(calendar_id)
            if request.method == "DELETE":
                calendar.delete(event_id)
                return "", 204
            self._check_invite(identity, body)
            return jsonify(calendar.patch(event_id, body))

    # -- emulator controls ----------------------------------------------------------------------
    def _config_route(self) -> tuple[Response, int]:
        if request.method == "GET":
            with self.lock:
                return jsonify(self._config_view()), 200
        spec = request.get_json(silent=True)
        if not isinstance(spec, dict):
            return jsonify({"error": "config must be a JSON object"}), 400
        known = {
            "require_auth",
            "service_account_can_invite",
            "expire_tokens",
            "revoke",
            "busy",
            "calendars",
            "token_ttl",
        }
        if unknown := set(spec) - known:
            return jsonify({"error": f"unknown config keys {sorted(unknown)}; known: {sorted(known)}"}), 400
        try:
            with self.lock:
                self._apply_config(spec)
                return jsonify({"ok": True, "config": self._config_view()}), 200
        except (ApiError, TypeError, ValueError, KeyError) as exc:
            return jsonify({"error": f"bad config: {exc}"}), 400

    def _apply_config(self, spec: dict[str, Any]) -> None:
        for cid in spec.get("calendars") or []:
            self.calendars.setdefault(str(cid), Calendar(str(cid), self.time_zone, SANDBOX_USER_EMAIL))
        seeds = {}
        for cid, blocks in (spec.get("busy") or {}).items():
            if cid not in self.calendars:
                raise ValueError(f"unknown calendar {cid!r} (add it with 'calendars')")
            seeds[cid] = [
                (parse_rfc3339(b["start"], "start"), parse_rfc3339(b["end"], "end")) for b in blocks
            ]
        for cid, intervals in seeds.items():  # applied only once every block parsed
            self.calendars[cid].busy_seeds = intervals
        for key in ("require_auth", "service_account_can_invite"):
            if key in spec:
                self.config[key] = bool(spec[key])
        if "token_ttl" in spec:
            self.auth.token_ttl = int(spec["token_ttl"])
        if "revoke" in spec:
            self.auth.revoke(bool(spec["revoke"]))
        if spec.get("expire_tokens"):
            self.auth.expire_all()

    def _service_account(self) -> Response:
        return jsonify(service_account_info(request.host_url.rstrip("/") + "/token"))


def run(host: str, port: int) -> None:
    """Serve in the foreground (werkzeug threaded server) until Ctrl-C."""
    emulator = GoogleCalendarEmulator()
    log.info("Google Calendar emulator on http://%s:%s (token endpoint /token, API %s/)", host, port, _API)
    serve_foreground(emulator.app, host, port)


if __name__ == "__main__":  # pragma: no cover
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8795)
    options = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    run(options.host, options.port)
