"""A webhook receiver that verifies textback's signatures: the signed-webhook connector's emulator."""

from __future__ import annotations

import json
import time
from typing import Any

from flask import Flask, Response, jsonify, request

from connectors.emulator import EmulatorApp, serve_foreground
from connectors.webhook import signing

SANDBOX_SECRET = "sandbox-webhook-secret-0123456789"  # noqa: S105 - the emulator's, public by design
PATH = "/hooks/textback"


class WebhookReceiver:
    def __init__(self, secret: str = SANDBOX_SECRET) -> None:
        self.secret = secret
        self.deliveries: list[dict[str, Any]] = []
        self.seen: set[str] = set()
        self.duplicates = 0
        self.rejected = 0
        self.emulator = EmulatorApp("webhook", state=self._state, reset=self._reset)
        self._install()

    @property
    def app(self) -> Flask:
        return self.emulator.app

    def _state(self) -> dict[str, Any]:
        return {"deliveries": list(self.deliveries), "duplicates": self.duplicates, "rejected": self.rejected}

    def _reset(self) -> None:
        self.deliveries.clear()
        self.seen.clear()
        self.duplicates = self.rejected = 0

    def _install(self) -> None:
        @self.app.post(PATH)
        def receive() -> tuple[Response, int]:
            body = request.get_data()
            header = request.headers.get(signing.HEADER, "")
            with self.emulator.lock:
                if not signing.verify(self.secret, body, header):
                    self.rejected += 1
                    return jsonify({"error": "bad signature"}), 401
                delivery = request.headers.get(signing.DELIVERY_HEADER, "")
                if delivery in self.seen:
                    self.duplicates += 1
                    return jsonify({"ok": True, "duplicate": True}), 200
                self.seen.add(delivery)
                payload = json.loads(body)
                self.deliveries.append(
                    {
                        "delivery_id": delivery,
                        "event": payload.get("event"),
                        "received_at": time.time(),
                        "payload": payload,
                    }
                )
            return jsonify({"ok": True}), 200


def run(host: str, port: int, secret: str = SANDBOX_SECRET) -> None:
    serve_foreground(WebhookReceiver(secret).app, host, port)
