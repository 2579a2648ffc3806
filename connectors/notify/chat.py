"""Staff notifications to a Slack- or Teams-style incoming webhook (``notify.webhook`` jobs)."""

from __future__ import annotations

from typing import Any

import requests

from connectors import http_errors
from core.outbox import Job


class ChatWebhookJob:
    def __init__(self, timeout: float = 10.0) -> None:
        self.timeout = timeout

    def __call__(self, job: Job) -> dict[str, Any]:
        payload = {"text": job.payload["text"]}
        try:
            response = requests.post(
                job.payload["url"],
                json=payload,
                timeout=self.timeout,
                headers={"X-Textback-Delivery": f"job-{job.id}"},
            )
        except requests.RequestException as exc:
            raise http_errors.network_error("the chat webhook", exc) from None
        if not 200 <= response.status_code < 300:
            raise http_errors.classify(
                "the chat webhook", response.status_code, response.headers, response.content
            )
        return {"status": response.status_code}
