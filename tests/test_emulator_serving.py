"""The emulators' HTTP server: kept-alive connections carry one request after another, whatever the
app read of each body, and stopping the server closes them."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator

import pytest
from flask import Flask, request

from connectors.emulator.base import ServerThread, serve_in_thread


def echo_app() -> Flask:
    app = Flask("echo")

    @app.post("/echo")
    def echo() -> dict[str, object]:
        return {"body": request.get_data(as_text=True)}

    @app.post("/ignore")
    def ignore() -> dict[str, object]:
        return {"ignored": True}  # never reads the request body

    @app.get("/stream")
    def stream() -> object:
        return app.response_class((part for part in ("a", "b", "c")), mimetype="text/plain")

    return app


@pytest.fixture
def server() -> Iterator[ServerThread]:
    running = serve_in_thread(echo_app())
    yield running
    running.stop()


def ask(
    conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None
) -> tuple[int, bytes]:
    conn.request(method, path, body=body, headers={"Content-Type": "text/plain"})
    response = conn.getresponse()
    data = response.read()
    assert response.getheader("Connection") != "close"
    return response.status, data


def test_one_connection_carries_requests_whatever_the_app_read(server: ServerThread) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.server.server_port, timeout=5)
    status, data = ask(conn, "POST", "/echo", b"first")
    assert status == 200 and json.loads(data) == {"body": "first"}
    assert ask(conn, "POST", "/ignore", b"x" * 70_000)[0] == 200  # unread body skipped, not parsed
    assert json.loads(ask(conn, "POST", "/echo", b"second")[1]) == {"body": "second"}
    assert ask(conn, "GET", "/stream") == (200, b"abc")  # no length: sent chunked
    assert ask(conn, "GET", "/missing")[0] == 404
    assert json.loads(ask(conn, "POST", "/echo", b"")[1]) == {"body": ""}
    sock = conn.sock
    assert sock is not None and ask(conn, "POST", "/echo", b"last")[0] == 200 and conn.sock is sock
    conn.close()


def test_a_client_asking_to_close_gets_closed(server: ServerThread) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.server.server_port, timeout=5)
    conn.request("POST", "/echo", body=b"bye", headers={"Connection": "close"})
    response = conn.getresponse()
    assert response.status == 200 and json.loads(response.read()) == {"body": "bye"}
    assert response.will_close


def test_stopping_the_server_closes_kept_alive_connections() -> None:
    running = serve_in_thread(echo_app())
    conn = http.client.HTTPConnection("127.0.0.1", running.server.server_port, timeout=5)
    assert ask(conn, "POST", "/echo", b"hi")[0] == 200
    running.stop()
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        ask(conn, "POST", "/echo", b"still there?")
