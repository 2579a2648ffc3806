"""What happens to a call: recorded once per webhook, decided exactly once per CallSid.

The bridge calls these inside one transaction per webhook, after the signature check. Every
function is idempotent: a redelivered webhook finds its key in ``webhook_events`` and changes
nothing.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime
from typing import cast

from sqlalchemy import Insert, Table, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from core import call_intake, escalation, leads, sync, texting
from core.config import Business
from core.models import Call, Lead, LineType, WebhookEvent, utcnow
from core.phones import to_e164
from core.policy import CallFacts, Decision, decide


def first_delivery(session: Session, kind: str, key: str) -> bool:
    """Claim a webhook's dedupe key. False means it was processed before: do nothing."""
    conn = session.connection()
    params = {"kind": kind, "key": key[:160], "received_at": utcnow()}
    return bool(conn.execute(_dedupe_insert(conn.dialect.name), params).rowcount)


@functools.cache
def _dedupe_insert(dialect: str) -> Insert:
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return insert(cast(Table, WebhookEvent.__table__)).on_conflict_do_nothing(index_elements=["kind", "key"])


def conclude_forwarded(
    session: Session,
    business: Business,
    call_sid: str,
    caller: str | None,
    called: str | None,
    direction: str | None,
    miss_reason: str = "missed_forwarded",
    redelivered: bool = False,
    pre: call_intake.Prelude | None = None,
) -> Concluded:
    """Record and decide a call nobody answered (forward mode), in as few statements as it takes.

    ``redelivered``: the webhook was seen before, so the call is stored; skip the new-call path.
    ``pre``: :func:`core.call_intake.prelude` of the same call, worked out before the transaction.
    """
    new = call_intake.NewCall(
        call_sid=call_sid,
        from_number=(caller or "")[:40],
        to_number=(called or "")[:40],
        direction=(direction or "inbound")[:20],
        miss_reason=miss_reason,
    )
    fast = None if redelivered else call_intake.conclude_new(session, business, new, pre)
    if fast is not None:
        decision, lead_id, message_id = fast
        return Concluded(decision, lead_id, message_id, True)
    call = record_incoming(session, business, call_sid, caller, called, direction)
    return conclude(session, business, call, answered=False, miss_reason=miss_reason)


def record_incoming(
    session: Session,
    business: Business,
    call_sid: str,
    caller: str | None,
    called: str | None,
    direction: str | None,
) -> Call:
    call = session.get(Call, call_sid)
    if call is None:
        call = Call(
            call_sid=call_sid,
            business_id=business.id,
            from_number=(caller or "")[:40],
            to_number=(called or "")[:40],
            direction=(direction or "inbound")[:20],
            status="ringing",
            started_at=utcnow(),
        )
        session.add(call)
        session.flush()
    return call


def record_screen_accept(session: Session, parent_sid: str) -> None:
    session.execute(update(Call).where(Call.call_sid == parent_sid).values(screen_accepted=True))


@dataclass(frozen=True)
class Concluded:
    decision: Decision
    lead_id: str | None
    message_id: str | None
    new: bool  # False when the call had been decided before


def conclude(
    session: Session,
    business: Business,
    call: Call,
    *,
    answered: bool,
    miss_reason: str,
    hung_up_ringing: bool = False,
    ring_seconds: float | None = None,
    dial_status: str | None = None,
    now: datetime | None = None,
) -> Concluded:
    """Decide the call once; later webhooks for the same call see the stored decision."""
    now = now or utcnow()
    if call.decision_outcome is not None:
        return Concluded(
            Decision(call.decision_outcome, call.decision_reason or ""), call.lead_id, None, False
        )
    caller = to_e164(call.from_number)
    if caller and session.get_bind().dialect.name == "postgresql":
        # Calls from one caller are decided one at a time, so the cooldown sees the text another
        # call just queued (SQLite's BEGIN IMMEDIATE already serialises every transaction).
        session.execute(
            text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": f"{business.id}:{caller}"}
        )
    lead = leads.find(session, business.id, caller) if caller else None
    line = session.get(LineType, caller) if caller else None
    facts = CallFacts(
        direction=call.direction,
        caller_raw=call.from_number,
        caller=caller,
        answered=answered,
        miss_reason=miss_reason,
        hung_up_ringing=hung_up_ringing,
        ring_seconds=ring_seconds,
        suppressions=leads.suppressions(session, business.id, caller) if caller else frozenset(),
        line_type=line.line_type if line else None,
        last_text_at=lead.last_text_at if lead else None,
        now=now,
    )
    decision = decide(facts, business)
    # The guarded update is what makes the decision exactly-once across concurrent webhooks.
    claimed = session.execute(
        update(Call)
        .where(Call.call_sid == call.call_sid, Call.decision_outcome.is_(None))
        .values(
            decision_outcome=decision.outcome,
            decision_reason=decision.reason,
            decided_at=now,
            ring_seconds=ring_seconds,
            dial_status=dial_status,
            bridged=answered,
        )
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    if not claimed:
        session.refresh(call)
        return Concluded(
            Decision(call.decision_outcome or "", call.decision_reason or ""), call.lead_id, None, False
        )

    message_id = None
    first_text_due = False
    if decision.texts and caller:
        lead, _created = leads.get_or_create(session, business.id, caller, source="missed_call")
    if lead is not None:
        call_entry = {
            "call_sid": call.call_sid,
            "status": dial_status or ("answered" if answered else "missed"),
            "ring_seconds": ring_seconds,
            "to": to_e164(call.to_number) or call.to_number,
            "repeat": decision.reason == "cooldown",
        }
        leads.add_entry(session, lead.id, "call", at=call.started_at, **call_entry)
        leads.add_entry(
            session,
            lead.id,
            "decision",
            at=now,
            outcome=decision.outcome,
            reason=decision.reason,
            call_sid=call.call_sid,
        )
        call.lead_id = lead.id
        session.execute(update(Call).where(Call.call_sid == call.call_sid).values(lead_id=lead.id))
        if not answered:
            _escalate_repeat_caller(session, business, lead, call, now)
        if decision.texts:
            body = texting.first_text_body(business, lead, now)
            message = texting.queue_text(
                session,
                business,
                lead,
                kind="first_text",
                body=body,
                dedupe_key=f"sms:first:{call.call_sid}",
                now=now,
                from_number=to_e164(call.to_number) or business.numbers[0],
                delay_seconds=business.policy.send_delay_seconds,
            )
            if message is not None:
                message_id = message.id
                first_text_due = message.status == "pending"
                lead.last_text_at = now
                if message.status == "scheduled":
                    leads.set_status(lead, "scheduled", only_from=("new",))
        if not answered:
            # After the text: one going now holds the push until its outcome (core.sync.emit).
            sync.emit(
                session,
                business.id,
                lead.id,
                "missed_call",
                call.call_sid,
                {"call_sid": call.call_sid, "repeat": decision.reason == "cooldown"},
                first_text_due=first_text_due,
                caller_lookup=sync.looks_caller_up(business),
            )
    return Concluded(decision, lead.id if lead else None, message_id, True)


def attach_voicemail(
    session: Session, call_sid: str, *, recording_sid: str, recording_url: str | None, duration: int | None
) -> bool:
    call = session.get(Call, call_sid)
    if call is None or call.lead_id is None:
        return False
    leads.add_entry(
        session,
        call.lead_id,
        "voicemail",
        call_sid=call_sid,
        recording_sid=recording_sid,
        recording_url=recording_url,
        duration=duration,
    )
    sync.emit(session, call.business_id, call.lead_id, "voicemail", recording_sid, {"call_sid": call_sid})
    return True


def attach_transcript(session: Session, call_sid: str, *, recording_sid: str | None, text: str) -> bool:
    call = session.get(Call, call_sid)
    if call is None or call.lead_id is None:
        return False
    leads.add_entry(
        session, call.lead_id, "transcript", call_sid=call_sid, recording_sid=recording_sid, text=text
    )
    sync.emit(
        session,
        call.business_id,
        call.lead_id,
        "voicemail",
        f"{recording_sid}:transcript",
        {"call_sid": call_sid},
    )
    return True


def find_call(session: Session, call_sid: str) -> Call | None:
    return session.scalars(select(Call).where(Call.call_sid == call_sid)).first()


def _escalate_repeat_caller(
    session: Session, business: Business, lead: Lead, call: Call, now: datetime
) -> None:
    """Two or more missed calls within the window: a person should call back, now."""
    from datetime import timedelta

    from sqlalchemy import func

    esc = business.escalation
    since = now - timedelta(hours=esc.repeat_window_hours)
    missed = (
        session.scalar(
            select(func.count())
            .select_from(Call)
            .where(
                Call.business_id == business.id,
                Call.from_number == call.from_number,
                Call.started_at >= since,
                Call.decision_reason.is_not(None),
                Call.decision_reason != "answered",
            )
        )
        or 0
    )
    if missed >= esc.repeat_calls:
        escalation.escalate(
            session,
            business,
            lead,
            "repeat_caller",
            ref=f"repeat:{call.call_sid}",
            said=None,
            intent=lead.intent,
            now=now,
        )
