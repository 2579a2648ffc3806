"""The Pipedrive connector: the conformance kit, its own traps, and a missed call through the real stack."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from click.testing import CliRunner
from sqlalchemy import select

from bridge.app import create_app
from bridge.cli import main
from bridge.runtime import Connectors, build_worker
from connectors import registry
from connectors.base import ConnectorContext
from connectors.emulator.base import ServerThread, serve_in_thread
from connectors.pipedrive import client as pd_client
from connectors.pipedrive import sandbox
from connectors.pipedrive.connector import PipedriveConnector
from connectors.pipedrive.emulator import SANDBOX_OAUTH, SANDBOX_TOKEN, PipedriveEmulator
from connectors.pipedrive.kit import PipedriveKit
from connectors.testing import conformance_suite
from core import connector_state, sync
from core.crm import ActivityData, ContactData, DealData, Remote, TaskData
from core.db import transaction
from core.errors import AuthError, ConnectorConfigError, RateLimited, TransientError
from core.models import Alert, ConnectorState, OutboxJob, SyncLedger
from core.secrets import generate_key
from tests.conftest import ACCOUNT_SID
from tests.stack import PATIENT_LOOKUP, Stack, all_day_business, settle

TestPipedriveConformance = conformance_suite(PipedriveKit())

CALLER = "+13125550142"
# a caller no other test here makes a person for: the connector trusts a person this process made
# for a number within the last 15 minutes (RECENT_TTL) as its own, emulator reset or not
KNOWN_CALLER = "+13125550177"
MESSAGES = f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"
TWILIO_429 = {"code": 20429, "message": "Too Many Requests", "more_info": "", "status": 429}
TWILIO_503 = {"code": 20503, "message": "Service Unavailable", "more_info": "", "status": 503}
HTML_502 = "<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"


# -- fixtures and helpers ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    emulator = PipedriveEmulator()
    thread: ServerThread = serve_in_thread(emulator.app)
    try:
        yield thread.url
    finally:
        thread.stop()


@pytest.fixture
def pd(server: str) -> str:
    """The module's emulator, reset: no data, no faults, default limits."""
    assert requests.post(server + "/_emulator/reset", timeout=5).ok
    return server


@pytest.fixture
def secret_key(monkeypatch: pytest.MonkeyPatch) -> str:
    key = generate_key()
    monkeypatch.setenv("TEXTBACK_SECRET_KEY", key)
    return key


def state(url: str) -> dict[str, Any]:
    return dict(requests.get(url + "/_emulator/state", timeout=5).json())


def configure(url: str, **spec: Any) -> None:
    assert requests.post(url + "/_emulator/config", json=spec, timeout=5).status_code == 200


def fault(url: str, **spec: Any) -> None:
    assert requests.post(url + "/_emulator/faults", json=spec, timeout=5).status_code == 201


def api_requests(url: str) -> list[dict[str, Any]]:
    logged = requests.get(url + "/_emulator/requests", timeout=5).json()["requests"]
    return [r for r in logged if r["path"].startswith(("/api/", "/v1/"))]


def connector(url: str, **config: Any) -> PipedriveConnector:
    cfg = {"api_token": SANDBOX_TOKEN, "api_base_url": url, **config}
    return PipedriveConnector(cfg, ConnectorContext(business_id="b", connector_id="pipedrive", timeout=2))


def persons_with(st: dict[str, Any], phone: str) -> list[dict[str, Any]]:
    return [p for p in st["persons"] if not p["is_deleted"] and any(x["value"] == phone for x in p["phones"])]


def at_the_missed_call(url: str) -> dict[str, Any]:
    """The sandbox's sync settings with a deal and a call-back task for every missed call."""
    return {**sandbox.settings(url)["sync"], "deal_on": "missed_call", "create_task": True}


def install(stack: Stack, url: str, **overrides: Any) -> Any:
    settings = {**sandbox.settings(url), **overrides}
    path = stack.tmp_path / "pipedrive.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in settings.items() if v is not None}))
    result = CliRunner().invoke(
        main,
        [
            "connectors",
            "install",
            "pipedrive",
            "--config",
            str(stack.config_path),
            "--config-file",
            str(path),
        ],
    )
    assert result.exit_code == 0, result.output
    return result


def queued_push(stack: Stack) -> OutboxJob:
    """The missed call's one push, queued and not tried yet; its last_error says what it waits for."""
    [push] = crm_jobs(stack)
    assert (push.payload["event"], push.status) == ("missed_call", "pending")
    return push


def add_person(url: str, name: str, phone: str) -> None:
    """A person the business already had in Pipedrive, made through its API."""
    phones = [{"value": phone, "primary": True, "label": "mobile"}]
    made = requests.post(
        url + "/api/v2/persons",
        params={"api_token": SANDBOX_TOKEN},
        json={"name": name, "phones": phones},
        timeout=5,
    )
    assert made.ok, made.text


def crm_jobs(stack: Stack) -> list[OutboxJob]:
    with stack.factory() as s:
        return list(
            s.scalars(select(OutboxJob).where(OutboxJob.target == "pipedrive").order_by(OutboxJob.id))
        )


def run_until(stack: Stack, done: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "timed out"
        if not stack.worker.run_once():
            time.sleep(0.05)


def tried(stack: Stack, phone: str | None = None) -> Any:
    """A condition: a missed_call job (of ``phone``'s lead) was attempted and failed or was deferred."""

    def check() -> bool:
        lead = stack.lead(phone) if phone else None
        return any(
            j.payload["event"] == "missed_call"
            and j.last_error not in (None, sync.FOLD_REASON, sync.LOOKUP_REASON)  # held, not tried
            and (lead is None or j.lead_id == lead["id"])
            for j in crm_jobs(stack)
        )

    return check


def business_id(stack: Stack) -> str:
    return str(stack.config.businesses[0].id)


def missed_call_records(url: str, phone: str) -> tuple[dict[str, Any], ...]:
    """The person, deal, call log and call-back activity a missed call leaves (exactly one of each)."""
    st = state(url)
    [person] = persons_with(st, phone)
    [deal] = [d for d in st["deals"] if d["person_id"] == person["id"] and not d["is_deleted"]]
    [call_log] = [c for c in st["call_logs"] if c["person_id"] == person["id"]]
    [task] = [
        a
        for a in st["activities"]
        if not a["is_deleted"] and {"person_id": person["id"], "primary": True} in a["participants"]
    ]
    return person, deal, call_log, task


# -- through the real stack ---------------------------------------------------------------------------------
def test_missed_call_lands_once_linked_and_replays_change_nothing(
    stack: Stack, pd: str, secret_key: str
) -> None:
    result = install(stack, pd, sync=at_the_missed_call(pd))
    assert "ok: connected to Pipedrive as Emulator Owner" in result.output
    stack.call(CALLER, "no-answer", voicemail_text="please call me back about the panel")
    stack.drain()
    person, deal, call_log, task = missed_call_records(pd, CALLER)
    assert person["name"] == "(312) 555-0142"
    assert person["phones"] == [{"value": CALLER, "primary": True, "label": "mobile"}]
    assert (deal["pipeline_id"], deal["stage_id"], deal["status"]) == (1, 1, "open")
    assert deal["title"].startswith("Missed call: (312) 555-0142 [tb-")
    assert call_log["deal_id"] == deal["id"] and call_log["from_phone_number"] == CALLER
    assert call_log["outcome"] == "left_voicemail" and "Ref: tb-" in call_log["note"]
    assert (task["type"], task["deal_id"], task["done"]) == ("call", deal["id"], False)
    assert task["subject"] == "Call back (312) 555-0142" and task["due_date"] and task["due_time"]
    notes = [n for n in state(pd)["notes"] if n["person_id"] == person["id"]]
    assert any("Text message sent to" in n["content"] and n["deal_id"] == deal["id"] for n in notes)
    with stack.factory() as s:
        ledger = {
            r.key: r for r in s.scalars(select(SyncLedger).where(SyncLedger.connector_id == "pipedrive"))
        }
    assert ledger["contact"].remote_url == f"https://textback-emulator.pipedrive.com/person/{person['id']}"
    assert ledger["deal"].remote_id == str(deal["id"])

    # Replaying the call's webhooks ten times changes nothing in Pipedrive.
    before = {k: state(pd)[k] for k in ("persons", "deals", "activities", "notes", "call_logs", "leads")}
    for _ in range(10):
        stack.call(CALLER, "no-answer", call_sid=stack.last_call_sid)
    stack.drain()
    after = state(pd)
    assert {k: after[k] for k in before} == before
    assert all(j.status == "done" for j in crm_jobs(stack))

    # Booked (Google Calendar wires this up later): the deal moves to the booked stage, once.
    lead = stack.lead(CALLER)
    assert lead is not None
    with transaction(stack.factory) as s:
        sync.emit(s, business_id(stack), lead["id"], "booked", "slot-1")
    stack.drain()
    [moved] = [d for d in state(pd)["deals"] if d["id"] == deal["id"]]
    assert moved["stage_id"] == 4 and len(state(pd)["deals"]) == 1

    # The token travelled in a header on every request, never in a URL.
    assert state(pd)["query_token_uses"] == 0
    sent = api_requests(pd)
    assert sent and all(
        SANDBOX_TOKEN not in r["query"] and r["headers"].get("X-Api-Token") == SANDBOX_TOKEN for r in sent
    )
    assert not any(r["path"].startswith(("/v1/persons", "/v1/deals", "/v1/activities")) for r in sent)


def test_a_missed_calls_push_waits_for_the_texts_caller_lookup_not_for_the_text(
    stack: Stack, pd: str, secret_key: str
) -> None:
    """Only a connector that writes the first text into the call activity (HubSpot) holds the
    call's push until the text goes out. Pipedrive logs the text as a note of its own: its push
    waits only for the text's caller lookup, so that it cannot make the person that lookup finds."""
    install(stack, pd, sync=at_the_missed_call(pd))
    stack.fault(method="POST", path=MESSAGES, status=429, body=TWILIO_429, count=1)
    stack.call(CALLER, "no-answer")
    push = queued_push(stack)
    assert push.last_error == sync.LOOKUP_REASON
    assert push.next_attempt_at >= push.created_at + timedelta(seconds=sync.FOLD_WAIT_S - 0.5)
    # The text looks its caller up, which frees the push; then Twilio answers 429 and it waits.
    assert stack.worker.run_once() == 1  # the text alone: the push is held
    [push] = crm_jobs(stack)
    # Woken by the lookup's answer: a hold that ran out would still carry its reason.
    assert (push.status, push.last_error) == ("pending", None)
    assert stack.sent(CALLER) == []
    # Due while the text is still refused: the push does not wait for it. (Under load the text's
    # retry, 0.2 s later, can go out before the push is done, and queue its own push.)
    run_until(stack, lambda: crm_jobs(stack)[0].status == "done")  # the call's push
    logged = api_requests(pd)
    searches = [i for i, r in enumerate(logged) if r["path"] == "/api/v2/persons/search"]
    writes = [i for i, r in enumerate(logged) if r["method"] != "GET"]
    assert searches and writes and searches[0] < writes[0]  # the text's lookup came first
    settle(stack, timeout=30)  # the text's retry, then its note
    person, deal, call_log, _ = missed_call_records(pd, CALLER)
    notes = [n for n in state(pd)["notes"] if n["person_id"] == person["id"]]
    assert any("Text message sent to" in n["content"] and n["deal_id"] == deal["id"] for n in notes)
    assert call_log["deal_id"] == deal["id"]
    assert all(j.status == "done" for j in crm_jobs(stack))
    [text] = stack.sent(CALLER)
    assert "Sorry we missed your call" in text["body"]  # a new caller: not taken for a customer


def test_a_caller_pipedrive_knew_gets_the_existing_customer_text_though_the_push_ran_first(
    tmp_path: Path, db_url: str, pd: str, secret_key: str
) -> None:
    """A returning customer is greeted by name even when the call's push reaches Pipedrive before
    the text's caller lookup (here the text's first try fails at Twilio Lookup): the push found
    the person already there, so the person the lookup finds is not one the push made."""
    policy = {**all_day_business()["policy"], "lookup_line_type": True, **PATIENT_LOOKUP}
    stack = Stack(tmp_path, db_url, businesses=[all_day_business(mode="forward", policy=policy)])
    try:
        install(stack, pd, sync=at_the_missed_call(pd))
        add_person(pd, "Dana Whitfield", KNOWN_CALLER)
        stack.fault(method="GET", path="/v2/PhoneNumbers/", status=503, body=TWILIO_503, count=1)
        stack.call(KNOWN_CALLER, "no-answer")
        run_until(stack, lambda: bool(stack.sent(KNOWN_CALLER)), timeout=20)
        [text] = stack.sent(KNOWN_CALLER)
        assert text["body"].startswith("Hi Dana") and "Sorry we missed you!" in text["body"]
        lead = stack.lead(KNOWN_CALLER)
        assert lead is not None and lead["name"] == "Dana Whitfield"
        stack.drain()
        assert len(persons_with(state(pd), KNOWN_CALLER)) == 1  # the push updated her, made nobody new
    finally:
        stack.close()


def test_a_bridge_started_with_connectors_installed_knows_their_folding_before_the_first_call(
    stack: Stack, pd: str, secret_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bridge asks each installed connector whether it folds the first text when it starts, so
    the first missed call does not load connector classes inside its transaction (SQLite's lock)."""
    install(stack, pd, sync=at_the_missed_call(pd))
    stack.app = create_app(stack.config, engine=stack.engine)  # the bridge restarted after the install
    stack._dispatch.app = stack.app

    def unreachable(connector_id: str) -> Any:
        raise AssertionError(f"connector {connector_id!r} loaded during a webhook")

    # A lookup now would be taken to fold (core.sync), and the push would be held for the text.
    monkeypatch.setattr(registry, "load", unreachable)
    stack.call(CALLER, "no-answer")
    # Held for the caller lookup only: not for the text, as a connector that folds it would be.
    assert queued_push(stack).last_error == sync.LOOKUP_REASON


def test_a_person_the_calls_own_push_created_does_not_make_the_caller_an_existing_customer(
    tmp_path: Path, db_url: str, pd: str, secret_key: str
) -> None:
    """Pipedrive's push does not wait for the first text, so the text's caller lookup can find the
    person that push just made for this very call: that is not a customer the business knew."""
    policy = {**all_day_business()["policy"], "send_delay_seconds": 2, **PATIENT_LOOKUP}
    stack = Stack(tmp_path, db_url, businesses=[all_day_business(mode="forward", policy=policy)])
    try:
        install(stack, pd, sync=at_the_missed_call(pd))
        stack.call(CALLER, "no-answer")
        run_until(stack, lambda: bool(persons_with(state(pd), CALLER)))  # the push, before the text
        run_until(stack, lambda: bool(stack.sent(CALLER)))
        [text] = stack.sent(CALLER)
        assert "Sorry we missed your call" in text["body"] and "Sorry we missed you!" not in text["body"]
        lead = stack.lead(CALLER)
        assert lead is not None and lead["name"] is None
    finally:
        stack.close()


def test_a_caller_pipedrive_knew_is_still_greeted_by_name_when_a_delayed_text_follows_the_push(
    tmp_path: Path, db_url: str, pd: str, secret_key: str
) -> None:
    """A text delayed on purpose looks its caller up after the call's push has run (the push does
    not wait that long): the push found the person already there, so she is still a customer."""
    policy = {**all_day_business()["policy"], "send_delay_seconds": 2, **PATIENT_LOOKUP}
    stack = Stack(tmp_path, db_url, businesses=[all_day_business(mode="forward", policy=policy)])
    try:
        install(stack, pd, sync=at_the_missed_call(pd))
        add_person(pd, "Dana Whitfield", KNOWN_CALLER)
        stack.call(KNOWN_CALLER, "no-answer")
        run_until(stack, lambda: bool(stack.sent(KNOWN_CALLER)))
        pushed = [r for r in api_requests(pd) if r["path"] == "/v1/callLogs"]
        assert pushed  # the push had logged the call before the text's lookup
        [text] = stack.sent(KNOWN_CALLER)
        assert text["body"].startswith("Hi Dana") and "Sorry we missed you!" in text["body"]
        assert len(persons_with(state(pd), KNOWN_CALLER)) == 1
    finally:
        stack.close()


def test_by_default_a_missed_call_makes_no_deal_or_task_and_a_reply_makes_the_deal(
    stack: Stack, pd: str, secret_key: str
) -> None:
    sync_settings = {
        k: v for k, v in sandbox.settings(pd)["sync"].items() if k not in ("deal_on", "create_task")
    }
    install(stack, pd, sync=sync_settings)  # the product's defaults, with the emulator's pipeline
    stack.call(CALLER, "no-answer")
    stack.drain()
    st = state(pd)
    [person] = persons_with(st, CALLER)
    assert [c["person_id"] for c in st["call_logs"]] == [person["id"]]
    assert [d for d in st["deals"] if not d["is_deleted"]] == []
    assert [a for a in st["activities"] if not a["is_deleted"]] == []  # no call-back task
    stack.inbound_sms(CALLER, "Yes please, can someone come tomorrow?")
    run_until(stack, lambda: all(j.status == "done" for j in crm_jobs(stack)) and not stack.due_jobs())
    st = state(pd)
    [deal] = [d for d in st["deals"] if not d["is_deleted"]]
    assert deal["person_id"] == person["id"] and deal["pipeline_id"] == 1
    assert [a for a in st["activities"] if not a["is_deleted"]] == []


def test_outage_loses_nothing(stack: Stack, pd: str, secret_key: str) -> None:
    install(stack, pd, sync=at_the_missed_call(pd))
    fault(pd, path="/api/v2", status=503, body={"success": False, "error": "unavailable"}, count=3)
    fault(pd, path="/v1/callLogs", status=503, body={"success": False, "error": "unavailable"}, count=2)
    stack.call(CALLER, "busy")
    settle(stack, timeout=30)
    missed_call_records(pd, CALLER)  # exactly one of each
    assert all(j.status == "done" for j in crm_jobs(stack))
    assert len(stack.sent(CALLER)) == 1  # texting never waited for the CRM


def test_rate_limit_pauses_the_connector_for_every_worker(stack: Stack, pd: str, secret_key: str) -> None:
    install(stack, pd)
    fault(
        pd,
        path="/api/v2/persons",
        method="POST",  # the sync's create, not the caller lookup's search before the first text
        status=429,
        count=1,
        body={"success": False, "error": "Request over limit"},
        headers={
            "Retry-After": "30",
            "x-ratelimit-remaining": "0",
            "x-daily-ratelimit-token-remaining": "900",
        },
    )
    stack.call(CALLER, "no-answer")
    run_until(stack, tried(stack))
    with stack.factory() as s:
        until = connector_state.paused_until(s, business_id(stack), "pipedrive")
        row = s.get(ConnectorState, (business_id(stack), "pipedrive"))
        assert row is not None and row.rate_limited == 1
    assert until is not None and until > datetime.now(UTC) + timedelta(seconds=25)
    [job] = [j for j in crm_jobs(stack) if j.payload["event"] == "missed_call"]
    assert job.status == "pending" and job.attempts == 0  # deferred, no attempt spent
    # Another worker (another process, same database) leaves Pipedrive alone for another lead too.
    calls = len(api_requests(pd))
    other = build_worker(stack.config, stack.engine)
    stack.call("+13125550177", "no-answer")
    for _ in range(5):
        other.run_once()
    assert len(api_requests(pd)) == calls
    assert all(j.status == "pending" for j in crm_jobs(stack))


def test_html_502_from_a_proxy_is_classified_and_retried(stack: Stack, pd: str, secret_key: str) -> None:
    install(stack, pd, sync=at_the_missed_call(pd))
    fault(
        pd,
        path="/api/v2/persons",
        method="POST",
        status=502,
        body=HTML_502,
        headers={"Content-Type": "text/html"},
        count=1,
    )  # the create, not the caller lookup's search before the first text
    stack.call(CALLER, "no-answer")
    run_until(stack, tried(stack))
    [job] = [j for j in crm_jobs(stack) if j.payload["event"] == "missed_call"]
    assert job.status == "pending" and job.attempts == 1
    assert job.last_error and "HTML page (502 Bad Gateway)" in job.last_error
    assert "unexpected" not in job.last_error and job.last_error_code == "502"
    settle(stack, timeout=20)
    missed_call_records(pd, CALLER)
    assert all(j.status == "done" for j in crm_jobs(stack))


def test_oauth_refreshes_once_for_ten_workers_and_a_revoked_grant_pauses(
    stack: Stack, pd: str, secret_key: str
) -> None:
    install(stack, pd, api_token=None, sync=at_the_missed_call(pd), **SANDBOX_OAUTH)
    stack.call(CALLER, "no-answer")
    stack.drain()
    missed_call_records(pd, CALLER)
    assert state(pd)["oauth"]["refreshes"] == 1  # the install's check, shared by the worker
    runtime = Connectors(stack.config, stack.factory)
    workers = [runtime.build(business_id(stack), "pipedrive") for _ in range(10)]
    for w in workers:
        assert w.find_contact(CALLER) is not None  # type: ignore[attr-defined]
    assert state(pd)["oauth"]["refreshes"] == 1
    # Start in a fresh window of the manifest's shared 40-per-2-s limit, so only OAuth is under test.
    time.sleep(2.0 - time.time() % 2.0)
    configure(pd, expire_tokens=True)
    barrier = threading.Barrier(10)
    found: list[Remote | None] = []

    def lookup(w: Any) -> None:
        barrier.wait(timeout=10)
        found.append(w.find_contact(CALLER))

    threads = [threading.Thread(target=lookup, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(found) == 10 and all(f is not None for f in found)
    assert state(pd)["oauth"]["refreshes"] == 2  # ten 401s, one refresh
    assert all(
        "api_token" not in r["query"] and r["headers"]["Authorization"].startswith("Bearer ")
        for r in api_requests(pd)
    )

    # The app is disconnected in Pipedrive: invalid_grant pauses the connector and tells an admin.
    configure(pd, expire_tokens=True, revoke_refresh_tokens=True)
    with pytest.raises(AuthError, match="invalid_grant"):
        workers[0].find_contact(CALLER)  # type: ignore[attr-defined]
    stack.call("+13125550177", "no-answer")
    run_until(stack, tried(stack, "+13125550177"))
    [job] = [j for j in crm_jobs(stack) if j.status != "done" and j.payload["event"] == "missed_call"]
    assert job.status == "pending" and job.attempts == 0  # deferred, not dead
    with stack.factory() as s:
        assert connector_state.paused_until(s, business_id(stack), "pipedrive") is not None
        alerts = list(s.scalars(select(Alert).where(Alert.connector_id == "pipedrive")))
    assert [a.kind for a in alerts] == ["auth_failed"] and "invalid_grant" in alerts[0].message


# -- the connector on its own (fast) ------------------------------------------------------------------------
def test_daily_budget_pauses_until_the_utc_reset(pd: str) -> None:
    configure(pd, daily_token_budget=0)
    with pytest.raises(RateLimited) as info:
        connector(pd).find_contact(CALLER)
    assert "daily API token budget" in str(info.value)
    midnight = datetime.combine(datetime.now(UTC).date() + timedelta(days=1), datetime.min.time(), UTC)
    assert info.value.retry_after == pytest.approx((midnight - datetime.now(UTC)).total_seconds(), abs=5)


def test_search_lag_and_existing_customers(pd: str) -> None:
    configure(pd, search_lag_seconds=5)
    c = connector(pd)
    first = c.upsert_contact(ContactData(phone=CALLER), None)
    again = connector(pd).upsert_contact(
        ContactData(phone=CALLER, first_name="Dana", last_name="Reyes"), None
    )
    assert first.id == again.id and first.created and again.created  # ours, though search cannot see it yet
    [person] = persons_with(state(pd), CALLER)
    assert person["name"] == "Dana Reyes"  # the placeholder name was completed
    # A person the CRM already had: found, not overwritten, created=False.
    configure(pd, search_lag_seconds=0)
    known = requests.post(
        pd + "/api/v2/persons",
        headers={"x-api-token": SANDBOX_TOKEN},
        timeout=5,
        json={"name": "Pat Known", "phones": [{"value": "+13125550199", "label": "work"}]},
    ).json()["data"]
    remote = c.upsert_contact(
        ContactData(phone="+13125550199", first_name="Someone", email="p@example.com"), None
    )
    assert remote.id == str(known["id"]) and remote.created is False
    [pat] = persons_with(state(pd), "+13125550199")
    assert pat["name"] == "Pat Known" and [e["value"] for e in pat["emails"]] == ["p@example.com"]
    found = c.find_contact("+13125550199")
    assert found is not None and found.id == str(known["id"]) and found.created is None


def test_records_are_found_by_marker_and_deals_never_move_back(pd: str) -> None:
    c = connector(pd, company_domain="acme")
    contact = c.upsert_contact(ContactData(phone=CALLER), None)
    assert contact.url == f"https://acme.pipedrive.com/person/{contact.id}"
    deal = c.upsert_deal(
        "tb-aaaaaaaaaaaa", DealData("Missed call: Dana", stage="3", pipeline="1"), contact, None
    )
    task = c.create_task("tb-bbbbbbbbbbbb", TaskData("Call back", "Body", datetime.now(UTC)), contact, deal)
    at = datetime(2026, 3, 4, 14, 30, tzinfo=UTC)
    call = c.log_activity(
        "tb-cccccccccccc",
        ActivityData("call", at, "Missed inbound call.", status="missed", from_number=CALLER),
        contact,
        deal,
        None,
    )
    note = c.log_activity(
        "tb-dddddddddddd",
        ActivityData("sms", at, "hi <there>", direction="inbound", from_number=CALLER),
        contact,
        deal,
        None,
    )
    assert c.find_record("deal", "tb-aaaaaaaaaaaa") == Remote(deal.id, deal.url, "deal", False)
    assert c.find_record("task", "tb-bbbbbbbbbbbb") == Remote(task.id, None, "task", False)
    assert c.find_record("call", "tb-cccccccccccc") == Remote(call.id, None, "call", False)
    assert c.find_record("sms", "tb-dddddddddddd") == Remote(note.id, None, "sms", False)
    assert c.find_record("deal", "tb-eeeeeeeeeeee") is None
    [n] = state(pd)["notes"]
    assert "hi &lt;there&gt;" in n["content"] and n["deal_id"] == int(deal.id)
    # Qualified (3) -> "booked" by name -> back to "1": forward only, and never a won deal.
    c.upsert_deal("tb-aaaaaaaaaaaa", DealData("x", stage="booked", pipeline="1"), contact, deal)
    c.upsert_deal("tb-aaaaaaaaaaaa", DealData("x", stage="1", pipeline="1"), contact, deal)
    [d] = state(pd)["deals"]
    assert d["stage_id"] == 4 and d["title"] == "Missed call: Dana [tb-aaaaaaaaaaaa]"
    # A later voicemail on a call log (which cannot be edited) becomes one note, kept up to date.
    for text in ("Voicemail: https://x/1", "Voicemail: https://x/1\nTranscript: call me"):
        c.log_activity(
            "tb-cccccccccccc",
            ActivityData("call", at, text, from_number=CALLER, recording_url="https://x/1"),
            contact,
            deal,
            call,
        )
    updates = [x for x in state(pd)["notes"] if "Ref: tb-cccccccccccc" in x["content"]]
    assert len(updates) == 1 and "Transcript: call me" in updates[0]["content"]
    c.mark_opted_out(contact)
    [p] = persons_with(state(pd), CALLER)
    assert p["marketing_status"] == "unsubscribed"


def test_leads_mode(pd: str) -> None:
    c = connector(pd, use_leads=True)
    contact = c.upsert_contact(ContactData(phone=CALLER), None)
    lead = c.upsert_deal("tb-ffffffffffff", DealData("Missed call: Dana", stage="1"), contact, None)
    assert lead.kind == "lead" and lead.created and c.find_record("deal", "tb-ffffffffffff") is not None
    at = datetime(2026, 3, 4, 14, 30, tzinfo=UTC)
    c.log_activity(
        "tb-111111111111", ActivityData("call", at, "Missed.", from_number=CALLER), contact, lead, None
    )
    c.create_task("tb-222222222222", TaskData("Call back", "Body", at), contact, lead)
    st = state(pd)
    assert [x["id"] for x in st["leads"]] == [lead.id] and st["deals"] == []
    assert st["call_logs"][0]["lead_id"] == lead.id and st["activities"][0]["lead_id"] == lead.id


def test_check_explains_failures_in_plain_words(pd: str) -> None:
    assert connector(pd).check().ok
    bad = connector(pd, api_token="not-the-token")
    result = bad.check()
    assert not result.ok and "rejected the API token" in result.summary
    fault(pd, path="/v1/users/me", status=200, body=HTML_502, headers={"Content-Type": "text/html"}, count=1)
    result = connector(pd).check()
    assert not result.ok and "web page" in result.summary
    missing = connector(pd, pipeline_id="9").check()
    assert not missing.ok and any("pipeline_id 9 does not exist" in d for d in missing.details)
    unreachable = connector("http://127.0.0.1:9").check()
    assert not unreachable.ok and "could not be reached" in unreachable.summary
    for url in ("https://evil.example.com", "http://api.pipedrive.com"):
        with pytest.raises(ConnectorConfigError):
            connector(url)
    with pytest.raises(ConnectorConfigError):
        PipedriveConnector({"api_base_url": pd}, ConnectorContext("b", "pipedrive"))


def test_oauth_helpers_and_in_process_refresh(pd: str) -> None:
    url = pd_client.authorization_url(
        SANDBOX_OAUTH["client_id"], "http://127.0.0.1:9/cb", "s1", oauth_base_url=pd
    )
    assert url.startswith(pd + "/oauth/authorize?client_id=")
    redirect = requests.get(url, allow_redirects=False, timeout=5).headers["Location"]
    code = redirect.split("code=")[1].split("&")[0]
    tokens = pd_client.exchange_code(
        SANDBOX_OAUTH["client_id"],
        SANDBOX_OAUTH["client_secret"],
        "http://127.0.0.1:9/cb",
        code,
        oauth_base_url=pd,
    )
    c = connector(
        pd,
        api_token=None,
        client_id=SANDBOX_OAUTH["client_id"],
        client_secret=SANDBOX_OAUTH["client_secret"],
        refresh_token=tokens["refresh_token"],
    )
    assert c.check().ok
    assert state(pd)["oauth"] | {"live_access_tokens": 0} == {
        "refreshes": 1,
        "code_exchanges": 1,
        "live_access_tokens": 0,
        "refresh_tokens": 2,
    }
    configure(pd, expire_tokens=True)
    assert c.find_contact(CALLER) is None  # 401 -> one refresh -> replayed
    assert state(pd)["oauth"]["refreshes"] == 2 and state(pd)["query_token_uses"] == 0
    fault(pd, path="/oauth/token", status=502, body=HTML_502, headers={"Content-Type": "text/html"}, count=1)
    configure(pd, expire_tokens=True)
    with pytest.raises(TransientError, match="HTML"):
        c.find_contact(CALLER)
