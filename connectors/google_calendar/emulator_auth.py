"""Google OAuth 2.0 for the Calendar emulator: sandbox credentials, the token endpoint, bearer checks.

The token endpoint answers the two grants google-auth sends: the service-account JWT bearer grant
(RFC 7523, ``urn:ietf:params:oauth:grant-type:jwt-bearer``) and the ``refresh_token`` grant of
installed-app user credentials. Assertions are verified against the sandbox key, like Google does,
so a connector that loads the wrong key file fails here rather than in production.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
SCOPE_PREFIX = "https://www.googleapis.com/auth/"
FULL_SCOPE = SCOPE_PREFIX + "calendar"
TOKEN_LIFETIME = 3599
SANDBOX_EMAIL = "textback-emulator@textback-sandbox.iam.gserviceaccount.com"

# A fresh key per process keeps private key material out of the repository; processes that are not
# the emulator's own fetch it from ``GET /_emulator/service-account``.
_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
_PUBLIC_KEY = _KEY.public_key()

SANDBOX_SERVICE_ACCOUNT: dict[str, str] = {
    "type": "service_account",
    "project_id": "textback-sandbox",
    "private_key_id": secrets.token_hex(20),
    "private_key": _KEY.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode(),
    "client_email": SANDBOX_EMAIL,
    "client_id": "100000000000000000001",
    "token_uri": "",
    "universe_domain": "googleapis.com",
}

SANDBOX_OAUTH: dict[str, str] = {
    "client_id": "000000000000-textbackemulator.apps.googleusercontent.com",
    "client_secret": "GOCSPX-textback-emulator-sandbox",
    "refresh_token": "1//0textback-emulator-sandbox-refresh-token",
}
SANDBOX_USER_EMAIL = "owner@example.com"  # whose calendar the refresh token was granted for

# Which scopes each method accepts, from the bundled discovery document (calendar.v3.json).
_READ = {"calendar", "calendar.app.created", "calendar.events", "calendar.events.freebusy",
         "calendar.events.owned", "calendar.events.owned.readonly", "calendar.events.public.readonly",
         "calendar.events.readonly", "calendar.readonly"}
_FREEBUSY = {"calendar", "calendar.events.freebusy", "calendar.freebusy", "calendar.readonly"}
_WRITE = {"calendar", "calendar.app.created", "calendar.events", "calendar.events.owned"}
METHOD_SCOPES: dict[str, frozenset[str]] = {
    "freebusy.query": frozenset(SCOPE_PREFIX + s for s in _FREEBUSY),
    "events.read": frozenset(SCOPE_PREFIX + s for s in _READ),
    "events.write": frozenset(SCOPE_PREFIX + s for s in _WRITE),
}


def service_account_info(token_uri: str) -> dict[str, str]:
    """The sandbox service account as ``from_service_account_info`` expects it, pointed at ``token_uri``."""
    return {**SANDBOX_SERVICE_ACCOUNT, "token_uri": token_uri}


class GrantError(Exception):
    """A token-endpoint failure, rendered as OAuth's ``{"error","error_description"}``."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


REVOKED = "Token has been expired or revoked."


def _b64url(data: str) -> bytes:
    return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))


def verify_jwt(token: str) -> dict[str, Any]:
    """Claims of an RS256 JWT signed by the sandbox key, or GrantError with Google's wording."""
    try:
        header_b64, payload_b64, sig_b64 = token.split(".")
        header = json.loads(_b64url(header_b64))
        claims = json.loads(_b64url(payload_b64))
        signature = _b64url(sig_b64)
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise GrantError("invalid_grant", "Invalid JWT: Malformed.") from exc
    if not isinstance(header, dict) or not isinstance(claims, dict) or header.get("alg") != "RS256":
        raise GrantError("invalid_grant", "Invalid JWT: Malformed.")
    if claims.get("iss") != SANDBOX_EMAIL:
        raise GrantError("invalid_grant", "Invalid grant: account not found")
    try:
        signed = f"{header_b64}.{payload_b64}".encode()
        _PUBLIC_KEY.verify(signature, signed, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature as exc:
        raise GrantError("invalid_grant", "Invalid JWT Signature.") from exc
    now = time.time()
    try:
        iat, exp = float(claims["iat"]), float(claims["exp"])
    except (KeyError, TypeError, ValueError) as exc:
        raise GrantError("invalid_grant", "Invalid JWT: Malformed.") from exc
    # Google allows a few minutes of clock skew and at most an hour of lifetime.
    if exp < now - 300 or iat > now + 300 or exp - iat > 3600:
        raise GrantError("invalid_grant", "Invalid JWT: Token must be a short-lived token (60 minutes) and "
                         "in a reasonable timeframe. Check your iat and exp values in the JWT claim.")
    return claims


@dataclass
class Identity:
    """Who a bearer token speaks for. ``scopes`` None means "anything" (anonymous when auth is off)."""

    kind: str  # "jwt" | "refresh" | "self-signed" | "anonymous"
    email: str
    subject: str | None = None
    scopes: frozenset[str] | None = None

    @property
    def is_service_account(self) -> bool:
        """A service account acting as itself (no domain-wide delegation)."""
        return self.kind in ("jwt", "self-signed") and self.subject is None

    def allows(self, method: str) -> bool:
        return self.scopes is None or bool(self.scopes & METHOD_SCOPES[method])


@dataclass
class _Token:
    identity: Identity
    expires_at: float


@dataclass
class TokenAuthority:
    """Issued access tokens and grant counters. Not locked itself: the emulator calls it under its lock."""

    token_ttl: int = TOKEN_LIFETIME
    revoked: bool = False
    tokens: dict[str, _Token] = field(default_factory=dict)
    issued: dict[str, int] = field(default_factory=lambda: {"jwt": 0, "refresh": 0})
    subjects: list[str] = field(default_factory=list)

    def reset(self) -> None:
        # Issued tokens survive a reset so long-lived clients in a shared stack do not see a spurious 401.
        self.token_ttl = TOKEN_LIFETIME
        self.revoked = False
        self.issued = {"jwt": 0, "refresh": 0}
        self.subjects = []

    def expire_all(self) -> None:
        for token in self.tokens.values():
            token.expires_at = 0.0

    def revoke(self, revoked: bool) -> None:
        self.revoked = revoked
        if revoked:
            self.tokens.clear()

    def grant(self, form: dict[str, str], basic: tuple[str, str] | None) -> dict[str, Any]:
        """Answer a token request or raise GrantError."""
        grant_type = form.get("grant_type", "")
        if grant_type == JWT_BEARER:
            claims = verify_jwt(form.get("assertion", ""))
            if self.revoked:
                raise GrantError("invalid_grant", REVOKED)
            scope = str(claims.get("scope") or "")
            if not scope.split():
                raise GrantError("invalid_scope", "Invalid OAuth scope or ID token audience provided.")
            subject = str(claims["sub"]) if claims.get("sub") else None
            identity = Identity("jwt", SANDBOX_EMAIL, subject, frozenset(scope.split()))
            if identity.subject and identity.subject not in self.subjects:
                self.subjects.append(identity.subject)
            kind = "jwt"
        elif grant_type == "refresh_token":
            client_id, client_secret = basic or (form.get("client_id", ""), form.get("client_secret", ""))
            if (client_id, client_secret) != (SANDBOX_OAUTH["client_id"], SANDBOX_OAUTH["client_secret"]):
                raise GrantError("invalid_client", "The OAuth client was not found.", 401)
            if self.revoked or form.get("refresh_token") != SANDBOX_OAUTH["refresh_token"]:
                raise GrantError("invalid_grant", REVOKED)
            scope = form.get("scope") or FULL_SCOPE
            identity = Identity("refresh", SANDBOX_USER_EMAIL, None, frozenset(scope.split()))
            kind = "refresh"
        else:
            raise GrantError("unsupported_grant_type", f"Invalid grant_type: {grant_type}")
        access_token = "ya29." + secrets.token_urlsafe(48)
        self.tokens[access_token] = _Token(identity, time.time() + self.token_ttl)
        self.issued[kind] += 1
        return {"access_token": access_token, "expires_in": self.token_ttl, "token_type": "Bearer",
                "scope": scope}

    def identify(self, authorization: str | None) -> Identity | None:
        """The identity behind an ``Authorization`` header, or None if it would get a 401."""
        if not authorization or not authorization.startswith("Bearer "):
            return None
        value = authorization[len("Bearer "):].strip()
        token = self.tokens.get(value)
        if token is not None:
            return token.identity if token.expires_at > time.time() else None
        if value.count(".") == 2 and not self.revoked:
            # A self-signed JWT (``always_use_jwt_access``) is accepted as a bearer token by Google APIs.
            try:
                claims = verify_jwt(value)
            except GrantError:
                return None
            scope = str(claims.get("scope") or "")
            return Identity("self-signed", SANDBOX_EMAIL, None, frozenset(scope.split()) if scope else None)
        return None
