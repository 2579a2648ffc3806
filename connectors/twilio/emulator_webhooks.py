"""Signed webhook POSTs from the Twilio emulator, on kept-alive connections.

A new connection and a new ``requests`` session per status callback cost the emulator more CPU than
answering the REST call that caused it. Each target (scheme, host, port) keeps a few idle
``http.client`` connections instead; the request on the wire is the one ``requests`` sent before
(same headers, form body), signed per request with ``X-Twilio-Signature``.
"""

from __future__ import annotations

import http.client
import select
import threading
import time
import zlib
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

from twilio.request_validator import RequestValidator

WEBHOOK_TIMEOUT = 15.0  # Twilio gives a webhook 15 s in total
USER_AGENT = "TwilioProxy/1.1 (textback emulator)"
IDLE_PER_TARGET = 32  # idle connections kept per target; more in flight at once are closed after use
RECHECK_AFTER = 0.5  # idle seconds after which a connection is checked before reuse (servers drop idle ones)

_Target = tuple[str, str, int]


class WebhookError(Exception):
    """The POST got no HTTP answer (refused, reset, timed out, unparseable)."""


@dataclass(frozen=True)
class WebhookAnswer:
    status_code: int
    text: str


class _Pool:
    """Idle connections per target; a connection is used by one request at a time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: dict[_Target, list[tuple[http.client.HTTPConnection, float]]] = {}

    def take(self, target: _Target) -> http.client.HTTPConnection | None:
        while True:
            with self._lock:
                idle = self._idle.get(target)
                if not idle:
                    return None
                conn, since = idle.pop()
            if time.monotonic() - since < RECHECK_AFTER or not _dropped(conn):
                return conn
            conn.close()

    def give(self, target: _Target, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            idle = self._idle.setdefault(target, [])
            if len(idle) < IDLE_PER_TARGET:
                idle.append((conn, time.monotonic()))
                return
        conn.close()


def _dropped(conn: http.client.HTTPConnection) -> bool:
    """An idle connection with something to read has been closed by the target (or is out of step)."""
    sock = conn.sock
    if sock is None:
        return True
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


_POOL = _Pool()


def _connect(target: _Target, timeout: float) -> http.client.HTTPConnection:
    scheme, host, port = target
    if scheme == "https":
        return http.client.HTTPSConnection(host, port, timeout=timeout)
    return http.client.HTTPConnection(host, port, timeout=timeout)


def _decode(response: http.client.HTTPResponse, raw: bytes) -> str:
    # The request accepts gzip and deflate (as the requests library's did), so a target may use them.
    encoding = (response.getheader("Content-Encoding") or "").strip().lower()
    try:
        if encoding == "gzip":
            raw = zlib.decompress(raw, 16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            wrapped = raw[:1] == b"\x78"  # a zlib header; some servers send raw deflate instead
            raw = zlib.decompress(raw, zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)
    except zlib.error:
        pass
    charset = response.headers.get_content_charset() or "utf-8"
    try:
        return raw.decode(charset, errors="replace")
    except LookupError:
        return raw.decode("utf-8", errors="replace")


def signed_post(
    url: str, params: dict[str, str], auth_token: str, timeout: float = WEBHOOK_TIMEOUT
) -> WebhookAnswer:
    """POST ``params`` form-encoded to ``url`` with the signature Twilio would compute."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise WebhookError(f"unsupported webhook URL {url!r}")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError as exc:
        raise WebhookError(f"bad port in {url!r}") from exc
    target: _Target = (scheme, parts.hostname, port)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    body = urlencode(params).encode()
    headers = {
        "User-Agent": USER_AGENT,
        "Accept-Encoding": "gzip, deflate",
        "Accept": "*/*",
        "Connection": "keep-alive",
        "X-Twilio-Signature": RequestValidator(auth_token).compute_signature(url, params),
        "Content-Length": str(len(body)),
        "Content-Type": "application/x-www-form-urlencoded",
    }
    conn = _POOL.take(target)
    reused = conn is not None
    while True:
        if conn is None:
            conn = _connect(target, timeout)
        else:
            conn.timeout = timeout
            if conn.sock is not None:
                conn.sock.settimeout(timeout)
        try:
            conn.request("POST", path, body=body, headers=headers)
            response = conn.getresponse()
            raw = response.read()
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
            conn.close()
            if reused:
                # The target closed this idle connection before it read the request (a kept-alive
                # connection's idle timeout): once more on a new connection, as a fresh client would.
                conn, reused = None, False
                continue
            raise WebhookError(f"{type(exc).__name__}: {exc}") from exc
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise WebhookError(f"{type(exc).__name__}: {exc}") from exc
        break
    if response.will_close:
        conn.close()
    else:
        _POOL.give(target, conn)
    return WebhookAnswer(response.status, _decode(response, raw))
