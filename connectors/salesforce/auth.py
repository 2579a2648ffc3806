"""Salesforce sign-in: client credentials, JWT bearer, OAuth refresh tokens and the legacy SOAP login.

Every flow yields an access token and the org's instance URL.
The connector calls the REST API in simple-salesforce's direct ``session_id`` mode, so the SDK never
logs in again by itself (its ``SFType`` re-login can recurse forever); instead the connector asks
:meth:`SalesforceAuth.renew` for a new token at most once per operation.

- ``client_credentials`` (preferred): the connected app's consumer key and secret, with a "Run As"
  user, at the org's My Domain (``acme.my``).
- ``jwt_bearer``: an RS256 assertion signed with the private key whose certificate the connected app
  holds, for a pre-authorized ``username``.
- ``oauth``: web-server flow tokens; the refresh token buys access tokens. With a shared
  :class:`~core.connector_state.TokenStore` (the runtime gives one) many workers refresh once.
- ``legacy_password``: the SOAP ``login()`` call with username, password and security token. It is
  retiring (Summer '27), works only up to API 64.0, and is off in orgs created from Winter '26: a
  documented legacy option that ``check`` warns about.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import jwt
import requests
from simple_salesforce.exceptions import SalesforceAuthenticationFailed
from simple_salesforce.login import SalesforceLogin

from connectors import http_errors
from connectors.salesforce import mappers
from core.connector_state import TokenStore
from core.errors import AuthError, ConnectorConfigError, JobError, TransientError

AUTH_KINDS = ("client_credentials", "jwt_bearer", "oauth", "legacy_password")
#: Salesforce does not say when an access token expires (the org's session timeout decides, two
#: hours by default); a stored token is trusted for an hour and a 401 renews it sooner.
SESSION_SECONDS = 3600
SOAP_LOGIN_MAX_VERSION = 64.0
_HINTS = {
    "client_credentials": "check consumer_key and consumer_secret, that the connected app enables the "
    "Client Credentials Flow with a Run As user, and that domain is the org's My Domain (like 'acme.my')",
    "jwt_bearer": "check that the connected app holds the certificate of private_key, that username is "
    "pre-authorized for the app, and that consumer_key is the app's",
    "oauth": "the refresh token was revoked or expired: reconnect Salesforce to get a new one",
    "legacy_password": "SOAP login is retiring and is off in new orgs: switch to client_credentials or "
    "jwt_bearer",
}


@dataclass(frozen=True)
class Grant:
    access_token: str
    instance_url: str | None


def _normalize_pem(key: str) -> str:
    """A PEM pasted on one line in YAML keeps literal ``\\n``s; turn them back into line breaks."""
    text = key.strip()
    if "\\n" in text and "\n" not in text:
        text = text.replace("\\n", "\n")
    return text


class SalesforceAuth:
    """Access tokens for one connector instance, refreshed single-flight."""

    def __init__(self, kind: str, config: Mapping[str, Any], http: requests.Session, *,
                 allowed_hosts: Iterable[str], api_version: str, tokens: TokenStore | None,
                 instance_url: str | None) -> None:
        if kind not in AUTH_KINDS:
            raise ConnectorConfigError(f"auth_kind must be one of {', '.join(AUTH_KINDS)}, not {kind!r}")
        self.kind = kind
        self.cfg = config
        self.http = http
        self.allowed = tuple(allowed_hosts)
        self.api_version = api_version
        self.tokens = tokens if kind == "oauth" else None
        self.instance_url = instance_url
        self._grant: Grant | None = None
        self._lock = threading.Lock()
        self._refresh_token = str(config.get("refresh_token") or "") or None
        required = {
            "client_credentials": ("consumer_key", "consumer_secret", "domain"),
            "jwt_bearer": ("consumer_key", "username", "private_key"),
            "oauth": ("client_id", "client_secret", "refresh_token"),
            "legacy_password": ("username", "password", "security_token"),
        }[kind]
        missing = [k for k in required if not config.get(k)]
        if missing:
            raise ConnectorConfigError(f"the {kind} sign-in needs {', '.join(missing)}")
        if kind == "oauth" and not (instance_url or config.get("domain")):
            raise ConnectorConfigError("the oauth sign-in needs instance_url (from the token response)")
        domain = str(config.get("domain") or "login")
        if kind == "client_credentials" and domain.lower() in ("login", "test"):
            raise ConnectorConfigError("client_credentials needs the org's My Domain (like 'acme.my'), not "
                                       f"{domain!r}")
        if kind == "oauth" and not config.get("domain"):
            # Refresh where the tokens came from: the org's own host (checked by the connector).
            self.host = urlsplit(str(instance_url)).netloc
        else:
            self.host = mappers.login_host(domain, self.allowed)

    # -- what the connector asks ------------------------------------------------------------------
    def current(self) -> Grant:
        """A token to use now (signing in when there is none)."""
        if self.tokens is not None:
            token = self.tokens.valid()
            if token is not None:
                return Grant(token.access_token, self.instance_url)
            return self._stored_refresh(None)
        with self._lock:
            if self._grant is None:
                self._grant = self._sign_in()
            return self._grant

    def renew(self, rejected: str) -> Grant:
        """A token other than ``rejected``: signs in again unless another thread already did."""
        if self.tokens is not None:
            return self._stored_refresh(rejected)
        with self._lock:
            if self._grant is None or self._grant.access_token == rejected:
                self._grant = self._sign_in()
            return self._grant

    # -- flows -----------------------------------------------------------------------------------
    def _sign_in(self) -> Grant:
        if self.kind == "client_credentials":
            secret = f"{self.cfg['consumer_key']}:{self.cfg['consumer_secret']}"
            basic = base64.b64encode(secret.encode()).decode()
            return self._token({"grant_type": "client_credentials"}, {"Authorization": f"Basic {basic}"})
        if self.kind == "jwt_bearer":
            return self._token({"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
                                "assertion": self._assertion()})
        if self.kind == "oauth":
            access, _, rotated = self._refresh(None)
            if rotated:
                self._refresh_token = rotated
            return Grant(access, self.instance_url)
        return self._soap_login()

    def _assertion(self) -> str:
        domain = self.host.split(".salesforce.com", 1)[0]
        audience = "https://test.salesforce.com" if domain == "test" or domain.endswith(".sandbox.my") \
            else "https://login.salesforce.com"
        claims = {"iss": str(self.cfg["consumer_key"]), "sub": str(self.cfg["username"]), "aud": audience,
                  "exp": int(time.time()) + 180}
        try:
            return jwt.encode(claims, _normalize_pem(str(self.cfg["private_key"])), algorithm="RS256")
        except (ValueError, TypeError, jwt.PyJWTError):
            raise ConnectorConfigError("private_key is not a PEM-encoded RSA private key") from None

    def _stored_refresh(self, rejected: str | None) -> Grant:
        assert self.tokens is not None
        token = self.tokens.refresh(self._refresh, stale=rejected)
        return Grant(token.access_token, self.instance_url)

    def _refresh(self, stored: str | None) -> tuple[str, int, str | None]:
        """The refresh_token grant: ``(access_token, expires_in, new_refresh_token_or_None)``.

        Tries the stored refresh token (it may have been rotated), then the configured one (an admin
        may have reconnected since).
        """
        candidates = [t for t in dict.fromkeys([stored, self._refresh_token]) if t]
        for i, refresh_token in enumerate(candidates):
            try:
                grant, data = self._token_data({
                    "grant_type": "refresh_token", "refresh_token": refresh_token,
                    "client_id": str(self.cfg["client_id"]), "client_secret": str(self.cfg["client_secret"])})
            except AuthError as exc:
                if exc.code == "invalid_grant" and i + 1 < len(candidates):
                    continue
                raise
            rotated = data.get("refresh_token")
            if rotated is None and refresh_token != stored:
                rotated = refresh_token  # remember the configured token that worked
            return grant.access_token, SESSION_SECONDS, str(rotated) if rotated else None
        raise AssertionError("unreachable")  # pragma: no cover

    def _token(self, form: dict[str, str], headers: dict[str, str] | None = None) -> Grant:
        return self._token_data(form, headers)[0]

    def _token_data(self, form: dict[str, str], headers: dict[str, str] | None = None
                    ) -> tuple[Grant, dict[str, Any]]:
        url = f"https://{self.host}/services/oauth2/token"
        response = self.http.post(url, data=form, headers=headers)
        body = mappers.parse_body(response.content)
        if response.status_code == 200 and isinstance(body, dict) and body.get("access_token"):
            instance = body.get("instance_url")
            if isinstance(instance, str) and instance:
                self.instance_url = instance.rstrip("/")
            return Grant(str(body["access_token"]), self.instance_url), body
        raise self._grant_error(response.status_code, response.headers, body, response.content)

    def _grant_error(self, status: int, headers: Mapping[str, str], body: Any, raw: bytes) -> JobError:
        flow = self.kind.replace("_", " ")
        if isinstance(body, dict) and body.get("error") and status < 500 and status != 429:
            code = str(body["error"])
            description = mappers.clean(str(body.get("error_description") or ""), 200)
            return AuthError(f"Salesforce refused the {flow} sign-in ({code}: {description}); "
                             f"{_HINTS[self.kind]}", code=code)
        if status == 200:
            return TransientError("Salesforce's token endpoint answered without an access token")
        return http_errors.classify(f"Salesforce's token endpoint ({flow})", status, headers, raw)

    def _soap_login(self) -> Grant:
        version = min(float(self.api_version), SOAP_LOGIN_MAX_VERSION)
        domain = self.host.split(".salesforce.com", 1)[0]
        try:
            session_id, instance = SalesforceLogin(
                username=str(self.cfg["username"]), password=str(self.cfg["password"]),
                security_token=str(self.cfg["security_token"]), sf_version=f"{version:.1f}",
                session=self.http, domain=domain)
        except SalesforceAuthenticationFailed as exc:
            code = getattr(exc, "code", None)
            message = mappers.clean(str(getattr(exc, "message", "") or ""), 200)
            if isinstance(code, int) and (code >= 500 or code in (408, 429)):
                raise TransientError(f"Salesforce's SOAP login answered HTTP {code}", code=code) from None
            raise AuthError(f"Salesforce refused the legacy password sign-in ({code}: {message}); "
                            f"{_HINTS['legacy_password']}", code=str(code)) from None
        self.instance_url = f"https://{instance}"
        return Grant(str(session_id), self.instance_url)

