"""Fault suite, workers and Twilio: 100 SIGKILLs at injected points (5), and permanent Twilio
errors and landlines never tried again (11)."""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from core.models import OutboxJob
from core.worker import CRASH_POINTS
from tests.conftest import BUSINESS_NUMBER
from tests.faults.harness import SECOND_NUMBER, World, Zygote, fault_business, wait_for

pytestmark = pytest.mark.faults


# -- 5. workers SIGKILLed 100 times at injected points --------------------------------------------

KILLS = 100
# Per point, the chance a crash-armed worker dies there. The vendor point fires up to five times in
# one CRM push (contact, deal, call, task, note), so it is armed more lightly.
PROBABILITY = {"after_claim": 0.25, "after_vendor_call": 0.12, "before_commit": 0.25}
WORKERS = {"sqlite": 4, "postgresql": 6}


def _hubspot_records(world: World) -> dict[str, list[dict[str, Any]]]:
    emulator = world.crms["hubspot"].emulator
    with emulator.lock:
        return emulator._state()  # type: ignore[no-any-return]


@pytest.mark.slow
def test_5_workers_killed_100_times_lose_nothing_and_duplicate_nothing(
    make_world: Callable[..., World], zygote: Zygote
) -> None:
    # A short lease, so a dead worker's job is taken over soon; it must still outlast any stall of a
    # live worker (2 cores, several processes, SQLite's one writer), or two live workers would race.
    world = make_world(
        worker={
            "lease_seconds": 5,
            "batch_size": 1,
            "poll_interval": 0.1,
            "backoff_initial": 0.1,
            "backoff_max": 0.5,
        },
        twilio={"timeout_seconds": 1},
    )
    # Contact, deal and call-back task per lead: every create goes through the intent-then-marker path.
    sync = {
        "deal_on": "missed_call",
        "stages": {"new": "appointmentscheduled"},
        "create_task": True,
        "log_calls": False,
        "log_messages": False,
    }
    world.add_crm("hubspot", sync=sync, rate_limit=None, search_rate_limit=None)
    assert set(PROBABILITY) == set(CRASH_POINTS)
    callers: list[str] = []

    def more_leads(n: int) -> None:
        for _ in range(n):
            caller = f"+1312555{7000 + len(callers):04d}"
            callers.append(caller)
            world.missed_call(caller)

    more_leads(150)  # plenty of work, so the kills come fast and the stranded jobs wait together
    answer = zygote.ask(
        cmd="supervise",
        name=f"{world.db_kind}-crashy",
        argv=["worker", "--config", str(world.config_path)],
        workers=WORKERS[world.db_kind],
        kills=KILLS,
        points=list(CRASH_POINTS),
        probability=PROBABILITY,
        env={"FAULTS_NO_LOCAL_RATE_LIMIT": "1"},
        log_dir=str(world.session.logs),
    )
    assert answer == {"ok": True}
    started = time.monotonic()
    try:
        deadline = time.monotonic() + 150
        while True:
            status = zygote.status()
            killed = sum(status["kills"].values())
            if os.environ.get("FAULTS_TRACE"):
                print("T", round(time.monotonic() - started, 1), killed, world.job_summary(), flush=True)
            if killed >= KILLS and world.due(horizon=5) == 0 and _running(world) == 0:
                break
            assert time.monotonic() < deadline, (status["kills"], world.job_summary())
            assert "sms.send:dead" not in world.job_summary(), world.job_summary()
            assert "crm.sync:dead" not in world.job_summary(), world.job_summary()
            if killed < KILLS and world.due(horizon=0) < 40 and len(callers) < 300:
                more_leads(20)  # the queue runs dry before the hundredth kill: more work
            time.sleep(0.5)
    finally:
        zygote.ask(cmd="unsupervise")
        final = zygote.stop_children(grace=10)
    kills = Counter({k: v for k, v in final["kills"].items()})
    if os.environ.get("FAULTS_TRACE"):
        print("FAULTS-5", world.db_kind, len(callers), kills, time.monotonic() - started, flush=True)
    assert sum(kills.values()) == KILLS, kills
    assert set(kills) == set(CRASH_POINTS), kills  # every point was hit
    crashed = [e for e in final["exited"] if e["meta"]]
    assert all(e["signal"] == 9 for e in crashed if e["meta"] and e["signal"] is not None)

    # 0 lost jobs: every job ends done.
    summary = world.job_summary()
    assert set(summary) == {"sms.send:done", "crm.sync:done"}, summary
    assert summary["sms.send:done"] == len(callers)
    assert max(j.attempts for j in world.jobs()) >= 2  # kills really landed mid-job
    # 0 duplicate texts.
    texts = Counter(m["to"] for m in world.sent())
    assert texts == Counter(dict.fromkeys(callers, 1))
    # 0 duplicate CRM records: one contact, deal and task per lead.
    records = _hubspot_records(world)
    from connectors.hubspot import mappers

    phones = Counter(c["properties"].get(mappers.PHONE_PROPERTY) for c in records["contacts"])
    assert phones == Counter(dict.fromkeys(callers, 1))
    for kind in ("deals", "tasks"):
        assert len(records[kind]) == len(callers), (kind, len(records[kind]), len(callers))
    titles = Counter(d["properties"].get("dealname") for d in records["deals"])
    assert max(titles.values()) == 1


def _running(world: World) -> int:
    return sum(1 for j in world.jobs() if j.status == "running")


# -- 11. permanent Twilio errors and landlines: never another attempt --------------------------------

PERMANENT = {
    "+13125558101": {"reject_code": 21610},  # unsubscribed recipient
    "+13125558102": {"reject_code": 21211},  # invalid 'To' number
    "+13125558103": {"reject_code": 21614},  # not a mobile number
    "+13125558104": {"fail_code": 30006},  # accepted, then undelivered: landline or unreachable
    "+13125558105": {"line_type": "landline"},  # Lookup says landline: never texted at all
}
SUPPRESSED_AS = {
    "+13125558101": "opted_out",
    "+13125558102": "undeliverable",
    "+13125558103": "undeliverable",
    "+13125558104": "undeliverable",
    "+13125558105": "landline",
}


def test_11_permanent_twilio_errors_and_landlines_are_never_tried_again(
    make_world: Callable[..., World],
) -> None:
    business = fault_business(
        policy={"cooldown_hours": 0, "lookup_line_type": True, "follow_up_after_hours": 0}
    )
    world = make_world(callbacks=True, businesses=[business])
    world.twilio.numbers.update({n: dict(v) for n, v in PERMANENT.items()})
    for caller in PERMANENT:
        world.missed_call(caller)
    world.drain(horizon=2)
    wait_for(
        "the 30006 callback",
        lambda: any(m.status == "undelivered" for m in world.messages("+13125558104")),
        timeout=10,
    )
    # Everything that would text them again: another call (to the other number, no cooldown), a
    # reply, and time for any retry to come due.
    for caller, setting in PERMANENT.items():
        world.missed_call(caller, to=SECOND_NUMBER)
        if "line_type" not in setting:  # a landline that texts us evidently takes texts: answered
            world.text_in(caller, "Hello, are you still able to come out today?")
        world.missed_call(caller, to=BUSINESS_NUMBER)
    world.drain(horizon=2)
    time.sleep(1.5)  # past the longest backoff
    world.drain(horizon=2)

    creates = Counter(dict(r["form"] or {}).get("To", [""])[0] for r in world.twilio_requests("POST"))
    lookups = Counter(r["path"].rsplit("/", 1)[1] for r in world.twilio_requests("GET", "/v2/PhoneNumbers/"))
    for caller, setting in PERMANENT.items():
        expected = 0 if "line_type" in setting else 1
        assert creates[caller] == expected, (caller, creates[caller])
        assert lookups[caller] == 1, (caller, lookups[caller])  # the line type is cached, not asked again
        decided = [e for e in world.lead_timeline(caller) if e["type"] == "decision" and e.get("call_sid")]
        assert [(d["outcome"], d["reason"]) for d in decided[1:]] == [("skip", SUPPRESSED_AS[caller])] * 2, (
            caller,
            decided,
        )
    statuses = Counter((j.kind, j.status) for j in world.jobs())
    assert statuses[("sms.send", "pending")] == statuses[("sms.send", "running")] == 0
    assert all(j.attempts <= 1 for j in world.jobs("sms.send"))  # refused once, never retried
    with world.factory() as s:
        dead = [j for j in s.query(OutboxJob).filter(OutboxJob.status == "dead")]
    assert {j.last_error_code for j in dead} <= {"21610", "21211", "21614"}
