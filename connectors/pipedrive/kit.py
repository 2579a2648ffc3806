"""Conformance kit adapter for the Pipedrive connector (API token against the emulator)."""

from __future__ import annotations

from typing import Any

import requests
from flask import Flask

from connectors.pipedrive.connector import PipedriveConnector
from connectors.pipedrive.emulator import SANDBOX_TOKEN, PipedriveEmulator
from connectors.testing import ConnectorKit
from core.phones import to_e164


class PipedriveKit(ConnectorKit):
    connector_cls = PipedriveConnector
    fault_path = "/api/v2/persons"  # the person search and create every push makes

    def emulator_app(self) -> Flask:
        return PipedriveEmulator().app

    def config(self, emulator_url: str) -> dict[str, Any]:
        return {"api_token": SANDBOX_TOKEN, "api_base_url": emulator_url}

    def count_records(self, emulator_url: str, phone: str) -> int:
        state = requests.get(f"{emulator_url}/_emulator/state", timeout=5).json()
        return sum(
            1
            for person in state["persons"]
            if not person["is_deleted"]
            and any(p["value"] == phone or to_e164(p["value"]) == phone for p in person["phones"])
        )
