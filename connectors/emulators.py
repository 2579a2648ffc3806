"""The local emulators textback ships, by name, and the sandbox settings of each connector."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

# name -> module with ``run(host, port)`` (Twilio's takes more; see bridge/cli.py)
EMULATORS: dict[str, str] = {
    "twilio": "connectors.twilio.emulator",
    "hubspot": "connectors.hubspot.emulator",
    "salesforce": "connectors.salesforce.emulator",
    "pipedrive": "connectors.pipedrive.emulator",
    "google_calendar": "connectors.google_calendar.emulator",
    "webhook": "connectors.webhook.emulator",
}


def available() -> list[str]:
    """Emulators whose module is present in this installation."""
    names = []
    for name, module in EMULATORS.items():
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        if callable(getattr(mod, "run", None)):
            names.append(name)
    return names


def runner(name: str) -> Callable[..., None]:
    return importlib.import_module(EMULATORS[name]).run


def sandbox_settings(connector_id: str, emulator_url: str) -> dict[str, Any] | None:
    """The settings (secrets included) that install ``connector_id`` against its emulator."""
    try:
        mod = importlib.import_module(f"connectors.{connector_id}.sandbox")
    except ImportError:
        return None
    return mod.settings(emulator_url)
