"""Sandbox settings: the Salesforce connector signed in with client credentials at the local emulator.

The stages are Lead statuses (Lead mode): the emulated org has Salesforce's standard Lead Status
picklist (Open - Not Contacted, Working - Contacted, Closed - Converted, Closed - Not Converted),
which has no value between "working" and "converted", so a booked call stays "Working - Contacted"
(an org that adds a "Qualified" or "Booked" status sets it here instead).
"""

from __future__ import annotations

from typing import Any

from connectors.salesforce.emulator import SANDBOX


def settings(emulator_url: str) -> dict[str, Any]:
    return {
        "auth_kind": "client_credentials",
        "consumer_key": SANDBOX["client_id"],
        "consumer_secret": SANDBOX["client_secret"],
        "domain": SANDBOX["domain"],
        "api_base_url": emulator_url,
        "sync": {
            "stages": {"new": "Open - Not Contacted", "qualified": "Working - Contacted",
                       "booked": "Working - Contacted"},
        },
    }
