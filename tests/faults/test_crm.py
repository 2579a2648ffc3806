"""Fault suite, CRMs: a ten-minute outage under 1,000 leads (3), 429s with Retry-After (4),
20 concurrent pushes of one lead (12), and OAuth expiry and revocation (13)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from sqlalchemy import func, select

from connectors.hubspot import mappers as hubspot_mappers
from core import connector_state
from core.models import ConnectorState, OutboxJob
from tests.faults.harness import World, Zygote, spawn_worker, stop_process, wait_for, worker_threads

pytestmark = pytest.mark.faults

T0 = datetime(2026, 6, 10, 15, 0, tzinfo=UTC)
CONTACTS_ONLY = {"deal_on": "never", "create_task": False, "log_calls": False, "log_messages": False}
DOWN = {"path": "/crm", "status": 503, "body": {"status": "error", "message": "Service Unavailable"}}


@pytest.fixture
def no_local_rate_limit(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The shared rate limiter (tested on its own elsewhere) is not what these tests are about."""
    monkeypatch.setattr(connector_state, "acquire", lambda *_a, **_k: 0.0)
    yield


def hubspot_phones(world: World) -> list[str]:
    store = world.crms["hubspot"].emulator
    with store.lock:
        state = store._state()
    return [c["properties"].get(hubspot_mappers.PHONE_PROPERTY) for c in state["contacts"]]


def crm_jobs(world: World, event: str | None = None) -> list[OutboxJob]:
    jobs = world.jobs("crm.sync")
    return [j for j in jobs if event is None or j.payload["event"] == event]


# -- 3. a CRM down for ten (simulated) minutes while 1,000 leads arrive ------------------------------

LEADS = 1000


@pytest.mark.slow
def test_3_crm_down_ten_minutes_under_1000_leads_loses_nothing_and_texts_go_out(
    make_world: Callable[..., World], no_local_rate_limit: None
) -> None:
    # A failed push waits at least 10 simulated minutes before its retry, so every push fails once
    # during the outage and is retried after it (the default backoff's horizon is test_3b's job).
    # The lease outlasts every clock shift below, so a job in flight is never taken over by a jump.
    world = make_world(worker={"backoff_initial": 600, "backoff_max": 1200, "batch_size": 20, "lease_seconds": 120})
    hub = world.add_crm("hubspot", sync=CONTACTS_ONLY, rate_limit=None, search_rate_limit=None)
    callers = [f"+1312555{4000 + i:04d}" for i in range(LEADS)]
    assert len(set(callers)) == LEADS
    answers: list[int] = []
    with time_machine.travel(T0, tick=True) as clock:
        hub.fault(**DOWN)
        with worker_threads(world, 2):
            # 1,000 leads over the first five minutes of the outage, 100 every 30 s.
            for batch in range(10):
                for caller in callers[batch * 100 : (batch + 1) * 100]:
                    params = world.voice_params(caller)
                    answers.append(world.post("/twilio/voice", params).status_code)
                clock.shift(30)
            wait_for("1,000 texts", lambda: len(world.sent()) == LEADS, timeout=120,
                     diagnose=lambda: (len(world.sent()), world.job_summary(), world.due()))
            wait_for(
                "every CRM push to have failed once",
                lambda: sum(1 for j in crm_jobs(world, "missed_call") if j.attempts == 1 and
                            j.status == "pending") == LEADS,
                timeout=120,
            )
            clock.move_to(T0 + timedelta(minutes=9, seconds=59))
            # Ten minutes into the outage: every text went out, nothing reached the CRM, nothing died.
            assert answers == [200] * LEADS
            assert sorted(m["to"] for m in world.sent()) == sorted(callers)
            assert {j.status for j in world.jobs("sms.send")} == {"done"}
            assert {j.attempts for j in world.jobs("sms.send")} == {1}
            assert hubspot_phones(world) == []
            assert world.job_summary() == {
                "sms.send:done": LEADS,
                "crm.sync:pending": 2 * LEADS,  # missed_call (failed once) and texted (waits behind it)
            }
            assert {j.attempts for j in crm_jobs(world, "texted")} == {0}
            hub.reset_faults()  # the CRM is back
            clock.shift(timedelta(minutes=25))  # past every retry's backoff
            wait_for(
                "every push to be synced",
                lambda: world.job_summary() == {"sms.send:done": LEADS, "crm.sync:done": 2 * LEADS},
                timeout=240,
                every=0.5,
            )
    phones = hubspot_phones(world)
    assert len(phones) == LEADS and sorted(phones) == sorted(callers)  # 1,000 contacts, none twice
    assert len(world.sent()) == LEADS  # and still one text each


def test_3b_the_default_backoff_outlasts_a_ten_minute_outage(
    make_world: Callable[..., World], no_local_rate_limit: None
) -> None:
    # The shipped worker settings (docs/config.md): backoff 2 s doubling up to 600 s.
    world = make_world(worker={"backoff_initial": 2, "backoff_max": 600, "lease_seconds": 60})
    hub = world.add_crm("hubspot", sync=CONTACTS_ONLY, rate_limit=None, search_rate_limit=None)
    caller = "+13125550177"
    worker = world.worker()
    with time_machine.travel(T0, tick=True) as clock:
        hub.fault(**DOWN)
        world.missed_call(caller)
        while datetime.now(UTC) < T0 + timedelta(minutes=10):
            world.drain(worker)
            clock.shift(15)
        [job] = crm_jobs(world, "missed_call")
        assert job.status == "pending" and job.attempts >= 7, (job.status, job.attempts, job.last_error)
        hub.reset_faults()
        deadline = T0 + timedelta(hours=2)
        while world.job_summary().get("crm.sync:done", 0) < 2 and datetime.now(UTC) < deadline:
            world.drain(worker)
            clock.shift(30)
    assert world.job_summary() == {"sms.send:done": 1, "crm.sync:done": 2}
    assert hubspot_phones(world) == [caller]
    assert len(world.sent(caller)) == 1


# -- 4. 429 with Retry-After on every second call, two worker processes -------------------------------

RETRY_AFTER = 1
LIMITED = 6  # 429s: every second call of the first twelve
RATE_LIMIT_BODY = {
    "status": "error",
    "message": "You have reached your ten_secondly_rolling limit.",
    "errorType": "RATE_LIMIT",
    "policyName": "TEN_SECONDLY_ROLLING",
}
# In flight when the 429 arrived: a request another worker had already decided to send.
IN_FLIGHT = 0.15


@pytest.mark.slow
def test_4_429_with_retry_after_pauses_the_connector_for_every_worker_and_nothing_retries_early(
    make_world: Callable[..., World], zygote: Zygote
) -> None:
    world = make_world()
    sync = {"deal_on": "missed_call", "create_task": False, "log_calls": False, "log_messages": False}
    hub = world.add_crm("hubspot", sync=sync, rate_limit=None, search_rate_limit=None)
    callers = [f"+1312555{5100 + i:04d}" for i in range(5)]
    for caller in callers:
        world.missed_call(caller)
    for _ in range(LIMITED):
        hub.fault(path="/crm", count=1)  # passes
        hub.fault(path="/crm", status=429, count=1, headers={"Retry-After": str(RETRY_AFTER)},
                  body=RATE_LIMIT_BODY)
    seen = len(hub.answers)
    workers = [spawn_worker(zygote, world, f"429-worker-{i}") for i in range(2)]
    try:
        wait_for(
            "every job to be done",
            lambda: set(world.job_summary()) == {"sms.send:done", "crm.sync:done"},
            timeout=90,
            every=0.2,
            diagnose=world.job_summary,
        )
    finally:
        for pid in workers:
            stop_process(pid)
    answers = hub.answers[seen:]
    limited = [a for a in answers if a[4] == 429]
    assert len(limited) == LIMITED
    assert sum(1 for a in answers[: 2 * LIMITED] if a[4] == 429) == LIMITED  # half the calls
    early = []
    for _arrived, answered, *_ in limited:
        early += [a for a in answers if answered + IN_FLIGHT < a[0] < answered + RETRY_AFTER - 0.05]
    assert early == [], f"requests inside a Retry-After window: {early}"
    # The pause is shared: both worker processes deferred jobs because of it.
    deferring = [_deferred_for_pause(world, pid) for pid in workers]
    assert all(deferring), deferring
    with world.factory() as s:
        state = s.get(ConnectorState, (world.config.businesses[0].id, "hubspot"))
        assert state is not None and state.rate_limited == LIMITED
    assert sorted(hubspot_phones(world)) == sorted(callers)  # one contact each, after all that
    assert len(hub.state()["deals"]) == len(callers)


def _deferred_for_pause(world: World, pid: int) -> int:
    import json

    n = 0
    for path in world.session.logs.glob(f"{world.db_kind}-429-worker-*.log"):
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("{") and f":{pid}" in line:
                row = json.loads(line)
                if row.get("event") == "job deferred" and "hubspot" in str(row.get("reason")):
                    n += 1
    return n
