"""The true-miss policy: should this call get a text? Pure: no I/O, no clock of its own.

Every call gets a :class:`Decision` with a reason code, texted or not. Reason codes are stable
strings that admins see in the timeline, the metrics and the reports:

texted:  ``missed_no_answer``, ``missed_busy``, ``missed_failed``, ``missed_canceled``,
         ``missed_voicemail``, ``missed_hangup``, ``missed_forwarded``
skipped: ``answered``, ``not_inbound``, ``short_ring``, ``anonymous_caller``,
         ``invalid_caller_id``, ``own_number``, ``staff_phone``, ``blocklisted``, ``opted_out``,
         ``undeliverable``, ``landline``, ``cooldown``
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from core.config import Business
from core.phones import is_anonymous

TEXT = "text"
SKIP = "skip"

MISSED_DIAL_STATUSES = {
    "no-answer": "missed_no_answer",
    "busy": "missed_busy",
    "failed": "missed_failed",
    "canceled": "missed_canceled",
}

SKIP_REASONS = (
    "answered",
    "not_inbound",
    "short_ring",
    "anonymous_caller",
    "invalid_caller_id",
    "own_number",
    "staff_phone",
    "blocklisted",
    "opted_out",
    "undeliverable",
    "landline",
    "cooldown",
)


@dataclass(frozen=True)
class Decision:
    outcome: str
    reason: str

    @property
    def texts(self) -> bool:
        return self.outcome == TEXT


@dataclass(frozen=True)
class CallFacts:
    direction: str | None
    caller_raw: str | None
    caller: str | None  # E.164, None when the caller ID is not a phone number
    answered: bool
    miss_reason: str  # one of the missed_* codes, used when the call is texted
    hung_up_ringing: bool
    ring_seconds: float | None
    suppressions: frozenset[str]
    line_type: str | None
    last_text_at: datetime | None
    now: datetime


def classify_dial(dial_status: str | None, bridged: bool, screen_accepted: bool) -> tuple[bool, str]:
    """(answered, miss reason) from a ``<Dial>`` result.

    ``completed`` only counts as answered when the call bridged after a person pressed 1: a
    carrier voicemail that picks up completes the dial too, but never passes the screen.
    """
    status = (dial_status or "").lower()
    if status in MISSED_DIAL_STATUSES:
        return False, MISSED_DIAL_STATUSES[status]
    if status in ("completed", "answered"):
        if bridged and screen_accepted:
            return True, "answered"
        return False, "missed_voicemail"
    return False, "missed_no_answer"


def decide(facts: CallFacts, business: Business) -> Decision:
    policy = business.policy
    if (facts.direction or "inbound").lower() != "inbound":
        return Decision(SKIP, "not_inbound")
    if facts.answered:
        return Decision(SKIP, "answered")
    if is_anonymous(facts.caller_raw):
        return Decision(SKIP, "anonymous_caller")
    if facts.caller is None:
        return Decision(SKIP, "invalid_caller_id")
    if facts.caller in business.numbers:
        return Decision(SKIP, "own_number")
    if facts.caller in business.staff_phones:
        return Decision(SKIP, "staff_phone")
    if facts.caller in policy.blocklist:
        return Decision(SKIP, "blocklisted")
    if facts.hung_up_ringing and (facts.ring_seconds or 0) < policy.min_ring_seconds:
        return Decision(SKIP, "short_ring")
    if "opted_out" in facts.suppressions:
        return Decision(SKIP, "opted_out")
    if "undeliverable" in facts.suppressions:
        return Decision(SKIP, "undeliverable")
    if facts.line_type == "landline":
        return Decision(SKIP, "landline")
    if facts.last_text_at and facts.now - facts.last_text_at < timedelta(hours=policy.cooldown_hours):
        return Decision(SKIP, "cooldown")
    return Decision(TEXT, facts.miss_reason)
