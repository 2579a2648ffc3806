"""Human takeover: a staff member's words relayed to the caller from the business number.

A staff member answers a notification by SMS (or texts the business number starting with the
lead's short code, '#K4Q ...'); the console's reply box uses :func:`send_human` too. From then on
the conversation is human-only: no more automated messages go to it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from core import leads, texting
from core.config import Business
from core.models import Lead, Message, Notification, utcnow
from core.phones import mask

_CODE = re.compile(r"^\s*#([A-Za-z0-9]{3,6})\b[\s:,-]*(.*)$", re.S)


@dataclass(frozen=True)
class RelayResult:
    lead_id: str | None
    sent: bool
    problem: str | None = None


def staff_numbers(business: Business) -> set[str]:
    esc = business.escalation
    return set(business.staff_phones) | set(esc.sms) | set(esc.backup_sms)


def send_human(
    session: Session, business: Business, lead: Lead, body: str, author: str, ref: str
) -> Message | None:
    """Send a person's words to the caller now, and hand the conversation to people for good."""
    if "opted_out" in leads.suppressions(session, business.id, lead.phone):
        return None
    now = utcnow()
    message = texting.queue_text(
        session, business, lead, kind="human", body=body, dedupe_key=f"sms:human:{ref}", now=now
    )
    lead.human_takeover = True
    lead.convo_state = "human"
    if lead.first_human_response_at is None:
        lead.first_human_response_at = now
    leads.set_status(lead, "handed_off", only_from=("new", "scheduled", "texted", "replied", "qualified"))
    leads.add_entry(session, lead.id, "takeover", at=now, author=author)
    return message


def from_staff(
    session: Session, business: Business, staff_phone: str, body: str, message_sid: str
) -> RelayResult:
    match = _CODE.match(body or "")
    lead: Lead | None = None
    text = (body or "").strip()
    if match:
        lead = session.scalars(
            select(Lead).where(Lead.business_id == business.id, Lead.short_code == match.group(1).upper())
        ).first()
        text = match.group(2).strip()
    if lead is None and not match:
        last = session.scalars(
            select(Notification)
            .where(
                Notification.business_id == business.id,
                Notification.channel == "sms",
                Notification.target == staff_phone,
            )
            .order_by(Notification.id.desc())
        ).first()
        lead = session.get(Lead, last.lead_id) if last else None
    if lead is None or not text:
        problem = (
            "no conversation matches; start the text with the #code from the alert"
            if lead is None
            else "empty message"
        )
        _tell_staff(session, business, staff_phone, f"textback: not sent ({problem}).", message_sid)
        return RelayResult(None, False, problem)
    sent = send_human(session, business, lead, text, author=f"sms:{mask(staff_phone)}", ref=message_sid)
    if sent is None:
        _tell_staff(
            session,
            business,
            staff_phone,
            f"textback: not sent; {lead.name or 'the caller'} has opted out of texts.",
            message_sid,
        )
        return RelayResult(lead.id, False, "opted out")
    return RelayResult(lead.id, True)


def _tell_staff(session: Session, business: Business, staff_phone: str, text: str, ref: str) -> None:
    # The staff member has no lead of their own; the note rides on a throwaway-free path: a lead
    # row would be wrong, so a plain message to the staff phone is queued through a staff lead.
    staff_lead, _ = leads.get_or_create(session, business.id, staff_phone, source="staff")
    texting.queue_text(
        session, business, staff_lead, kind="staff_alert", body=text, dedupe_key=f"sms:staffnote:{ref}"
    )
