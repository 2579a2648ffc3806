"""Sandbox settings: the signed-webhook connector pointed at the local receiver."""

from __future__ import annotations

from typing import Any

from connectors.webhook.emulator import PATH, SANDBOX_SECRET


def settings(emulator_url: str) -> dict[str, Any]:
    return {"url": emulator_url + PATH, "signing_secret": SANDBOX_SECRET}
