"""`textback demo`: the sandbox, one scripted missed call, and what happened, told for a person."""

from __future__ import annotations

import json
import tempfile
import time
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import click
import requests

from bridge.sandbox import Sandbox

# Fictional 555-01xx numbers in places whose local time covers every hour of the UTC day, so the
# demo can always pick a caller for whom texting is allowed right now.
CALLERS = [
    ("+13125550142", "Chicago"),
    ("+12125550142", "New York"),
    ("+14155550142", "San Francisco"),
    ("+18085550142", "Honolulu"),
    ("+442079460142", "London"),
    ("+61255500142", "Sydney"),
]


VOICEMAIL = "Hi, my breaker keeps tripping in the kitchen, can someone come out this week?"


def pick_caller(now: datetime) -> tuple[str, str, str]:
    from core.phones import time_zones

    for number, place in CALLERS:
        zone = ZoneInfo(time_zones(number)[0])
        local = now.astimezone(zone)
        if 8 <= local.hour < 21:
            return number, place, local.strftime("%H:%M")
    number, place = CALLERS[0]
    return number, place, now.astimezone(ZoneInfo(time_zones(number)[0])).strftime("%H:%M")


def run_demo(as_json: bool) -> int:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="textback-demo-") as tmp, Sandbox(tmp, quiet=True) as sb:
        if not as_json:
            click.echo("Starting the sandbox: Twilio emulator, bridge and worker on 127.0.0.1 ...")
        sb.start()
        business = sb.config.businesses[0]
        caller, place, local_time = pick_caller(datetime.now(UTC))
        twilio = sb.emulators["twilio"]
        call = requests.post(
            f"{twilio}/_emulator/calls",
            json={
                "from": caller,
                "to": business.numbers[0],
                "outcome": "no-answer",
                "ring_seconds": 20,
                "voicemail_text": VOICEMAIL,
            },
            timeout=20,
        ).json()
        message = _wait_for_text(twilio, caller, timeout=10)
        lead = _lead(sb, caller)
        facts: dict[str, Any] = {
            "business": {"id": business.id, "name": business.name, "number": business.numbers[0]},
            "caller": {"phone": caller, "place": place, "local_time": local_time},
            "call": {
                "call_sid": call.get("call_sid"),
                "outcome": "no-answer",
                "webhooks": len(call.get("steps", [])),
            },
            "decision": next((e for e in lead["timeline"] if e["type"] == "decision"), None)
            if lead
            else None,
            "text": message,
            "lead": lead,
            "seconds": round(time.monotonic() - started, 1),
        }
    if as_json:
        click.echo(json.dumps(facts, indent=2))
    else:
        click.echo(_story(facts))
    return 0 if message else 1


def _wait_for_text(twilio: str, caller: str, timeout: float) -> dict[str, Any] | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = requests.get(f"{twilio}/_emulator/state", timeout=5).json()
        sent = [m for m in state.get("messages", []) if m["to"] == caller]
        if sent and sent[0]["status"] in ("delivered", "undelivered", "failed"):
            return dict(sent[0])
        time.sleep(0.1)
    state = requests.get(f"{twilio}/_emulator/state", timeout=5).json()
    sent = [m for m in state.get("messages", []) if m["to"] == caller]
    return dict(sent[0]) if sent else None


def _lead(sb: Sandbox, caller: str) -> dict[str, Any] | None:
    from core import leads
    from core.db import make_engine, session_factory

    engine = make_engine(sb.config.database_url)
    try:
        with session_factory(engine)() as session:
            lead = leads.find(session, sb.config.businesses[0].id, caller)
            return leads.to_json(session, lead) if lead else None
    finally:
        engine.dispose()


def _story(f: dict[str, Any]) -> str:
    b, c = f["business"], f["caller"]
    lines = [
        "",
        f"1. A caller from {c['place']} ({c['phone']}, {c['local_time']} their time) "
        f"rang {b['name']} on {b['number']}.",
        "   Nobody picked up within the ring timeout; the caller left a voicemail.",
    ]
    d = f["decision"]
    if d:
        lines.append(f"2. Decision: {d['outcome']} (reason: {d['reason']}).")
    m = f["text"]
    if m:
        sent = m.get("date_created", "")
        lines += [
            f"3. Text sent from {m['from']} to {m['to']} ({m['status']}, {sent}):",
            f'     "{m["body"]}"',
        ]
    else:
        lines.append("3. No text reached the Twilio emulator (see the worker log).")
    lead = f["lead"]
    if lead:
        lines.append(
            f"4. Lead record {lead['id']}: status {lead['status']}, phone {lead['phone']}, "
            f"opted out: {'yes' if lead['opted_out'] else 'no'}. Timeline:"
        )
        for e in lead["timeline"]:
            detail = {k: v for k, v in e.items() if k not in ("at", "type") and v not in (None, "", False)}
            if e["type"] == "message":
                detail = {"direction": e["direction"], "status": e["status"], "sid": e["sid"]}
            lines.append(f"     {e['at'][:19]}  {e['type']:<11} {json.dumps(detail)}")
    lines.append(f"\nDone in {f['seconds']} s. Re-run with --json for the same facts as one JSON object.")
    return "\n".join(lines)
