"""The emulators' werkzeug request handler: HTTP/1.1 keep-alive, and no access-log line per request.

werkzeug's development server answers every request with ``Connection: close`` (it cannot tell
where a request body ends, so it drains the socket after each answer), so every API call to an
emulator paid for a new TCP connection and a new server thread; with the access log, that was
most of an emulator's CPU. Here a request with a ``Content-Length`` body (or none) is read through a
stream limited to that length and the unread rest is skipped after the answer, so the connection
can carry the next request. Anything else (a chunked request body, HTTP/1.0, a client asking to
close) goes through werkzeug's own handling, which closes the connection as before.
"""

from __future__ import annotations

import socket
import threading
import traceback
from collections.abc import Callable, Iterable
from typing import Any

from werkzeug.exceptions import InternalServerError
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler
from werkzeug.wsgi import LimitedStream

_DROPPED = (ConnectionError, TimeoutError)


class Connections:
    """The open client connections of one server, so stopping it can close kept-alive ones too."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()

    def add(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.add(sock)

    def discard(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.discard(sock)

    def close_all(self) -> None:
        with self._lock:
            open_now = list(self._open)
        for sock in open_now:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class KeepAliveHandler(WSGIRequestHandler):
    server: BaseWSGIServer

    def setup(self) -> None:
        super().setup()
        # The status line and headers, then the body, go out as separate writes: on a kept-alive
        # connection Nagle's algorithm holds the body until the client's delayed ACK (~40 ms).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        tracked = getattr(self.server, "connections", None)
        if isinstance(tracked, Connections):
            tracked.add(self.connection)

    def finish(self) -> None:
        tracked = getattr(self.server, "connections", None)
        if isinstance(tracked, Connections):
            tracked.discard(self.connection)
        super().finish()

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """No access log: ``/_emulator/requests`` records every request already."""

    def run_wsgi(self) -> None:
        length = self._body_length()
        if length is None:
            super().run_wsgi()  # answers with Connection: close
            return
        if self.headers.get("Expect", "").lower().strip() == "100-continue":
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.environ = environ = self.make_environ()
        body = LimitedStream(self.rfile, length)  # type: ignore[arg-type]
        environ["wsgi.input"] = body
        answer = _Answer(self, environ)
        try:
            answer.run(self.server.app)
            body.exhaust()  # the next request starts right after this one's body
        except _DROPPED as exc:
            self.close_connection = True
            self.connection_dropped(exc, environ)
        except Exception:
            self.close_connection = True
            if not answer.sent:
                try:
                    answer.reset()
                    answer.run(InternalServerError())
                except Exception:  # noqa: S110 - the client is gone or the answer is half sent
                    pass
            self.server.log("error", f"Error on request:\n{traceback.format_exc()}")

    def _body_length(self) -> int | None:
        """The request body's length when the connection can stay open after the answer, else None."""
        if self.close_connection or self.request_version != "HTTP/1.1":
            return None
        if self.headers.get("Transfer-Encoding"):
            return None
        raw = self.headers.get("Content-Length")
        if raw is None:
            return 0
        try:
            length = int(raw.strip())
        except ValueError:
            return None
        return length if length >= 0 else None


class _Answer:
    """One WSGI call written to the handler's socket (as werkzeug's run_wsgi, minus the close)."""

    def __init__(self, handler: KeepAliveHandler, environ: dict[str, Any]) -> None:
        self.handler = handler
        self.environ = environ
        self.status: str | None = None
        self.headers: list[tuple[str, str]] | None = None
        self.sent = False
        self.chunked = False

    def reset(self) -> None:
        self.status = self.headers = None

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]:
        if exc_info:
            try:
                if self.sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.headers is not None:
            raise AssertionError("Headers already set")
        self.status, self.headers = status, headers
        return self.write

    def write(self, data: bytes) -> None:
        handler = self.handler
        if not self.sent:
            assert self.status is not None and self.headers is not None, "write() before start_response"
            self.sent = True
            code_text, _, reason = self.status.partition(" ")
            code = int(code_text)
            handler.send_response(code, reason)
            keys = set()
            for key, value in self.headers:
                handler.send_header(key, value)
                keys.add(key.lower())
            if not (
                "content-length" in keys
                or self.environ["REQUEST_METHOD"] == "HEAD"
                or 100 <= code < 200
                or code in (204, 304)
            ):
                self.chunked = True
                handler.send_header("Transfer-Encoding", "chunked")
            handler.end_headers()
        if data:
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if self.chunked else data)
        handler.wfile.flush()

    def run(self, app: Callable[[dict[str, Any], Any], Iterable[bytes]]) -> None:
        chunks = app(self.environ, self.start_response)
        try:
            for data in chunks:
                self.write(data)
            if not self.sent:
                self.write(b"")
            if self.chunked:
                self.handler.wfile.write(b"0\r\n\r\n")
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
