"""A local Salesforce org: the REST API and OAuth endpoints simple-salesforce talks to.

Point the real SDK at it with :func:`connectors.salesforce.loopback.loopback_session` (the SDK
hard-codes ``https://``). Salesforce side:

- ``POST /services/oauth2/token`` (client credentials, JWT bearer, authorization code, refresh token),
  ``GET /services/oauth2/authorize`` (auto-approves), ``POST /services/oauth2/revoke``;
- ``/services/data/`` (versions) and, under ``/services/data/vNN.N/``: ``sobjects`` (create, read,
  update, delete, describe, upsert and read by external id), ``query``/``queryAll`` (SOQL subset),
  ``search`` (SOSL subset), ``composite`` and ``limits``.

Every API call needs a bearer token this emulator issued, counts against the daily allocation and
answers with ``Sforce-Limit-Info``. Emulator side (besides ``/_emulator/requests|state|faults|reset``):
``POST /_emulator/config`` (see :meth:`SalesforceEmulator._apply_config`) and ``POST /_emulator/token``
(mint a session id for the direct ``session_id`` mode without a grant).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any
from urllib.parse import unquote, urlsplit

from cryptography.hazmat.primitives.serialization import load_pem_public_key
from flask import Response, redirect, request

from connectors.emulator.base import EmulatorApp, Hosted, serve_foreground
from connectors.salesforce.emulator_auth import OAuthServer
from connectors.salesforce.emulator_composite import run_composite
from connectors.salesforce.emulator_query import run_soql
from connectors.salesforce.emulator_schema import DEFAULT_DAILY_LIMIT, LATEST_VERSION
from connectors.salesforce.emulator_search import run_sosl
from connectors.salesforce.emulator_sobjects import MISSING, Result, allow, sobjects
from connectors.salesforce.emulator_store import SfError, Store, bad_request, error, not_found

log = logging.getLogger(__name__)

SANDBOX: dict[str, str] = {
    "client_id": "3MVG9textback.sandbox.ConnectedApp.ConsumerKey",
    "client_secret": "TEXTBACK-SANDBOX-CONSUMER-SECRET-0123456789",
    "username": "integration@textback-sandbox.example",
    "domain": "textback-sandbox.my",
    "instance_url": "https://textback-sandbox.my.salesforce.com",
    "redirect_uri": "http://127.0.0.1/oauth/salesforce/callback",
}
DEFAULT_EXTERNAL_ID_FIELDS: Mapping[str, Any] = MappingProxyType(
    {"Lead": "Phone_E164__c", "Contact": "Phone_E164__c"}
)
_VERSION = re.compile(r"^v(\d+\.\d+)$")
_CONFIG_KEYS = {
    "external_id_fields",
    "expire_sessions",
    "always_invalid_session",
    "revoke",
    "daily_limit",
    "api_usage",
    "search_index_delay_ms",
    "jwt_public_key",
    "client_id",
    "client_secret",
    "username",
}


def _json(status: int, body: Any, headers: Mapping[str, str] | None = None) -> Response:
    if status == 204 or body is None:
        return Response(status=status, headers=dict(headers or {}))
    return Response(
        json.dumps(body),
        status=status,
        headers=dict(headers or {}),
        content_type="application/json;charset=UTF-8",
    )


def _season(version: str) -> str:
    steps = int(float(version)) - 59  # v59.0 was Winter '24; three releases a year
    return f"{('Winter', 'Spring', 'Summer')[steps % 3]} '{24 + steps // 3:02d}"


class SalesforceEmulator(Hosted):
    """Salesforce on 127.0.0.1: serve ``.app`` (e.g. with ``serve_in_thread``)."""

    def __init__(
        self,
        external_id_fields: Mapping[str, Any] | None = DEFAULT_EXTERNAL_ID_FIELDS,
        daily_limit: int = DEFAULT_DAILY_LIMIT,
        sandbox: Mapping[str, str] | None = None,
    ) -> None:
        self.sandbox = {**SANDBOX, **(sandbox or {})}
        self._initial_external_ids = dict(external_id_fields or {})
        self._initial_daily_limit = daily_limit
        self.store = Store(self._initial_external_ids)
        self.oauth = OAuthServer(
            self.sandbox["client_id"],
            self.sandbox["client_secret"],
            self.sandbox["username"],
            self.sandbox["domain"],
        )
        self.daily_limit = daily_limit
        self.api_usage = 0
        self.search_index_delay = 0.0
        self.emulator = EmulatorApp("salesforce", state=self._state, reset=self._reset)
        self._install()

    def issue_token(self) -> str:
        """A valid session id, as if minted by the business's own OAuth flow (not counted as a grant)."""
        with self.lock:
            return str(self.oauth.mint()["access_token"])

    # -- shared-surface callbacks (called under the lock) --------------------------------------
    def _state(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            name: [dict(r) for r in recs.values()] for name, recs in self.store.records.items()
        }
        state.update(tokens_issued=self.oauth.grants, api_usage=self.api_usage, daily_limit=self.daily_limit)
        return state

    def _config(self) -> dict[str, Any]:
        return {
            "external_id_fields": self.store.external_id_config(),
            "daily_limit": self.daily_limit,
            "api_usage": self.api_usage,
            "always_invalid_session": self.oauth.always_invalid,
            "revoke": self.oauth.revoked,
            "search_index_delay_ms": int(self.search_index_delay * 1000),
            "jwt_public_key": self.oauth.public_key,
            "sessions": len(self.oauth.sessions),
            "client_id": self.oauth.client_id,
            "username": self.oauth.username,
        }

    def _reset(self) -> None:
        """Records, counters and config go back to the constructor's; issued sessions stay valid."""
        self.store = Store(self._initial_external_ids)
        self.oauth.reset()
        self.oauth.public_key = None
        self.oauth.client_id = self.sandbox["client_id"]
        self.oauth.client_secret = self.sandbox["client_secret"]
        self.oauth.username = self.sandbox["username"]
        self.api_usage = 0
        self.daily_limit = self._initial_daily_limit
        self.search_index_delay = 0.0

    # -- routes ---------------------------------------------------------------------------------
    def _install(self) -> None:
        app = self.app
        app.add_url_rule("/services/oauth2/token", view_func=self._token, methods=["POST"])
        app.add_url_rule("/services/oauth2/authorize", view_func=self._authorize, methods=["GET", "POST"])
        app.add_url_rule("/services/oauth2/revoke", view_func=self._revoke, methods=["GET", "POST"])
        app.add_url_rule("/services/data", view_func=self._versions, methods=["GET"])
        app.add_url_rule("/services/data/", view_func=self._versions, methods=["GET"])
        app.add_url_rule(
            "/services/data/<path:rest>",
            view_func=self._api,
            methods=["GET", "POST", "PATCH", "PUT", "DELETE"],
        )
        app.add_url_rule("/_emulator/config", view_func=self._config_route, methods=["GET", "POST"])
        app.add_url_rule("/_emulator/token", view_func=self._mint_route, methods=["POST"])
        app.register_error_handler(404, lambda _exc: _json(404, not_found().body))

    def _token(self) -> Response:
        with self.lock:
            status, body = self.oauth.token(request.form.to_dict(), request.headers.get("Authorization"))
        return _json(status, body, {"Cache-Control": "no-cache,must-revalidate,max-age=0,no-store,private"})

    def _authorize(self) -> Any:
        with self.lock:
            status, target = self.oauth.authorize({**request.args.to_dict(), **request.form.to_dict()})
        if status == 302:
            return redirect(target, code=302)
        return _json(400, {"error": target, "error_description": target.replace("_", " ")})

    def _revoke(self) -> Response:
        token = request.values.get("token", "")
        with self.lock:
            known = self.oauth.revoke(token)
        if known:
            return _json(200, None)
        return _json(
            400, {"error": "unsupported_token_type", "error_description": "this token type is not supported"}
        )

    @staticmethod
    def _versions() -> Response:
        top = int(float(LATEST_VERSION))
        return _json(
            200,
            [
                {"label": _season(f"{n}.0"), "url": f"/services/data/v{n}.0", "version": f"{n}.0"}
                for n in range(20, top + 1)
            ],
        )

    def _limit_header(self) -> dict[str, str]:
        return {"Sforce-Limit-Info": f"api-usage={self.api_usage}/{self.daily_limit}"}

    def _api(self, rest: str) -> Response:
        # The raw URI keeps %2F inside an external id value from splitting the path.
        raw = request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI") or request.full_path
        path = urlsplit(raw).path
        tail = path.split("/services/data/", 1)[1] if "/services/data/" in path else rest
        segments = [unquote(s) for s in tail.split("/") if s]
        data = request.get_data()
        with self.lock:
            if not self.oauth.valid(request.headers.get("Authorization")):
                return _json(
                    401,
                    [error("INVALID_SESSION_ID", "Session expired or invalid")],
                    {"WWW-Authenticate": "Token"},
                )
            if self.api_usage >= self.daily_limit:
                # The daily allocation refills over a rolling 24 h, so there is no Retry-After to give.
                return _json(
                    403,
                    [error("REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.")],
                    self._limit_header(),
                )
            self.api_usage += 1
            try:
                body: Any = MISSING
                if data.strip():
                    try:
                        body = json.loads(data)
                    except ValueError as exc:
                        raise bad_request("JSON_PARSER_ERROR", f"Unexpected character: {exc}", None) from None
                status, payload, headers = self._dispatch(
                    request.method, segments, request.args.to_dict(), body, top=True
                )
            except SfError as exc:
                status, payload, headers = exc.status, exc.body, {}
            return _json(status, payload, {**headers, **self._limit_header()})

    # -- REST resources (under the lock) ---------------------------------------------------------
    def _dispatch(
        self, method: str, segments: list[str], query: dict[str, str], body: Any, top: bool
    ) -> Result:
        version_match = _VERSION.match(segments[0]) if segments else None
        if version_match is None:
            raise not_found()
        version, rest = version_match.group(1), segments[1:]
        if not rest:
            allow(method, "GET")
            base = f"/services/data/v{version}"
            return (
                200,
                {
                    name: f"{base}/{name}"
                    for name in ("sobjects", "query", "queryAll", "search", "composite", "limits")
                },
                {},
            )
        head = rest[0]
        if head == "sobjects":
            return sobjects(self.store, method, version, rest[1:], query, body)
        if head in ("query", "queryAll", "search") and len(rest) == 1:
            allow(method, "GET")
            if head == "search":
                return 200, run_sosl(self.store, query.get("q", ""), version, self.search_index_delay), {}
            return 200, run_soql(self.store, query.get("q", ""), version), {}
        if head == "limits" and len(rest) == 1:
            allow(method, "GET")
            return 200, self._limits(), {}
        if head == "composite" and len(rest) == 1 and top:
            allow(method, "POST")

            def sub(m: str, s: list[str], q: dict[str, str], b: Any) -> Result:
                return self._dispatch(m, s, q, MISSING if b is None else b, top=False)

            return 200, run_composite(self.store, body, sub), {}
        raise not_found()

    def _limits(self) -> dict[str, Any]:
        def pair(cap: int, used: int = 0) -> dict[str, int]:
            return {"Max": cap, "Remaining": max(cap - used, 0)}

        return {
            "ConcurrentAsyncGetReportInstances": pair(200),
            "DailyApiRequests": pair(self.daily_limit, self.api_usage),
            "DailyAsyncApexExecutions": pair(250000),
            "DailyBulkApiBatches": pair(15000),
            "DailyBulkV2QueryJobs": pair(10000),
            "DataStorageMB": pair(5),
            "FileStorageMB": pair(20),
            "HourlyPublishedPlatformEvents": pair(50000),
            "MassEmail": pair(10),
            "SingleEmail": pair(15),
        }

    # -- emulator surface ------------------------------------------------------------------------
    def _mint_route(self) -> Response:
        return _json(201, {"access_token": self.issue_token(), "instance_url": self.oauth.instance_url})

    def _config_route(self) -> Response:
        if request.method == "POST":
            spec = request.get_json(silent=True)
            with self.lock:
                problem = self._apply_config(spec)
                if problem:
                    return _json(400, {"error": problem})
        with self.lock:
            return _json(200, self._config())

    def _apply_config(self, spec: Any) -> str | None:
        """Keys (all optional): ``external_id_fields`` {T: field | {"field", "unique"} | null} (merged),
        ``expire_sessions`` true (every issued token stops working), ``always_invalid_session`` bool,
        ``revoke`` bool (refresh/JWT grants fail), ``daily_limit``/``api_usage``/``search_index_delay_ms``
        non-negative ints, ``jwt_public_key`` PEM or null, ``client_id``/``client_secret``/``username``.
        """
        if not isinstance(spec, dict):
            return "config must be a JSON object"
        unknown = set(spec) - _CONFIG_KEYS
        if unknown:
            return f"unknown config keys: {sorted(unknown)}"
        for key in ("expire_sessions", "always_invalid_session", "revoke"):
            if key in spec and not isinstance(spec[key], bool):
                return f"{key} must be a boolean"
        for key in ("daily_limit", "api_usage", "search_index_delay_ms"):
            value = spec.get(key, 0)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                return f"{key} must be a non-negative integer"
        for key in ("client_id", "client_secret", "username"):
            if key in spec and not (isinstance(spec[key], str) and spec[key]):
                return f"{key} must be a non-empty string"
        pem = spec.get("jwt_public_key")
        if pem is not None:
            try:
                load_pem_public_key(str(pem).encode())
            except (ValueError, TypeError):
                return "jwt_public_key must be a PEM-encoded public key or null"
        if "external_id_fields" in spec:
            if not isinstance(spec["external_id_fields"], dict):
                return "external_id_fields must map sObject names to a field, {field, unique} or null"
            try:
                self.store.configure_external_ids(spec["external_id_fields"])
            except ValueError as exc:
                return str(exc)
        if spec.get("expire_sessions"):
            self.oauth.sessions.clear()
        self.oauth.always_invalid = spec.get("always_invalid_session", self.oauth.always_invalid)
        self.oauth.revoked = spec.get("revoke", self.oauth.revoked)
        self.daily_limit = spec.get("daily_limit", self.daily_limit)
        self.api_usage = spec.get("api_usage", self.api_usage)
        if "search_index_delay_ms" in spec:
            self.search_index_delay = spec["search_index_delay_ms"] / 1000
        if "jwt_public_key" in spec:
            self.oauth.public_key = pem
        self.oauth.client_id = spec.get("client_id", self.oauth.client_id)
        self.oauth.client_secret = spec.get("client_secret", self.oauth.client_secret)
        self.oauth.username = spec.get("username", self.oauth.username)
        return None


def run(host: str, port: int) -> None:
    """Serve in the foreground (werkzeug threaded server) until Ctrl-C."""
    emulator = SalesforceEmulator()
    log.info("Salesforce emulator on http://%s:%s (client_id %s)", host, port, SANDBOX["client_id"])
    serve_foreground(emulator.app, host, port)
