"""A local HubSpot emulator: the CRM v3/v4 and OAuth v1 subset textback uses, in HubSpot's wire format.

Point the real SDK at it: ``HubSpot(access_token=SANDBOX_TOKEN, host=url)``. It serves

- objects (contacts, deals, tasks, notes, calls) under ``/crm/v3/objects/{type}`` and the date-versioned
  ``/crm/objects/2026-03/{type}``: create, get, update, archive, list, search, batch upsert/create/read/
  update/archive (see ``emulator_objects``);
- ``/crm/v3/properties/{type}``, ``/crm/v3/pipelines/deals``, ``/crm/v3/owners``;
- associations v4 (``emulator_routes``) and ``POST /oauth/v1/token``.

Every API call is authenticated (bearer token, optional scopes) and metered per token: a rolling burst
window, a separate search window and a daily count, with HubSpot's ``X-HubSpot-RateLimit-*`` headers and
429 bodies. Besides the shared ``/_emulator/requests|state|faults|reset|health``, ``/_emulator/config``
changes tokens, limits, search lag and OAuth faults (keys listed in :data:`CONFIG_KEYS`).

State lives in memory under ``emulator.lock``.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterable
from typing import Any

from flask import Response, g, request
from werkzeug.exceptions import HTTPException

from connectors.emulator.base import EmulatorApp, Hosted, serve_foreground
from connectors.hubspot.emulator_auth import (
    SANDBOX_OAUTH,
    SANDBOX_TOKEN,
    Auth,
    RateLimiter,
    Token,
    seconds_to_midnight,
)
from connectors.hubspot.emulator_common import ApiError, json_response, new_correlation_id, validation
from connectors.hubspot.emulator_objects import install_object_routes
from connectors.hubspot.emulator_routes import install_routes
from connectors.hubspot.emulator_schema import OBJECT_TYPES, ObjectType
from connectors.hubspot.emulator_store import Store

__all__ = ["CONFIG_KEYS", "SANDBOX_OAUTH", "SANDBOX_TOKEN", "HubSpotEmulator", "run"]

log = logging.getLogger(__name__)

CONFIG_KEYS = {
    "tokens",
    "rate_limit",
    "search_rate_limit",
    "daily_limit",
    "search_lag_ms",
    "access_token_ttl_s",
    "expire_tokens",
    "revoke_refresh_tokens",
}
_POLICY_TEXT = {"TEN_SECONDLY_ROLLING": "ten_secondly_rolling", "SECONDLY": "secondly", "DAILY": "daily"}


class HubSpotEmulator(Hosted):
    """HubSpot on 127.0.0.1: serve ``.app`` (e.g. with ``serve_in_thread``)."""

    def __init__(
        self,
        tokens: Iterable[str] = (SANDBOX_TOKEN,),
        rate_limit: tuple[int, float] | None = (190, 10.0),
        daily_limit: int = 1_000_000,
        search_lag_ms: int = 0,
        search_rate_limit: tuple[int, float] | None = (5, 1.0),
    ) -> None:
        self.auth = Auth(tokens)
        self.limiter = RateLimiter()
        self.store = Store()
        self.rate_limit = rate_limit
        self.search_rate_limit = search_rate_limit
        self.daily_limit: int | None = daily_limit
        self.store.search_lag_s = search_lag_ms / 1000
        self.api_calls = 0
        self.rate_limited = 0
        self.emulator = EmulatorApp("hubspot", state=self._state, reset=self._reset)
        self._install()

    # -- shared-surface callbacks (called under the lock) --------------------------------------------
    def _state(self) -> dict[str, Any]:
        store = self.store
        state: dict[str, Any] = {
            name: [o.to_json() for o in store.live(OBJECT_TYPES[name])] for name in OBJECT_TYPES
        }
        state["archived"] = [
            {"type": name, "id": o.id}
            for name in OBJECT_TYPES
            for o in store.objects[name].values()
            if o.archived
        ]
        links = sorted(store.links.items(), key=lambda kv: (kv[0][0], int(kv[0][1]), kv[0][2], int(kv[0][3])))
        state["associations"] = [
            {
                "from_type": f,
                "from_id": fid,
                "to_type": t,
                "to_id": tid,
                "type_id": type_id,
                "category": category,
            }
            for (f, fid, t, tid), specs in links
            for category, type_id in specs
        ]
        state["properties"] = {name: sorted(store.custom[name]) for name in OBJECT_TYPES}
        state["oauth"] = {"refreshes": self.auth.refreshes, "code_exchanges": self.auth.code_exchanges}
        state["api_calls"] = self.api_calls
        state["rate_limited"] = self.rate_limited
        state["config"] = self._config()
        return state

    def _config(self) -> dict[str, Any]:
        return {
            "tokens": {
                t.value: {"scopes": None if t.scopes is None else sorted(t.scopes)}
                for t in self.auth.tokens.values()
                if not t.oauth
            },
            "rate_limit": list(self.rate_limit) if self.rate_limit else None,
            "search_rate_limit": list(self.search_rate_limit) if self.search_rate_limit else None,
            "daily_limit": self.daily_limit,
            "search_lag_ms": int(self.store.search_lag_s * 1000),
            "access_token_ttl_s": self.auth.access_ttl_s,
        }

    def _reset(self) -> None:
        self.store.reset()
        self.auth.reset()
        self.limiter.reset()
        self.api_calls = 0
        self.rate_limited = 0

    # -- plumbing ------------------------------------------------------------------------------------
    def _install(self) -> None:
        app = self.app
        app.before_request(self._gate)
        app.after_request(self._decorate)
        app.register_error_handler(ApiError, self._api_error)
        app.register_error_handler(HTTPException, self._http_error)
        app.add_url_rule("/_emulator/config", view_func=self._config_route, methods=["GET", "POST"])
        install_object_routes(self)
        install_routes(self)

    def _gate(self) -> Response | None:
        """Authenticate and meter every API call (faults from EmulatorApp have already been applied)."""
        g.hs_cid = new_correlation_id()
        if request.path.startswith(("/_emulator/", "/oauth/")):
            return None
        search = request.method == "POST" and request.path.endswith("/search")
        with self.lock:
            token = self.auth.authenticate(request.headers.get("Authorization"))
            g.hs_token = token
            return self._meter(token, search)

    def _meter(self, token: Token, search: bool) -> Response | None:
        kind, limit = ("search", self.search_rate_limit) if search else ("api", self.rate_limit)
        daily = self.daily_limit
        used = self.limiter.daily_used(token.value)
        policy, wait = None, 0
        if daily is not None and used >= daily:
            policy, wait = "DAILY", seconds_to_midnight()
            remaining = self.limiter.remaining(kind, token.value, limit)
        else:
            admitted, remaining, wait = self.limiter.admit(kind, token.value, limit)
            if admitted:
                self.limiter.count_daily(token.value)
                used += 1
                self.api_calls += 1
            else:
                policy = "SECONDLY" if search else "TEN_SECONDLY_ROLLING"
        headers: dict[str, str] = {}
        if not search:  # HubSpot's search endpoints answer without rate-limit headers
            if limit is not None:
                headers.update(
                    {
                        "X-HubSpot-RateLimit-Max": str(limit[0]),
                        "X-HubSpot-RateLimit-Remaining": str(remaining),
                        "X-HubSpot-RateLimit-Interval-Milliseconds": str(int(limit[1] * 1000)),
                    }
                )
            if daily is not None and not token.oauth:  # OAuth apps get no daily headers
                headers.update(
                    {
                        "X-HubSpot-RateLimit-Daily": str(daily),
                        "X-HubSpot-RateLimit-Daily-Remaining": str(max(0, daily - used)),
                    }
                )
        g.hs_headers = headers
        if policy is None:
            return None
        self.rate_limited += 1
        body = {
            "status": "error",
            "message": f"You have reached your {_POLICY_TEXT[policy]} limit.",
            "errorType": "RATE_LIMIT",
            "correlationId": g.hs_cid,
            "policyName": policy,
            "requestId": str(uuid.uuid4()),
        }
        return json_response(body, 429, {"Retry-After": str(wait)})

    @staticmethod
    def _decorate(response: Response) -> Response:
        for key, value in g.get("hs_headers", {}).items():
            response.headers.setdefault(key, value)
        if g.get("hs_cid") and not request.path.startswith("/_emulator/"):
            response.headers.setdefault("X-HubSpot-Correlation-Id", g.hs_cid)
        return response

    @staticmethod
    def _api_error(exc: ApiError) -> Response:
        return json_response(exc.body(g.get("hs_cid") or new_correlation_id()), exc.status, exc.headers)

    @staticmethod
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        message = "resource not found" if status == 404 else f"HTTP {status} {exc.name}"
        return json_response(
            {"status": "error", "message": message, "correlationId": g.get("hs_cid") or new_correlation_id()},
            status,
        )

    # -- helpers for the route modules ---------------------------------------------------------------
    def body(self) -> Any:
        """The JSON body, with HubSpot's wording for malformed input."""
        raw = request.get_data(cache=True)
        if not raw.strip():
            return {}
        try:
            return json.loads(raw)
        except json.JSONDecodeError as exc:
            message = f"Invalid input JSON on line {exc.lineno}, column {exc.colno}: {exc.msg}"
            raise ApiError(400, message) from exc

    def object_body(self) -> dict[str, Any]:
        body = self.body()
        if not isinstance(body, dict):
            raise validation("Invalid input JSON: expected a JSON object")
        return body

    def allow(self, scope: str) -> None:
        token = g.get("hs_token")
        if token is not None:
            self.auth.require(token, scope)

    def object_type(self, raw: str, write: bool, schema: bool = False) -> ObjectType:
        otype = self.store.otype(raw)
        self.allow(f"crm.{'schemas' if schema else 'objects'}.{otype.scope}.{'write' if write else 'read'}")
        return otype

    # -- emulator-only -------------------------------------------------------------------------------
    def _config_route(self) -> Response:
        if request.method == "POST":
            spec = request.get_json(silent=True)
            problem = _check_config(spec)
            if problem:
                return json_response({"error": problem}, 400)
            assert isinstance(spec, dict)
            with self.lock:
                self._apply_config(spec)
        with self.lock:
            return json_response(self._config())

    def _apply_config(self, spec: dict[str, Any]) -> None:
        if "tokens" in spec:
            self.auth.configure_tokens(spec["tokens"])
        if "rate_limit" in spec:
            self.rate_limit = _pair(spec["rate_limit"])
        if "search_rate_limit" in spec:
            self.search_rate_limit = _pair(spec["search_rate_limit"])
        if "daily_limit" in spec:
            self.daily_limit = None if spec["daily_limit"] is None else int(spec["daily_limit"])
        if "search_lag_ms" in spec:
            self.store.search_lag_s = int(spec["search_lag_ms"]) / 1000
        if "access_token_ttl_s" in spec:
            self.auth.access_ttl_s = int(spec["access_token_ttl_s"])
        if spec.get("expire_tokens"):
            self.auth.expire_all()
        if spec.get("revoke_refresh_tokens"):
            self.auth.revoke_refresh_tokens()


def _pair(value: Any) -> tuple[int, float] | None:
    return None if value is None else (int(value[0]), float(value[1]))


def _is_int(value: Any, minimum: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _check_config(spec: Any) -> str | None:
    if not isinstance(spec, dict):
        return f"send a JSON object with any of {sorted(CONFIG_KEYS)}"
    unknown = set(spec) - CONFIG_KEYS
    if unknown:
        return f"unknown config keys: {sorted(unknown)}"
    tokens = spec.get("tokens", {})
    if not isinstance(tokens, dict):
        return 'tokens must map a token to {"scopes": [...] | null} or to null (remove it)'
    for value, settings in tokens.items():
        if settings is None:
            continue
        scopes = settings.get("scopes") if isinstance(settings, dict) else 0
        if scopes is not None and not (isinstance(scopes, list) and all(isinstance(s, str) for s in scopes)):
            return f"tokens[{value!r}].scopes must be a list of strings or null"
    for key in ("rate_limit", "search_rate_limit"):
        value = spec.get(key)
        if value is not None and not (
            isinstance(value, list)
            and len(value) == 2
            and _is_int(value[0])
            and isinstance(value[1], int | float)
            and value[1] > 0
        ):
            return f"{key} must be [max requests, window seconds] or null"
    if spec.get("daily_limit") is not None and not _is_int(spec["daily_limit"]):
        return "daily_limit must be a non-negative integer or null"
    for key in ("search_lag_ms", "access_token_ttl_s"):
        if key in spec and not _is_int(spec[key]):
            return f"{key} must be a non-negative integer"
    for key in ("expire_tokens", "revoke_refresh_tokens"):
        if key in spec and not isinstance(spec[key], bool):
            return f"{key} must be true or false"
    return None


def run(host: str, port: int) -> None:
    """Serve in the foreground (werkzeug threaded server, sandbox token and OAuth app) until Ctrl-C."""
    emulator = HubSpotEmulator()
    log.info("HubSpot emulator on http://%s:%s (token %s)", host, port, SANDBOX_TOKEN)
    serve_foreground(emulator.app, host, port)
