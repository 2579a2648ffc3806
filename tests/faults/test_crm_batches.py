"""Fault suite, CRM batches: workers SIGKILLed right after HubSpot answered a batch request (the
contact upsert, the deals/calls/tasks/notes batch creates, the texts) lose and duplicate nothing."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from connectors.hubspot import mappers
from tests.faults.harness import World, Zygote

pytestmark = pytest.mark.faults

KILLS = 20
WORKERS = {"sqlite": 2, "postgresql": 3}


def _records(world: World) -> dict[str, Any]:
    emulator = world.crms["hubspot"].emulator
    with emulator.lock:
        return emulator._state()  # type: ignore[no-any-return]


def _linked(state: dict[str, Any], kind: str, contact_id: str) -> list[str]:
    return [
        a["from_id"]
        for a in state["associations"]
        if a["from_type"] == kind and a["to_type"] == "contacts" and a["to_id"] == contact_id
    ]


@pytest.mark.slow
def test_workers_killed_after_batch_requests_make_every_record_once(
    make_world: Callable[..., World], zygote: Zygote
) -> None:
    world = make_world(
        worker={
            "lease_seconds": 5,
            "batch_size": 10,  # jobs claimed together: their records go in batch requests
            "poll_interval": 0.1,
            "backoff_initial": 0.1,
            "backoff_max": 0.5,
        },
        twilio={"timeout_seconds": 1},
    )
    sync = {
        "deal_on": "missed_call",
        "stages": {"new": "appointmentscheduled"},
        "create_task": True,
        "log_calls": True,
        "log_messages": True,
    }
    world.add_crm("hubspot", sync=sync, rate_limit=None, search_rate_limit=None)
    callers = [f"+1312555{7400 + n:04d}" for n in range(60)]
    for caller in callers:  # queued before any worker runs: claimed ten at a time
        world.missed_call(caller)
    answer = zygote.ask(
        cmd="supervise",
        name=f"{world.db_kind}-batches",
        argv=["worker", "--config", str(world.config_path)],
        workers=WORKERS[world.db_kind],
        kills=KILLS,
        points=["after_vendor_call"],
        # ~80 vendor calls in all: at 0.5 the 20 kills come long before the work runs out.
        probability={"after_vendor_call": 0.5},
        env={"FAULTS_NO_LOCAL_RATE_LIMIT": "1"},
        log_dir=str(world.session.logs),
    )
    assert answer == {"ok": True}
    try:
        deadline = time.monotonic() + 150
        while True:
            killed = sum(zygote.status()["kills"].values())
            running = sum(1 for j in world.jobs() if j.status == "running")
            if killed >= KILLS and world.due(horizon=5) == 0 and running == 0:
                break
            assert time.monotonic() < deadline, (zygote.status()["kills"], world.job_summary())
            time.sleep(0.5)
    finally:
        zygote.ask(cmd="unsupervise")
        final = zygote.stop_children(grace=10)
    assert sum(final["kills"].values()) == KILLS
    summary = world.job_summary()
    assert set(summary) == {"sms.send:done", "crm.sync:done"}, summary
    assert Counter(m["to"] for m in world.sent()) == Counter(dict.fromkeys(callers, 1))
    state = _records(world)
    batches = world.crms["hubspot"].requests("/crm/v3/objects/")
    assert any(r["path"].endswith("/batch/create") for r in batches)  # the batch path was taken
    phones = Counter(c["properties"].get(mappers.PHONE_PROPERTY) for c in state["contacts"])
    assert phones == Counter(dict.fromkeys(callers, 1))
    for contact in state["contacts"]:
        cid = contact["id"]
        for kind in ("deals", "calls", "tasks"):
            assert len(_linked(state, kind, cid)) == 1, (kind, contact["properties"].get("phone"))
        # The first text, once: a note of its own or written into the call activity.
        notes = [
            n
            for n in state["notes"]
            if n["id"] in _linked(state, "notes", cid) and "Text sent to" in n["properties"]["hs_note_body"]
        ]
        calls = [
            c
            for c in state["calls"]
            if c["id"] in _linked(state, "calls", cid) and "Texted back to" in c["properties"]["hs_call_body"]
        ]
        assert len(notes) + len(calls) == 1, contact["properties"].get("phone")
    # A text written into its call: its own push was finished with the fold (even when a killed
    # attempt made the call and its retry found it), never claimed; a text with a note: it ran.
    texted = [j for j in world.jobs("crm.sync") if j.payload["event"] == "texted"]
    folded = [j for j in texted if "folded_into" in (j.result or {})]
    folded_calls = [c["id"] for c in state["calls"] if "Texted back to" in c["properties"]["hs_call_body"]]
    assert sorted(j.result["folded_into"] for j in folded) == sorted(folded_calls)
    assert all(j.attempts == 0 for j in folded)
    assert all(j.attempts >= 1 for j in texted if j not in folded)
    for kind in ("deals", "calls", "tasks"):
        assert len(state[kind]) == len(callers), kind
