"""Build a twilio SDK client, optionally pointed at a local emulator instead of twilio.com."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client


class LoopbackHttpClient(TwilioHttpClient):
    """Sends every Twilio API request (api.twilio.com, lookups.twilio.com, ...) to one base URL.

    The paths stay Twilio's real ones, so the emulator sees exactly what twilio.com would.
    """

    def __init__(self, base_url: str, timeout: float | None = None) -> None:
        super().__init__(timeout=timeout)
        self._target = urlsplit(base_url)

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        parts = urlsplit(url)
        url = urlunsplit((self._target.scheme, self._target.netloc, parts.path, parts.query, ""))
        return super().request(method, url, *args, **kwargs)


def make_client(
    account_sid: str,
    auth_token: str,
    base_url: str | None = None,
    timeout: float = 10.0,
) -> Client:
    """A twilio ``Client`` with an explicit timeout (the SDK's default is none)."""
    http_client: TwilioHttpClient
    if base_url:
        http_client = LoopbackHttpClient(base_url, timeout=timeout)
    else:
        http_client = TwilioHttpClient(timeout=timeout)
    return Client(account_sid, auth_token, http_client=http_client)
