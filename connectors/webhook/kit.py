"""Conformance kit adapter for the signed-webhook connector."""

from __future__ import annotations

from typing import Any

import requests
from flask import Flask

from connectors.testing import ConnectorKit
from connectors.webhook.connector import WebhookConnector
from connectors.webhook.emulator import PATH, SANDBOX_SECRET, WebhookReceiver


class WebhookKit(ConnectorKit):
    connector_cls = WebhookConnector
    fault_path = PATH
    html_200_is_error = False

    def emulator_app(self) -> Flask:
        return WebhookReceiver(SANDBOX_SECRET).app

    def config(self, emulator_url: str) -> dict[str, Any]:
        return {
            "url": emulator_url + PATH,
            "signing_secret": SANDBOX_SECRET,
            "timeout_seconds": self.timeout_seconds,
        }

    def count_records(self, emulator_url: str, phone: str) -> int:
        state = requests.get(f"{emulator_url}/_emulator/state", timeout=5).json()
        return sum(1 for d in state["deliveries"] if (d["payload"].get("lead") or {}).get("phone") == phone)
