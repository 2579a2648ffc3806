"""Fault suite, CRMs: a ten-minute outage under 1,000 leads (3), 429s with Retry-After (4),
20 concurrent pushes of one lead (12), and OAuth expiry and revocation (13)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
import time_machine
from sqlalchemy import func, select

from connectors.hubspot import mappers as hubspot_mappers
from connectors.hubspot import sandbox as hubspot_sandbox
from core import connector_state
from core.models import Alert, Call, ConnectorState, OutboxJob
from tests.conftest import BUSINESS_NUMBER
from tests.faults.harness import (
    SECOND_NUMBER,
    SharedClock,
    World,
    Zygote,
    fault_business,
    log_lines,
    run_threads,
    spawn_worker,
    stop_process,
    wait_for,
    worker_threads,
)

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


def count(world: World, model: type) -> int:
    with world.factory() as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


def crm_jobs(world: World, event: str | None = None) -> list[OutboxJob]:
    jobs = world.jobs("crm.sync")
    return [j for j in jobs if event is None or j.payload["event"] == event]


# -- 3. a CRM down for ten (simulated) minutes while 1,000 leads arrive ------------------------------

LEADS = 1000
OUTAGE_WORKERS = {"sqlite": 2, "postgresql": 3}


@pytest.mark.slow
def test_3_crm_down_ten_minutes_under_1000_leads_loses_nothing_and_texts_go_out(
    make_world: Callable[..., World], zygote: Zygote
) -> None:
    # A failed push waits at least 10 simulated minutes before its retry, so every push fails once
    # during the outage and is retried after it (the default backoff's horizon is test_3b's job).
    # The lease outlasts every clock jump below, so a job a worker holds (claimed in a batch of 20) is
    # never taken over by another worker because simulated minutes passed in a real second.
    world = make_world(
        worker={"backoff_initial": 600, "backoff_max": 1200, "batch_size": 20, "lease_seconds": 3600}
    )
    hub = world.add_crm("hubspot", sync=CONTACTS_ONLY, rate_limit=None, search_rate_limit=None)
    callers = [f"+1312555{4000 + i:04d}" for i in range(LEADS)]
    assert len(set(callers)) == LEADS
    answers: list[int] = []
    # Worker processes on the test's simulated clock (SharedClock); SQLite has one writer.
    clock = SharedClock(world.tmp / "clock", T0)
    env = {**clock.env(), "FAULTS_NO_LOCAL_RATE_LIMIT": "1"}
    workers = [
        spawn_worker(zygote, world, f"outage-worker-{i}", env) for i in range(OUTAGE_WORKERS[world.db_kind])
    ]
    try:
        hub.fault(**DOWN)
        # 1,000 leads over the first five minutes of the outage, 100 every 30 s.
        for batch in range(10):
            for caller in callers[batch * 100 : (batch + 1) * 100]:
                answers.append(world.post("/twilio/voice", world.voice_params(caller)).status_code)
            clock.shift(30)
        wait_for(
            "1,000 texts",
            lambda: len(world.sent()) == LEADS,
            timeout=180,
            every=0.5,
            diagnose=lambda: (len(world.sent()), world.job_summary()),
        )
        wait_for(
            "every CRM push to have failed once",
            lambda: (
                len([j for j in crm_jobs(world, "missed_call") if j.attempts == 1 and j.status == "pending"])
                == LEADS
            ),
            timeout=180,
            every=0.5,
            diagnose=world.job_summary,
        )
        clock.move_to(T0 + timedelta(minutes=9, seconds=59))
        # Ten minutes into the outage: every text went out, nothing reached the CRM, nothing died.
        assert answers == [200] * LEADS
        assert sorted(m["to"] for m in world.sent()) == sorted(callers)
        assert {(j.status, j.attempts) for j in world.jobs("sms.send")} == {("done", 1)}
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
            diagnose=world.job_summary,
        )
    finally:
        for pid in workers:
            stop_process(pid)
        clock.stop()
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
# What another worker may send before it can know: the 429's worker records the pause first.
IN_FLIGHT = 0.25


@pytest.mark.slow
def test_4_429_with_retry_after_pauses_the_connector_for_every_worker_and_nothing_retries_early(
    make_world: Callable[..., World], zygote: Zygote
) -> None:
    # Two jobs a claim: both processes get work, and the batch contact push (prepare) is exercised.
    world = make_world(worker={"batch_size": 2})
    sync = {
        "deal_on": "missed_call",
        "stages": {"new": "appointmentscheduled"},
        "create_task": False,
        "log_calls": False,
        "log_messages": False,
    }
    hub = world.add_crm("hubspot", sync=sync, rate_limit=None, search_rate_limit=None)
    callers = [f"+1312555{5100 + i:04d}" for i in range(6)]
    for caller in callers:
        world.missed_call(caller)
    for _ in range(LIMITED):
        hub.fault(path="/crm", count=1)  # passes
        hub.fault(
            path="/crm", status=429, count=1, headers={"Retry-After": str(RETRY_AFTER)}, body=RATE_LIMIT_BODY
        )
    seen = len(hub.answers)
    logged = len(hub.requests("/crm"))
    workers = [spawn_worker(zygote, world, f"429-worker-{i}") for i in range(2)]
    try:
        world.wait_done(timeout=90)
    finally:
        for pid in workers:
            stop_process(pid)
    answers = hub.answers[seen:]
    limited = [a for a in answers if a[4] == 429]
    assert len(limited) == LIMITED
    # Half the calls, in the order the emulator met them (answers can overtake one another).
    met = [r["fault"] for r in hub.requests("/crm")[logged:]]
    assert met[: 2 * LIMITED].count(429) == LIMITED and met.count(429) == LIMITED
    early = []
    for _arrived, answered, *_ in limited:
        early += [a for a in answers if answered + IN_FLIGHT < a[0] < answered + RETRY_AFTER - 0.05]
    assert early == [], f"requests inside a Retry-After window: {early}"
    # The pause is shared: both worker processes deferred jobs because of it.
    deferring = [_deferred_for_pause(world, pid) for pid in workers]
    assert all(deferring), deferring
    with world.factory() as s:
        state = s.get(ConnectorState, (world.config.businesses[0].id, "hubspot"))
        # The 429s, recorded by the pushes and lookups that met them (and the pushes the pause stopped).
        assert state is not None and state.rate_limited >= 1 and state.pause_reason.startswith("rate limited")
    assert sorted(hubspot_phones(world)) == sorted(callers)  # one contact each, after all that
    assert len(hub.state()["deals"]) == len(callers)


def _deferred_for_pause(world: World, pid: int) -> int:
    """Jobs the worker process put back because the connector was paused (by anyone)."""
    return sum(
        1
        for row in log_lines(world.process_logs[pid])
        if row.get("event") == "job deferred" and "hubspot" in str(row.get("reason"))
    )


# -- 12. 20 concurrent pushes of one lead: one record in every CRM, one calendar event ----------------

CALLER = "+13125550142"
PUSHES = 20


def _salesforce_people(world: World, phone: str) -> list[dict[str, Any]]:
    """Leads and contacts carrying ``phone`` (Salesforce stores it formatted for display)."""
    state = world.crms["salesforce"].state()
    digits = re.sub(r"\D", "", phone)
    return [
        p
        for p in [*state.get("Lead", []), *state.get("Contact", [])]
        if digits in {re.sub(r"\D", "", str(p.get(f) or "")) for f in ("Phone", "MobilePhone")}
    ]


def _pipedrive_people(world: World, phone: str) -> list[dict[str, Any]]:
    state = world.crms["pipedrive"].state()
    return [
        p for p in state["persons"] if not p["is_deleted"] and any(x["value"] == phone for x in p["phones"])
    ]


def _calendar_events(world: World) -> list[dict[str, Any]]:
    events = world.crms["google_calendar"].state()["events"].get("primary", [])
    return [e for e in events if e.get("status") != "cancelled"]


@pytest.mark.slow
def test_12_twenty_concurrent_pushes_of_one_lead_make_one_record_in_each_crm(
    make_world: Callable[..., World], no_local_rate_limit: None
) -> None:
    business = fault_business(
        booking={"calendar": "google_calendar", "lead_minutes": 60},
        conversation={
            "pricing_link": "https://brightspark.example.com/pricing",
            "info": {"hours": "Mon-Fri 8am-5pm", "service_area": "Chicago"},
        },
        escalation={"business_hours_handoff": False},
    )
    world = make_world(http=True, businesses=[business], worker={"batch_size": 2})
    # A deal and a call-back task at the missed call (not the defaults), so each is pushed 20 times.
    sync = {**hubspot_sandbox.settings("")["sync"], "deal_on": "missed_call", "create_task": True}
    world.add_crm("hubspot", sync=sync, rate_limit=None, search_rate_limit=None)
    world.add_crm("salesforce")
    world.add_crm("pipedrive", burst_limit=None)
    world.add_crm("google_calendar")

    def call(i: int) -> int:
        to = (BUSINESS_NUMBER, SECOND_NUMBER)[i % 2]
        return int(world.http_post("/twilio/voice", world.voice_params(CALLER, to)).status_code)

    # 20 missed calls from one caller at once: 20 pushes of the lead to every CRM, then a booking.
    assert run_threads(call, PUSHES) == [200] * PUSHES
    with worker_threads(world, 8):
        world.wait_done(timeout=120)
        world.text_in(CALLER, "Hi, can someone come out this week to fix an outlet? I want to book")
        world.wait_done(timeout=60)
        assert any("Reply 1, 2 or 3" in m["body"] for m in world.sent(CALLER))

        def pick(_: int) -> int:
            return int(world.http_post("/twilio/sms", world.sms_params(CALLER, "1")).status_code)

        assert run_threads(pick, PUSHES) == [200] * PUSHES
        world.wait_done(timeout=120)

    assert count(world, Call) == PUSHES
    first_texts = [m for m in world.messages(CALLER) if m.kind == "first_text"]
    assert len(first_texts) == 1, [(m.status, m.created_at) for m in first_texts]  # the cooldown held
    hub = world.crms["hubspot"].state()
    contacts = [c for c in hub["contacts"] if c["properties"].get(hubspot_mappers.PHONE_PROPERTY) == CALLER]
    assert len(contacts) == 1 and len(hub["contacts"]) == 1
    assert len(hub["deals"]) == 1 and len(hub["tasks"]) == 1
    assert len(hub["calls"]) == PUSHES  # one activity per call, none twice
    assert len(_salesforce_people(world, CALLER)) == 1
    assert len(_pipedrive_people(world, CALLER)) == 1
    assert len([d for d in world.crms["pipedrive"].state()["deals"] if not d["is_deleted"]]) == 1
    [event] = _calendar_events(world)
    assert CALLER in event["description"]
    assert sum("You're booked" in m["body"] for m in world.sent(CALLER)) == 1


# -- 13. an OAuth token expiring mid-burst with 10 workers; a revoked one --------------------------------

BURST = 40


def test_13_token_expiry_mid_burst_refreshes_once_and_a_revoked_token_pauses_without_dropping(
    make_world: Callable[..., World], no_local_rate_limit: None
) -> None:
    from connectors.hubspot.emulator import SANDBOX_OAUTH

    world = make_world(worker={"batch_size": 1})
    oauth = {k: SANDBOX_OAUTH[k] for k in ("client_id", "client_secret", "refresh_token")}
    hub = world.add_crm(
        "hubspot",
        settings={"access_token": None, **oauth},
        sync=CONTACTS_ONLY,
        rate_limit=None,
        search_rate_limit=None,
    )
    refreshes = lambda: int(hub.state()["oauth"]["refreshes"])  # noqa: E731
    assert refreshes() == 1  # the install's check
    callers = [f"+1312555{6000 + i:04d}" for i in range(BURST)]
    with time_machine.travel(datetime.now(UTC), tick=True) as clock:
        for caller in callers:
            world.missed_call(caller)
        with worker_threads(world, 10):
            wait_for("the burst to start syncing", lambda: len(hubspot_phones(world)) >= 5, timeout=60)
            hub.configure(expire_tokens=True)  # mid-burst: every access token handed out so far dies
            world.wait_done(timeout=120)
            assert sorted(hubspot_phones(world)) == sorted(callers)
            assert refreshes() == 2  # ten workers saw the token expire: exactly one refresh

            # The app is disconnected in HubSpot: the refresh token is revoked.
            hub.configure(expire_tokens=True, revoke_refresh_tokens=True)
            late = [f"+1312555{6100 + i:04d}" for i in range(10)]
            for caller in late:
                world.missed_call(caller)
            wait_for(
                "the texts, and every new push deferred",
                lambda: (
                    len(world.sent()) == len(callers) + len(late)
                    and len([j for j in crm_jobs(world) if j.status == "pending"]) == 2 * len(late)
                    and len(
                        [j for j in crm_jobs(world, "missed_call") if j.status == "pending" and j.last_error]
                    )
                    == len(late)
                ),
                timeout=60,
                diagnose=world.job_summary,
            )
            jobs = [j for j in crm_jobs(world) if j.status != "done"]
            assert {(j.status, j.attempts) for j in jobs} == {("pending", 0)}  # deferred, no attempt spent
            assert len(jobs) == 2 * len(late)  # missed_call, and texted behind it
            assert world.job_summary().get("crm.sync:dead", 0) == 0
            with world.factory() as s:
                paused = connector_state.paused_until(s, world.config.businesses[0].id, "hubspot")
                alerts = list(s.scalars(select(Alert).where(Alert.connector_id == "hubspot")))
            assert paused is not None and paused > datetime.now(UTC) + timedelta(minutes=10)
            assert [a.kind for a in alerts] == ["auth_failed"] and "reconnect HubSpot" in alerts[0].message
            assert SANDBOX_OAUTH["refresh_token"] not in alerts[0].message

            # Reconnect: a new authorization, installed again; the jobs run once the pause is over.
            token = requests.post(
                f"{hub.url}/oauth/v1/token",
                timeout=10,
                data={
                    "grant_type": "authorization_code",
                    "code": SANDBOX_OAUTH["code"],
                    "redirect_uri": SANDBOX_OAUTH["redirect_uri"],
                    "client_id": SANDBOX_OAUTH["client_id"],
                    "client_secret": SANDBOX_OAUTH["client_secret"],
                },
            ).json()
            world.session.registry.add("secret", token["refresh_token"], token["access_token"])
            world.reinstall("hubspot", {**hub.settings, "refresh_token": token["refresh_token"]})
            clock.move_to(paused + timedelta(seconds=5))
            world.wait_done(timeout=120)
    assert sorted(hubspot_phones(world)) == sorted(callers + late)  # every job done, none dropped
    assert refreshes() == 3  # and one more refresh, with the new grant
