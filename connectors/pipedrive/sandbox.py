"""Sandbox settings: the Pipedrive connector pointed at the local emulator.

The emulator seeds one pipeline, "Sales" (id 1), with the stages Lead In (1), Contact Made (2),
Qualified (3), Booked (4) and Won (5); sync settings hold ids as strings.
"""

from __future__ import annotations

from typing import Any

from connectors.pipedrive.emulator import SANDBOX_TOKEN
from connectors.pipedrive.emulator_store import COMPANY, SEED_PIPELINE


def settings(emulator_url: str) -> dict[str, Any]:
    return {
        "api_token": SANDBOX_TOKEN,
        "api_base_url": emulator_url,
        "company_domain": COMPANY["domain"],
        "pipeline_id": SEED_PIPELINE["id"],
        "sync": {
            "pipeline": str(SEED_PIPELINE["id"]),
            "stages": {"new": "1", "qualified": "3", "booked": "4"},
        },
    }
