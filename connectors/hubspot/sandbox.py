"""Sandbox settings: the HubSpot connector pointed at the local HubSpot emulator."""

from __future__ import annotations

from typing import Any

from connectors.hubspot.emulator import SANDBOX_TOKEN


def settings(emulator_url: str) -> dict[str, Any]:
    return {
        "access_token": SANDBOX_TOKEN,
        "api_base_url": emulator_url,
        # The product's default sync settings (a deal at the first reply, no call-back task), with
        # the emulator's pipeline stages.
        "sync": {
            # The emulator's default "Sales Pipeline" stage ids (HubSpot's own defaults).
            "stages": {
                "new": "appointmentscheduled",
                "qualified": "qualifiedtobuy",
                "booked": "presentationscheduled",
            },
            "task_sla_minutes": 15,
        },
    }
