"""Inbound texts: threaded onto the caller's lead, with carrier keywords honoured."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import delete
from sqlalchemy.orm import Session

from core import keywords, leads, sync, texting
from core.config import Business
from core.models import Message, Suppression, utcnow

OPT_OUT_CONFIRM = (
    "{business}: you're unsubscribed and won't get more texts from us. Reply START to resubscribe."
)
OPT_IN_CONFIRM = "{business}: you're resubscribed. Reply STOP to opt out."
HELP_REPLY = "{business}: reply to this number to reach us, or call {number}. Reply STOP to opt out."


@dataclass(frozen=True)
class InboundResult:
    lead_id: str
    keyword: str | None
    replied: bool


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
    kind = keywords.keyword(body)
    if opt_out_type:
        kind = {"STOP": "opt_out", "START": "opt_in", "HELP": "help"}.get(opt_out_type.upper(), kind)
    # With Twilio Advanced Opt-Out on, Twilio already answered the keyword: record, never confirm twice.
    confirm = not opt_out_type
    replied = False
    if kind == "opt_out":
        already = "opted_out" in leads.suppressions(session, business.id, caller)
        texting.suppress(
            session, business.id, caller, "opted_out", "sms:keyword" if confirm else "twilio:advanced-opt-out"
        )
        leads.add_entry(session, lead.id, "opt_out", source="twilio" if opt_out_type else "keyword")
        leads.set_status(lead, "opted_out")
        sync.emit(session, business.id, lead.id, "opted_out", message_sid)
        if confirm and not already:
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
    else:
        leads.set_status(lead, "replied", only_from=("new", "scheduled", "texted"))
    sync.emit(session, business.id, lead.id, "replied", message_sid, {"message_id": inbound_id})
    return InboundResult(lead.id, kind, replied)


def _reply(
    session: Session,
    business: Business,
    lead: object,
    template: str,
    kind: str,
    message_sid: str,
    to_number: str,
) -> None:
    body = template.format(business=business.name, number=business.numbers[0])
    texting.queue_text(
        session,
        business,
        lead,  # type: ignore[arg-type]
        kind=kind,
        body=body,
        dedupe_key=f"sms:{kind}:{message_sid}",
        from_number=to_number,
    )
