"""Getting a person onto a lead: staff notifications by SMS, email and chat webhook.

A notification says who called, what they said, the intent, the CRM link and a tap-to-call
link, and carries the lead's short code so a staff member can answer by replying to it (see
core.relay). If nobody responds within the SLA, a backup is notified once.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from core import leads, outbox, sync, texting
from core.config import Business, Config
from core.db import transaction
from core.models import Lead, Notification, SyncLedger, utcnow
from core.outbox import Job
from core.phones import national

REASONS = {
    "urgent": "URGENT",
    "repeat_caller": "Repeat caller",
    "reply_in_hours": "New reply",
    "handoff": "Needs a person",
    "existing_customer": "Existing customer",
    "no_slot": "Wants a time we could not offer",
    "sla_missed": "No response yet",
    "human_conversation": "Message in your conversation",
    "booked": "New booking",
}
# Reasons that only inform staff: nobody needs to take the conversation over.
INFORMATIONAL = ("human_conversation", "booked")


def short_code(session: Session, lead: Lead) -> str:
    """A short per-business code staff can put in front of a reply: '#K4Q'."""
    if lead.short_code:
        return lead.short_code
    alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
    digest = hashlib.sha256(lead.id.encode()).digest()
    for length in (3, 4, 5, 6):
        for offset in range(0, len(digest) - length):
            code = "".join(alphabet[b % len(alphabet)] for b in digest[offset : offset + length])
            taken = session.scalars(
                select(Lead.id).where(Lead.business_id == lead.business_id, Lead.short_code == code)
            ).first()
            if taken is None:
                lead.short_code = code
                return code
    lead.short_code = lead.id[:6].upper()
    return lead.short_code


def crm_link(session: Session, lead_id: str) -> str | None:
    row = session.scalars(
        select(SyncLedger).where(
            SyncLedger.lead_id == lead_id, SyncLedger.key == "contact", SyncLedger.remote_url.is_not(None)
        )
    ).first()
    return row.remote_url if row else None


def compose(
    session: Session, business: Business, lead: Lead, reason: str, said: str | None, intent: str | None
) -> str:
    who = lead.name or national(lead.phone)
    parts = [f"textback {REASONS.get(reason, reason)} for {business.name}: {who} ({lead.phone})"]
    if said and reason == "booked":
        parts.append(said + ".")
    elif said:
        snippet = " ".join(said.split())
        parts.append(f'said "{snippet[:120]}{"..." if len(snippet) > 120 else ""}"')
    if intent:
        parts.append(f"Intent: {intent}.")
    link = crm_link(session, lead.id)
    if link:
        parts.append(f"CRM: {link}")
    parts.append(f"Call: tel:{lead.phone}")
    parts.append(f"Reply here to text them (#{short_code(session, lead)}).")
    return " ".join(parts)


def escalate(
    session: Session,
    business: Business,
    lead: Lead,
    reason: str,
    *,
    ref: str,
    said: str | None = None,
    intent: str | None = None,
    backup: bool = False,
    now: datetime | None = None,
) -> int:
    """Notify staff about ``lead`` (idempotent per ``ref``). Returns how many notifications were queued."""
    now = now or utcnow()
    esc = business.escalation
    text = compose(session, business, lead, reason, said, intent)

    def record(note: Notification) -> None:
        note.business_id, note.lead_id, note.reason, note.backup, note.created_at = (
            business.id,
            lead.id,
            reason,
            backup,
            now,
        )
        session.add(note)

    sms_targets = esc.backup_sms if backup else esc.sms
    email_targets = esc.backup_email if backup else esc.email
    queued = 0
    for target in sms_targets:
        message = texting.queue_text(
            session,
            business,
            lead,
            kind="staff_alert",
            body=text,
            dedupe_key=f"notify:sms:{ref}:{target}",
            now=now,
            to_number=target,
        )
        if message is not None:
            record(Notification(channel="sms", target=target))
            queued += 1
    for target in email_targets:
        if outbox.enqueue(
            session,
            kind="notify.email",
            target="email",
            dedupe_key=f"notify:email:{ref}:{target}",
            business_id=business.id,
            lead_id=lead.id,
            payload={
                "to": target,
                "subject": f"{REASONS.get(reason, reason)}: {lead.name or national(lead.phone)}",
                "body": text,
            },
        ):
            record(Notification(channel="email", target=target))
            queued += 1
    if esc.webhook_url and not backup:
        if outbox.enqueue(
            session,
            kind="notify.webhook",
            target="chat",
            dedupe_key=f"notify:webhook:{ref}",
            business_id=business.id,
            lead_id=lead.id,
            payload={"url": esc.webhook_url, "text": text, "reason": reason, "lead_id": lead.id},
        ):
            record(Notification(channel="webhook", target="chat"))
            queued += 1
    if queued:
        leads.add_entry(session, lead.id, "escalation", at=now, reason=reason, backup=backup, notified=queued)
        if not backup and reason not in INFORMATIONAL:
            sync.emit(session, business.id, lead.id, "handed_off", ref, {"reason": reason})
            if lead.first_human_response_at is None:
                outbox.enqueue(
                    session,
                    kind="escalation.sla",
                    target="escalation",
                    dedupe_key=f"sla:{ref}",
                    business_id=business.id,
                    lead_id=lead.id,
                    payload={"since": now.isoformat(), "ref": ref},
                    run_at=now + timedelta(minutes=esc.sla_minutes),
                )
    return queued


class SlaJob:
    """``escalation.sla``: nobody answered in time, so the backup hears about it once."""

    def __init__(self, config: Config, factory: sessionmaker[Session]) -> None:
        self.config = config
        self.factory = factory

    def __call__(self, job: Job) -> dict[str, Any]:
        with transaction(self.factory) as session:
            lead = session.get(Lead, job.lead_id) if job.lead_id else None
            business = self.config.business(job.business_id or "")
            if lead is None or business is None:
                return {"skipped": "lead or business gone"}
            if lead.first_human_response_at is not None:
                return {"answered": lead.first_human_response_at.isoformat()}
            if "opted_out" in leads.suppressions(session, business.id, lead.phone):
                return {"skipped": "opted out"}
            sent = escalate(
                session,
                business,
                lead,
                "sla_missed",
                ref=f"sla:{job.payload.get('ref')}",
                intent=lead.intent,
                backup=True,
            )
            return {"backup_notified": sent}
