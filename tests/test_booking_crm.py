"""Issue 4's "done when": with a CRM and Google Calendar installed together, a booked slot gives
exactly one calendar event and the deal (or opportunity) moves to the booked stage."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from click.testing import CliRunner

from bridge.cli import main
from connectors.emulator import serve_in_thread
from connectors.emulators import make_app
from tests.test_conversation import CALLER, events, make_stack, say, start


def _hubspot_stage(state: dict[str, Any]) -> list[str]:
    return [d["properties"]["dealstage"] for d in state["deals"]]


def _pipedrive_stage(state: dict[str, Any]) -> list[str]:
    return [str(d["stage_id"]) for d in state["deals"] if not d.get("is_deleted")]


def _salesforce_stage(state: dict[str, Any]) -> list[str]:
    return [o["StageName"] for o in state["Opportunity"]]


CRMS: dict[str, tuple[Callable[[dict[str, Any]], list[str]], dict[str, Any]]] = {
    "hubspot": (_hubspot_stage, {}),
    "pipedrive": (_pipedrive_stage, {}),
    "salesforce": (
        _salesforce_stage,
        {
            "mode": "contact",
            "sync": {
                "deal_on": "missed_call",
                "stages": {
                    "new": "Prospecting",
                    "qualified": "Qualification",
                    "booked": "Id. Decision Makers",
                },
            },
        },
    ),
}


@pytest.mark.parametrize("crm", sorted(CRMS))
def test_booking_moves_the_deal_and_makes_one_event(
    crm: str, tmp_path: Path, db_url: str, calendar: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    stage_of, overrides = CRMS[crm]
    server = serve_in_thread(make_app(crm))
    stack = make_stack(tmp_path, db_url, calendar, monkeypatch, escalation={"sms": []})
    try:
        settings = importlib.import_module(f"connectors.{crm}.sandbox").settings(server.url)
        settings.update(overrides)
        booked_stage = settings["sync"]["stages"]["booked"]
        path = tmp_path / f"{crm}.yaml"
        path.write_text(yaml.safe_dump(settings))
        result = CliRunner().invoke(
            main,
            ["connectors", "install", crm, "--config", str(stack.config_path), "--config-file", str(path)],
        )
        assert result.exit_code == 0, result.output
        start(stack)
        assert (
            "Reply 1, 2 or 3" in say(stack, "Hi this is Dana, I'd like to book a visit to fix my lights")[0]
        )
        assert "You're booked" in say(stack, "1")[0]
        stack.drain()
        assert len(events(calendar)) == 1
        state = requests.get(f"{server.url}/_emulator/state", timeout=5).json()
        assert stage_of(state) == [booked_stage]
        lead = stack.lead(CALLER)
        assert lead is not None and lead["status"] == "booked"
    finally:
        stack.close()
        server.stop()
