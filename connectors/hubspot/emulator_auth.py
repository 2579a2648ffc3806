"""Who may call the emulated HubSpot, and how often: bearer tokens with scopes, the OAuth v1 token
endpoint's grants, and the per-token rolling-window and daily rate limits."""

from __future__ import annotations

import math
import secrets
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from connectors.hubspot.emulator_common import PORTAL_ID, ApiError
from connectors.hubspot.emulator_schema import ALL_SCOPES, OWNERS

SANDBOX_TOKEN = "pat-sandbox-0d1c8e52-4b7a-4f7e-9a1e-7d0c6a2f5b13"  # noqa: S105 - a fake, by design
SANDBOX_OAUTH: dict[str, str] = {
    "client_id": "sandbox-client-5f3c2a10-7e4d-4b8a-9c61-2d0e8f7a1b3c",
    "client_secret": "sandbox-secret-8b1e6d4f-0a2c-4e9b-b7d3-5c6f1a8e2d90",
    "refresh_token": "na1-sandbox-refresh-3e7a-41c9-8f2b-6d5e0c1a9b47",
    "redirect_uri": "http://127.0.0.1/oauth-callback",
    "code": "sandbox-auth-code-2c9d-4f1e-a7b3",  # single use; /_emulator/reset makes it usable again
}
APP_ID = 5550001
_AUTH_MESSAGE = ("Authentication credentials not found. This API supports OAuth 2.0 authentication and you "
                 "can find more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview")
_SCOPES_MESSAGE = ("This app hasn't been granted all required scopes to make this call. Read more about "
                   "required scopes here: https://developers.hubspot.com/scopes.")


@dataclass
class Token:
    value: str
    scopes: frozenset[str] | None  # None: every scope
    oauth: bool = False
    expires_at: float | None = None  # wall clock, for OAuth access tokens
    forced_expired_at: float | None = None  # set by /_emulator/config {"expire_tokens": true}

    def expired_at(self, moment: float) -> float | None:
        if self.forced_expired_at is not None:
            return self.forced_expired_at
        if self.expires_at is not None and moment >= self.expires_at:
            return self.expires_at
        return None


class OAuthError(Exception):
    """The OAuth endpoint's own error shape: ``{"status": "BAD_...", "message": ...}``."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _ago(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds} second(s)"
    if seconds < 3600:
        return f"{seconds // 60} minute(s)"
    return f"{seconds // 3600} hour(s)"


class Auth:
    def __init__(self, tokens: Iterable[str]) -> None:
        self.tokens: dict[str, Token] = {t: Token(t, None) for t in tokens}
        self.access_ttl_s = 1800
        self.refresh_tokens: dict[str, bool] = {}  # refresh token -> revoked
        self.codes: set[str] = set()
        self.refreshes = 0
        self.code_exchanges = 0
        self.reset()

    def reset(self) -> None:
        """Counters and auth faults go; configured and issued tokens stay valid."""
        self.refresh_tokens = {t: False for t in self.refresh_tokens}
        self.refresh_tokens[SANDBOX_OAUTH["refresh_token"]] = False
        self.codes = {SANDBOX_OAUTH["code"]}
        self.refreshes = self.code_exchanges = 0
        for token in self.tokens.values():
            token.forced_expired_at = None

    def configure_tokens(self, spec: dict[str, Any]) -> None:
        for value, settings in spec.items():
            if settings is None:
                self.tokens.pop(value, None)
                continue
            scopes = settings.get("scopes")
            self.tokens[value] = Token(value, None if scopes is None else frozenset(scopes))

    def expire_all(self) -> None:
        moment = time.time()
        for token in self.tokens.values():
            if token.oauth:
                token.forced_expired_at = moment

    def revoke_refresh_tokens(self) -> None:
        self.refresh_tokens = {t: True for t in self.refresh_tokens}

    # -- API side ---------------------------------------------------------------------------------
    def authenticate(self, header: str | None) -> Token:
        scheme, _, value = (header or "").partition(" ")
        token = self.tokens.get(value.strip()) if scheme.lower() == "bearer" else None
        if token is None:
            raise ApiError(401, _AUTH_MESSAGE, "INVALID_AUTHENTICATION")
        moment = time.time()
        expired = token.expired_at(moment)
        if expired is not None:
            message = f"The OAuth token used to make this call expired {_ago(moment - expired)} ago."
            raise ApiError(401, message, "EXPIRED_AUTHENTICATION")
        return token

    @staticmethod
    def require(token: Token, scope: str) -> None:
        if token.scopes is not None and scope not in token.scopes:
            raise ApiError(403, _SCOPES_MESSAGE, "MISSING_SCOPES", errors=[{
                "message": "One or more of the following scopes are required.",
                "context": {"requiredGranularScopes": [scope]}}],
                extra={"links": {"scopes": "https://developers.hubspot.com/scopes"}})

    # -- OAuth v1 ---------------------------------------------------------------------------------
    def grant(self, form: dict[str, str]) -> dict[str, Any]:
        grant_type = form.get("grant_type", "")
        if grant_type not in ("refresh_token", "authorization_code"):
            raise OAuthError("BAD_GRANT_TYPE", f"unsupported grant_type: {grant_type or 'missing'}")
        if form.get("client_id") != SANDBOX_OAUTH["client_id"]:
            raise OAuthError("BAD_CLIENT_ID", "missing or unknown client id")
        if form.get("client_secret") != SANDBOX_OAUTH["client_secret"]:
            raise OAuthError("BAD_CLIENT_SECRET", "missing or invalid client secret")
        if grant_type == "refresh_token":
            refresh = form.get("refresh_token", "")
            if self.refresh_tokens.get(refresh, True):
                raise OAuthError("BAD_REFRESH_TOKEN", "missing or unknown refresh token")
            self.refreshes += 1
        else:
            code = form.get("code", "")
            if code not in self.codes:
                raise OAuthError("BAD_AUTH_CODE", "missing or unknown auth code")
            if form.get("redirect_uri") != SANDBOX_OAUTH["redirect_uri"]:
                raise OAuthError("BAD_REDIRECT_URI", "redirect_uri does not match the one the code was for")
            self.codes.discard(code)
            refresh = f"na1-{secrets.token_hex(2)}-{secrets.token_hex(2)}-{secrets.token_hex(8)}"
            self.refresh_tokens[refresh] = False
            self.code_exchanges += 1
        access = "CN" + secrets.token_urlsafe(40)
        self.tokens[access] = Token(access, None, oauth=True, expires_at=time.time() + self.access_ttl_s)
        return {"token_type": "bearer", "refresh_token": refresh, "access_token": access,
                "expires_in": self.access_ttl_s}

    def access_token_info(self, value: str) -> dict[str, Any] | None:
        token = self.tokens.get(value)
        if token is None or not token.oauth or token.expired_at(time.time()) is not None:
            return None
        return {"token": value, "user": OWNERS[0]["email"], "hub_domain": "textback-sandbox.example.com",
                "scopes": sorted(token.scopes) if token.scopes is not None else ALL_SCOPES,
                "hub_id": PORTAL_ID, "app_id": APP_ID,
                "expires_in": max(0, int((token.expires_at or 0) - time.time())),
                "user_id": OWNERS[0]["userId"], "token_type": "access"}


class RateLimiter:
    """Per-token rolling windows (they are rolling, not fixed buckets, at HubSpot) and a per-UTC-day count."""

    def __init__(self) -> None:
        self.windows: dict[tuple[str, str], deque[float]] = {}
        self.daily: dict[str, tuple[str, int]] = {}

    def reset(self) -> None:
        self.windows.clear()
        self.daily.clear()

    def daily_used(self, token: str) -> int:
        day, used = self.daily.get(token, ("", 0))
        return used if day == _today() else 0

    def count_daily(self, token: str) -> None:
        self.daily[token] = (_today(), self.daily_used(token) + 1)

    def remaining(self, kind: str, token: str, limit: tuple[int, float] | None) -> int:
        if limit is None:
            return 0
        cutoff = time.monotonic() - limit[1]
        return max(0, limit[0] - sum(1 for hit in self.windows.get((kind, token), ()) if hit > cutoff))

    def admit(self, kind: str, token: str, limit: tuple[int, float] | None) -> tuple[bool, int, int]:
        """(admitted, remaining after this call, whole seconds until a slot frees when refused)."""
        if limit is None:
            return True, 0, 0
        most, seconds = limit
        moment = time.monotonic()
        hits = self.windows.setdefault((kind, token), deque())
        while hits and hits[0] <= moment - seconds:
            hits.popleft()
        if len(hits) >= most:
            wait = hits[0] + seconds - moment if hits else seconds
            return False, 0, max(1, math.ceil(wait))
        hits.append(moment)
        return True, most - len(hits), 0


def _today() -> str:
    return datetime.now(UTC).date().isoformat()


def seconds_to_midnight() -> int:
    moment = datetime.now(UTC)
    midnight = (moment + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return max(1, math.ceil((midnight - moment).total_seconds()))
