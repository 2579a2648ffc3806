"""OAuth 2.0 for the emulated org: ``/services/oauth2/token|authorize|revoke`` and bearer checks.

One connected app (client id + secret) and one integration user. Grants: ``client_credentials``
(Basic header or form fields), JWT bearer (RS256 assertion; verified against ``public_key`` when one
is configured, otherwise only decoded), ``authorization_code`` (codes come from ``/authorize``, which
approves at once and redirects) and ``refresh_token``. Callers hold the emulator lock.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from typing import Any
from urllib.parse import urlencode

import jwt

from connectors.salesforce.emulator_store import ORG_ID, USER_ID

_AUDIENCES = ("https://login.salesforce.com", "https://test.salesforce.com")


def _oauth_error(code: str, description: str) -> tuple[int, dict[str, Any]]:
    return 400, {"error": code, "error_description": description}


class OAuthServer:
    def __init__(self, client_id: str, client_secret: str, username: str, domain: str) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.username = username
        self.domain = domain
        self.public_key: str | None = None
        self.sessions: dict[str, float] = {}  # access token -> issued (epoch seconds)
        self.refresh_tokens: set[str] = set()
        self.codes: dict[str, str] = {}  # authorization code -> redirect_uri it was issued for
        self.grants = 0
        self.revoked = False  # refresh and JWT grants fail with invalid_grant
        self.always_invalid = False  # every API call answers INVALID_SESSION_ID

    @property
    def instance_url(self) -> str:
        return f"https://{self.domain}.salesforce.com"

    def reset(self) -> None:
        """Issued sessions survive a reset on purpose: clients built before it keep working."""
        self.refresh_tokens.clear()
        self.codes.clear()
        self.grants = 0
        self.revoked = False
        self.always_invalid = False

    def valid(self, authorization: str | None) -> bool:
        if self.always_invalid or not authorization:
            return False
        scheme, _, token = authorization.partition(" ")
        return scheme.lower() in ("bearer", "oauth") and token.strip() in self.sessions

    def mint(self, refresh: bool = False) -> dict[str, Any]:
        """A token response body. ``instance_url`` is https; the loopback session rewrites it anyway."""
        issued = str(int(time.time() * 1000))
        identity = f"https://login.salesforce.com/id/{ORG_ID}/{USER_ID}"
        token = f"{ORG_ID[:15]}!AQ{secrets.token_urlsafe(48)}"
        self.sessions[token] = time.time()
        signature = base64.b64encode(hmac.new(self.client_secret.encode(), (identity + issued).encode(),
                                              hashlib.sha256).digest()).decode()
        body: dict[str, Any] = {"access_token": token, "instance_url": self.instance_url, "id": identity,
                                "token_type": "Bearer", "issued_at": issued, "signature": signature,
                                "scope": "api"}
        if refresh:
            body["refresh_token"] = f"5Aep861{secrets.token_urlsafe(60)}"
            body["scope"] = "refresh_token api"
            self.refresh_tokens.add(body["refresh_token"])
        return body

    # -- endpoints --------------------------------------------------------------------------------
    def token(self, form: dict[str, str], authorization: str | None) -> tuple[int, dict[str, Any]]:
        grant = form.get("grant_type", "")
        if not grant:
            return _oauth_error("invalid_request", "grant type is missing")
        client_id, client_secret = form.get("client_id"), form.get("client_secret")
        if authorization and authorization.lower().startswith("basic "):
            try:
                decoded = base64.b64decode(authorization[6:].strip()).decode()
            except (ValueError, UnicodeDecodeError):
                return _oauth_error("invalid_client", "invalid client credentials")
            client_id, _, client_secret = decoded.partition(":")
        if grant == "client_credentials":
            status, body = self._check_client(client_id, client_secret, secret_required=True)
        elif grant == "urn:ietf:params:oauth:grant-type:jwt-bearer":
            status, body = self._jwt(form.get("assertion", ""))
        elif grant == "authorization_code":
            status, body = self._check_client(client_id, client_secret, secret_required=True)
            redirect = self.codes.pop(form.get("code", ""), None)  # codes are single-use
            if status == 200 and (redirect is None or redirect != form.get("redirect_uri", redirect)):
                status, body = _oauth_error("invalid_grant", "invalid authorization code")
            if status == 200:
                return 200, self._granted(refresh=True)
        elif grant == "refresh_token":
            status, body = self._check_client(client_id, client_secret, secret_required=False)
            if status == 200 and (self.revoked or form.get("refresh_token") not in self.refresh_tokens):
                status, body = _oauth_error("invalid_grant", "expired access/refresh token")
        else:
            return _oauth_error("unsupported_grant_type", "grant type not supported")
        return (status, body) if status != 200 else (200, self._granted())

    def _granted(self, refresh: bool = False) -> dict[str, Any]:
        self.grants += 1
        return self.mint(refresh=refresh)

    def _check_client(self, client_id: str | None, secret: str | None, secret_required: bool
                      ) -> tuple[int, dict[str, Any]]:
        if not client_id or not hmac.compare_digest(client_id, self.client_id):
            return _oauth_error("invalid_client_id", "client identifier invalid")
        if (secret_required or secret) and not hmac.compare_digest(secret or "", self.client_secret):
            return _oauth_error("invalid_client", "invalid client credentials")
        return 200, {}

    def _jwt(self, assertion: str) -> tuple[int, dict[str, Any]]:
        try:
            header = jwt.get_unverified_header(assertion)
            if header.get("alg") != "RS256":
                return _oauth_error("invalid_grant", "invalid assertion")
            # verify_exp must be explicit: PyJWT switches every check off along with the signature.
            claims = jwt.decode(assertion, self.public_key or "", algorithms=["RS256"],
                                options={"verify_signature": self.public_key is not None, "verify_exp": True,
                                         "verify_aud": False, "verify_iss": False})
        except jwt.ExpiredSignatureError:
            return _oauth_error("invalid_grant", "expired authorization code")
        except jwt.PyJWTError:
            return _oauth_error("invalid_grant", "invalid assertion")
        if claims.get("iss") != self.client_id:
            return _oauth_error("invalid_client_id", "client identifier invalid")
        if claims.get("aud") not in (*_AUDIENCES, self.instance_url):
            return _oauth_error("invalid_grant", "audience is invalid")
        if "exp" not in claims:
            return _oauth_error("invalid_grant", "invalid assertion")
        if claims.get("sub") != self.username or self.revoked:
            return _oauth_error("invalid_grant", "authentication failure")
        return 200, {}

    def authorize(self, args: dict[str, str]) -> tuple[int, str]:
        """Auto-approves the consent screen: (302, redirect URL) or (400, reason)."""
        if args.get("response_type") != "code":
            return 400, "unsupported_response_type"
        if args.get("client_id") != self.client_id or not args.get("redirect_uri"):
            return 400, "invalid_client_id"
        code = "aPrx" + secrets.token_urlsafe(32)
        self.codes[code] = args["redirect_uri"]
        query = {"code": code, **({"state": args["state"]} if args.get("state") else {})}
        separator = "&" if "?" in args["redirect_uri"] else "?"
        return 302, args["redirect_uri"] + separator + urlencode(query)

    def revoke(self, token: str) -> bool:
        known = self.sessions.pop(token, None) is not None or token in self.refresh_tokens
        self.refresh_tokens.discard(token)
        return known
