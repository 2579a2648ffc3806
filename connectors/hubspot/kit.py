"""Conformance kit adapter for the HubSpot connector, against the local HubSpot emulator."""

from __future__ import annotations

from typing import Any

import requests
from flask import Flask

from connectors.hubspot import mappers, paths
from connectors.hubspot.connector import HubSpotConnector
from connectors.hubspot.emulator import SANDBOX_TOKEN, HubSpotEmulator
from connectors.testing import ConnectorKit


class HubSpotKit(ConnectorKit):
    connector_cls = HubSpotConnector
    fault_path = paths.contacts_batch_upsert()

    def emulator_app(self) -> Flask:
        # Generous limits: the kit's 20 concurrent pushes must not meet HubSpot's burst window.
        return HubSpotEmulator(rate_limit=(10_000, 10.0), search_rate_limit=(1_000, 1.0)).app

    def config(self, emulator_url: str) -> dict[str, Any]:
        return {"access_token": SANDBOX_TOKEN, "api_base_url": emulator_url}

    def count_records(self, emulator_url: str, phone: str) -> int:
        state = requests.get(f"{emulator_url}/_emulator/state", timeout=5).json()
        return sum(
            1 for c in state["contacts"] if (c.get("properties") or {}).get(mappers.PHONE_PROPERTY) == phone
        )
