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


# name -> the emulator's class (constructed with its sandbox defaults), for in-process use
CLASSES: dict[str, str] = {
    "hubspot": "connectors.hubspot.emulator:HubSpotEmulator",
    "salesforce": "connectors.salesforce.emulator:SalesforceEmulator",
    "pipedrive": "connectors.pipedrive.emulator:PipedriveEmulator",
    "google_calendar": "connectors.google_calendar.emulator:GoogleCalendarEmulator",
    "webhook": "connectors.webhook.emulator:WebhookReceiver",
}


def make_app(name: str) -> Any:
    """A fresh emulator app with its sandbox defaults (a Flask app)."""
    module, _, cls = CLASSES[name].partition(":")
    return getattr(importlib.import_module(module), cls)().app


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
