"""The ``sms.send`` job: the rules around one outbound text, with the SMS vendor behind a port.

Twilio has no idempotency key for sending, so a send whose outcome is unknown (a timeout after
the request went out, a 5xx) is never repeated blindly: the next attempt first asks the gateway
whether the message exists, and adopts it if it does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import Connection
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from core import leads, outbox, texting
from core.config import Business, Config
from core.crm import Remote
from core.db import reading, transaction
from core.errors import AuthError, Rejected, TransientError
from core.hours import next_send_time
from core.models import Lead, LineType, Message, utcnow
from core.outbox import Deferred, Job, LeaseLost
from core.phones import mask
from core.sending_statements import Statements, statements
from core.sync import emit, lookup_done, lookup_held, release
from core.worker import crash_point, pause_point

log = logging.getLogger("textback.sending")

# How far back a retry looks for a message an earlier attempt may have created.
LOOKBACK = timedelta(minutes=2)


@dataclass(frozen=True)
class SentMessage:
    sid: str
    status: str


class NotSent(TransientError):
    """The vendor certainly did not take the message (429, connection refused): resend freely."""


class AmbiguousSend(TransientError):
    """The request may have been processed (timeout, 5xx): look before sending again."""


class SmsGateway(Protocol):
    def send(self, *, to: str, from_: str, body: str, status_callback: str | None) -> SentMessage: ...

    def find_sent(self, *, to: str, from_: str, body: str, since: datetime) -> SentMessage | None: ...

    def line_type(self, phone: str) -> str | None: ...


# (business id, phone, budget in seconds) -> (connector id, the contact) or None
ContactLookup = Callable[[str, str, float], "tuple[str, Remote] | None"]


def _advance(
    status: str, error_code: int | None, new: str, new_error: int | None = None
) -> tuple[str, int | None]:
    """texting.advance on plain values: the delivery state only moves forward."""
    if not texting.moves(status, new):
        return status, error_code
    return new, error_code if new_error is None else new_error


@dataclass(frozen=True)
class _Plan:
    """What a text's facts decide in its first step (SmsJob._plan)."""

    business: Business | None = None
    ended: dict[str, Any] | None = None  # the job's result as things stand: nothing to write
    sent: bool = False  # the text went out already: its send is finished (a write)
    blocked: str | None = None  # why it must not go out: it is canceled (a write)
    needs_lookup: bool = False  # the caller's line type first
    personalise: bool = False  # the caller looked up in the CRM first
    budget: float = 0.0  # seconds the CRM lookup may take
    recorded: bool = False  # nothing to look up: the attempt goes on record now (a write)

    @property
    def writes(self) -> bool:
        return self.sent or self.blocked is not None or self.recorded


class SmsJob:
    """Handler for ``sms.send`` jobs, bound to a config, a session factory and a gateway.

    A text takes as few write transactions as its safety allows (on SQLite each one holds the
    database's write lock): its facts are read without it; the first write renews the lease and
    records the attempt (with the caller's lookup, once looked up), and the sent text is recorded
    in the same transaction that marks the job done. Its common path runs prebuilt statements (see
    :func:`statements`); the rare branches (a cancel, a rejection, an earlier send found) go
    through the ORM.
    """

    renews_lease = True  # see core.outbox.renew_in

    def __init__(
        self,
        config: Config,
        factory: sessionmaker[Session],
        gateway: SmsGateway,
        find_contact: ContactLookup | None = None,
    ) -> None:
        self.config = config
        self.factory = factory
        self.gateway = gateway
        self.find_contact = find_contact

    def status_callback(self, message_id: str) -> str | None:
        if not self.config.public_url:
            return None
        return f"{self.config.public_url}/twilio/message-status?m={message_id}"

    def __call__(self, job: Job) -> dict[str, Any] | outbox.Finished:
        now = utcnow()
        message_id = job.payload["message_id"]
        facts = {
            "message_id": message_id,
            "since": now - timedelta(hours=24),
            "job_id": job.id,
            "token": job.claim_token,
        }
        # Read without SQLite's write lock: a first text that looks its caller up writes nothing
        # before the lookup, and the transaction after it renews the lease before anything is
        # recorded or sent.
        with reading(self.factory) as session:
            conn = session.connection()
            st = statements(conn.dialect.name)
            row = self._facts(conn, st, facts)
            if row.lease_until is None:
                raise LeaseLost(f"job {job.id}")  # re-claimed before it started: nothing of it ran
            plan = self._plan(row, now)
            # The pushes held for this first text's caller lookup (core.sync.LOOKUP_REASON), which
            # its record frees: read here, without the lock, and only when it looks up or did before.
            frees = plan.personalise or (plan.recorded and row.kind == "first_text" and row.crm_matched)
            held = lookup_held(conn, row.business_id) if frees else []
        if plan.ended is not None:
            return plan.ended  # the worker's completion of the job checks the lease
        # A text claimed in a batch may start late: its lookups get a lease of their own then.
        lease_short = row.lease_until - now < timedelta(seconds=job.lease_seconds / 2)
        if plan.writes or lease_short:
            with transaction(self.factory) as session:
                conn = session.connection()
                outbox.renew_in(session, job, now)
                if plan.blocked is not None:
                    # A cancel is for good: decided again on what is true under the lock (a status
                    # callback may have recorded an earlier attempt's sid since the read).
                    row = self._facts(conn, st, facts)
                    plan = self._plan(row, now)
                    if plan.ended is not None:
                        return plan.ended
                if plan.sent:
                    return self._already_sent(session, message_id, now)
                if plan.blocked is not None:
                    self._cancel_id(session, message_id, plan.blocked)
                    return {"canceled": plan.blocked}
                if plan.recorded:
                    # Not read again: only this job's lease holder cancels or sends the text, and an
                    # opt-out landing after the read is as late as one landing during a caller lookup.
                    conn.execute(st.attempt, {"message_id": message_id, "started": now, "at": utcnow()})
                    # Looked up at an earlier call: a push held for this text's lookup goes now.
                    lookup_done(session, row.business_id, held, row.lead_id)
        assert plan.business is not None
        business, started, budget = plan.business, row.attempt_started_at, plan.budget
        to, from_, body = row.to_number, row.from_number, row.body
        if plan.needs_lookup and self._lookup(to) == "landline":
            with transaction(self.factory) as session:
                outbox.renew_in(session, job)  # the lease holder's cancel only
                self._cancel_id(session, message_id, "landline")
            return {"canceled": "landline"}
        match: tuple[str, Remote] | None = None
        if plan.personalise:
            assert self.find_contact is not None
            match = self.find_contact(business.id, to, budget)
        if started is not None:
            found = self.gateway.find_sent(to=to, from_=from_, body=body, since=started - LOOKBACK)
            if found is not None:
                adopted = {"sid": found.sid, "note": "adopted after an ambiguous attempt"}
                return self._store_sent(message_id, found, now, job, adopted)
        if not plan.recorded:
            with transaction(self.factory) as session:
                # The lookups may have outlasted the lease and another worker may own the job now:
                # only the lease holder records the caller's lookup and an attempt, and sends
                # (LeaseLost rolls this back).
                conn = session.connection()
                outbox.renew_in(session, job)
                named = None
                if plan.personalise:
                    named = self._record_match(conn, st, business, message_id, row.lead_id, match)
                    lookup_done(session, business.id, held, row.lead_id)
                if named is not None:  # the existing-customer text, stored as sent
                    body = named
                    conn.execute(
                        st.personalised,
                        {"message_id": message_id, "text": body, "started": now, "at": utcnow()},
                    )
                else:
                    conn.execute(st.attempt, {"message_id": message_id, "started": now, "at": utcnow()})
        try:
            sent = self.gateway.send(
                to=to, from_=from_, body=body, status_callback=self.status_callback(message_id)
            )
        except (NotSent, AuthError):
            # Certainly not taken (a 429, a refused connection, rejected credentials): the next
            # attempt may send without looking first.
            with transaction(self.factory) as session:
                session.connection().execute(
                    st.attempt, {"message_id": message_id, "started": None, "at": utcnow()}
                )
            raise
        except Rejected as exc:
            self._rejected(message_id, exc)
            raise
        crash_point("after_vendor_call")  # test hook: inert unless $TEXTBACK_CRASH_AT is set
        # The text's record and the job's completion commit together: this is the job's last commit.
        crash_point("before_commit")
        finished = self._store_sent(message_id, sent, now, job, {"sid": sent.sid})
        log.info("sms sent", extra={"message_id": message_id, "lead_id": job.lead_id, "to": mask(to)})
        return finished

    @staticmethod
    def _facts(conn: Connection, st: Statements, facts: dict[str, Any]) -> Any:
        row = conn.execute(st.facts, facts).one_or_none()
        if row is None:
            raise Rejected(f"message {facts['message_id']} does not exist")
        return row

    def _plan(self, row: Any, now: datetime) -> _Plan:
        """What the text's facts decide before anything is looked up or sent.

        Raises Rejected (the text cannot be sent) or Deferred (not before the sending window opens).
        """
        if row.sid:
            # A status callback can record the sid before the worker does (after an ambiguous
            # attempt, say): the text went out, so the send is finished all the same.
            return _Plan(sent=True)
        if row.status == "canceled":
            return _Plan(ended={"canceled": True})
        business = self.config.business(row.business_id)
        if business is None:
            raise Rejected(f"business {row.business_id!r} is no longer configured")
        assert row.lead_found is not None
        blocked = self._blocked_reason(row, business)
        if blocked:
            return _Plan(business, blocked=blocked)
        if row.kind in texting.AUTOMATED_KINDS:
            zones = texting.caller_zones(row.to_number, business)
            opens = next_send_time(now, zones, business.policy.window)
            if opens > now + timedelta(seconds=1):
                raise Deferred(opens, "outside the sending window")  # the worker puts the job back
        needs_lookup = bool(
            row.kind == "first_text"
            and business.policy.lookup_line_type
            and not self._fresh_line_type(row.line_type, row.checked_at)
        )
        started = row.attempt_started_at
        budget = business.policy.crm_lookup_budget_ms / 1000
        # A caller already looked up (a batch's prepare, an earlier attempt) is not asked again.
        personalise = (
            started is None
            and row.kind == "first_text"
            and self.find_contact is not None
            and not row.crm_matched
            and budget > 0
        )
        return _Plan(
            business,
            needs_lookup=needs_lookup,
            personalise=personalise,
            budget=budget,
            # Nothing to look up first: the attempt goes on record before the send, with the lease.
            recorded=started is None and not needs_lookup and not personalise,
        )

    def prepare(self, jobs: list[Job]) -> int:
        """Look up the callers of first texts claimed together: one CRM request per business.

        Each text then finds its caller already looked up (``__call__``). Used when the CRM
        lookup wired in is the runtime's, which offers ``find_contacts``; within the same strict
        budget as one lookup, and only for texts due now.
        """
        owner = getattr(self.find_contact, "__self__", None)
        find_many = getattr(owner, "find_contacts", None)
        if find_many is None:
            return 0
        now = utcnow()
        due: dict[str, list[tuple[str, str, str]]] = {}  # business id -> [(message id, lead id, phone)]
        ids = [str(job.payload.get("message_id", "")) for job in jobs]
        with reading(self.factory) as session:
            conn = session.connection()
            st = statements(conn.dialect.name)
            rows = {r.id: r for r in conn.execute(st.batch, {"message_ids": ids})}
            # The pushes these lookups free (core.sync.LOOKUP_REASON), read without the lock.
            first = {r.business_id for r in rows.values() if r.kind == "first_text"}
            held = {business_id: lookup_held(conn, business_id) for business_id in first}
        for message_id in ids:
            row = rows.get(message_id)
            if row is None or row.kind != "first_text" or row.sid:
                continue
            if row.attempt_started_at is not None or row.status == "canceled":
                continue
            business = self.config.business(row.business_id)
            if business is None or business.policy.crm_lookup_budget_ms <= 0:
                continue
            zones = texting.caller_zones(row.to_number, business)
            if next_send_time(now, zones, business.policy.window) > now + timedelta(seconds=1):
                continue  # looked up when it is sent, as a single text would be
            if row.crm_matched:
                continue
            due.setdefault(business.id, []).append((message_id, row.lead_id, row.to_number))
        looked_up = 0
        for business_id, items in due.items():
            business = self.config.business(business_id)
            if business is None or len(items) < 2:
                continue
            budget = business.policy.crm_lookup_budget_ms / 1000
            answers = find_many(business_id, sorted({phone for _, _, phone in items}), budget)
            if answers is None:
                continue  # a CRM that looks up one caller at a time: each text asks alone
            with transaction(self.factory) as session:
                conn = session.connection()
                for message_id, lead_id, phone in items:
                    body = self._record_match(conn, st, business, message_id, lead_id, answers.get(phone))
                    if body is not None:
                        conn.execute(st.body, {"message_id": message_id, "text": body, "at": utcnow()})
                    looked_up += 1
                lookup_done(session, business.id, held[business.id], *(i[1] for i in items))
        return looked_up

    def _record_match(
        self,
        conn: Connection,
        st: Statements,
        business: Business,
        message_id: str,
        lead_id: str,
        match: tuple[str, Remote] | None,
    ) -> str | None:
        """Record the lookup's answer on the lead; a known caller gets the existing-customer text.

        Returns that text (None when the caller is not known), for the caller to store.
        """
        if match is None:
            self._entry(conn, st, lead_id, "crm_match", found=False)
            return None
        connector_id, remote = match
        params = {"lead_id": lead_id, "connector_id": connector_id, "message_id": message_id}
        if conn.execute(st.own_contact, params).first() is not None:
            # This call's own push reached the CRM first (its wait for this lookup ran out, see
            # core.sync.LOOKUP_REASON) and may have made the contact the lookup found: not a
            # customer it knew, unless that push found the contact already there.
            self._entry(conn, st, lead_id, "crm_match", found=False, connector=connector_id, own_push=True)
            return None
        name = conn.execute(st.lead_name, {"lead_id": lead_id}).scalar_one()
        if remote.name and not name:
            name = remote.name
            conn.execute(st.named, {"lead_id": lead_id, "name": name, "at": utcnow()})
        self._entry(conn, st, lead_id, "crm_match", found=True, connector=connector_id, remote_id=remote.id)
        return texting.first_text_for(business, name, utcnow(), existing_customer=True)

    @staticmethod
    def _entry(conn: Connection, st: Statements, lead_id: str, type_: str, **data: Any) -> None:
        conn.execute(st.entry, {"lead_id": lead_id, "type": type_, "at": utcnow(), "data": data})

    def _blocked_reason(self, row: Any, business: Business) -> str | None:
        """Why the text must not go out, from the facts read with it (None: it may)."""
        if row.undeliverable:
            return "undeliverable"
        if row.kind in texting.STAFF_KINDS:
            return None  # an alert to staff; the caller's opt-out is about texts to the caller
        if row.opted_out and row.kind != "opt_out_confirm":
            return "opted_out"
        if row.lead_found is not None and row.kind in texting.AUTOMATED_REPLY_KINDS:
            if row.human_takeover:
                return "human_takeover"
            if row.convo_state == "closed":
                return "conversation_closed"
        if row.lead_found is not None and row.kind in texting.CAPPED_KINDS:
            if (row.automated or 0) >= business.conversation.max_automated_per_day:
                return "frequency_cap"
        return None

    def _already_sent(self, session: Session, message_id: str, now: datetime) -> dict[str, Any]:
        message = session.get(Message, message_id)
        assert message is not None and message.sid
        if message.sent_at is None:
            message.sent_at = now
        sent_lead = session.get(Lead, message.lead_id)
        if sent_lead is not None and message.kind == "first_text":
            texting.mark_lead_texted(sent_lead)
            release(session, message.business_id, sent_lead.id)  # its missed call's push goes now
        return {"sid": message.sid, "note": "already sent"}

    def _cancel_id(self, session: Session, message_id: str, reason: str) -> None:
        message = session.get(Message, message_id)
        lead = session.get(Lead, message.lead_id) if message else None
        assert message is not None and lead is not None
        self._cancel(session, message, lead, reason)

    def _fresh_line_type(self, line_type: str | None, checked_at: datetime | None) -> str | None:
        if line_type is None or checked_at is None:
            return None
        if utcnow() - checked_at > timedelta(days=self.config.twilio.lookup_cache_days):
            return None
        return line_type

    def _lookup(self, phone: str) -> str:
        """The caller's line type, asked of the vendor and kept for the next texts."""
        line_type = self.gateway.line_type(phone) or "unknown"
        with transaction(self.factory) as session:
            # One statement: two workers that looked the same caller up (one of them past its lease)
            # both store the answer instead of the second failing on the first one's row.
            insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
            now = utcnow()
            stmt = insert(LineType).values(phone=phone, line_type=line_type, checked_at=now)
            session.execute(
                stmt.on_conflict_do_update(
                    index_elements=[LineType.phone], set_={"line_type": line_type, "checked_at": now}
                )
            )
        return line_type

    def _cancel(self, session: Session, message: Message, lead: Lead, reason: str) -> None:
        message.status = "canceled"
        leads.add_entry(session, lead.id, "decision", outcome="skip", reason=reason, message_id=message.id)
        _first_text_ended(session, message, lead)
        message.updated_at = utcnow()

    def _store_sent(
        self, message_id: str, sent: SentMessage, now: datetime, job: Job, result: dict[str, Any]
    ) -> outbox.Finished:
        with transaction(self.factory) as session:
            conn = session.connection()
            st = statements(conn.dialect.name)
            # The message with its lead and any status callbacks that beat this commit (one row each).
            rows = conn.execute(st.stored, {"message_id": message_id, "sid": sent.sid}).all()
            assert rows
            pause_point("sent_read", conn)  # test hook: a callback lands between the read and the write
            row = rows[0]
            status, error = _advance(row.status, row.error_code, sent.status or "queued")
            best = texting.furthest([(r.known_status, r.known_error) for r in rows if r.known_status])
            if best is not None:
                status, error = _advance(status, error, *best)
            # Guarded in SQL too (Statements.sent): a callback may commit between the read and here.
            conn.execute(
                st.sent.get(status, st.sent_unranked),
                {
                    "message_id": message_id,
                    "sid": sent.sid,
                    "sent_at": now,
                    "state": status,
                    "error": error,
                    "at": utcnow(),
                },
            )
            if row.lead_found is not None and row.kind == "first_text":
                if row.lead_status in ("new", "scheduled"):
                    conn.execute(st.texted, {"lead_id": row.lead_id, "at": utcnow()})
                business = self.config.business(row.business_id)
                if business is not None and business.policy.follow_up_after_hours > 0:
                    outbox.enqueue(
                        session,
                        kind="convo.follow_up",
                        target="conversation",
                        dedupe_key=f"followup:{message_id}",
                        business_id=business.id,
                        lead_id=row.lead_id,
                        payload={"after_message_id": message_id},
                        run_at=now + timedelta(hours=business.policy.follow_up_after_hours),
                    )
            if row.lead_found is not None and row.kind not in texting.STAFF_KINDS:
                emit(session, row.business_id, row.lead_id, "texted", message_id, {"message_id": message_id})
            return outbox.complete_in(session, job, result)

    def _rejected(self, message_id: str, exc: Rejected) -> None:
        code = (
            int(exc.code)
            if isinstance(exc.code, int) or (isinstance(exc.code, str) and exc.code.isdigit())
            else None
        )
        with transaction(self.factory) as session:
            message = session.get(Message, message_id)
            assert message is not None
            message.status = "failed"
            message.error_code = code
            message.attempt_started_at = None
            if code in texting.PERMANENT_CODES:
                texting.suppress(
                    session,
                    message.business_id,
                    message.to_number,
                    texting.PERMANENT_CODES[code],
                    f"twilio:{code}",
                )
            lead = session.get(Lead, message.lead_id)
            if lead is not None:
                leads.add_entry(
                    session,
                    lead.id,
                    "decision",
                    outcome="skip",
                    reason=f"twilio_{code or 'rejected'}",
                    message_id=message.id,
                )
                _first_text_ended(session, message, lead)


def _first_text_ended(session: Session, message: Message, lead: Lead) -> None:
    """A first text that will not go out (skipped or refused) closes a fresh lead and frees its push."""
    if message.kind != "first_text":
        return
    if lead.status in ("new", "scheduled"):
        leads.set_status(lead, "closed")
    release(session, lead.business_id, lead.id)  # its missed call's push need not wait
