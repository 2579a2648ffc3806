"""`textback demo`: the whole story through the real bridge, worker, connectors and emulators.

Nothing is canned: a scripted caller misses the business, gets the text, replies, answers the
qualifying question, picks one of three real slots and is booked; the demo then reads what landed
in each CRM emulator and the staff notification, and tells it for a person (or as one JSON object).
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
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
SCRIPT = [
    "Hi, this is Dana",
    "I'd like to book someone to look at a breaker that keeps tripping",
    "2",
]


def pick_caller(now: datetime) -> tuple[str, str, str]:
    from core.phones import time_zones

    for number, place in CALLERS:
        zone = ZoneInfo(time_zones(number)[0])
        local = now.astimezone(zone)
        if 8 <= local.hour < 20:
            return number, place, local.strftime("%H:%M")
    number, place = CALLERS[0]
    return number, place, now.astimezone(ZoneInfo(time_zones(number)[0])).strftime("%H:%M")


def _until(check: Callable[[], Any], timeout: float, step: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step)


class Demo:
    def __init__(self, sb: Sandbox) -> None:
        self.sb = sb
        self.twilio = sb.emulators["twilio"]
        self.business = sb.config.businesses[0]

    def state(self, name: str) -> dict[str, Any]:
        return dict(requests.get(f"{self.sb.emulators[name]}/_emulator/state", timeout=5).json())

    def texts(self, to: str) -> list[dict[str, Any]]:
        return [m for m in self.state("twilio")["messages"] if m["to"] == to]

    def next_text(self, to: str, seen: int, timeout: float = 10) -> dict[str, Any] | None:
        found = _until(lambda: self.texts(to)[seen:], timeout)
        return dict(found[0]) if found else None

    def reply(self, caller: str, body: str) -> None:
        requests.post(
            f"{self.twilio}/_emulator/inbound-sms",
            json={"from": caller, "to": self.business.numbers[0], "body": body},
            timeout=10,
        )

    def idle(self, timeout: float = 15) -> bool:
        """Wait until no job is due: later ones (a follow-up hours from now) are not the story."""
        from sqlalchemy import func, select

        from core.db import make_engine, session_factory
        from core.models import OutboxJob, utcnow

        engine = make_engine(self.sb.config.database_url)
        try:
            factory = session_factory(engine)

            def quiet() -> bool:
                with factory() as session:
                    due = session.scalar(
                        select(func.count())
                        .select_from(OutboxJob)
                        .where(
                            OutboxJob.status.in_(("pending", "running")),
                            OutboxJob.next_attempt_at <= utcnow(),
                        )
                    )
                    return not due

            return bool(_until(quiet, timeout, 0.2))
        finally:
            engine.dispose()


def run_demo(as_json: bool) -> int:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="textback-demo-") as tmp, Sandbox(tmp, quiet=True) as sb:
        if not as_json:
            click.echo("Starting the sandbox: emulators, bridge and worker on 127.0.0.1 ...")
        sb.start()
        demo = Demo(sb)
        business = demo.business
        caller, place, local_time = pick_caller(datetime.now(UTC))
        call = requests.post(
            f"{demo.twilio}/_emulator/calls",
            json={
                "from": caller,
                "to": business.numbers[0],
                "outcome": "no-answer",
                "ring_seconds": 20,
                "voicemail_text": VOICEMAIL,
            },
            timeout=20,
        ).json()
        exchange: list[dict[str, Any]] = []
        first = demo.next_text(caller, 0)
        if first:
            exchange.append({"from": "textback", "body": first["body"]})
        for line in SCRIPT:
            seen = len(demo.texts(caller))
            demo.reply(caller, line)
            exchange.append({"from": "caller", "body": line})
            answer = demo.next_text(caller, seen)
            if answer is None:
                break
            exchange.append({"from": "textback", "body": answer["body"]})
        demo.idle()
        facts = _facts(sb, demo, caller, place, local_time, call, first, exchange)
        facts["seconds"] = round(time.monotonic() - started, 1)
    if as_json:
        click.echo(json.dumps(facts, indent=2, default=str))
    else:
        click.echo(_story(facts))
    return 0 if facts["text"] and facts["booking"] else 1


def _facts(
    sb: Sandbox,
    demo: Demo,
    caller: str,
    place: str,
    local_time: str,
    call: dict[str, Any],
    first: dict[str, Any] | None,
    exchange: list[dict[str, Any]],
) -> dict[str, Any]:
    from core import leads
    from core.db import make_engine, session_factory
    from core.models import SyncLedger

    business = demo.business
    engine = make_engine(sb.config.database_url)
    try:
        with session_factory(engine)() as session:
            row = leads.find(session, business.id, caller)
            lead = leads.to_json(session, row) if row else None
            ledger = session.query(SyncLedger).filter(SyncLedger.lead_id == (row.id if row else "")).all()
            records: dict[str, list[dict[str, Any]]] = {}
            for entry in ledger:
                records.setdefault(entry.connector_id, []).append(
                    {"kind": entry.key.split(":")[0], "id": entry.remote_id, "url": entry.remote_url}
                )
    finally:
        engine.dispose()
    timeline = (lead or {}).get("timeline", [])
    staff = [m for phone in business.escalation.sms for m in demo.texts(phone)]
    booking = next((e for e in timeline if e["type"] == "booking"), None)
    crm_state = {name: demo.state(name) for name in sb.emulators if name != "twilio"}
    return {
        "business": {"id": business.id, "name": business.name, "number": business.numbers[0]},
        "caller": {"phone": caller, "place": place, "local_time": local_time},
        "call": {
            "call_sid": call.get("call_sid"),
            "outcome": "no-answer",
            "webhooks": len(call.get("steps", [])),
        },
        "decision": next((e for e in timeline if e["type"] == "decision"), None),
        "text": first,
        "conversation": exchange,
        "offered_slots": next((m["body"] for m in exchange if "Reply 1, 2" in m["body"]), None),
        "booking": booking,
        "crm_records": records,
        "emulators": {name: _summary(name, state) for name, state in crm_state.items()},
        "staff_notifications": [{"to": m["to"], "body": m["body"]} for m in staff],
        "lead": lead,
    }


def _summary(name: str, state: dict[str, Any]) -> dict[str, int]:
    """How many records of each kind an emulator holds."""
    if name == "google_calendar":
        return {"events": sum(len(v) for v in state.get("events", {}).values())}
    if name == "webhook":
        return {"deliveries": len(state.get("deliveries", []))}
    return {
        k: len(v) for k, v in state.items() if isinstance(v, list) and k not in ("associations", "archived")
    }


def _story(f: dict[str, Any]) -> str:
    b, c = f["business"], f["caller"]
    lines = [
        "",
        f"1. A caller from {c['place']} ({c['phone']}, {c['local_time']} their time) rang {b['name']} "
        f"on {b['number']}.",
        "   Nobody picked up within the ring timeout; the caller left a voicemail.",
    ]
    d = f["decision"]
    if d:
        lines.append(f"   Decision: {d['outcome']} (reason: {d['reason']}).")
    m = f["text"]
    lines.append(
        f'2. The text, from {m["from"]}:\n     "{m["body"]}"' if m else "2. No text was sent (see logs)."
    )
    lines.append("3-5. The conversation:")
    for turn in f["conversation"][1:]:
        who = "caller   " if turn["from"] == "caller" else "textback "
        lines.append(f"     {who}: {turn['body']}")
    bk = f["booking"]
    if bk:
        lines.append(f"   Booked: calendar event {bk['event_id']} from {bk['start']} to {bk['end']}.")
    lines.append("6. Records in each CRM emulator (from the sync ledger):")
    for connector, recs in sorted(f["crm_records"].items()):
        lines.append(f"     {connector}:")
        for r in recs:
            lines.append(f"       {r['kind']:<8} {r['id']}" + (f"  {r['url']}" if r["url"] else ""))
    for name, counts in sorted(f["emulators"].items()):
        lines.append(f"     {name} emulator holds: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    lines.append("7. Staff notifications:")
    for n in f["staff_notifications"]:
        lines.append(f"     to {n['to']}: {n['body']}")
    lead = f["lead"]
    if lead:
        lines.append(
            f"\nLead {lead['id']}: status {lead['status']}, name {lead['name'] or '-'}, "
            f"{len(lead['timeline'])} timeline entries."
        )
    lines.append(f"Done in {f['seconds']} s. Re-run with --json for the same facts as one JSON object.")
    return "\n".join(lines)
