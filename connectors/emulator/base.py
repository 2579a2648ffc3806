"""The `/_emulator/` surface every vendor emulator shares.

An emulator is a Flask app that speaks one vendor's wire format on 127.0.0.1 and adds:

- ``GET  /_emulator/requests``  every request received, with the emulator's own timestamps, in the
  order faults were met (``fault``: the injected status, ``"delay"``, or null);
- ``GET  /_emulator/state``     what the emulator holds (vendor-specific shape);
- ``POST /_emulator/faults``    make the next N matching requests fail (or stall) a given way;
- ``POST /_emulator/reset``     forget state, faults and the request log.

Vendor emulators subclass nothing: they build an :class:`EmulatorApp` and register routes on
``emulator.app`` plus a ``state`` and ``reset`` callback.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.serving import BaseWSGIServer, make_server

from connectors.emulator.serving import Connections, KeepAliveHandler


@dataclass
class Fault:
    """One injected fault. ``status`` None means "only delay, then answer normally"."""

    path: str
    method: str | None = None
    status: int | None = None
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_ms: int = 0
    count: int | None = None  # None: until reset

    def matches(self, method: str, path: str) -> bool:
        if self.method and self.method.upper() != method.upper():
            return False
        return path.startswith(self.path)


class EmulatorApp:
    """A Flask app with the shared `/_emulator/` endpoints, request log and fault injection."""

    def __init__(
        self,
        name: str,
        state: Callable[[], dict[str, Any]],
        reset: Callable[[], None],
    ) -> None:
        self.name = name
        self.app = Flask(f"textback-emulator-{name}")
        self.lock = threading.RLock()
        self._state = state
        self._reset = reset
        self.requests: list[dict[str, Any]] = []
        self.faults: list[Fault] = []
        self._install()

    # -- fault and log plumbing -------------------------------------------------------------
    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.matches(method, path):
                    if fault.count is not None:
                        fault.count -= 1
                        if fault.count <= 0:
                            self.faults.remove(fault)
                    return fault
        return None

    def _install(self) -> None:
        app = self.app

        @app.before_request
        def _log_and_fault() -> Response | None:
            path = request.path
            if path.startswith("/_emulator/"):
                return None
            entry = {
                "at": time.time(),
                "method": request.method,
                "path": path,
                "query": request.query_string.decode("latin-1"),
                "headers": {k: v for k, v in request.headers.items()},
                "form": request.form.to_dict(flat=False) if request.form else None,
                "json": request.get_json(silent=True) if request.is_json else None,
            }
            # One hold for both: the request log's order is the order in which faults were met.
            with self.lock:
                self.requests.append(entry)
                fault = self._take_fault(request.method, path)
                entry["fault"] = None if fault is None else (fault.status or "delay")
            if fault is None:
                return None
            if fault.status is None:
                # A pure delay is applied after the request is handled (see after_request), which is
                # what makes a client-side timeout ambiguous: the vendor did the work.
                request.environ["textback.emulator.delay_ms"] = fault.delay_ms
                return None
            if fault.delay_ms:
                time.sleep(fault.delay_ms / 1000)
            return _fault_response(fault)

        @app.after_request
        def _delay(response: Response) -> Response:
            delay = request.environ.get("textback.emulator.delay_ms")
            if delay:
                time.sleep(delay / 1000)
            return response

        @app.get("/_emulator/requests")
        def _requests() -> Response:
            with self.lock:
                return jsonify({"requests": list(self.requests)})

        @app.get("/_emulator/state")
        def _state() -> Response:
            with self.lock:
                return jsonify(self._state())

        @app.post("/_emulator/faults")
        def _faults() -> tuple[Response, int]:
            spec = request.get_json(silent=True)
            if not isinstance(spec, dict) or not isinstance(spec.get("path"), str):
                return jsonify({"error": "a fault needs at least a string 'path' prefix"}), 400
            try:
                fault = Fault(
                    path=spec["path"],
                    method=spec.get("method"),
                    status=int(spec["status"]) if spec.get("status") is not None else None,
                    body=spec.get("body"),
                    headers=dict(spec.get("headers") or {}),
                    delay_ms=int(spec.get("delay_ms") or 0),
                    count=int(spec["count"]) if spec.get("count") is not None else None,
                )
            except (TypeError, ValueError) as exc:
                return jsonify({"error": f"bad fault: {exc}"}), 400
            with self.lock:
                self.faults.append(fault)
            return jsonify({"ok": True, "faults": len(self.faults)}), 201

        @app.post("/_emulator/reset")
        def _reset() -> Response:
            with self.lock:
                self.requests.clear()
                self.faults.clear()
                self._reset()
            return jsonify({"ok": True})

        @app.get("/_emulator/health")
        def _health() -> Response:
            return jsonify({"ok": True, "emulator": self.name})


def _fault_response(fault: Fault) -> Response:
    body = fault.body
    headers = dict(fault.headers)
    if body is None:
        body = ""
    if isinstance(body, (dict, list)):
        import json

        payload = json.dumps(body)
        headers.setdefault("Content-Type", "application/json")
    else:
        payload = str(body)
        headers.setdefault("Content-Type", "text/plain; charset=utf-8")
    status = fault.status if fault.status is not None else 200
    return Response(payload, status=status, headers=headers)


class ServerThread:
    """A werkzeug server on 127.0.0.1 running in a daemon thread."""

    def __init__(self, server: BaseWSGIServer) -> None:
        self.server = server
        self.thread = threading.Thread(target=server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def start(self) -> ServerThread:
        self.thread.start()
        return self

    def stop(self) -> None:
        # shutdown() waits for serve_forever's next poll, up to 0.5 s; a connection wakes its
        # select() at once. A test suite stops hundreds of emulators, and a consultant's kit run too.
        stopper = threading.Thread(target=self.server.shutdown, daemon=True)
        stopper.start()
        host, port = self.server.server_address[:2]
        address = ("127.0.0.1" if host in ("0.0.0.0", "") else str(host), int(port))
        while stopper.is_alive():
            with contextlib.suppress(OSError), socket.create_connection(address, timeout=0.2):
                pass
            stopper.join(0.05)
        self.server.server_close()
        connections = getattr(self.server, "connections", None)
        if isinstance(connections, Connections):
            connections.close_all()  # kept-alive clients must find the server gone, as before


def _server(app: Flask, host: str, port: int) -> BaseWSGIServer:
    server = make_server(host, port, app, threaded=True, request_handler=KeepAliveHandler)
    server.connections = Connections()  # type: ignore[attr-defined]
    return server


def serve_in_thread(app: Flask, port: int = 0, host: str = "127.0.0.1") -> ServerThread:
    """Serve ``app`` threaded on ``host:port`` (0 picks a free port) and return the running server."""
    return ServerThread(_server(app, host, port)).start()


def serve_foreground(app: Flask, host: str, port: int) -> None:
    """Serve ``app`` threaded in the foreground until Ctrl-C (the `textback emulator` commands)."""
    server = _server(app, host, port)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


class Hosted:
    """For emulator classes holding an :class:`EmulatorApp` as ``self.emulator``."""

    emulator: EmulatorApp

    @property
    def app(self) -> Flask:
        return self.emulator.app

    @property
    def lock(self) -> threading.RLock:
        return self.emulator.lock
