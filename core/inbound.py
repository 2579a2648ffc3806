"""Inbound texts: threaded onto the caller's lead, with opt-out, opt-in and help honoured at once.

Carrier keywords and plain-language revocations are handled here, in the webhook's transaction,
because they must take effect before anything else can be sent. A staff member's text is relayed
to a caller (core.relay). Everything else becomes a ``convo.reply`` job for core.conversation.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import delete
from sqlalchemy.orm import Session

from core import keywords, leads, outbox, relay, sync, texting
from core.config import Business
from core.models import Lead, Message, Suppression, utcnow

OPT_OUT_CONFIRM = (
    "{business}: you're unsubscribed and won't get more texts from us. Reply START to resubscribe."
)
OPT_IN_CONFIRM = "{business}: you're resubscribed. Reply STOP to opt out."
HELP_REPLY = "{business}: reply to this number to reach us, or call {number}. Reply STOP to opt out."


@dataclass(frozen=True)
class InboundResult:
    lead_id: str | None
    keyword: str | None
    replied: bool


def _classify(body: str, opt_out_type: str | None, opted_out: bool) -> str | None:
    if opt_out_type:
        return {"STOP": "opt_out", "START": "opt_in", "HELP": "help"}.get(opt_out_type.upper())
    if keywords.is_opt_out(body):
        return "opt_out"
    # "Yes" is an opt-in keyword only for someone who opted out; otherwise it is an answer.
    if opted_out and keywords.is_opt_in(body):
        return "opt_in"
    if keywords.keyword(body) == "help":
        return "help"
    return None


def record(
    session: Session,
    business: Business,
    *,
    message_sid: str,
    caller: str,
    to_number: str,
    body: str,
    opt_out_type: str | None,
) -> InboundResult:
    if caller in relay.staff_numbers(business) and not opt_out_type:
        result = relay.from_staff(session, business, caller, body, message_sid)
        return InboundResult(result.lead_id, "staff_relay", result.sent)
    lead, _created = leads.get_or_create(session, business.id, caller, source="sms")
    now = utcnow()
    inbound_id = str(uuid.uuid4())
    session.add(
        Message(
            id=inbound_id,
            lead_id=lead.id,
            business_id=business.id,
            direction="inbound",
            kind="reply",
            sid=message_sid,
            from_number=caller,
            to_number=to_number,
            body=body,
            status="received",
            created_at=now,
            updated_at=now,
            sent_at=now,
        )
    )
    opted_out = "opted_out" in leads.suppressions(session, business.id, caller)
    kind = _classify(body, opt_out_type, opted_out)
    # With Twilio Advanced Opt-Out on, Twilio already answered the keyword: record, never confirm twice.
    confirm = not opt_out_type
    replied = False
    if kind == "opt_out":
        # Suppressed for the business, so no number of the business texts them again.
        texting.suppress(
            session,
            business.id,
            caller,
            "opted_out",
            "twilio:advanced-opt-out" if opt_out_type else f"sms:{keywords.opt_out_match(body) or 'keyword'}",
        )
        leads.add_entry(session, lead.id, "opt_out", source="twilio" if opt_out_type else "keyword")
        leads.set_status(lead, "opted_out")
        sync.emit(session, business.id, lead.id, "opted_out", message_sid)
        if confirm and not opted_out:
            _reply(session, business, lead, OPT_OUT_CONFIRM, "opt_out_confirm", message_sid, to_number)
            replied = True
    elif kind == "opt_in":
        session.execute(
            delete(Suppression).where(
                Suppression.business_id == business.id,
                Suppression.phone == caller,
                Suppression.reason == "opted_out",
            )
        )
        leads.add_entry(session, lead.id, "opt_in", source="twilio" if opt_out_type else "keyword")
        leads.set_status(lead, "replied", only_from=("opted_out",))
        if confirm:
            _reply(session, business, lead, OPT_IN_CONFIRM, "opt_in_confirm", message_sid, to_number)
            replied = True
    elif kind == "help":
        if confirm:
            _reply(session, business, lead, HELP_REPLY, "help", message_sid, to_number)
            replied = True
    elif not opted_out:
        leads.set_status(lead, "replied", only_from=("new", "scheduled", "texted"))
        outbox.enqueue(
            session,
            kind="convo.reply",
            target="conversation",
            dedupe_key=f"convo:{message_sid}",
            ordering_key=f"convo:{business.id}:{caller}",
            business_id=business.id,
            lead_id=lead.id,
            payload={"message_id": inbound_id},
        )
    return InboundResult(lead.id, kind, replied)


def _reply(
    session: Session,
    business: Business,
    lead: Lead,
    template: str,
    kind: str,
    message_sid: str,
    to_number: str,
) -> None:
    body = template.format(business=business.name, number=business.numbers[0])
    texting.queue_text(
        session,
        business,
        lead,
        kind=kind,
        body=body,
        dedupe_key=f"sms:{kind}:{message_sid}",
        from_number=to_number,
    )
