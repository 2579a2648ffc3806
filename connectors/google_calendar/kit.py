"""Conformance kit adapter for the Google Calendar connector (service-account flow, auth on)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import requests
from flask import Flask

from connectors.base import Connector
from connectors.google_calendar.connector import GoogleCalendarConnector
from connectors.google_calendar.emulator import GoogleCalendarEmulator, service_account_info
from connectors.testing import ConnectorKit
from core.crm import BookingData, Slot

#: a fixed slot in the future (Monday 4 March 2030, 10:00-11:00 in Chicago)
KIT_SLOT = Slot(datetime(2030, 3, 4, 16, 0, tzinfo=UTC), datetime(2030, 3, 4, 17, 0, tzinfo=UTC))


class GoogleCalendarKit(ConnectorKit):
    connector_cls = GoogleCalendarConnector
    fault_path = "/calendar/v3/"

    def emulator_app(self) -> Flask:
        return GoogleCalendarEmulator().app  # require_auth is on by default

    def config(self, emulator_url: str) -> dict[str, Any]:
        return {
            "auth_kind": "service_account",
            "service_account_json": json.dumps(service_account_info(emulator_url + "/token")),
            "calendar_id": "primary",
            "api_base_url": emulator_url,
        }

    def push(self, connector: Connector, phone: str) -> None:
        booking = BookingData(
            key=f"kit:{phone}",
            slot=KIT_SLOT,
            summary="Callback: Kit Caller",
            description=phone,
            time_zone="America/Chicago",
        )
        connector.create_booking(booking, None)  # type: ignore[attr-defined]

    def count_records(self, emulator_url: str, phone: str) -> int:
        state = requests.get(f"{emulator_url}/_emulator/state", timeout=5).json()
        return sum(
            1
            for events in state["events"].values()
            for event in events
            if event.get("status") != "cancelled" and phone in (event.get("description") or "")
        )
