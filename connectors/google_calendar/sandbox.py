"""Sandbox settings: the Google Calendar connector on the emulator's service account."""

from __future__ import annotations

import json
from typing import Any

import requests


def settings(emulator_url: str) -> dict[str, Any]:
    # The emulator makes a new signing key per process, so the key comes from the running one.
    info = requests.get(f"{emulator_url}/_emulator/service-account", timeout=5).json()
    return {
        "auth_kind": "service_account",
        "service_account_json": json.dumps(info),
        "calendar_id": "primary",
        "api_base_url": emulator_url,
    }
