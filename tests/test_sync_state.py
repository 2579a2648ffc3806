"""The sync engine's reads and the shared connector state, through their public functions.

A paused connector's job is deferred to the pause's end without a push; the lead document keeps its
documented shape and order; pauses never shorten; counters and the shared rate window add up; the
sync ledger records what a batch made and forgets only bare intents.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from core import connector_state, leads, sync, sync_batch
from core.crm import Remote
from core.db import transaction
from core.errors import RateLimited
from core.models import (
    ConnectorInstall,
    ConnectorState,
    Lead,
    Message,
    OutboxJob,
    RateWindow,
    Suppression,
    SyncLedger,
    TimelineEntry,
    utcnow,
)
from core.outbox import Deferred, Job

BUSINESS = "b1"
T0 = datetime(2026, 3, 2, 15, 4, 5, 123456, tzinfo=UTC)


def _lead(factory: sessionmaker[Session], lead_id: str = "L1", phone: str = "+13125550170") -> None:
    with transaction(factory) as s:
        s.add(
            Lead(
                id=lead_id,
                business_id=BUSINESS,
                phone=phone,
                name="Ada Lovelace",
                email="ada@example.com",
                status="replied",
                source="missed_call",
                created_at=T0,
                updated_at=T0 + timedelta(minutes=5),
            )
        )


def _history(factory: sessionmaker[Session]) -> None:
    """A missed call, its first text (sent), a reply, a scheduled follow-up and a STOP."""
    _lead(factory)
    with transaction(factory) as s:
        s.add_all(
            [
                TimelineEntry(lead_id="L1", at=T0, type="call", data={"call_sid": "CA1", "status": "missed"}),
                TimelineEntry(lead_id="L1", at=T0, type="decision", data={"outcome": "text"}),
                # At the same instant as the first text: an entry comes before a message.
                TimelineEntry(lead_id="L1", at=T0 + timedelta(seconds=2), type="note", data={}),
                TimelineEntry(
                    lead_id="L1", at=T0 + timedelta(minutes=9), type="opted_out", data={"via": "STOP"}
                ),
            ]
        )
        s.add_all(
            [
                Message(
                    id="M1",
                    lead_id="L1",
                    business_id=BUSINESS,
                    direction="outbound",
                    kind="first_text",
                    sid="SM1",
                    from_number="+13125550100",
                    to_number="+13125550170",
                    body="Sorry we missed you!",
                    status="delivered",
                    created_at=T0 + timedelta(seconds=1),
                    sent_at=T0 + timedelta(seconds=2),
                ),
                Message(
                    id="M2",
                    lead_id="L1",
                    business_id=BUSINESS,
                    direction="inbound",
                    kind="reply",
                    sid="SM2",
                    from_number="+13125550170",
                    to_number="+13125550100",
                    body="Tomorrow works",
                    status="received",
                    created_at=T0 + timedelta(minutes=1),
                ),
                Message(
                    id="M3",
                    lead_id="L1",
                    business_id=BUSINESS,
                    direction="outbound",
                    kind="follow_up",
                    sid=None,
                    from_number="+13125550100",
                    to_number="+13125550170",
                    body="Still need help?",
                    status="scheduled",
                    error_code=None,
                    send_after=T0 + timedelta(hours=2),
                    created_at=T0 + timedelta(minutes=2),
                ),
            ]
        )
        s.add(Suppression(business_id=BUSINESS, phone="+13125550170", reason="opted_out", source="sms"))


def _message(id_: str, at: datetime, **fields: Any) -> dict[str, Any]:
    return {"at": at.isoformat().replace("+00:00", "Z"), "type": "message", "message_id": id_, **fields}


EXPECTED = {
    "id": "L1",
    "business": BUSINESS,
    "phone": "+13125550170",
    "name": "Ada Lovelace",
    "email": "ada@example.com",
    "status": "replied",
    "source": "missed_call",
    "opted_out": True,
    "created_at": "2026-03-02T15:04:05.123456Z",
    "updated_at": "2026-03-02T15:09:05.123456Z",
    "timeline": [
        {"at": "2026-03-02T15:04:05.123456Z", "type": "call", "call_sid": "CA1", "status": "missed"},
        {"at": "2026-03-02T15:04:05.123456Z", "type": "decision", "outcome": "text"},
        {"at": "2026-03-02T15:04:07.123456Z", "type": "note"},
        {
            "at": "2026-03-02T15:04:07.123456Z",
            "type": "message",
            "direction": "outbound",
            "kind": "first_text",
            "message_id": "M1",
            "sid": "SM1",
            "from": "+13125550100",
            "to": "+13125550170",
            "body": "Sorry we missed you!",
            "status": "delivered",
            "error_code": None,
            "send_after": None,
        },
        {
            "at": "2026-03-02T15:05:05.123456Z",
            "type": "message",
            "direction": "inbound",
            "kind": "reply",
            "message_id": "M2",
            "sid": "SM2",
            "from": "+13125550170",
            "to": "+13125550100",
            "body": "Tomorrow works",
            "status": "received",
            "error_code": None,
            "send_after": None,
        },
        {
            "at": "2026-03-02T15:06:05.123456Z",
            "type": "message",
            "direction": "outbound",
            "kind": "follow_up",
            "message_id": "M3",
            "sid": None,
            "from": "+13125550100",
            "to": "+13125550170",
            "body": "Still need help?",
            "status": "scheduled",
            "error_code": None,
            "send_after": "2026-03-02T17:04:05.123456Z",
        },
        {"at": "2026-03-02T15:13:05.123456Z", "type": "opted_out", "via": "STOP"},
    ],
}


# -- the lead document -----------------------------------------------------------------------------
def test_the_lead_document_keeps_its_fields_and_order(factory: sessionmaker[Session]) -> None:
    _history(factory)
    _lead(factory, "L2", "+13125550171")  # nothing recorded: an empty timeline, not opted out
    with factory() as s:
        lead = s.get(Lead, "L1")
        assert lead is not None
        doc = leads.to_json(s, lead)
        assert doc == EXPECTED
        assert list(doc) == list(EXPECTED)  # the key order of the documented shape
        assert [list(e) for e in doc["timeline"]] == [list(e) for e in EXPECTED["timeline"]]  # type: ignore[attr-defined]
        assert leads.document(s, "L1") == EXPECTED
        assert leads.document(s, "nope") is None
        both = leads.documents(s, ["L2", "L1", "nope"])
        assert set(both) == {"L1", "L2"} and both["L1"] == EXPECTED
        assert both["L2"]["timeline"] == [] and both["L2"]["opted_out"] is False


def test_the_lead_document_sees_the_sessions_unflushed_changes(factory: sessionmaker[Session]) -> None:
    _lead(factory)
    with factory() as s:
        lead = s.get(Lead, "L1")
        assert lead is not None
        leads.add_entry(s, "L1", "note", at=T0, text="pending")
        lead.status = "qualified"
        doc = leads.to_json(s, lead)
    assert doc["status"] == "qualified"
    assert doc["timeline"] == [{"at": "2026-03-02T15:04:05.123456Z", "type": "note", "text": "pending"}]


# -- a paused connector's job ------------------------------------------------------------------------
def _install(factory: sessionmaker[Session], enabled: bool = True) -> None:
    with transaction(factory) as s:
        s.add(
            ConnectorInstall(
                business_id=BUSINESS, connector_id="hubspot", version="1", config={}, sync={}, enabled=enabled
            )
        )


def _job(event: str = "missed_call", lead_id: str = "L1") -> Job:
    return Job(
        1, "crm.sync", "hubspot", {"event": event, "ref": "CA1", "data": {}}, 1, 16, "t", lead_id, BUSINESS
    )


def test_a_paused_connectors_job_waits_for_the_pause_to_end_untried(factory: sessionmaker[Session]) -> None:
    _history(factory)
    _install(factory)
    until = utcnow() + timedelta(minutes=3)
    with transaction(factory) as s:
        connector_state.pause(s, BUSINESS, "hubspot", until, "rate limited: 429")
    resolved: list[tuple[str, str]] = []

    def resolve(business_id: str, connector_id: str) -> Any:
        resolved.append((business_id, connector_id))
        raise AssertionError("a paused connector is not pushed to")

    handler = sync.SyncJob(cast(Any, None), factory, resolve)
    with pytest.raises(Deferred) as info:
        handler(_job())
    assert info.value.until == until and "paused" in info.value.reason
    assert resolved == []
    with factory() as s:
        assert s.scalars(select(SyncLedger)).all() == []

    # An expired pause holds nothing back: the job goes on to its connector.
    with transaction(factory) as s:
        s.get(ConnectorState, (BUSINESS, "hubspot")).paused_until = utcnow() - timedelta(seconds=1)  # type: ignore[union-attr]
    with pytest.raises(AssertionError, match="not pushed"):
        handler(_job())
    assert resolved == [(BUSINESS, "hubspot")]


def test_a_job_for_a_missing_lead_or_install_is_skipped(factory: sessionmaker[Session]) -> None:
    handler = sync.SyncJob(cast(Any, None), factory, lambda *_: pytest.fail("nothing to push"))
    assert handler(_job()) == {"skipped": "connector not installed"}
    _install(factory, enabled=False)
    with transaction(factory) as s:  # a disabled install is skipped even while paused
        connector_state.pause(s, BUSINESS, "hubspot", utcnow() + timedelta(minutes=1), "auth failed: x")
    assert handler(_job()) == {"skipped": "connector not installed"}
    with transaction(factory) as s:
        s.get(ConnectorInstall, (BUSINESS, "hubspot")).enabled = True  # type: ignore[union-attr]
        connector_state.resume(s, BUSINESS, "hubspot")
    assert handler(_job(lead_id="gone")) == {"skipped": "lead no longer exists"}


def test_emit_queues_one_job_per_enabled_connector(factory: sessionmaker[Session]) -> None:
    _lead(factory)
    _install(factory)
    with transaction(factory) as s:
        s.add(ConnectorInstall(business_id=BUSINESS, connector_id="pipedrive", version="1", enabled=False))
        s.add(ConnectorInstall(business_id="other", connector_id="salesforce", version="1"))
    with transaction(factory) as s:
        assert sync.emit(s, BUSINESS, "L1", "replied", "SM2", {"message_id": "M2"}) == 1
        assert sync.emit(s, BUSINESS, "L1", "replied", "SM2", {"message_id": "M2"}) == 0  # idempotent
    with factory() as s:
        [job] = s.scalars(select(OutboxJob)).all()
    assert (job.kind, job.target, job.business_id, job.lead_id) == ("crm.sync", "hubspot", BUSINESS, "L1")
    assert job.dedupe_key == "crm:hubspot:L1:replied:SM2"
    assert job.ordering_key == f"crm:{BUSINESS}:hubspot:L1"
    assert job.payload == {"event": "replied", "ref": "SM2", "data": {"message_id": "M2"}}
    assert job.max_attempts == sync.MAX_ATTEMPTS


# -- connector state ---------------------------------------------------------------------------------
def _state(factory: sessionmaker[Session]) -> ConnectorState:
    with factory() as s:
        row = s.get(ConnectorState, (BUSINESS, "hubspot"))
    assert row is not None
    return row


def test_a_pause_is_never_shortened_and_counters_add_up(factory: sessionmaker[Session]) -> None:
    later = utcnow() + timedelta(minutes=5)
    with transaction(factory) as s:
        connector_state.record_error(s, BUSINESS, "hubspot", "boom", 2, rate_limited=True)
    row = _state(factory)
    assert (row.api_calls, row.rate_limited, row.last_error, row.paused_until) == (2, 1, "boom", None)
    assert row.last_success_at is None and row.last_error_at is not None
    with transaction(factory) as s:
        connector_state.pause(s, BUSINESS, "hubspot", later, "rate limited: " + "x" * 300)
        connector_state.pause(s, BUSINESS, "hubspot", later - timedelta(minutes=1), "rate limited: shorter")
        connector_state.record_success(s, BUSINESS, "hubspot", 3)
        connector_state.record_error(s, BUSINESS, "hubspot", "e" * 3000, 1)
    row = _state(factory)
    assert row.paused_until == later and row.pause_reason == ("rate limited: " + "x" * 300)[:200]
    assert (row.api_calls, row.rate_limited) == (6, 1) and row.last_error == "e" * 2000
    assert row.last_success_at is not None
    with factory() as s:
        assert connector_state.paused_until(s, BUSINESS, "hubspot") == later
        assert connector_state.pause_of(s, BUSINESS, "hubspot") == (later, row.pause_reason)
        assert connector_state.pause_of(s, BUSINESS, "salesforce") == (None, None)
    with transaction(factory) as s:
        connector_state.pause(s, BUSINESS, "hubspot", later + timedelta(minutes=1), "auth failed: x")
    assert _state(factory).pause_reason == "auth failed: x"  # a longer pause wins
    with transaction(factory) as s:
        connector_state.record_success(s, BUSINESS, "pipedrive", 4)  # no row yet
        connector_state.pause(s, BUSINESS, "salesforce", later, "auth failed: y")
    with factory() as s:
        fresh = s.get(ConnectorState, (BUSINESS, "pipedrive"))
        paused = s.get(ConnectorState, (BUSINESS, "salesforce"))
    assert fresh is not None and (fresh.api_calls, fresh.rate_limited, fresh.paused_until) == (4, 0, None)
    assert paused is not None and (paused.api_calls, paused.rate_limited) == (0, 0)


def test_the_shared_window_gives_out_its_budget_once(factory: sessionmaker[Session]) -> None:
    limit = connector_state.Limit(5, 3600)
    taken = [connector_state.acquire(factory, "x", limit, 2) for _ in range(3)]
    assert taken[:2] == [0.0, 0.0] and taken[2] > 0  # 2 + 2, then 2 more would pass 5
    assert connector_state.acquire(factory, "x", limit, 1) == 0.0  # the last one fits
    assert connector_state.acquire(factory, "y", limit, 6) > 0  # more than a whole window never fits
    with transaction(factory) as s:  # in the caller's transaction
        assert connector_state.acquire(factory, "y", limit, 5, session=s) == 0.0
    with factory() as s:
        counts = {r.limiter: r.count for r in s.scalars(select(RateWindow))}
    assert counts == {"x": 5, "y": 5}


# -- the sync ledger ---------------------------------------------------------------------------------
def test_the_ledger_records_batches_and_forgets_only_bare_intents(factory: sessionmaker[Session]) -> None:
    keys = [("L1", "deal"), ("L1", "call:CA1"), ("L2", "deal")]
    assert sync_batch.untouched(factory, "hubspot", keys) == set(keys)
    sync_batch.mark_intents(factory, "hubspot", keys)
    assert sync_batch.untouched(factory, "hubspot", keys) == set()
    sync_batch.record(factory, "hubspot", [("L1", "deal", Remote("D1", "https://crm/D1"))])
    with factory() as s:
        stamped = s.get(SyncLedger, ("L1", "hubspot", "deal"))
    assert stamped is not None and stamped.intent_at is not None and stamped.remote_id == "D1"
    sync_batch.record(factory, "hubspot", [("L1", "deal", Remote("D1", "https://crm/D1"))])  # unchanged
    with factory() as s:
        again = s.get(SyncLedger, ("L1", "hubspot", "deal"))
    assert again is not None and again.updated_at == stamped.updated_at  # nothing was written
    sync_batch.forget_intents(factory, "hubspot", keys)
    with factory() as s:
        left = {(r.lead_id, r.key): r.remote_id for r in s.scalars(select(SyncLedger))}
    assert left == {("L1", "deal"): "D1"}
    sync_batch.record(factory, "hubspot", [("L3", "task:CA9", Remote("T9", None))])  # no intent before
    with factory() as s:
        made = s.get(SyncLedger, ("L3", "hubspot", "task:CA9"))
    assert made is not None and (made.remote_id, made.remote_url, made.intent_at) == ("T9", None, None)


# -- the runtime's throttle ----------------------------------------------------------------------------
def test_throttle_honours_a_rate_limit_pause_but_not_an_auth_pause(
    factory: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    from bridge import runtime

    taken: list[str] = []

    def acquire(_f: Any, limiter: str, limit: connector_state.Limit, cost: int = 1, **kw: Any) -> float:
        taken.append(limiter)
        return 0.0 if len(taken) < 3 else 7.5

    monkeypatch.setattr(connector_state, "acquire", acquire)
    throttle = _throttle(runtime, factory, [("burst", connector_state.Limit(100, 10))])
    with transaction(factory) as s:
        connector_state.pause(s, BUSINESS, "hubspot", utcnow() + timedelta(minutes=1), "auth failed: x")
    throttle(1)
    with transaction(factory) as s:
        connector_state.pause(s, BUSINESS, "hubspot", utcnow() + timedelta(minutes=2), "rate limited: 429")
    with pytest.raises(RateLimited, match="paused after a rate limit") as info:
        throttle(1)
    assert 100 < (info.value.retry_after or 0) <= 120 and taken == [f"{BUSINESS}:hubspot:0"]
    with transaction(factory) as s:
        connector_state.resume(s, BUSINESS, "hubspot")
    throttle(1)
    with pytest.raises(RateLimited, match=r"local rate limit \(100/10s\)") as info:
        throttle(1)
    assert info.value.retry_after == 7.5


def _throttle(runtime: Any, factory: sessionmaker[Session], limits: list[tuple[str, Any]]) -> Any:
    """The throttle the runtime hands a connector, for an install with these rate limits."""
    from types import SimpleNamespace

    from connectors.base import ConnectorContext

    seen: dict[str, Any] = {}

    class Probe:
        scoped_limits = ()

        def __init__(self, config: dict[str, Any], context: ConnectorContext) -> None:
            seen["throttle"] = context.throttle

    manifest = SimpleNamespace(
        rate_limits=[
            {"name": n, "requests": lim.requests, "per_seconds": lim.per_seconds} for n, lim in limits
        ]
    )
    loaded = SimpleNamespace(manifest=manifest, cls=Probe)
    install = ConnectorInstall(business_id=BUSINESS, connector_id="hubspot", config={}, secrets=None)
    original = runtime.registry.load
    runtime.registry.load = lambda _id: loaded
    try:
        connectors = runtime.Connectors(cast(Any, SimpleNamespace(secret_key_file=None)), factory)
        connectors._box = SimpleNamespace(open=lambda _s: {})
        connectors.build(BUSINESS, "hubspot", install)
    finally:
        runtime.registry.load = original
    return seen["throttle"]
