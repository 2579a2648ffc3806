"""The Pipedrive HTTP layer: one ``requests.Session``, header auth, timeouts and error mapping.

Why not pipedrive-python-lib for API calls (see docs/pipedrive.md): it only knows the v1 persons,
deals, activities and search endpoints (out of support since 2026-08-01), puts the api token in the
query string, has no timeouts and returns the *text* of a non-JSON error (an HTML 502 from a
proxy) instead of raising. What it still does right is building the OAuth consent URL, so
:func:`authorization_url` uses it; token requests are made here, with a timeout and classified.

Every API request: ``context.throttle(1)`` first, counted, the token in the ``x-api-token`` header
or ``Authorization: Bearer`` (never in the URL), no redirects followed, and the answer checked
(status, JSON, ``success``). Failures become ``core.errors`` types; nothing here sleeps or retries,
except that an OAuth 401 refreshes the access token once and replays the request once.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import requests
from pipedrive.client import Client as SdkClient

from connectors import http_errors
from connectors.pipedrive.mappers import VENDOR, error_text, seconds_to_utc_midnight
from core.connector_state import TokenStore
from core.errors import AuthError, ConnectorConfigError, RateLimited, TransientError

API_BASE_URL = "https://api.pipedrive.com"
OAUTH_BASE_URL = "https://oauth.pipedrive.com"
USER_AGENT = "textback-pipedrive/1.0"
#: refresh an access token this long before Pipedrive says it expires (tokens live ~1 hour)
TOKEN_MARGIN = timedelta(minutes=2)
_NOT_JSON = object()


def authorization_url(
    client_id: str, redirect_uri: str, state: str | None = None, oauth_base_url: str = OAUTH_BASE_URL
) -> str:
    """The consent-screen URL an admin opens to connect textback's Pipedrive app.

    Built by pipedrive-python-lib's ``Client.authorization_url`` (correct and side-effect free).
    """
    sdk = SdkClient(client_id=client_id)
    sdk.OAUTH_BASE_URL = oauth_base_url.rstrip("/") + "/oauth/"
    return str(sdk.authorization_url(redirect_uri, state=state))


def exchange_code(
    client_id: str,
    client_secret: str,
    redirect_uri: str,
    code: str,
    oauth_base_url: str = OAUTH_BASE_URL,
    timeout: float = 10.0,
) -> dict[str, Any]:
    """Trade the consent screen's ``code`` for tokens (``refresh_token`` goes into the install).

    Not the SDK's ``exchange_code``: that one has no timeout and returns an HTML error page as text.
    """
    with requests.Session() as session:
        return token_request(
            session,
            oauth_base_url,
            client_id,
            client_secret,
            timeout,
            {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri},
        )


def _json(response: requests.Response) -> Any:
    try:
        return json.loads(response.content or b"")
    except ValueError:
        return _NOT_JSON


def _not_json(status: int, raw: bytes) -> TransientError:
    what = http_errors.describe(raw)
    if not http_errors.looks_like_html(raw):
        what = f"a body that is not JSON: {what}"
    return TransientError(f"{VENDOR} answered HTTP {status} with {what}", code=status)


def rate_limited(headers: Mapping[str, str], body: Any) -> RateLimited:
    lowered = {k.lower(): v for k, v in headers.items()}
    daily = lowered.get("x-daily-ratelimit-token-remaining")
    if daily is not None and daily.strip() == "0":
        # The daily token budget: no point retrying before it resets at 00:00 UTC.
        explicit = {"retry-after": lowered["retry-after"]} if "retry-after" in lowered else None
        wait = http_errors.retry_after(explicit, default=seconds_to_utc_midnight())
        return RateLimited(
            f"{VENDOR}'s daily API token budget is used up; textback waits until it resets (00:00 UTC, "
            f"in {wait / 3600:.1f} h)",
            retry_after=wait,
            code="daily_budget",
        )
    wait = http_errors.retry_after(headers, default=2.0)
    reason = error_text(body) if body is not _NOT_JSON else None
    return RateLimited(
        f"{VENDOR} rate limit (burst window){': ' + reason if reason else ''}; retry in {wait:g} s",
        retry_after=wait,
        code=429,
    )


def check_answer(response: requests.Response) -> dict[str, Any]:
    """The JSON body of a successful API answer, or the ``core.errors`` type for everything else."""
    status = response.status_code
    body = _json(response)
    if status == 429:
        raise rate_limited(response.headers, body)
    if 300 <= status < 400:
        # Redirects are not followed (the token header would go along); Pipedrive's API never sends one.
        where = urlsplit(response.headers.get("Location", "")).hostname or "elsewhere"
        raise TransientError(
            f"{VENDOR} answered HTTP {status}, a redirect to {where}: is api_base_url the API's address?",
            code=status,
        )
    if not 200 <= status < 300:
        detail = error_text(body) if body is not _NOT_JSON else None
        raise http_errors.classify(VENDOR, status, response.headers, detail or response.content)
    if body is _NOT_JSON or not isinstance(body, dict):
        raise _not_json(status, response.content)
    if body.get("success") is False:
        # A 2xx that says it failed is not success (and retrying is safe: creates are found by marker).
        raise TransientError(
            f"{VENDOR} answered HTTP {status} but success=false: {error_text(body) or 'no reason given'}",
            code=status,
        )
    return body


def token_request(
    session: requests.Session,
    oauth_base_url: str,
    client_id: str,
    client_secret: str,
    timeout: float,
    form: dict[str, str],
) -> dict[str, Any]:
    """POST ``/oauth/token`` (Basic client auth) and classify the answer."""
    vendor = f"{VENDOR}'s OAuth server"
    try:
        response = session.post(
            oauth_base_url.rstrip("/") + "/oauth/token",
            data=form,
            auth=(client_id, client_secret),
            headers={"Accept": "application/json", "User-Agent": USER_AGENT},
            timeout=timeout,
            allow_redirects=False,
        )
    except requests.RequestException as exc:
        raise http_errors.network_error(vendor, exc) from None
    status, body = response.status_code, _json(response)
    if status == 200 and isinstance(body, dict) and isinstance(body.get("access_token"), str):
        return body
    if status == 429:
        raise rate_limited(response.headers, body)
    if status >= 500 or status in (408, 425):
        raise http_errors.classify(vendor, status, response.headers, response.content)
    if body is _NOT_JSON or not isinstance(body, dict):
        if 200 <= status < 300:
            raise _not_json(status, response.content)
        raise AuthError(
            f"{vendor} answered HTTP {status} with {http_errors.describe(response.content)}", code=status
        )
    error = str(body.get("error") or "")
    if error == "invalid_grant":
        raise AuthError(
            f"{vendor} refused the refresh token (invalid_grant): the app was uninstalled or its access "
            "revoked. Reconnect Pipedrive and reinstall the connector with the new refresh_token.",
            code="invalid_grant",
        )
    if error == "invalid_client" or status == 401:
        raise AuthError(f"{vendor} rejected client_id/client_secret (invalid_client)", code="invalid_client")
    raise AuthError(f"{vendor} refused the token request: {error_text(body) or status}", code=error or status)


class PipedriveClient:
    """Authenticated JSON requests to one Pipedrive company (``base_url`` without ``/api/v2``)."""

    def __init__(
        self,
        *,
        base_url: str,
        timeout: float,
        throttle: Callable[[int], None],
        count: Callable[[], None],
        api_token: str | None = None,
        oauth: tuple[str, str, str] | None = None,  # client_id, client_secret, refresh_token
        oauth_base_url: str = OAUTH_BASE_URL,
        tokens: TokenStore | None = None,
    ) -> None:
        if not api_token and not oauth:
            raise ConnectorConfigError(
                "Pipedrive needs api_token, or client_id + client_secret + refresh_token (OAuth)"
            )
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.throttle = throttle
        self.count = count
        self.api_token = api_token or None
        self.oauth = None if api_token else oauth
        self.oauth_base_url = oauth_base_url.rstrip("/")
        self.tokens = tokens
        self.session = requests.Session()
        self.session.headers.update({"Accept": "application/json", "User-Agent": USER_AGENT})
        self._lock = threading.Lock()
        self._access: str | None = None
        self._expires: datetime | None = None
        self._refresh_token = oauth[2] if oauth else None

    def __repr__(self) -> str:
        return f"<PipedriveClient {self.base_url} auth={'oauth' if self.oauth else 'api_token'}>"

    # -- requests -----------------------------------------------------------------------------
    def get(self, path: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return self.request("GET", path, params=params)

    def post(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return self.request("POST", path, json_body=body)

    def patch(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return self.request("PATCH", path, json_body=body)

    def put(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return self.request("PUT", path, json_body=body)

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json_body: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """One API call; an OAuth 401 refreshes the access token once and replays once.

        A worker holding an older token may first be handed the one another worker refreshed (the
        shared store); if Pipedrive refuses that one too, it is refreshed itself. So a 401 is
        replayed at most twice, and at most one of those replays follows a refresh of our own.
        """
        refused: set[str] = set()
        while True:
            headers, bearer = self._auth_headers()
            self.throttle(1)
            self.count()
            try:
                response = self.session.request(
                    method,
                    self.base_url + path,
                    params=dict(params) if params else None,
                    json=dict(json_body) if json_body is not None else None,
                    headers=headers,
                    timeout=self.timeout,
                    allow_redirects=False,
                )
            except requests.RequestException as exc:
                raise http_errors.network_error(VENDOR, exc) from None
            if response.status_code == 401 and self.oauth and bearer and len(refused) < 2:
                refused.add(bearer)
                self._forget(bearer)
                if self._bearer(rejected=bearer) not in refused:
                    continue
            return check_answer(response)

    # -- auth ---------------------------------------------------------------------------------
    def _auth_headers(self) -> tuple[dict[str, str], str | None]:
        if self.api_token:
            return {"x-api-token": self.api_token}, None
        bearer = self._bearer()
        return {"Authorization": f"Bearer {bearer}"}, bearer

    def _fresh(self, expires: datetime | None) -> bool:
        return expires is None or expires - TOKEN_MARGIN > datetime.now(UTC)

    def _forget(self, rejected: str | None) -> None:
        with self._lock:
            if self._access == rejected:
                self._access = self._expires = None

    def _bearer(self, rejected: str | None = None) -> str:
        """A usable access token. ``rejected`` names one Pipedrive just refused (a 401)."""
        with self._lock:
            if self._access and self._access != rejected and self._fresh(self._expires):
                return self._access
            if self.tokens is None:
                # No shared store (kit tests, one-off checks): refresh in this process only.
                access, expires_in, rotated = self._refresh_grant(self._refresh_token)
                if rotated:
                    self._refresh_token = rotated
                self._access, self._expires = access, datetime.now(UTC) + timedelta(seconds=expires_in)
                return access
        # The shared store: one refresh across every worker. The row lock makes the others wait and
        # then find the token the first one fetched (``stale`` tells it ours was refused).
        token = self.tokens.valid(TOKEN_MARGIN) if rejected is None else None
        if token is None or token.access_token == rejected:
            token = self.tokens.refresh(self._refresh_grant, stale=rejected, margin=TOKEN_MARGIN)
        with self._lock:
            self._access, self._expires = token.access_token, token.expires_at
        return token.access_token

    def _refresh_grant(self, stored: str | None) -> tuple[str, int, str | None]:
        """The refresh_token grant: ``(access_token, expires_in, refresh_token_to_keep_or_None)``.

        Tries the stored refresh token first (the last one Pipedrive returned), then the configured
        one (an admin may have reconnected since).
        """
        assert self.oauth is not None
        client_id, client_secret, _ = self.oauth
        candidates = [t for t in dict.fromkeys([stored, self._refresh_token]) if t]
        for i, refresh_token in enumerate(candidates):
            self.count()
            try:
                data = token_request(
                    self.session,
                    self.oauth_base_url,
                    client_id,
                    client_secret,
                    self.timeout,
                    {"grant_type": "refresh_token", "refresh_token": refresh_token},
                )
            except AuthError as exc:
                if exc.code == "invalid_grant" and i + 1 < len(candidates):
                    continue
                raise
            try:
                expires_in = int(data.get("expires_in") or 3600)
            except (TypeError, ValueError):
                expires_in = 3600
            rotated = data.get("refresh_token")
            keep = rotated if isinstance(rotated, str) and rotated else None
            if keep is None and refresh_token != stored:
                keep = refresh_token  # remember the configured token that worked
            return str(data["access_token"]), expires_in, keep
        raise ConnectorConfigError("OAuth needs client_id, client_secret and refresh_token")
