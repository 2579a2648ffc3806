"""The HubSpot connector: the conformance kit, its HubSpot-specific behaviour against the emulator, and
the whole stack (bridge, worker, outbox, sync engine) syncing missed calls into the emulator."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
import time_machine
import yaml
from click.testing import CliRunner
from sqlalchemy import select, update

from bridge.cli import main
from bridge.runtime import LOOKUP_COOL_OFF_S, Connectors, build_worker
from connectors.base import ConnectorContext
from connectors.emulator import serve_in_thread
from connectors.hubspot import mappers, paths, sandbox
from connectors.hubspot.connector import HubSpotConnector
from connectors.hubspot.emulator import SANDBOX_OAUTH, SANDBOX_TOKEN, HubSpotEmulator
from connectors.hubspot.kit import HubSpotKit
from connectors.testing import conformance_suite
from core import sync
from core.connector_state import TokenStore
from core.crm import ActivityData, ContactData, DealData, NewRecord, Remote, TaskData
from core.errors import AuthError, ConnectorConfigError, RateLimited, Rejected, TransientError
from core.models import Alert, ConnectorState, OutboxJob, utcnow
from core.outbox import Job
from core.secrets import generate_key
from core.worker import Worker
from tests.stack import Stack, patient_lookup, stop_servers

TestHubSpotConformance = conformance_suite(HubSpotKit())

PHONE_PROP = mappers.PHONE_PROPERTY
BUSINESS = "bright-spark"
HOUR = timedelta(hours=1)
OAUTH_KEYS = ("client_id", "client_secret", "refresh_token")


# -- helpers ----------------------------------------------------------------------------------------
class Hub:
    def __init__(self, url: str, emulator: HubSpotEmulator) -> None:
        self.url = url
        self.emulator = emulator

    def state(self) -> dict[str, Any]:
        return dict(requests.get(f"{self.url}/_emulator/state", timeout=5).json())

    def requests(self, prefix: str = "/crm") -> list[dict[str, Any]]:
        got = requests.get(f"{self.url}/_emulator/requests", timeout=5).json()["requests"]
        return [r for r in got if str(r["path"]).startswith(prefix)]

    def config(self, **spec: Any) -> None:
        resp = requests.post(f"{self.url}/_emulator/config", json=spec, timeout=5)
        assert resp.status_code == 200, resp.text

    def fault(self, **spec: Any) -> None:
        resp = requests.post(f"{self.url}/_emulator/faults", json=spec, timeout=5)
        assert resp.status_code == 201, resp.text

    def api(self, method: str, path: str, body: Any = None) -> Any:
        resp = requests.request(
            method,
            f"{self.url}{path}",
            json=body,
            timeout=5,
            headers={"Authorization": f"Bearer {SANDBOX_TOKEN}"},
        )
        assert resp.status_code < 300, resp.text
        return resp.json() if resp.content else None

    def contacts(self, phone: str) -> list[dict[str, Any]]:
        return [c for c in self.state()["contacts"] if c["properties"].get(PHONE_PROP) == phone]

    def linked(self, state: dict[str, Any], from_type: str, from_id: str, to_type: str) -> dict[str, int]:
        """to id -> association type id, from the emulator's association table."""
        return {
            a["to_id"]: a["type_id"]
            for a in state["associations"]
            if a["from_type"] == from_type and a["from_id"] == from_id and a["to_type"] == to_type
        }


@pytest.fixture
def hub() -> Iterator[Hub]:
    emulator = HubSpotEmulator()  # HubSpot's real Professional limits: 190 per 10 s, search 5 per s
    server = serve_in_thread(emulator.app)
    try:
        yield Hub(server.url, emulator)
    finally:
        stop_servers(server)


@pytest.fixture
def secret_key(monkeypatch: pytest.MonkeyPatch) -> str:
    key = generate_key()
    monkeypatch.setenv("TEXTBACK_SECRET_KEY", key)
    return key


def connector(
    url: str, tokens: TokenStore | None = None, timeout: float = 3.0, **config: Any
) -> HubSpotConnector:
    cfg: dict[str, Any] = {"access_token": SANDBOX_TOKEN, "api_base_url": url, **config}
    cfg = {k: v for k, v in cfg.items() if v is not None}
    return HubSpotConnector(cfg, ConnectorContext(BUSINESS, "hubspot", tokens=tokens, timeout=timeout))


def oauth_settings(url: str) -> dict[str, Any]:
    return {"api_base_url": url, **{k: SANDBOX_OAUTH[k] for k in OAUTH_KEYS}}


def at_the_missed_call(url: str) -> dict[str, Any]:
    """The sandbox with the pre-lean sync settings: a deal and a call-back task for every missed call."""
    settings = sandbox.settings(url)
    settings["sync"] = {**settings["sync"], "deal_on": "missed_call", "create_task": True}
    return settings


def install(stack: Stack, settings: dict[str, Any]) -> Any:
    path = stack.tmp_path / "hubspot.yaml"
    path.write_text(yaml.safe_dump(settings))
    result = CliRunner().invoke(
        main,
        ["connectors", "install", "hubspot", "--config", str(stack.config_path), "--config-file", str(path)],
    )
    assert result.exit_code == 0, result.output
    return result


def jobs(stack: Stack, kind: str = "crm.sync") -> list[OutboxJob]:
    with stack.factory() as s:
        return list(s.scalars(select(OutboxJob).where(OutboxJob.kind == kind).order_by(OutboxJob.id)))


def connector_state(stack: Stack) -> ConnectorState | None:
    with stack.factory() as s:
        return s.get(ConnectorState, (BUSINESS, "hubspot"))


def until_pushed(stack: Stack, timeout: float = 15.0) -> None:
    """Wait (while a worker serves) until the lead's two pushes, the call's and the text's, are done."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sync_jobs = jobs(stack)
        if len(sync_jobs) >= 2 and all(j.status == "done" for j in sync_jobs):
            return
        time.sleep(0.05)


def settle_all(stack: Stack, done: Any, timeout: float = 20.0) -> None:
    """Drive the worker (waiting out backoffs and pauses) until ``done()``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stack.drain(timeout=2, settle=0.05)
        if done():
            stack.drain(timeout=2, settle=0.1)
            return
        time.sleep(0.1)
    raise AssertionError("the stack did not sync in time")


@contextmanager
def queued_at_one_moment(stack: Stack, callers: list[str]) -> Iterator[None]:
    """Missed calls from ``callers`` while no worker runs, all at one simulated moment; the block
    runs from that moment on. A missed call's push waits for its text for at most FOLD_WAIT_S
    (2 s): on a loaded machine the calls took longer than that, and the first caller's push,
    already due when the worker started, went alone instead of in the batch."""
    moment = datetime.now(UTC)
    with time_machine.travel(moment, tick=False):
        for caller in callers:
            stack.call(caller, "no-answer")
    with time_machine.travel(moment, tick=True):
        yield


def by_type(state: dict[str, Any]) -> dict[str, int]:
    return {t: len(state[t]) for t in ("contacts", "deals", "calls", "tasks", "notes")}


def first_text_logged(state: dict[str, Any]) -> int:
    """Where the first text landed: a note of its own, or written into the missed call's activity."""
    notes = [n for n in state["notes"] if "Text sent to" in n["properties"].get("hs_note_body", "")]
    calls = [c for c in state["calls"] if "Texted back to" in c["properties"].get("hs_call_body", "")]
    return len(notes) + len(calls)


def synced(stack: Stack, hub: Hub) -> bool:
    return first_text_logged(hub.state()) == 1 and all(j.status == "done" for j in jobs(stack))


# -- HubSpot specifics, against the emulator (no database) -------------------------------------------
def test_check_creates_the_properties_and_explains_failures(hub: Hub) -> None:
    result = connector(hub.url).check()
    assert result.ok, result
    props = hub.state()["properties"]
    assert {PHONE_PROP, mappers.OPTED_OUT_PROPERTY} <= set(props["contacts"])
    assert mappers.DEAL_KEY_PROPERTY in props["deals"]
    phone_def = hub.api("GET", f"/crm/v3/properties/contacts/{PHONE_PROP}")
    assert phone_def["hasUniqueValue"] is True and phone_def["type"] == "string"
    assert connector(hub.url).check().ok  # the second check finds them (409s are fine too)

    bad = connector(hub.url, access_token="pat-na1-not-a-real-token").check()
    assert not bad.ok and "rejected the credentials" in bad.summary
    assert "pat-na1-not-a-real-token" not in bad.summary + "".join(bad.details)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    down = connector(closed).check()
    assert not down.ok and "could not be reached" in down.summary


def test_a_property_deleted_in_hubspot_is_created_again(hub: Hub) -> None:
    c = connector(hub.url)
    first = c.upsert_contact(ContactData("+13125550169"), None)
    requests.post(f"{hub.url}/_emulator/reset", timeout=5)  # the account forgets properties and records
    again = c.upsert_contact(ContactData("+13125550169"), first)  # the process still thinks they exist
    assert again.created is True and len(hub.contacts("+13125550169")) == 1
    assert PHONE_PROP in hub.state()["properties"]["contacts"]


def test_missing_schema_scope_is_named(hub: Hub) -> None:
    limited = "pat-limited-scopes-0001"
    hub.config(
        tokens={
            limited: {
                "scopes": [
                    "crm.objects.contacts.read",
                    "crm.objects.contacts.write",
                    "crm.schemas.contacts.read",
                ]
            }
        }
    )
    result = connector(hub.url, access_token=limited).check()
    assert not result.ok
    assert "crm.schemas.contacts.write" in result.summary
    with pytest.raises(ConnectorConfigError) as info:
        connector(hub.url, access_token=limited).upsert_contact(ContactData("+13125550170"), None)
    assert "crm.schemas.contacts.write" in str(info.value)


def test_rate_limits_daily_and_rolling(hub: Hub) -> None:
    # TEN_SECONDLY_ROLLING without Retry-After: wait out the window HubSpot names in its headers.
    body = {
        "status": "error",
        "message": "You have reached your ten_secondly_rolling limit.",
        "errorType": "RATE_LIMIT",
        "policyName": "TEN_SECONDLY_ROLLING",
    }
    hub.fault(
        path=paths.contacts_batch_upsert(),
        status=429,
        body=body,
        count=1,
        headers={"X-HubSpot-RateLimit-Interval-Milliseconds": "10000"},
    )
    with pytest.raises(RateLimited) as info:
        connector(hub.url).upsert_contact(ContactData("+13125550171"), None)
    assert info.value.retry_after == pytest.approx(10)
    # The emulator's real limiter: a 429 with HubSpot's Retry-After.
    hub.config(rate_limit=[1, 10])
    with pytest.raises(RateLimited) as info:
        connector(hub.url).upsert_contact(ContactData("+13125550171"), None)
    assert 1 <= info.value.retry_after <= 10
    # DAILY: not worth retrying until the day rolls over.
    hub.config(rate_limit=None, daily_limit=0)
    with pytest.raises(RateLimited) as info:
        connector(hub.url).upsert_contact(ContactData("+13125550171"), None)
    assert info.value.code == "DAILY"
    assert 15 * 60 <= info.value.retry_after <= 12 * 3600


def test_validation_errors_are_rejected_with_hubspots_message(hub: Hub) -> None:
    c = connector(hub.url)
    with pytest.raises(Rejected) as info:
        c.upsert_contact(ContactData("+13125550172", email="not-an-email"), None)
    assert "VALIDATION_ERROR" in str(info.value) and "is invalid" in str(info.value)
    task = TaskData("Call back", "Missed call", utcnow(), owner="999")
    with pytest.raises(Rejected) as info:
        c.create_task("tb-000000000001", task, None, None)
    assert "not a valid owner id" in str(info.value)


def test_email_conflict_adopts_the_contact_hubspot_knows(hub: Hub) -> None:
    c = connector(hub.url)
    c.check()
    known = hub.api(
        "POST",
        "/crm/v3/objects/contacts",
        {"properties": {"email": "pat@example.com", "firstname": "Pat", "hs_lead_status": "CONNECTED"}},
    )
    remote = c.upsert_contact(ContactData("+13125550173", first_name="Pat", email="pat@example.com"), None)
    assert remote.id == known["id"] and remote.created is False  # an existing customer, not a new lead
    [contact] = hub.contacts("+13125550173")
    assert contact["properties"]["hs_lead_status"] == "CONNECTED"  # what the team set is kept
    assert len(hub.state()["contacts"]) == 1
    # The email belongs to another contact while this phone has its own: keep both, move nothing.
    mine = c.upsert_contact(ContactData("+13125550174"), None)
    again = c.upsert_contact(ContactData("+13125550174", email="pat@example.com"), mine)
    assert again.id == mine.id and len(hub.state()["contacts"]) == 2


def test_wrong_stage_lists_the_valid_ones(hub: Hub) -> None:
    c = connector(hub.url)
    contact = c.upsert_contact(ContactData("+13125550175"), None)
    with pytest.raises(ConnectorConfigError) as info:
        c.upsert_deal("tb-00000000000a", DealData("Missed call", "new"), contact, None)
    assert "appointmentscheduled" in str(info.value) and "closedwon" in str(info.value)
    with pytest.raises(ConnectorConfigError) as info:
        c.upsert_deal("tb-00000000000a", DealData("Missed call", "new", pipeline="nope"), contact, None)
    assert "no deal pipeline 'nope'" in str(info.value)
    assert hub.state()["deals"] == []


def test_creates_are_found_by_marker_and_never_repeated(hub: Hub) -> None:
    c = connector(hub.url, portal_id="24681357")
    contact = c.upsert_contact(ContactData("+13125550176", first_name="Ann"), None)
    assert contact.url == f"https://app.hubspot.com/contacts/24681357/record/0-1/{contact.id}"
    deal = c.upsert_deal(
        "tb-0000000000d1", DealData("Missed call: Ann", "appointmentscheduled"), contact, None
    )
    # The same create again (the worker died before saving the answer): the same deal, still linked.
    assert (
        c.upsert_deal(
            "tb-0000000000d1", DealData("Missed call: Ann", "appointmentscheduled"), contact, None
        ).id
        == deal.id
    )
    call = c.log_activity(
        "tb-0000000000c1",
        ActivityData("call", utcnow(), "Missed inbound call.", from_number="+13125550176"),
        contact,
        deal,
        None,
    )
    note = c.log_activity(
        "tb-0000000000e1",
        ActivityData("sms", utcnow(), "Sorry we missed you", direction="outbound", to_number="+13125550176"),
        contact,
        deal,
        None,
    )
    task = c.create_task("tb-0000000000f1", TaskData("Call back Ann", "Missed call", utcnow()), contact, deal)
    assert c.find_record("deal", "tb-0000000000d1").id == deal.id  # type: ignore[union-attr]
    assert c.find_record("call", "tb-0000000000c1").id == call.id  # type: ignore[union-attr]
    assert c.find_record("sms", "tb-0000000000e1").id == note.id  # type: ignore[union-attr]
    assert c.find_record("task", "tb-0000000000f1").id == task.id  # type: ignore[union-attr]
    assert c.find_record("task", "tb-00000000dead") is None
    assert c.find_record("deal", "tb-00000000dead") is None
    state = hub.state()
    assert by_type(state) == {"contacts": 1, "deals": 1, "calls": 1, "tasks": 1, "notes": 1}
    assert hub.linked(state, "deals", deal.id, "contacts") == {contact.id: 3}
    assert hub.linked(state, "notes", note.id, "deals") == {deal.id: 214}
    [row] = state["notes"]
    assert "Text sent to" in row["properties"]["hs_note_body"]
    # An update moves the stage; a later call of the same kind updates the same activity.
    c.upsert_deal("tb-0000000000d1", DealData("Missed call: Ann", "qualifiedtobuy"), contact, deal)
    c.log_activity(
        "tb-0000000000c1",
        ActivityData(
            "call", utcnow(), "Voicemail: https://x.test/r.mp3", recording_url="https://x.test/r.mp3"
        ),
        contact,
        deal,
        call,
    )
    state = hub.state()
    assert state["deals"][0]["properties"]["dealstage"] == "qualifiedtobuy"
    assert state["calls"][0]["properties"]["hs_call_recording_url"] == "https://x.test/r.mp3"
    assert by_type(state)["calls"] == 1


def test_settings_are_validated() -> None:
    with pytest.raises(ConnectorConfigError) as info:
        connector("https://evil.example.com")
    assert "not allowed" in str(info.value)
    with pytest.raises(ConnectorConfigError):
        connector("http://api.hubapi.com")  # the real API only over https
    assert connector("https://api.hubapi.com").base_url == "https://api.hubapi.com"
    with pytest.raises(ConnectorConfigError) as info:
        connector("http://127.0.0.1:9", access_token=None, client_id="x", client_secret="shh-secret")
    assert "refresh_token" in str(info.value) and "shh-secret" not in str(info.value)
    with pytest.raises(ConnectorConfigError) as info:
        connector("http://127.0.0.1:9", client_id="x", client_secret="y", refresh_token="z")
    assert "not both" in str(info.value)
    assert SANDBOX_TOKEN not in repr(connector("http://127.0.0.1:9"))


def test_oauth_without_a_token_store_refreshes_in_process(hub: Hub, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    c = connector(hub.url, access_token=None, **{k: SANDBOX_OAUTH[k] for k in OAUTH_KEYS})
    assert c.check().ok
    assert hub.state()["oauth"]["refreshes"] == 1
    hub.config(expire_tokens=True)
    assert c.find_contact("+13125550177") is None  # 401 EXPIRED_AUTHENTICATION -> refresh -> retry
    assert hub.state()["oauth"]["refreshes"] == 2
    hub.config(expire_tokens=True, revoke_refresh_tokens=True)
    with pytest.raises(AuthError) as info:
        c.find_contact("+13125550177")
    assert "reconnect HubSpot" in str(info.value)
    for secret in (SANDBOX_OAUTH["refresh_token"], SANDBOX_OAUTH["client_secret"]):
        assert secret not in str(info.value) + repr(c) + caplog.text


# -- the whole stack ----------------------------------------------------------------------------------
def test_missed_calls_land_once_linked_and_replays_change_nothing(
    stack: Stack, hub: Hub, secret_key: str
) -> None:
    result = install(stack, at_the_missed_call(hub.url))
    assert "ok: connected to HubSpot" in result.output
    caller = "+13125550142"
    stack.call(caller, "no-answer", voicemail_text="please call me back about the panel")
    stack.drain()
    state = hub.state()
    [contact] = hub.contacts(caller)
    assert contact["properties"]["phone"] == caller and contact["properties"]["hs_lead_status"] == "NEW"
    assert contact["properties"]["leadsource"] == "Missed call"
    # The first text was sent before the call was pushed: it is written into the call activity,
    # not a note of its own (and the voicemail's later updates of the call keep it).
    assert by_type(state) == {"contacts": 1, "deals": 1, "calls": 1, "tasks": 1, "notes": 0}
    deal, call, task = state["deals"][0], state["calls"][0], state["tasks"][0]
    assert deal["properties"]["dealstage"] == "appointmentscheduled"
    assert deal["properties"]["pipeline"] == "default"
    assert call["properties"]["hs_call_status"] == "NO_ANSWER"
    assert call["properties"]["hs_call_direction"] == "INBOUND"
    assert "please call me back" in call["properties"]["hs_call_body"]  # the transcript
    assert call["properties"].get("hs_call_recording_url")  # the voicemail link
    assert (
        task["properties"]["hs_task_status"] == "NOT_STARTED" and task["properties"]["hs_task_type"] == "CALL"
    )
    assert "Ref: tb-" in task["properties"]["hs_task_body"]
    assert f"Texted back to {caller}" in call["properties"]["hs_call_body"]  # the "texted" event
    assert "Ref: tb-" in call["properties"]["hs_call_body"]
    cid = contact["id"]
    assert hub.linked(state, "deals", deal["id"], "contacts") == {cid: 3}
    assert hub.linked(state, "calls", call["id"], "contacts") == {cid: 194}
    assert hub.linked(state, "calls", call["id"], "deals") == {deal["id"]: 206}
    assert hub.linked(state, "tasks", task["id"], "contacts") == {cid: 204}
    assert hub.linked(state, "tasks", task["id"], "deals") == {deal["id"]: 216}

    # Replaying the call's webhooks ten times changes nothing in HubSpot.
    before = hub.state()
    for _ in range(10):
        stack.call(caller, "no-answer", call_sid=stack.last_call_sid)
    stack.drain()
    after = hub.state()
    assert by_type(after) == by_type(before)
    assert after["associations"] == before["associations"]

    # A new lead, now that the properties exist. Before the first text, one GET looks the caller up
    # (the 800 ms budget). The missed-call job then takes contact + call + task = 3 calls (+1 for the
    # deal); the "texted" event adds nothing: the text is in the call activity already, and the
    # contact has not changed, so it is not pushed.
    seen = len(hub.requests())
    stack.call("+13125550143", "no-answer")
    stack.drain()
    made = [f"{r['method']} {r['path']}" for r in hub.requests()[seen:]]
    upsert = f"POST {paths.contacts_batch_upsert()}"
    objects = "POST /crm/v3/objects/"
    assert made[0].startswith("GET /crm/v3/objects/contacts/+13125550143")
    assert made[1:5] == [upsert, objects + "deals", objects + "calls", objects + "tasks"]
    assert len([m for m in made[1:5] if not m.endswith("/deals")]) <= 3
    assert made[5:] == []  # the "texted" event: the outgoing text is in the call activity
    newest = max(hub.state()["calls"], key=lambda c: int(c["id"]))
    assert "Texted back to +13125550143" in newest["properties"]["hs_call_body"]

    # A caller HubSpot already knows (by textback's phone property) is a customer: no new deal.
    known = "+13125550144"
    existing = hub.api(
        "POST",
        "/crm/v3/objects/contacts",
        {"properties": {PHONE_PROP: known, "phone": known, "firstname": "Kim"}},
    )
    deals_before = len(hub.state()["deals"])
    stack.call(known, "no-answer")
    stack.drain()
    state = hub.state()
    assert len(state["deals"]) == deals_before
    assert hub.contacts(known)[0]["id"] == existing["id"] and len(hub.contacts(known)) == 1
    assert existing["id"] in {a["to_id"] for a in state["associations"] if a["from_type"] == "tasks"}

    # STOP marks the contact opted out.
    stack.inbound_sms(caller, "STOP")
    stack.drain()
    [contact] = hub.contacts(caller)
    assert contact["properties"][mappers.OPTED_OUT_PROPERTY] == "true"
    assert contact["properties"]["hs_lead_status"] == mappers.LEAD_STATUS_OPTED_OUT
    assert all(j.status == "done" for j in jobs(stack))


def test_a_hubspot_outage_loses_nothing(stack: Stack, hub: Hub, secret_key: str) -> None:
    install(stack, at_the_missed_call(hub.url))
    # Down for a while: the caller lookup before the text and the first sync attempts all fail.
    hub.fault(path="/crm", status=503, body={"status": "error", "message": "unavailable"}, count=8)
    caller = "+13125550145"
    stack.call(caller, "busy")
    # Until nothing is due: the push, woken by the text, has failed once and backs off.
    stack.drain(timeout=5)
    assert hub.contacts(caller) == []  # HubSpot is down: nothing landed, nothing was dropped
    assert any(j.attempts for j in jobs(stack)) and not any(j.status == "dead" for j in jobs(stack))
    assert len(stack.sent(caller)) == 1  # texts are unaffected by the CRM outage
    settle_all(stack, lambda: synced(stack, hub))
    state = hub.state()
    assert {k: v for k, v in by_type(state).items() if k != "notes"} == {
        "contacts": 1,
        "deals": 1,
        "calls": 1,
        "tasks": 1,
    }
    assert first_text_logged(state) == 1 and len(state["notes"]) <= 1  # the text, once
    assert all(j.status == "done" for j in jobs(stack))


def upsert_answers_429_once(hub: Hub, retry_after: int) -> None:
    """HubSpot's ten-secondly limit, once, on the contact upsert that a missed call's push makes."""
    hub.fault(
        path=paths.contacts_batch_upsert(),
        status=429,
        headers={"Retry-After": str(retry_after)},
        count=1,
        body={
            "status": "error",
            "message": "You have reached your ten_secondly_rolling limit.",
            "errorType": "RATE_LIMIT",
            "policyName": "TEN_SECONDLY_ROLLING",
        },
    )


def test_a_429_pauses_the_connector_for_every_worker(stack: Stack, hub: Hub, secret_key: str) -> None:
    install(stack, at_the_missed_call(hub.url))
    upsert_answers_429_once(hub, retry_after=2)
    caller = "+13125550146"
    seen = len(hub.requests())
    stack.call(caller, "no-answer")
    # Until nothing is due (the push waits for its text first, which can take over 1 s under load).
    stack.drain(timeout=5, settle=0)
    row = connector_state(stack)
    assert row is not None and row.paused_until is not None and row.rate_limited == 1
    paused_until = row.paused_until.replace(tzinfo=row.paused_until.tzinfo or UTC)
    # The caller lookup before the text is a GET; the one write so far is the refused upsert.
    [limited] = [r for r in hub.requests()[seen:] if r["method"] != "GET"]
    seen += len(hub.requests()[seen:]) - 1
    assert 1.9 <= paused_until.timestamp() - limited["at"] <= 3  # Retry-After: 2, for the connector
    # A second worker (another process, as far as the outbox knows) respects the same pause.
    other = build_worker(stack.config, stack.engine)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not synced(stack, hub):
        other.run_once()
        stack.worker.run_once()
        time.sleep(0.05)
    stack.drain()
    later = hub.requests()[seen + 1 :]
    assert later, "nothing synced after the pause"
    first = min(r["at"] for r in later)
    assert first >= paused_until.timestamp() - 0.05
    assert first - limited["at"] >= 1.9
    state = hub.state()
    assert by_type(state) == {"contacts": 1, "deals": 1, "calls": 1, "tasks": 1, "notes": 0}
    assert first_text_logged(state) == 1  # in the call activity: the text went out before the push


def test_a_call_during_a_rate_limit_pause_waits_for_its_end_without_being_claimed(
    stack: Stack, hub: Hub, secret_key: str
) -> None:
    install(stack, at_the_missed_call(hub.url))
    upsert_answers_429_once(hub, retry_after=4)
    first, second = "+13125550147", "+13125550148"
    stack.call(first, "no-answer")
    stack.drain(timeout=5, settle=0)
    row = connector_state(stack)
    assert row is not None and row.paused_until is not None
    paused_until = row.paused_until
    # A missed call while HubSpot is paused: its text goes out, and its pushes wait for the pause.
    stack.call(second, "no-answer")
    stack.drain(timeout=5, settle=0)
    assert len(stack.sent(second)) == 1
    assert utcnow() < paused_until, "the pause ended before the test could look"
    with stack.factory() as s:
        texts = select(OutboxJob.lead_id).where(OutboxJob.kind == "sms.send")
        lead_id = s.scalar(texts.order_by(OutboxJob.id.desc()))
    waiting = [j for j in jobs(stack) if j.lead_id == lead_id]
    assert [j.payload["event"] for j in waiting] == ["missed_call", "texted"]
    for job in waiting:
        # Never claimed and put back: no worker spent a transaction on it during the pause.
        assert (job.status, job.locked_by, job.attempts) == ("pending", None, 0)
        assert job.next_attempt_at == paused_until and job.last_error == "hubspot is paused"
    settle_all(stack, lambda: all(j.status == "done" for j in jobs(stack)) and len(hub.contacts(second)) == 1)
    state = hub.state()
    assert len(hub.contacts(first)) == 1
    # Each call logged once, with its text written in (it went out long before the push).
    assert by_type(state)["calls"] == 2 and first_text_logged(state) == 2 and not state["notes"]


def test_oauth_refreshes_once_across_workers_and_a_revoked_token_pauses(
    stack: Stack, hub: Hub, secret_key: str
) -> None:
    install(stack, {**oauth_settings(hub.url), "sync": sandbox.settings(hub.url)["sync"]})
    assert hub.state()["oauth"]["refreshes"] == 1  # the install's check
    runtime = Connectors(stack.config, stack.factory)
    store = TokenStore(stack.factory, runtime.box, BUSINESS, "hubspot")
    hub.config(expire_tokens=True)
    barrier = threading.Barrier(10)

    def one(_: int) -> Any:
        c = connector(hub.url, tokens=store, access_token=None, **{k: SANDBOX_OAUTH[k] for k in OAUTH_KEYS})
        barrier.wait(timeout=10)
        return c.find_contact("+13125550147")

    with ThreadPoolExecutor(10) as pool:
        assert list(pool.map(one, range(10))) == [None] * 10
    assert hub.state()["oauth"]["refreshes"] == 2  # ten workers saw the token expire: one refresh

    # The refresh token is revoked (the app was uninstalled): the job waits, the admin is told.
    hub.config(expire_tokens=True, revoke_refresh_tokens=True)
    stack.call("+13125550148", "no-answer")
    stack.drain(timeout=5)  # until nothing is due: the push waits for its text first
    sync_jobs = jobs(stack)
    assert sync_jobs and all(j.status == "pending" for j in sync_jobs)  # deferred, not dead
    row = connector_state(stack)
    assert row is not None and row.paused_until is not None
    assert row.paused_until.replace(tzinfo=UTC) > datetime.now(UTC) + timedelta(minutes=10)
    with stack.factory() as s:
        alerts = list(s.scalars(select(Alert).where(Alert.connector_id == "hubspot")))
    assert [a.kind for a in alerts] == ["auth_failed"] and "reconnect HubSpot" in alerts[0].message
    assert SANDBOX_OAUTH["refresh_token"] not in alerts[0].message + (row.last_error or "")


def test_the_search_limit_binds_only_search_calls(stack: Stack, hub: Hub, secret_key: str) -> None:
    install(stack, sandbox.settings(hub.url))
    c = Connectors(stack.config, stack.factory).build(BUSINESS, "hubspot")
    for _ in range(12):
        c.context.throttle(1)  # burst: 100 per 10 s; the 4-per-second search budget is not touched
    with pytest.raises(RateLimited) as info:
        for _ in range(10):
            c.context.throttle(1, "search")
    assert "4/1s" in str(info.value)


def test_queued_leads_share_one_batch_upsert(stack: Stack, hub: Hub, secret_key: str) -> None:
    """Jobs that queued up together reach HubSpot as one batch call, not one call each."""
    install(stack, at_the_missed_call(hub.url))
    callers = [f"+1312555{n:04d}" for n in range(201, 206)]
    stack.worker.batch_size = 50
    with queued_at_one_moment(stack, callers):
        stack.drain(timeout=10)
    upserts = hub.requests("/crm/v3/objects/contacts/batch/upsert")
    assert max(len(r["json"]["inputs"]) for r in upserts) == len(callers)
    state = hub.state()
    for caller in callers:
        assert len([c for c in state["contacts"] if c["properties"].get(PHONE_PROP) == caller]) == 1
    assert len(state["calls"]) == len(callers) and len(state["tasks"]) == len(callers)


@patient_lookup
def test_a_known_caller_gets_the_existing_customer_text_by_first_name(
    stack: Stack, hub: Hub, secret_key: str
) -> None:
    install(stack, at_the_missed_call(hub.url))
    caller = "+13125550231"
    hub.api(
        "POST",
        "/crm/v3/objects/contacts/batch/upsert",
        {
            "inputs": [
                {
                    "idProperty": PHONE_PROP,
                    "id": caller,
                    "properties": {"firstname": "Dana", "lastname": "Reyes"},
                }
            ]
        },
    )
    stack.call(caller, "no-answer")
    stack.drain()
    [text] = [m["body"] for m in stack.sent(caller)]
    # The existing-customer text:
    assert text.startswith("Hi Dana, it's Bright Spark Electric. Sorry we missed you!")
    assert len(hub.state()["deals"]) == 0  # existing customers get no new deal
    lead = stack.lead(caller)
    assert lead is not None and lead["name"] == "Dana Reyes"


@patient_lookup
def test_caller_lookups_pause_while_hubspot_keeps_failing_and_resume_after_a_trial(
    stack: Stack, hub: Hub, secret_key: str
) -> None:
    install(stack, sandbox.settings(hub.url))
    unavailable = {"status": "error", "message": "Service Unavailable", "category": "SERVICE_UNAVAILABLE"}
    # Three failed lookups open the breaker, and the trial after the cool-off fails once more.
    hub.fault(path="/crm/v3/objects/contacts/+", method="GET", status=503, body=unavailable, count=4)
    callers = iter(f"+131255502{n:02d}" for n in range(10, 20))

    def lookups() -> int:
        return len([r for r in hub.requests() if r["method"] == "GET" and "/contacts/+" in r["path"]])

    def missed_call() -> str:
        caller = next(callers)
        before = lookups()
        stack.call(caller, "no-answer")
        stack.drain()
        [text] = [m["body"] for m in stack.sent(caller)]  # a text goes out whatever the CRM does
        return f"{lookups() - before} {text.split(',')[0]}"

    assert [missed_call() for _ in range(5)] == ["1 Hi there"] * 3 + ["0 Hi there"] * 2
    start = datetime.now(UTC)
    with time_machine.travel(start + timedelta(seconds=LOOKUP_COOL_OFF_S + 1), tick=True):
        # The cool-off is over: one trial, which fails, and the breaker is open again.
        assert [missed_call() for _ in range(2)] == ["1 Hi there", "0 Hi there"]
    with time_machine.travel(start + timedelta(seconds=2 * LOOKUP_COOL_OFF_S + 2), tick=True):
        kim = "+13125550218"  # the second caller after the trial
        hub.api("POST", "/crm/v3/objects/contacts", {"properties": {PHONE_PROP: kim, "firstname": "Kim"}})
        # The next trial succeeds (HubSpot answers again): Kim is greeted, and lookups go on.
        assert [missed_call() for _ in range(3)] == ["1 Hi there", "1 Hi Kim", "1 Hi there"]


def test_a_slow_crm_never_delays_the_first_text(stack: Stack, hub: Hub, secret_key: str) -> None:
    install(stack, sandbox.settings(hub.url))
    caller = "+13125550232"
    hub.fault(
        path="/crm/v3/objects/contacts/" + caller, method="GET", status=200, body={}, delay_ms=3000, count=1
    )
    hub.fault(
        path="/crm/objects/2026-03/contacts/" + caller,
        method="GET",
        status=200,
        body={},
        delay_ms=3000,
        count=1,
    )
    stack.call(caller, "no-answer")
    stack.worker.run_once()
    [text] = [m["body"] for m in stack.sent(caller)]
    assert text.startswith("Hi there, it's Bright Spark Electric")  # sent without the CRM's answer
    # The emulators' own clocks: the text left while HubSpot was still sitting on the lookup.
    [lookup] = [r for r in hub.requests("/crm") if r["method"] == "GET" and caller in r["path"]]
    twilio_log = requests.get(f"{stack.twilio_url}/_emulator/requests", timeout=5).json()["requests"]
    [send] = [r for r in twilio_log if r["method"] == "POST" and r["path"].endswith("/Messages.json")]
    assert send["at"] < lookup["at"] + 3.0
    lead = stack.lead(caller)
    assert lead is not None
    assert any(e["type"] == "crm_match" and e["found"] is False for e in lead["timeline"])


def test_a_lone_lead_takes_three_requests_with_the_default_settings(
    stack: Stack, hub: Hub, secret_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The product's defaults: the lookup, the contact and the call activity with the text in it."""
    # The push waits for the text at most FOLD_WAIT_S (2 s); on a busy CI machine this text, with its
    # slow lookup, once took longer, and its call went without it (a fourth request, the text's
    # note). The wait's bound is not what this test is about.
    monkeypatch.setattr(sync, "FOLD_WAIT_S", 20.0)
    settings = sandbox.settings(hub.url)
    assert not {"deal_on", "create_task"} & set(settings["sync"])  # the sandbox keeps the defaults
    install(stack, settings)
    caller = "+13125550233"
    # The caller lookup answers slowly (within the text's 800 ms budget), so the missed call's push
    # is claimed by another thread while the text is still on its way: it must wait for it.
    for path in ("/crm/v3/objects/contacts/" + caller, "/crm/objects/2026-03/contacts/" + caller):
        hub.fault(path=path, method="GET", delay_ms=500, count=1)
    seen = len(hub.requests())
    stop = threading.Event()
    serving = threading.Thread(
        target=stack.worker.serve, args=(stop,), kwargs={"threads": 2, "text_threads": 1}
    )
    serving.start()
    try:
        stack.call(caller, "no-answer")
        until_pushed(stack)
    finally:
        stop.set()
        serving.join(timeout=10)
    assert [j.payload["event"] for j in jobs(stack)] == ["missed_call", "texted"]
    assert all(j.status == "done" for j in jobs(stack))
    made = hub.requests()[seen:]
    assert [(r["method"], r["path"].split("?")[0]) for r in made] == [
        ("GET", made[0]["path"].split("?")[0]),
        ("POST", paths.contacts_batch_upsert()),
        ("POST", "/crm/v3/objects/calls"),
    ]
    assert caller in made[0]["path"]
    # The push waited for the text (the emulators' own clocks) and wrote it into the call activity.
    twilio_log = requests.get(f"{stack.twilio_url}/_emulator/requests", timeout=5).json()["requests"]
    [send] = [r for r in twilio_log if r["method"] == "POST" and r["path"].endswith("/Messages.json")]
    assert made[1]["at"] >= send["at"]
    state = hub.state()
    assert by_type(state) == {"contacts": 1, "deals": 0, "calls": 1, "tasks": 0, "notes": 0}
    [contact], [call] = hub.contacts(caller), state["calls"]
    assert f"Texted back to {caller}" in call["properties"]["hs_call_body"]
    assert hub.linked(state, "calls", call["id"], "contacts") == {contact["id"]: 194}
    # The text's own push was finished by the push that wrote the text into the call: never claimed.
    [_, texted] = jobs(stack)
    assert (texted.status, texted.attempts, texted.result) == ("done", 0, {"folded_into": call["id"]})

    # The caller answers the text: an engaged lead, now a deal on the contact.
    stack.inbound_sms(caller, "Yes please, can someone come tomorrow?")
    settle_all(stack, lambda: len(hub.state()["deals"]) == 1 and all(j.status == "done" for j in jobs(stack)))
    state = hub.state()
    [deal] = state["deals"]
    # Made at the reply ("new"), moved on as the conversation qualified them.
    assert deal["properties"]["dealstage"] in ("appointmentscheduled", "qualifiedtobuy")
    assert hub.linked(state, "deals", deal["id"], "contacts") == {contact["id"]: 3}
    assert len(hub.contacts(caller)) == 1 and state["tasks"] == []


def test_a_lone_leads_push_is_held_when_the_call_is_stored_and_claimed_once(
    stack: Stack, hub: Hub, secret_key: str
) -> None:
    """The wait for the first text is decided at the call: the push is claimed once, after the text."""
    install(stack, sandbox.settings(hub.url))
    caller = "+13125550235"
    # A slow caller lookup keeps the text on its way while a general thread is idle.
    for path in ("/crm/v3/objects/contacts/" + caller, "/crm/objects/2026-03/contacts/" + caller):
        hub.fault(path=path, method="GET", delay_ms=500, count=1)
    outcomes: list[tuple[int, str]] = []

    def record(job: Job, outcome: str) -> None:
        outcomes.append((job.id, outcome))

    # The stack's own outbox and handlers, with an outcome hook that hears every claimed job's fate.
    worker = Worker(stack.worker.outbox, stack.worker.handlers, on_outcome=record)
    stop = threading.Event()
    serving = threading.Thread(target=worker.serve, args=(stop,), kwargs={"threads": 2, "text_threads": 1})
    stack.call(caller, "no-answer")
    [push] = jobs(stack)
    # Queued with the call, held for the text queued with it (no worker has seen it yet).
    assert (push.payload["event"], push.status, push.last_error) == (
        "missed_call",
        "pending",
        sync.FOLD_REASON,
    )
    assert (push.next_attempt_at - push.created_at).total_seconds() > sync.FOLD_WAIT_S / 2
    serving.start()
    try:
        until_pushed(stack)
    finally:
        stop.set()
        serving.join(timeout=10)
    [push, texted] = jobs(stack)
    [text] = jobs(stack, "sms.send")
    assert [(push.status, texted.status, text.status)] == [("done", "done", "done")]
    # Claimed once, never deferred; woken (its hold cleared) by the text's commit.
    assert [o for job_id, o in outcomes if job_id == push.id] == ["done"]
    assert push.attempts == 1 and push.last_error is None
    assert text.finished_at is not None and push.next_attempt_at <= text.finished_at
    [call] = hub.state()["calls"]
    assert f"Texted back to {caller}" in call["properties"]["hs_call_body"]


def test_a_lone_leads_push_goes_at_once_when_its_first_text_fails(
    stack: Stack, hub: Hub, secret_key: str
) -> None:
    """A text Twilio refuses releases the missed call's push: it does not wait out its hold."""
    install(stack, sandbox.settings(hub.url))
    caller = "+13125550236"
    resp = requests.post(
        f"{stack.twilio_url}/_emulator/config", json={"numbers": {caller: {"reject_code": 21211}}}, timeout=5
    )
    assert resp.status_code == 200, resp.text
    stack.call(caller, "no-answer")
    [push] = jobs(stack)
    assert (push.status, push.last_error) == ("pending", sync.FOLD_REASON)
    # Runs only what is due: the push runs here only because the refusal made it due.
    stack.drain()
    [text] = jobs(stack, "sms.send")
    [push] = jobs(stack)  # no "texted" push: nothing went out
    assert (text.status, text.last_error_code) == ("dead", "21211")
    assert (push.status, push.attempts, push.last_error) == ("done", 1, None)
    # Woken in the transaction that recorded the refusal, before the text's job was closed.
    assert text.finished_at is not None and push.next_attempt_at <= text.finished_at
    state = hub.state()
    assert by_type(state) == {"contacts": 1, "deals": 0, "calls": 1, "tasks": 0, "notes": 0}
    assert "Texted back" not in state["calls"][0]["properties"]["hs_call_body"]


def test_a_text_sent_after_its_calls_push_gets_a_note_from_its_own_push(
    stack: Stack, hub: Hub, secret_key: str
) -> None:
    """The push ran before the text (its hold ran out): nothing was folded, the text's push logs it."""
    install(stack, sandbox.settings(hub.url))
    caller = "+13125550237"
    stack.call(caller, "no-answer")
    [text], [push] = jobs(stack, "sms.send"), jobs(stack)
    # The text is held up past the push's hold (as a send slower than FOLD_WAIT_S would be).
    with stack.factory() as s:
        s.execute(update(OutboxJob).where(OutboxJob.id == text.id).values(next_attempt_at=utcnow() + HOUR))
        s.execute(update(OutboxJob).where(OutboxJob.id == push.id).values(next_attempt_at=utcnow()))
        s.commit()
    stack.drain()
    [push] = jobs(stack)
    state = hub.state()
    assert push.status == "done" and stack.sent(caller) == []
    assert by_type(state) == {"contacts": 1, "deals": 0, "calls": 1, "tasks": 0, "notes": 0}
    with stack.factory() as s:
        s.execute(update(OutboxJob).where(OutboxJob.id == text.id).values(next_attempt_at=utcnow()))
        s.commit()
    stack.drain()
    [_, texted] = jobs(stack)
    [contact] = hub.contacts(caller)
    assert (texted.status, texted.attempts) == ("done", 1)
    assert texted.result == {"event": "texted", "contact": contact["id"]}
    state = hub.state()
    assert by_type(state) == {"contacts": 1, "deals": 0, "calls": 1, "tasks": 0, "notes": 1}
    assert "Texted back" not in state["calls"][0]["properties"]["hs_call_body"]
    assert "Text sent to" in state["notes"][0]["properties"]["hs_note_body"]


# -- jobs claimed together: batch requests -----------------------------------------------------------


@patient_lookup
def test_queued_leads_are_looked_up_and_created_in_batches(stack: Stack, hub: Hub, secret_key: str) -> None:
    install(stack, at_the_missed_call(hub.url))
    known = "+13125550190"
    hub.api("POST", "/crm/v3/objects/contacts", {"properties": {PHONE_PROP: known, "firstname": "Kim"}})
    callers = [f"+131255501{n:02d}" for n in range(91, 95)]
    seen = len(hub.requests())
    with queued_at_one_moment(stack, [known, *callers]):
        settle_all(stack, lambda: all(j.status == "done" for j in jobs(stack)) and len(jobs(stack)) >= 10)
    made = Counter(f"{r['method']} {r['path']}" for r in hub.requests()[seen:])
    objects = "POST /crm/v3/objects/"
    # One search looked up all five callers before their texts; no lookup one by one.
    assert made[objects + "contacts/search"] == 1
    assert not [m for m in made if m.startswith("GET /crm/v3/objects/contacts/")]
    # Their pushes waited for the texts (claimed with them), then their deals, calls (the texts
    # written into them) and tasks were each made in one batch request: five requests for five leads.
    for kind in ("deals", "calls", "tasks"):
        assert made[f"{objects}{kind}/batch/create"] == 1, made
        assert made[f"{objects}{kind}"] == 0, made
    assert not [m for m in made if m.startswith("POST /crm/v3/objects/notes")], made
    assert made[objects + "contacts/batch/upsert"] == 1
    assert sum(made.values()) <= 3 * 5, made
    # The known caller got the existing-customer text with their name, and no deal.
    assert "Kim" in stack.sent(known)[0]["body"]
    state = hub.state()
    assert by_type(state) == {"contacts": 5, "deals": 4, "calls": 5, "tasks": 5, "notes": 0}
    texted = {j.lead_id: j for j in jobs(stack) if j.payload["event"] == "texted"}
    assert len(texted) == 5
    for caller in [known, *callers]:
        [contact] = hub.contacts(caller)
        cid = contact["id"]
        [call] = [c for c in state["calls"] if cid in hub.linked(state, "calls", c["id"], "contacts")]
        [task] = [t for t in state["tasks"] if cid in hub.linked(state, "tasks", t["id"], "contacts")]
        assert call["properties"]["hs_call_status"] == "NO_ANSWER"
        assert f"Texted back to {caller}" in call["properties"]["hs_call_body"]
        # Its text's own push was finished, unclaimed, with the batch that wrote the text in.
        lead = stack.lead(caller)
        assert lead is not None
        job = texted[lead["id"]]
        assert (job.status, job.attempts, job.result) == ("done", 0, {"folded_into": call["id"]})
        deals = [d for d in state["deals"] if cid in hub.linked(state, "deals", d["id"], "contacts")]
        assert len(deals) == (0 if caller == known else 1)
        for record, kind in ((call, "calls"), (task, "tasks")):
            assert hub.linked(state, kind, record["id"], "deals") == (
                {} if caller == known else {deals[0]["id"]: {"calls": 206, "tasks": 216}[kind]}
            )
    # Replaying every job's events changes nothing: the ledger knows every record.
    with stack.factory() as s:
        for job in s.scalars(select(OutboxJob).where(OutboxJob.kind == "crm.sync")):
            job.status, job.next_attempt_at = "pending", utcnow()
        s.commit()
    before = len(hub.requests())
    settle_all(stack, lambda: all(j.status == "done" for j in jobs(stack)))
    assert by_type(hub.state()) == by_type(state)
    again = hub.requests()[before:]
    assert not [r for r in again if r["method"] == "POST" and "batch/create" in r["path"]]


def test_batch_create_and_lookup_against_the_emulator(hub: Hub) -> None:
    c = HubSpotConnector(
        {"access_token": SANDBOX_TOKEN, "api_base_url": hub.url, "portal_id": "4242"},
        ConnectorContext("b", "hubspot"),
    )
    phones = ["+13125550181", "+13125550182"]
    contacts = [c.upsert_contact(ContactData(phone=p, first_name=f"P{p[-1]}"), None) for p in phones]
    seen = len(hub.requests())
    found = c.find_contacts([*phones, "+13125550189"])
    assert {p: r.id for p, r in found.items()} == {p: r.id for p, r in zip(phones, contacts, strict=True)}
    assert found[phones[0]].name == "P1"
    [search] = hub.requests()[seen:]
    assert search["path"] == "/crm/v3/objects/contacts/search"
    deals = c.create_records(
        [
            NewRecord(
                "deal", f"tb-00000000d{n}", DealData(f"Missed call {n}", "appointmentscheduled"), contact
            )
            for n, contact in enumerate(contacts)
        ]
    )
    assert all(isinstance(d, Remote) and d.created and d.url and "4242" in d.url for d in deals)
    seen = len(hub.requests())
    records = c.create_records(
        [
            NewRecord(
                "task", "tb-00000000f1", TaskData("Call back", "Missed call", utcnow()), contacts[0], deals[0]
            ),  # type: ignore[arg-type]
            NewRecord(
                "call",
                "tb-00000000c1",
                ActivityData("call", utcnow(), "Missed", from_number=phones[0], status="missed"),
                contacts[0],
                deals[0],  # type: ignore[arg-type]
            ),
            NewRecord(
                "sms",
                "tb-00000000e2",
                ActivityData(
                    "sms", utcnow(), "Sorry we missed you", direction="outbound", to_number=phones[1]
                ),
                contacts[1],
                deals[1],  # type: ignore[arg-type]
            ),
            NewRecord(
                "task", "tb-00000000f2", TaskData("Call back", "Missed call", utcnow()), contacts[1], None
            ),
        ]
    )
    paths_used = Counter(r["path"] for r in hub.requests()[seen:])
    assert paths_used == {
        "/crm/v3/objects/tasks/batch/create": 1,
        "/crm/v3/objects/calls/batch/create": 1,
        "/crm/v3/objects/notes/batch/create": 1,
    }
    assert [r.kind for r in records if isinstance(r, Remote)] == ["task", "call", "sms", "task"]
    state = hub.state()
    task1, call1, note2, task2 = (r.id for r in records if isinstance(r, Remote))
    assert hub.linked(state, "tasks", task1, "deals") == {deals[0].id: 216}  # type: ignore[union-attr]
    assert hub.linked(state, "tasks", task2, "contacts") == {contacts[1].id: 204}
    assert hub.linked(state, "calls", call1, "contacts") == {contacts[0].id: 194}
    assert hub.linked(state, "notes", note2, "deals") == {deals[1].id: 214}  # type: ignore[union-attr]
    # Each record carries its marker, so an interrupted batch is found like an interrupted create.
    assert c.find_record("call", "tb-00000000c1").id == call1  # type: ignore[union-attr]
    assert c.find_record("deal", "tb-00000000d1").id == deals[1].id  # type: ignore[union-attr]


def test_a_batch_answered_207_maps_each_input(hub: Hub) -> None:
    c = HubSpotConnector(
        {"access_token": SANDBOX_TOKEN, "api_base_url": hub.url}, ConnectorContext("b", "hubspot")
    )
    contact = c.upsert_contact(ContactData(phone="+13125550185"), None)
    hub.fault(
        path="/crm/v3/objects/tasks/batch/create",
        status=207,
        count=1,
        body={
            "status": "COMPLETE",
            "results": [{"id": "777", "properties": {"hs_task_body": "Call back<br><br>Ref: tb-00000000f1"}}],
            "numErrors": 1,
            "errors": [
                {
                    "status": "error",
                    "category": "VALIDATION_ERROR",
                    "message": "Property values were not valid",
                    "context": {"objectWriteTraceId": ["tb-00000000f2"]},
                }
            ],
        },
    )
    task = TaskData("Call back", "Missed call", utcnow())
    made, refused, unknown = c.create_records(
        [NewRecord("task", f"tb-00000000f{n}", task, contact) for n in (1, 2, 3)]
    )
    assert isinstance(made, Remote) and made.id == "777"  # matched by its marker
    assert isinstance(refused, Rejected)  # certainly not created: its job creates it alone
    assert isinstance(unknown, TransientError)  # not accounted for: its job looks before creating
