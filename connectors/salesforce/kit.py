"""Conformance kit adapter for the Salesforce connector (client credentials against the emulator)."""

from __future__ import annotations

from typing import Any

import requests
from flask import Flask

from connectors.salesforce.connector import DEFAULT_EXTERNAL_ID_FIELD, SalesforceConnector
from connectors.salesforce.emulator import SANDBOX, SalesforceEmulator
from connectors.testing import ConnectorKit


class SalesforceKit(ConnectorKit):
    connector_cls = SalesforceConnector
    #: every REST call (the lookup composite and the Lead upsert) lives under this prefix; the
    #: token endpoint (/services/oauth2/) does not, so faults hit the API, not the sign-in
    fault_path = "/services/data/"

    def emulator_app(self) -> Flask:
        return SalesforceEmulator().app

    def config(self, emulator_url: str) -> dict[str, Any]:
        return {
            "auth_kind": "client_credentials",
            "consumer_key": SANDBOX["client_id"],
            "consumer_secret": SANDBOX["client_secret"],
            "domain": SANDBOX["domain"],
            "api_base_url": emulator_url,
        }

    def count_records(self, emulator_url: str, phone: str) -> int:
        state = requests.get(f"{emulator_url}/_emulator/state", timeout=5).json()
        return sum(1 for lead in state["Lead"] if lead.get(DEFAULT_EXTERNAL_ID_FIELD) == phone)
