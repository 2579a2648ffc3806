"""A ``requests.Session`` that sends every request to one base URL (the local Salesforce emulator).

simple-salesforce builds ``https://{instance}/...`` and ``https://{domain}.salesforce.com/...`` URLs
itself, so the only seam is the session: an adapter rewrites scheme, host and port and keeps the
path and query, which is all the emulator needs. Its SObject methods also take no timeout, so the
adapter applies a default one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter


class LoopbackAdapter(HTTPAdapter):
    def __init__(self, base_url: str, timeout: float = 10.0, **kwargs: Any) -> None:
        target = urlsplit(base_url)
        if target.scheme not in ("http", "https") or not target.netloc:
            raise ValueError(f"base_url must be an absolute http(s) URL, got {base_url!r}")
        self.target = target
        self.default_timeout = timeout
        super().__init__(**kwargs)

    def send(self, request: requests.PreparedRequest, stream: bool = False,
             timeout: float | tuple[float, float] | tuple[float, None] | None = None,
             verify: bool | str = True, cert: bytes | str | tuple[bytes | str, bytes | str] | None = None,
             proxies: Mapping[str, str] | None = None) -> requests.Response:
        parts = urlsplit(request.url or "")
        request.url = urlunsplit((self.target.scheme, self.target.netloc, parts.path, parts.query, ""))
        request.headers.setdefault("X-Forwarded-Host", parts.netloc)
        # Proxies are dropped: an HTTP(S)_PROXY from the environment must not divert emulator traffic.
        effective = self.default_timeout if timeout is None else timeout
        return super().send(request, stream=stream, timeout=effective, verify=verify, cert=cert, proxies={})


def loopback_session(base_url: str, timeout: float = 10.0) -> requests.Session:
    """A session whose every http(s) request goes to ``base_url`` with ``timeout`` unless given one."""
    session = requests.Session()
    session.trust_env = False
    # A bigger pool than requests' 10: tests and workers share one client across many threads.
    adapter = LoopbackAdapter(base_url.rstrip("/"), timeout=timeout, pool_maxsize=32)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session
