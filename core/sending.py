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

from sqlalchemy.orm import Session, sessionmaker

from core import leads, outbox, sync, texting
from core.config import Config
from core.crm import Remote
from core.db import transaction
from core.errors import AuthError, Rejected, TransientError
from core.hours import next_send_time
from core.models import Lead, LineType, Message, utcnow
from core.outbox import Deferred, Job
from core.phones import mask
from core.worker import crash_point

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


class SmsJob:
    """Handler for ``sms.send`` jobs, bound to a config, a session factory and a gateway.

    A text takes as few transactions as its safety allows: the lease is renewed in the first one
    (which also records the attempt when nothing needs looking up first), and the sent text is
    recorded in the same transaction that marks the job done.
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
        with transaction(self.factory) as session:
            outbox.renew_in(session, job, now)
            message = session.get(Message, message_id)
            if message is None:
                raise Rejected(f"message {message_id} does not exist")
            if message.sid:
                # A status callback can record the sid before the worker does (after an ambiguous
                # attempt, say): the text went out, so the send is finished all the same.
                if message.sent_at is None:
                    message.sent_at = now
                sent_lead = session.get(Lead, message.lead_id)
                if sent_lead is not None and message.kind == "first_text":
                    texting.mark_lead_texted(sent_lead)
                return {"sid": message.sid, "note": "already sent"}
            if message.status == "canceled":
                return {"canceled": True}
            business = self.config.business(message.business_id)
            if business is None:
                raise Rejected(f"business {message.business_id!r} is no longer configured")
            lead = session.get(Lead, message.lead_id)
            assert lead is not None
            blocked = self._blocked_reason(session, message)
            if blocked:
                self._cancel(session, message, lead, blocked)
                return {"canceled": blocked}
            if message.kind in texting.AUTOMATED_KINDS:
                zones = texting.caller_zones(message.to_number, business)
                opens = next_send_time(now, zones, business.policy.window)
                if opens > now + timedelta(seconds=1):
                    message.status = "scheduled"
                    raise Deferred(opens, "outside the sending window")
            needs_lookup = (
                message.kind == "first_text"
                and business.policy.lookup_line_type
                and not self._cached_line_type(session, message.to_number)
            )
            started = message.attempt_started_at
            personalise = started is None and message.kind == "first_text" and self.find_contact is not None
            # Nothing to look up first: the attempt is on record with this commit, before the send.
            recorded = started is None and not needs_lookup and not personalise
            if recorded:
                message.attempt_started_at = now
        if needs_lookup:
            self._lookup(message.to_number)
            with transaction(self.factory) as session:
                message = session.get(Message, message_id)
                lead = session.get(Lead, message.lead_id) if message else None
                assert message is not None and lead is not None
                if self._cached_line_type(session, message.to_number) == "landline":
                    self._cancel(session, message, lead, "landline")
                    return {"canceled": "landline"}
        if personalise:
            self._personalise(message_id)
        if started is not None:
            found = self.gateway.find_sent(
                to=message.to_number, from_=message.from_number, body=message.body, since=started - LOOKBACK
            )
            if found is not None:
                adopted = {"sid": found.sid, "note": "adopted after an ambiguous attempt"}
                return self._store_sent(message_id, found, now, job, adopted)
        if not recorded:
            with transaction(self.factory) as session:
                # The lookups may have outlasted the lease and another worker may own the job now:
                # only the lease holder records an attempt and sends (LeaseLost rolls this back).
                outbox.renew_in(session, job)
                row = session.get(Message, message_id)
                assert row is not None
                row.attempt_started_at = now
                message = row  # as personalised
        try:
            sent = self.gateway.send(
                to=message.to_number,
                from_=message.from_number,
                body=message.body,
                status_callback=self.status_callback(message_id),
            )
        except (NotSent, AuthError):
            # Certainly not taken (a 429, a refused connection, rejected credentials): the next
            # attempt may send without looking first.
            with transaction(self.factory) as session:
                row = session.get(Message, message_id)
                assert row is not None
                row.attempt_started_at = None
            raise
        except Rejected as exc:
            self._rejected(message_id, exc)
            raise
        crash_point("after_vendor_call")  # test hook: inert unless $TEXTBACK_CRASH_AT is set
        # The text's record and the job's completion commit together: this is the job's last commit.
        crash_point("before_commit")
        finished = self._store_sent(message_id, sent, now, job, {"sid": sent.sid})
        log.info(
            "sms sent",
            extra={"message_id": message_id, "lead_id": job.lead_id, "to": mask(message.to_number)},
        )
        return finished

    def prepare(self, jobs: list[Job]) -> int:
        """Look up the callers of first texts claimed together: one CRM request per business.

        Each text then finds its caller already looked up (``_personalise``). Used when the CRM
        lookup wired in is the runtime's, which offers ``find_contacts``; within the same strict
        budget as one lookup, and only for texts due now.
        """
        owner = getattr(self.find_contact, "__self__", None)
        find_many = getattr(owner, "find_contacts", None)
        if find_many is None:
            return 0
        now = utcnow()
        due: dict[str, list[tuple[str, str]]] = {}  # business id -> [(message id, phone)]
        with self.factory() as session:
            for job in jobs:
                message = session.get(Message, job.payload.get("message_id", ""))
                if message is None or message.kind != "first_text" or message.sid:
                    continue
                if message.attempt_started_at is not None or message.status == "canceled":
                    continue
                business = self.config.business(message.business_id)
                if business is None or business.policy.crm_lookup_budget_ms <= 0:
                    continue
                zones = texting.caller_zones(message.to_number, business)
                if next_send_time(now, zones, business.policy.window) > now + timedelta(seconds=1):
                    continue  # looked up when it is sent, as a single text would be
                if any(e.type == "crm_match" for e in leads.entries(session, message.lead_id)):
                    continue
                due.setdefault(business.id, []).append((message.id, message.to_number))
        looked_up = 0
        for business_id, items in due.items():
            business = self.config.business(business_id)
            if business is None or len(items) < 2:
                continue
            budget = business.policy.crm_lookup_budget_ms / 1000
            answers = find_many(business_id, sorted({phone for _, phone in items}), budget)
            if answers is None:
                continue  # a CRM that looks up one caller at a time: each text asks alone
            for message_id, phone in items:
                self._apply_match(message_id, answers.get(phone))
                looked_up += 1
        return looked_up

    def _personalise(self, message_id: str) -> None:
        """Caller lookup before the first text, within a strict budget so the text is never late.

        A caller the CRM already knows gets the existing-customer template and their first name.
        """
        with self.factory() as session:
            message = session.get(Message, message_id)
            assert message is not None
            business = self.config.business(message.business_id)
            lead = session.get(Lead, message.lead_id)
            done = lead is None or any(e.type == "crm_match" for e in leads.entries(session, lead.id))
        budget = business.policy.crm_lookup_budget_ms / 1000 if business else 0
        if business is None or lead is None or done or budget <= 0 or self.find_contact is None:
            return
        self._apply_match(message_id, self.find_contact(business.id, message.to_number, budget))

    def _apply_match(self, message_id: str, match: tuple[str, Remote] | None) -> None:
        """Record the lookup's answer on the lead; a known caller gets the existing-customer text."""
        with transaction(self.factory) as session:
            message = session.get(Message, message_id)
            lead = session.get(Lead, message.lead_id) if message else None
            business = self.config.business(message.business_id) if message else None
            assert message is not None and lead is not None and business is not None
            if match is None:
                leads.add_entry(session, lead.id, "crm_match", found=False)
                return
            connector_id, remote = match
            if remote.name and not lead.name:
                lead.name = remote.name
            leads.add_entry(
                session, lead.id, "crm_match", found=True, connector=connector_id, remote_id=remote.id
            )
            message.body = texting.first_text_body(business, lead, utcnow(), existing_customer=True)

    def _blocked_reason(self, session: Session, message: Message) -> str | None:
        reasons = leads.suppressions(session, message.business_id, message.to_number)
        if "undeliverable" in reasons:
            return "undeliverable"
        if message.kind in texting.STAFF_KINDS:
            return None  # an alert to staff; the caller's opt-out is about texts to the caller
        if "opted_out" in reasons and message.kind != "opt_out_confirm":
            return "opted_out"
        lead = session.get(Lead, message.lead_id)
        if lead is not None and message.kind in texting.AUTOMATED_REPLY_KINDS:
            if lead.human_takeover:
                return "human_takeover"
            if lead.convo_state == "closed":
                return "conversation_closed"
        if lead is not None and message.kind in texting.CAPPED_KINDS:
            business = self.config.business(message.business_id)
            cap = business.conversation.max_automated_per_day if business else 3
            if texting.automated_sent_since(session, message, utcnow() - timedelta(hours=24)) >= cap:
                return "frequency_cap"
        return None

    def _cached_line_type(self, session: Session, phone: str) -> str | None:
        row = session.get(LineType, phone)
        if row is None:
            return None
        if utcnow() - row.checked_at > timedelta(days=self.config.twilio.lookup_cache_days):
            return None
        return row.line_type

    def _lookup(self, phone: str) -> None:
        line_type = self.gateway.line_type(phone) or "unknown"
        with transaction(self.factory) as session:
            row = session.get(LineType, phone)
            if row is None:
                session.add(LineType(phone=phone, line_type=line_type, checked_at=utcnow()))
            else:
                row.line_type, row.checked_at = line_type, utcnow()

    def _cancel(self, session: Session, message: Message, lead: Lead, reason: str) -> None:
        message.status = "canceled"
        leads.add_entry(session, lead.id, "decision", outcome="skip", reason=reason, message_id=message.id)
        if message.kind == "first_text" and lead.status in ("new", "scheduled"):
            leads.set_status(lead, "closed")
        message.updated_at = utcnow()

    def _store_sent(
        self, message_id: str, sent: SentMessage, now: datetime, job: Job, result: dict[str, Any]
    ) -> outbox.Finished:
        with transaction(self.factory) as session:
            message = session.get(Message, message_id)
            assert message is not None
            message.sid = sent.sid
            message.sent_at = now
            texting.advance(message, sent.status or "queued")
            known = texting.furthest_known_status(session, sent.sid)
            if known:
                texting.advance(message, known[0], known[1])
            lead = session.get(Lead, message.lead_id)
            if lead is not None and message.kind == "first_text":
                texting.mark_lead_texted(lead)
                business = self.config.business(message.business_id)
                if business is not None and business.policy.follow_up_after_hours > 0:
                    outbox.enqueue(
                        session,
                        kind="convo.follow_up",
                        target="conversation",
                        dedupe_key=f"followup:{message.id}",
                        business_id=business.id,
                        lead_id=lead.id,
                        payload={"after_message_id": message.id},
                        run_at=now + timedelta(hours=business.policy.follow_up_after_hours),
                    )
            if lead is not None and message.kind not in texting.STAFF_KINDS:
                sync.emit(
                    session, message.business_id, lead.id, "texted", message.id, {"message_id": message.id}
                )
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
                if message.kind == "first_text" and lead.status in ("new", "scheduled"):
                    leads.set_status(lead, "closed")
