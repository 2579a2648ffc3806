"""The reply conversation: what textback does when a caller texts back.

Each inbound text (not a carrier keyword, not from staff) becomes a ``convo.reply`` job; the
webhook only records it. The job classifies the text, asks the one qualifying question when the
intent is unclear, and acts: offers three real slots from the business's calendar and books one,
sends the pricing link, escalates what is urgent, closes wrong numbers politely, and hands
everything else to a person. Once a person has taken over, nothing automated is sent.

States (``Lead.convo_state``): None (first text sent) -> ``asked`` -> ``offered`` -> ``booked``;
side exits ``quoted``, ``answered``, ``handed_off``, ``closed`` (wrong number), ``human``.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from core import calls, escalation, intent, leads, replies, slots, sync, texting
from core.config import Business, Config
from core.crm import BookingData, Slot
from core.db import transaction
from core.hours import is_open
from core.models import Lead, Message, WebhookEvent, utcnow
from core.outbox import Job
from core.phones import national
from core.sync import Resolver

log = logging.getLogger("textback.conversation")

CLEAR_INTENTS = ("booking", "quote", "urgent", "question", "existing_customer", "wrong_number")


def caller_tz(business: Business, phone: str) -> ZoneInfo:
    zones = texting.caller_zones(phone, business)
    return zones[0]


class ConversationJob:
    """Handler for ``convo.reply`` jobs."""

    def __init__(self, config: Config, factory: sessionmaker[Session], resolve: Resolver) -> None:
        self.config = config
        self.factory = factory
        self.resolve = resolve
        self._classifiers: dict[str, intent.Classifier] = {}

    def classifier(self, business: Business) -> intent.Classifier:
        if business.id not in self._classifiers:
            conv = business.conversation
            rules = (
                intent.rules_from_config(conv.rules, replace=conv.replace_default_rules)
                if conv.rules
                else intent.DEFAULT_RULES
            )
            self._classifiers[business.id] = intent.load_classifier(conv.classifier, rules)
        return self._classifiers[business.id]

    def __call__(self, job: Job) -> dict[str, Any]:
        with transaction(self.factory) as session:
            message = session.get(Message, job.payload["message_id"])
            lead = session.get(Lead, job.lead_id) if job.lead_id else None
            business = self.config.business(job.business_id or "")
            if message is None or lead is None or business is None:
                return {"skipped": "message, lead or business gone"}
            outcome = _Step(self, session, business, lead, message).run()
        # Calendar calls are vendor I/O: they run between transactions, never inside one.
        if outcome.pop("offer", False):
            outcome["offered"] = self._offer(job, f"convo:{job.payload['message_id']}")
        if outcome.get("book") is not None:
            outcome.update(self._book(job, outcome.pop("book")))
        return outcome

    def _business(self, job: Job) -> Business:
        business = self.config.business(job.business_id or "")
        assert business is not None
        return business

    def _offer(self, job: Job, ref: str, prefix: str = "") -> list[str]:
        business = self._business(job)
        b = business.booking
        calendar = self.resolve(business.id, b.calendar or "")
        now = utcnow()
        busy = list(calendar.free_busy(now, now + timedelta(days=b.horizon_days + 1)))
        with self.factory() as session:
            busy += _claimed_slots(session, business)
        found = slots.bookable_slots(
            now,
            busy,
            business.hours,
            business.holidays,
            business.tz,
            length_minutes=b.slot_minutes,
            buffer_minutes=b.buffer_minutes,
            lead_minutes=b.lead_minutes,
            horizon_days=b.horizon_days,
            limit=3,
        )
        with transaction(self.factory) as session:
            lead = session.get(Lead, job.lead_id)
            assert lead is not None
            tz = caller_tz(business, lead.phone)
            data = dict(lead.convo_data or {})
            if not found:
                data.pop("offered", None)
                lead.convo_data = data
                link = f" Book online here: {business.booking_link}" if business.booking_link else ""
                _reply(
                    session,
                    business,
                    lead,
                    f"{prefix}We don't have an open time in the next few days.{link} "
                    "Someone from the team will text you to find a time.",
                    f"{ref}:noslot",
                )
                escalation.escalate(session, business, lead, "no_slot", ref=ref, intent=lead.intent)
                lead.convo_state = "handed_off"
                return []
            starts = [slot.start for slot in found]
            data["offered"] = [start.isoformat() for start in starts]
            data["reasks"] = 0
            lead.convo_data = data
            lead.convo_state = "offered"
            _reply(session, business, lead, prefix + replies.offer_text(starts, tz), f"{ref}:offer")
            return list(data["offered"])

    def _book(self, job: Job, index: int) -> dict[str, Any]:
        business = self._business(job)
        b = business.booking
        ref = f"book:{job.payload['message_id']}"
        with transaction(self.factory) as session:
            lead = session.get(Lead, job.lead_id)
            assert lead is not None
            data = dict(lead.convo_data or {})
            start = datetime.fromisoformat(data["offered"][index])
            end = start + timedelta(minutes=b.slot_minutes)
            claim = f"{business.id}:{start.isoformat()}"
            # Our own leads race for the same offered slot: a unique claim row decides who gets it.
            owned = data.get("claim") == claim or calls.first_delivery(session, "booking.slot", claim)
            if owned:
                data["claim"] = claim
                lead.convo_data = data
            phone, name, intent_name, email, lead_id = lead.phone, lead.name, lead.intent, lead.email, lead.id
        calendar = self.resolve(business.id, b.calendar or "")
        taken = not owned or bool(
            calendar.free_busy(
                start - timedelta(minutes=b.buffer_minutes), end + timedelta(minutes=b.buffer_minutes)
            )
        )
        if taken:
            if owned:
                _release(self.factory, claim, lead_id)
            return {
                "slot_taken": start.isoformat(),
                "reoffered": self._offer(job, ref, prefix="Sorry, that time was just taken. "),
            }
        booking = BookingData(
            key=f"{lead_id}:{start.isoformat()}",
            slot=Slot(start, end),
            summary=f"{business.name}: {name or national(phone)}",
            description=f"Booked by text with textback.\nCaller: {name or '-'} {phone}\n"
            f"Reason: {intent_name or 'booking'}",
            time_zone=business.tz_name,
            attendee_email=email,
        )
        remote = calendar.create_booking(booking, None)
        with transaction(self.factory) as session:
            lead = session.get(Lead, lead_id)
            assert lead is not None
            data = dict(lead.convo_data or {})
            data["booking"] = {
                "id": remote.id,
                "url": remote.url,
                "start": start.isoformat(),
                "end": end.isoformat(),
            }
            lead.convo_data = data
            lead.convo_state = "booked"
            leads.set_status(lead, "booked")
            leads.add_entry(
                session,
                lead.id,
                "booking",
                start=start.isoformat(),
                end=end.isoformat(),
                event_id=remote.id,
                url=remote.url,
            )
            sync.emit(session, business.id, lead.id, "booked", ref, {"start": start.isoformat()})
            tz = caller_tz(business, phone)
            body = (
                f"You're booked with {business.name} for {replies.format_slot(start, tz)}. "
                "Reply here if anything changes."
            )
            texting.queue_text(
                session, business, lead, kind="reply", body=body, dedupe_key=f"sms:{ref}:confirm"
            )
            when = f"{replies.format_slot(start, business.tz)} ({business.tz_name})"
            escalation.escalate(
                session, business, lead, "booked", ref=ref, intent=lead.intent, said=f"booked {when}"
            )
        return {"booked": remote.id, "start": start.isoformat()}


def _claimed_slots(session: Session, business: Business) -> list[Slot]:
    """Slots our own leads are booking right now (claimed, maybe not yet on the calendar)."""
    rows = session.scalars(
        select(WebhookEvent.key).where(
            WebhookEvent.kind == "booking.slot", WebhookEvent.key.startswith(f"{business.id}:")
        )
    ).all()
    out = []
    for key in rows:
        start = datetime.fromisoformat(key.split(":", 1)[1])
        out.append(Slot(start, start + timedelta(minutes=business.booking.slot_minutes)))
    return out


def _release(factory: sessionmaker[Session], claim: str, lead_id: str) -> None:
    with transaction(factory) as session:
        session.execute(
            delete(WebhookEvent).where(WebhookEvent.kind == "booking.slot", WebhookEvent.key == claim)
        )
        lead = session.get(Lead, lead_id)
        if lead is not None:
            data = dict(lead.convo_data or {})
            data.pop("claim", None)
            lead.convo_data = data


def _reply(
    session: Session, business: Business, lead: Lead, body: str, ref: str, kind: str = "reply"
) -> None:
    texting.queue_text(session, business, lead, kind=kind, body=body, dedupe_key=f"sms:reply:{ref}")


class _Step:
    """One inbound text moved through the conversation, inside one transaction."""

    def __init__(
        self, job: ConversationJob, session: Session, business: Business, lead: Lead, message: Message
    ) -> None:
        self.job = job
        self.s = session
        self.b = business
        self.lead = lead
        self.msg = message
        self.ref = f"convo:{message.sid or message.id}"

    def reply(self, body: str, n: int = 0) -> None:
        _reply(self.s, self.b, self.lead, body, f"{self.ref}:{n}")

    def run(self) -> dict[str, Any]:
        lead, b = self.lead, self.b
        sync.emit(
            self.s,
            b.id,
            lead.id,
            "replied",
            self.msg.sid or self.msg.id,
            {"message_id": self.msg.id, "intent": lead.intent},
        )
        if "opted_out" in leads.suppressions(self.s, b.id, lead.phone):
            return {"skipped": "opted out"}
        if lead.human_takeover or lead.convo_state in ("human", "booked", "handed_off"):
            # People own this conversation now: pass the caller's words on, say nothing automated.
            escalation.escalate(
                self.s, b, lead, "human_conversation", ref=self.ref, said=self.msg.body, intent=lead.intent
            )
            return {"forwarded": True}
        if lead.convo_state == "closed" or not b.conversation.enabled:
            return {"skipped": lead.convo_state or "conversation disabled"}
        result = self.job.classifier(b).classify(self.msg.body or "")
        if result.name and not lead.name:
            lead.name = result.name
        if result.email and not lead.email:
            lead.email = result.email
        leads.add_entry(
            self.s,
            lead.id,
            "classified",
            intent=result.intent,
            confidence=round(result.confidence, 2),
            matched=list(result.matched)[:5],
            message_id=self.msg.id,
        )
        if (
            b.escalation.business_hours_handoff
            and is_open(utcnow(), b.tz, b.hours, b.holidays)
            and result.intent != "urgent"
        ):
            escalation.escalate(
                self.s, b, lead, "reply_in_hours", ref=self.ref, said=self.msg.body, intent=result.intent
            )
        state = lead.convo_state
        if state == "offered":
            return self.on_offered(result)
        if state == "asked" or result.intent in CLEAR_INTENTS or not b.conversation.qualifying_question:
            return self.act(result.intent)
        if state in (None, "quoted", "answered") and not (lead.convo_data or {}).get("asked"):
            data = dict(lead.convo_data or {})
            data["asked"] = True
            lead.convo_data = data
            lead.convo_state = "asked"
            self.reply(b.conversation.qualifying_question or "")
            return {"asked": True}
        return self.act(result.intent)

    def qualified(self, intent_name: str) -> None:
        self.lead.intent = intent_name
        leads.set_status(self.lead, "qualified", only_from=("new", "scheduled", "texted", "replied"))
        sync.emit(self.s, self.b.id, self.lead.id, "qualified", self.ref, {"intent": intent_name})

    def act(self, name: str) -> dict[str, Any]:
        b, lead = self.b, self.lead
        if name == "booking":
            self.qualified(name)
            if not b.booking.calendar:
                link = f" Pick a time here: {b.booking_link}" if b.booking_link else ""
                self.reply(
                    f"Great, we'd love to help.{link} Someone from {b.name} will also text you to confirm."
                )
                escalation.escalate(self.s, b, lead, "handoff", ref=self.ref, said=self.msg.body, intent=name)
                lead.convo_state = "handed_off"
                return {"intent": name, "handed_off": True}
            return {"intent": name, "offer": True}
        if name == "quote":
            self.qualified(name)
            pricing = b.conversation.pricing_link or b.booking_link
            where = f" You can see our pricing here: {pricing}." if pricing else ""
            self.reply(
                f"Happy to help with a quote.{where} "
                "Want us to come out and take a look? Reply BOOK for times."
            )
            lead.convo_state = "quoted"
            return {"intent": name}
        if name == "urgent":
            self.qualified(name)
            escalation.escalate(self.s, b, lead, "urgent", ref=self.ref, said=self.msg.body, intent=name)
            self.reply(f"Thanks, we're on it: a person from {b.name} will call you right away.")
            lead.convo_state = "handed_off"
            return {"intent": name, "escalated": True}
        if name == "question":
            self.qualified(name)
            info = b.conversation.info
            answer = " ".join(
                f"{label}: {info[key]}."
                for key, label in (("hours", "Hours"), ("address", "Address"), ("service_area", "We serve"))
                if info.get(key)
            )
            if answer:
                self.reply(f"{answer} Anything else? Reply BOOK to book a visit.")
                lead.convo_state = "answered"
                return {"intent": name, "answered": True}
            return self.handoff(name)
        if name == "wrong_number":
            lead.intent = name
            _reply(
                self.s,
                b,
                lead,
                f"Sorry to bother you! This is {b.name}; we won't text this number again.",
                f"{self.ref}:close",
                kind="closing",
            )
            lead.convo_state = "closed"
            leads.set_status(lead, "closed")
            return {"intent": name, "closed": True}
        if name == "existing_customer":
            self.qualified(name)
            return self.handoff(name, reason="existing_customer")
        return self.handoff(name)

    def handoff(self, name: str, reason: str = "handoff") -> dict[str, Any]:
        b, lead = self.b, self.lead
        lead.intent = lead.intent or name
        escalation.escalate(self.s, b, lead, reason, ref=self.ref, said=self.msg.body, intent=name)
        self.reply(f"Thanks! Someone from {b.name} will text you back shortly.")
        lead.convo_state = "handed_off"
        leads.set_status(lead, "handed_off", only_from=("new", "scheduled", "texted", "replied", "qualified"))
        return {"intent": name, "handed_off": True}

    def on_offered(self, result: intent.Classification) -> dict[str, Any]:
        b, lead = self.b, self.lead
        tz = caller_tz(b, lead.phone)
        data = dict(lead.convo_data or {})
        offered = [datetime.fromisoformat(s) for s in data.get("offered", [])]
        choice = replies.parse_choice(self.msg.body or "", offered, tz)
        if choice is not None:
            return {"book": choice}
        if result.intent in ("urgent", "wrong_number", "existing_customer"):
            return self.act(result.intent)
        if replies.is_none_suit(self.msg.body or ""):
            link = f" You can also pick any open time here: {b.booking_link}" if b.booking_link else ""
            self.reply(f"No problem.{link} Someone from {b.name} will text you to find a time that works.")
            escalation.escalate(
                self.s, b, lead, "no_slot", ref=self.ref, said=self.msg.body, intent="booking"
            )
            lead.convo_state = "handed_off"
            return {"none_suit": True}
        if data.get("reasks", 0) < 1:
            data["reasks"] = data.get("reasks", 0) + 1
            lead.convo_data = data
            self.reply("Sorry, which time works? " + replies.offer_text(offered, tz))
            return {"reasked": True}
        return self.handoff("booking")


FOLLOW_UP = (
    "{hi}, just checking in from {business}: do you still need a hand? Reply here any time. "
    "Reply STOP to opt out."
)


class FollowUpJob:
    """``convo.follow_up``: one nudge when the caller never answered the first text."""

    def __init__(self, config: Config, factory: sessionmaker[Session]) -> None:
        self.config = config
        self.factory = factory

    def __call__(self, job: Job) -> dict[str, Any]:
        from core.templates import render

        with transaction(self.factory) as session:
            lead = session.get(Lead, job.lead_id) if job.lead_id else None
            business = self.config.business(job.business_id or "")
            first = session.get(Message, job.payload.get("after_message_id", ""))
            if lead is None or business is None or first is None:
                return {"skipped": "gone"}
            answered = session.scalars(
                select(Message.id).where(
                    Message.lead_id == lead.id,
                    Message.direction == "inbound",
                    Message.created_at >= first.created_at,
                )
            ).first()
            if answered or lead.human_takeover or lead.convo_state is not None:
                return {"skipped": "the caller answered or a person took over"}
            body = render(
                FOLLOW_UP,
                business=business.name,
                first_name=(lead.name or "").split(" ")[0] or None,
                booking_link=business.booking_link,
            )
            message = texting.queue_text(
                session, business, lead, kind="follow_up", body=body, dedupe_key=f"sms:followup:{first.id}"
            )
            return {"queued": bool(message)}
