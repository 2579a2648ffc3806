"""A local Pipedrive emulator: API v2 and the parts of v1 that v2 lacks, on the vendor's wire format.

Vendor side (point a real client at ``http://127.0.0.1:PORT``):

- ``/api/v2``: persons (+ ``/persons/search``), deals, activities, pipelines, stages, ``itemSearch``
  (see :mod:`emulator_v2`, :mod:`emulator_v2_deals`);
- ``/v1``: notes, leads, callLogs, ``users/me``; the deprecated v1 persons/deals/activities/search
  answer 410 (see :mod:`emulator_v1`);
- ``/oauth/token`` and ``/oauth/authorize`` (see :mod:`emulator_oauth`).

Auth is ``x-api-token``, ``Authorization: Bearer`` (OAuth) or the legacy ``?api_token=`` query,
which works but is counted (``query_token_uses``) so tests can prove a client keeps tokens out of
URLs. Every authenticated response carries Pipedrive's rate-limit headers (:mod:`emulator_limits`).

Emulator side (besides ``/_emulator/requests|state|faults|reset|health`` from :class:`EmulatorApp`):
``GET/POST /_emulator/config`` with ``burst_limit``, ``daily_token_budget``, ``api_tokens``,
``search_lag_seconds``, ``expire_tokens`` and ``revoke_refresh_tokens``.

State lives in memory and is guarded by the :class:`EmulatorApp` lock.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from flask import Response, g, jsonify, request
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response as BaseResponse

from connectors.emulator.base import EmulatorApp, Hosted, serve_foreground
from connectors.pipedrive.emulator_limits import RateLimiter, check_budget, check_burst_limit, request_cost
from connectors.pipedrive.emulator_oauth import OAuthServer
from connectors.pipedrive.emulator_store import ERROR_INFO, ApiError, Store
from connectors.pipedrive.emulator_v1 import V1Api
from connectors.pipedrive.emulator_v2 import V2Api
from connectors.pipedrive.emulator_v2_deals import V2DealsApi

log = logging.getLogger(__name__)

SANDBOX_TOKEN = "5a4e1d0b7c3f9e2a6d8b1c4f7e0a3d6b9c2e5f80"  # noqa: S105 - public emulator credential
SANDBOX_OAUTH = {
    "client_id": "textback-emulator-client",
    "client_secret": "textback-emulator-client-secret",
    "refresh_token": "7001:1:emulator-refresh-token-0f1e2d3c4b5a",
}
UNAUTHORIZED = {"success": False, "error": "unauthorized access", "errorCode": 401, "error_info": ERROR_INFO}
OVER_LIMIT = {"success": False, "error": "Request over limit", "errorCode": 429}
_CONFIG_KEYS = {
    "burst_limit",
    "daily_token_budget",
    "api_tokens",
    "search_lag_seconds",
    "expire_tokens",
    "revoke_refresh_tokens",
}


def error_body(path: str, status: int, message: str, code: str) -> dict[str, Any]:
    """v2 errors carry a ``code``; v1 errors the classic ``error_info``/``data``/``additional_data``."""
    if path.startswith("/api/v2"):
        return {"success": False, "error": message, "code": code}
    return {
        "success": False,
        "error": message,
        "error_info": ERROR_INFO,
        "data": None,
        "additional_data": None,
    }


class PipedriveEmulator(Hosted):
    """Pipedrive on 127.0.0.1: serve ``.app`` (e.g. with ``serve_in_thread``)."""

    def __init__(
        self,
        tokens: Iterable[str] = (SANDBOX_TOKEN,),
        burst_limit: tuple[int, float] | None = (80, 2.0),
        daily_token_budget: int = 30000,
    ) -> None:
        self._defaults = (frozenset(tokens), check_burst_limit(burst_limit), check_budget(daily_token_budget))
        self.tokens: set[str] = set(self._defaults[0])
        self.store = Store()
        self.limiter = RateLimiter(self._defaults[1], self._defaults[2])
        self.query_token_uses = 0
        self.emulator = EmulatorApp("pipedrive", state=self._state, reset=self._reset)
        self.oauth = OAuthServer(
            SANDBOX_OAUTH["client_id"],
            SANDBOX_OAUTH["client_secret"],
            SANDBOX_OAUTH["refresh_token"],
            self.lock,
        )
        self._install()

    # -- shared-surface callbacks (called under the lock) --------------------------------------
    def _state(self) -> dict[str, Any]:
        return {
            **self.store.state(),
            "oauth": self.oauth.state(),
            "query_token_uses": self.query_token_uses,
            "rate_limits": self.limiter.snapshot(),
            "config": self._config(),
        }

    def _config(self) -> dict[str, Any]:
        return {
            "burst_limit": list(self.limiter.burst_limit) if self.limiter.burst_limit else None,
            "daily_token_budget": self.limiter.daily_budget,
            "api_tokens": sorted(self.tokens),
            "search_lag_seconds": self.store.search_lag,
        }

    def _reset(self) -> None:
        """Back to a freshly constructed emulator: data, counters, config and OAuth grants."""
        self.store.reset()
        self.tokens = set(self._defaults[0])
        self.limiter.burst_limit, self.limiter.daily_budget = self._defaults[1], self._defaults[2]
        self.limiter.reset()
        self.oauth.reset()
        self.query_token_uses = 0

    # -- plumbing ---------------------------------------------------------------------------------
    def _install(self) -> None:
        app = self.app
        # Registered after EmulatorApp's hook, so injected faults win over auth and rate limits, like a
        # proxy in front of Pipedrive would.
        app.before_request(self._authenticate_and_meter)
        app.after_request(self._rate_headers)
        V2Api(self.store, self.lock).install(app)
        V2DealsApi(self.store, self.lock).install(app)
        V1Api(self.store, self.lock).install(app)
        self.oauth.install(app)
        app.add_url_rule(
            "/_emulator/config", endpoint="pd_config", view_func=self._config_route, methods=["GET", "POST"]
        )
        app.register_error_handler(ApiError, self._api_error)
        app.register_error_handler(HTTPException, self._http_error)

    def _principal(self) -> str | None:
        header = request.headers.get("x-api-token")
        if header is not None:
            return header if header in self.tokens else None
        auth = request.headers.get("Authorization", "")
        if auth[:7].lower() == "bearer ":
            return self.oauth.principal if self.oauth.valid_access_token(auth[7:].strip()) else None
        query = request.args.get("api_token")
        if query:
            return query if query in self.tokens else None
        return None

    def _authenticate_and_meter(self) -> tuple[Response, int] | None:
        path = request.path
        if path.startswith(("/_emulator/", "/oauth/")):
            return None
        with self.lock:
            if "api_token" in request.args:
                self.query_token_uses += 1
            principal = self._principal()
            if principal is None:
                return jsonify(UNAUTHORIZED), 401
            decision = self.limiter.admit(principal, request_cost(request.method, path))
        g.pipedrive_rate_headers = decision.headers
        if decision.allowed:
            return None
        body = dict(OVER_LIMIT)
        if decision.daily_exhausted:
            body["error_info"] = "Daily API token budget exhausted; it resets at 00:00 UTC"
        return jsonify(body), 429

    @staticmethod
    def _rate_headers(response: Response) -> Response:
        for key, value in g.get("pipedrive_rate_headers", {}).items():
            response.headers[key] = value
        return response

    @staticmethod
    def _api_error(exc: ApiError) -> tuple[Response, int]:
        return jsonify(error_body(request.path, exc.status, exc.message, exc.code)), exc.status

    @staticmethod
    def _http_error(exc: HTTPException) -> BaseResponse | tuple[Response, int]:
        status = exc.code or 500
        if status < 400:  # routing redirects (e.g. a trailing slash) are not errors
            return exc.get_response()
        if request.path.startswith("/_emulator/"):
            return jsonify({"error": exc.description}), status
        code = {404: "ERR_NOT_FOUND", 405: "ERR_METHOD_NOT_ALLOWED"}.get(status, "ERR_BAD_REQUEST")
        message = {404: "Not found", 405: "Method not allowed"}.get(status, exc.description or "Error")
        return jsonify(error_body(request.path, status, message, code)), status

    # -- /_emulator/config ------------------------------------------------------------------------------
    def _config_route(self) -> tuple[Response, int]:
        if request.method == "GET":
            with self.lock:
                return jsonify(self._config()), 200
        spec = request.get_json(silent=True)
        if not isinstance(spec, dict):
            return jsonify({"error": "config must be a JSON object"}), 400
        unknown = set(spec) - _CONFIG_KEYS
        if unknown:
            return jsonify({"error": f"unknown config keys: {sorted(unknown)}"}), 400
        try:
            burst = check_burst_limit(spec["burst_limit"]) if "burst_limit" in spec else None
            budget = check_budget(spec["daily_token_budget"]) if "daily_token_budget" in spec else None
            tokens = spec.get("api_tokens")
            if tokens is not None and not (
                isinstance(tokens, list) and all(isinstance(t, str) and t for t in tokens)
            ):
                raise ValueError("api_tokens must be a list of non-empty strings")
            lag = spec.get("search_lag_seconds")
            if lag is not None and (isinstance(lag, bool) or not isinstance(lag, (int, float)) or lag < 0):
                raise ValueError("search_lag_seconds must be a non-negative number")
            for flag in ("expire_tokens", "revoke_refresh_tokens"):
                if flag in spec and not isinstance(spec[flag], bool):
                    raise ValueError(f"{flag} must be a boolean")
        except ValueError as exc:
            return jsonify({"error": str(exc)}), 400
        with self.lock:
            if "burst_limit" in spec:
                self.limiter.burst_limit = burst
                self.limiter.windows.clear()
            if budget is not None:
                self.limiter.daily_budget = budget
            if tokens is not None:
                self.tokens = set(tokens)
            if lag is not None:
                self.store.search_lag = float(lag)
            if spec.get("expire_tokens"):
                self.oauth.expire_access_tokens()
            if spec.get("revoke_refresh_tokens"):
                self.oauth.revoke_refresh_tokens()
            return jsonify(self._config()), 200


def run(host: str, port: int) -> None:
    """Serve in the foreground (werkzeug threaded server) until Ctrl-C."""
    emulator = PipedriveEmulator()
    log.info("Pipedrive emulator on http://%s:%s (api token %s)", host, port, SANDBOX_TOKEN)
    serve_foreground(emulator.app, host, port)
