"""Pipedrive's OAuth server (oauth.pipedrive.com) as the emulator serves it: ``/oauth/token``
(Basic client auth, refresh_token / authorization_code grants) and an auto-approving
``/oauth/authorize``. Access tokens last 3599 s; refresh tokens are not rotated (Pipedrive returns
the same one) until the test harness revokes them via ``/_emulator/config``.
"""

from __future__ import annotations

import secrets
import threading
import time
from typing import Any
from urllib.parse import urlencode

from flask import Flask, Response, jsonify, redirect, request
from werkzeug.wrappers import Response as BaseResponse

ACCESS_TOKEN_TTL = 3599
CODE_TTL = 300  # Pipedrive: an authorization code is valid for 5 minutes
SCOPE = "base,deals:full,contacts:full,activities:full,leads:full"


def _oauth_error(status: int, error: str, message: str) -> tuple[Response, int]:
    return jsonify({"error": error, "message": message}), status


class OAuthServer:
    def __init__(self, client_id: str, client_secret: str, refresh_token: str, lock: threading.RLock) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.initial_refresh_token = refresh_token
        self.lock = lock
        self.reset()

    def reset(self) -> None:
        self.refresh_tokens: set[str] = {self.initial_refresh_token}
        self.access_tokens: dict[str, float] = {}  # token -> expiry (time.time)
        self.codes: dict[str, tuple[str, float]] = {}  # code -> (redirect_uri, expiry)
        self.refreshes = 0
        self.code_exchanges = 0

    @property
    def principal(self) -> str:
        # All access tokens of one app installation share one rate-limit budget.
        return f"oauth:{self.client_id}"

    def valid_access_token(self, token: str) -> bool:
        expiry = self.access_tokens.get(token)
        return expiry is not None and expiry > time.time()

    def expire_access_tokens(self) -> None:
        for token in self.access_tokens:
            self.access_tokens[token] = 0.0

    def revoke_refresh_tokens(self) -> None:
        self.refresh_tokens.clear()

    def state(self) -> dict[str, Any]:
        now = time.time()
        return {"refreshes": self.refreshes, "code_exchanges": self.code_exchanges,
                "live_access_tokens": sum(1 for e in self.access_tokens.values() if e > now),
                "refresh_tokens": len(self.refresh_tokens)}

    def install(self, app: Flask) -> None:
        app.add_url_rule("/oauth/token", endpoint="pd_oauth_token", view_func=self._token, methods=["POST"])
        app.add_url_rule("/oauth/authorize", endpoint="pd_oauth_authorize", view_func=self._authorize,
                         methods=["GET"])

    def _authorize(self) -> BaseResponse | tuple[Response, int]:
        """Auto-approve the consent screen: redirect straight back with a fresh code."""
        if request.args.get("client_id") != self.client_id:
            return _oauth_error(400, "invalid_client", "Invalid client: client is invalid")
        redirect_uri = request.args.get("redirect_uri", "")
        if not redirect_uri.startswith(("http://", "https://")):
            return _oauth_error(400, "invalid_request", "Invalid request: redirect_uri is not a valid URI")
        code = secrets.token_hex(16)
        with self.lock:
            self.codes[code] = (redirect_uri, time.time() + CODE_TTL)
        params = {"code": code}
        if "state" in request.args:
            params["state"] = request.args["state"]
        sep = "&" if "?" in redirect_uri else "?"
        return redirect(f"{redirect_uri}{sep}{urlencode(params)}", code=302)

    def _issue(self, refresh_token: str) -> tuple[Response, int]:
        access = f"v1:{secrets.token_urlsafe(32)}"
        self.access_tokens[access] = time.time() + ACCESS_TOKEN_TTL
        return jsonify({"access_token": access, "token_type": "Bearer", "refresh_token": refresh_token,
                        "scope": SCOPE, "expires_in": ACCESS_TOKEN_TTL,
                        "api_domain": request.host_url.rstrip("/")}), 200

    def _token(self) -> tuple[Response, int]:
        auth = request.authorization
        if auth is None or auth.type != "basic":
            return _oauth_error(401, "invalid_client", "Invalid client: cannot retrieve client credentials")
        if not (secrets.compare_digest(str(auth.username or ""), self.client_id)
                and secrets.compare_digest(str(auth.password or ""), self.client_secret)):
            return _oauth_error(401, "invalid_client", "Invalid client: client is invalid")
        if request.mimetype != "application/x-www-form-urlencoded":
            return _oauth_error(400, "invalid_request",
                                "Invalid request: content must be application/x-www-form-urlencoded")
        grant = request.form.get("grant_type")
        if not grant:
            return _oauth_error(400, "invalid_request", "Missing parameter: grant_type")
        with self.lock:
            if grant == "refresh_token":
                token = request.form.get("refresh_token", "")
                if token not in self.refresh_tokens:
                    return _oauth_error(400, "invalid_grant", "Invalid grant: refresh token is invalid")
                self.refreshes += 1
                return self._issue(token)
            if grant == "authorization_code":
                entry = self.codes.pop(request.form.get("code", ""), None)
                if entry is None:
                    return _oauth_error(400, "invalid_grant", "Invalid grant: authorization_code is invalid")
                redirect_uri, expiry = entry
                if expiry < time.time():
                    return _oauth_error(400, "invalid_grant", "Invalid grant: authorization_code has expired")
                if request.form.get("redirect_uri") != redirect_uri:
                    return _oauth_error(400, "invalid_request", "Invalid request: redirect_uri is invalid")
                self.code_exchanges += 1
                refresh = f"{secrets.randbelow(10**8)}:{secrets.randbelow(10**8)}:{secrets.token_hex(20)}"
                self.refresh_tokens.add(refresh)
                return self._issue(refresh)
        return _oauth_error(400, "unsupported_grant_type", "Unsupported grant type: grant_type is invalid")
