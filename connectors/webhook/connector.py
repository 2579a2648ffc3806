"""The signed-webhook connector: every lead event, with the whole lead record, POSTed as JSON.

For Zapier, Make, n8n or an in-house system. See connectors/webhook/signing.py (and
docs/connectors.md) for how a receiver verifies a delivery.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

from connectors import http_errors
from connectors.base import Connector
from connectors.webhook import signing
from core.crm import CheckResult

MANIFEST = Path(__file__).resolve().parents[2] / "manifests" / "webhook.yaml"


class WebhookConnector(Connector):
    id = "webhook"
    MANIFEST = MANIFEST

    def _post(self, event: str, payload: dict[str, Any], delivery_id: str) -> requests.Response:
        body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "textback-webhook/1",
            signing.HEADER: signing.sign(self.config["signing_secret"], body),
            signing.DELIVERY_HEADER: delivery_id,
            signing.EVENT_HEADER: event,
        }
        self.context.throttle(1)
        self.api_calls += 1
        try:
            response = requests.post(
                self.config["url"],
                data=body,
                headers=headers,
                timeout=float(self.config.get("timeout_seconds", self.context.timeout)),
            )
        except requests.RequestException as exc:
            raise http_errors.network_error("the webhook receiver", exc) from None
        if not 200 <= response.status_code < 300:
            raise http_errors.classify(
                "the webhook receiver", response.status_code, response.headers, response.content
            )
        return response

    def on_event(self, event: str, lead: dict[str, Any], delivery_id: str) -> None:
        payload = {
            "event": event,
            "delivery_id": delivery_id,
            "sent_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "lead": lead,
        }
        self._post(event, payload, delivery_id)

    def check(self) -> CheckResult:
        try:
            self._post("ping", {"event": "ping", "delivery_id": "ping", "lead": None}, "ping")
        except Exception as exc:
            return CheckResult(
                False, f"the receiver at {self.config['url']} did not accept a signed ping: {exc}"
            )
        return CheckResult(True, f"the receiver at {self.config['url']} accepted a signed ping")
