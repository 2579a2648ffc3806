"""The recovery report: what happened to the business's missed calls, per business and per day.

Pure reads over the store (no writes, no vendor calls). Definitions, also in docs/reports.md:

- **missed calls**: inbound calls nobody answered, by the business-local day the call started.
  Calls decided ``answered``, ``not_inbound``, ``short_ring`` (the caller hung up within
  ``min_ring_seconds``), ``own_number`` and ``staff_phone`` are not missed callers.
- **texted**: missed calls whose first text Twilio accepted.
- **replied**, **qualified**, **booked**: texted calls after which the caller texted back (an
  opt-out does not count), was qualified (the conversation found a clear intent: booking, quote,
  urgent, question, existing customer), or booked a visit. An event counts for the caller's
  latest texted call before it, so a caller who called twice and replied once counts once.
- **recovered**: texted calls that replied or booked. **recovered %** = recovered / missed calls.
- **median seconds to text**: from the call's decision (the moment it was known missed) to Twilio
  accepting the first text, over texted calls. Texts held for the sending window count as held.
- **median seconds to a person**: from the call's decision to the first message a person sent
  the caller (``Lead.first_human_response_at``), over texted calls that got one.
"""

from __future__ import annotations

import statistics
from bisect import bisect_right
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from core import keywords
from core.config import Config
from core.models import Call, Lead, Message, TimelineEntry

#: Decision reasons that do not describe a missed caller (shared with the console's dashboard).
NOT_MISSED = ("answered", "not_inbound", "short_ring", "own_number", "staff_phone")
#: Intents for which the conversation qualifies the lead (core.conversation ``_Step.qualified``).
QUALIFYING = ("booking", "quote", "urgent", "question", "existing_customer")
#: How far a first text's creation may lie from its call's decision (they share one transaction).
_MATCH = timedelta(seconds=2)


@dataclass
class Funnel:
    missed_calls: int = 0
    texted: int = 0
    replied: int = 0
    qualified: int = 0
    booked: int = 0
    recovered: int = 0
    to_text: list[float] = field(default_factory=list)
    to_person: list[float] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)

    def add(self, other: Funnel) -> None:
        for name in ("missed_calls", "texted", "replied", "qualified", "booked", "recovered"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.to_text.extend(other.to_text)
        self.to_person.extend(other.to_person)
        self.skipped.update(other.skipped)

    @property
    def recovered_pct(self) -> float | None:
        return round(100.0 * self.recovered / self.missed_calls, 1) if self.missed_calls else None

    def to_json(self) -> dict[str, Any]:
        return {
            "missed_calls": self.missed_calls,
            "texted": self.texted,
            "replied": self.replied,
            "qualified": self.qualified,
            "booked": self.booked,
            "recovered": self.recovered,
            "recovered_pct": self.recovered_pct,
            "median_seconds_to_text": _median(self.to_text),
            "median_seconds_to_person": _median(self.to_person),
            "skipped": dict(sorted(self.skipped.items())),
        }


@dataclass
class BusinessReport:
    business: str
    timezone: str
    total: Funnel
    days: dict[date, Funnel]


@dataclass
class Report:
    since: datetime
    until: datetime
    businesses: list[BusinessReport]

    @property
    def total(self) -> Funnel:
        out = Funnel()
        for b in self.businesses:
            out.add(b.total)
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "since": _iso(self.since),
            "until": _iso(self.until),
            "businesses": [
                {
                    "business": b.business,
                    "timezone": b.timezone,
                    "total": b.total.to_json(),
                    "days": [{"date": d.isoformat(), **f.to_json()} for d, f in sorted(b.days.items())],
                }
                for b in self.businesses
            ],
            "total": self.total.to_json(),
        }


@dataclass(frozen=True)
class _Texted:
    call: Call
    day: date
    decided_at: datetime
    sent_at: datetime


def build(
    session: Session, config: Config, since: datetime, until: datetime, business: str | None = None
) -> Report:
    """The report for calls that started in ``[since, until)``, for one business or all of them."""
    calls = list(
        session.scalars(
            select(Call)
            .where(Call.started_at >= since, Call.started_at < until, Call.decision_outcome.is_not(None))
            .order_by(Call.started_at, Call.call_sid)
        )
    )
    ids = [business] if business else _business_ids(config, calls)
    reports = []
    for business_id in ids:
        configured = config.business(business_id)
        tz_name = configured.tz_name if configured else "UTC"
        mine = [c for c in calls if c.business_id == business_id]
        days = _business_days(session, mine, ZoneInfo(tz_name))
        total = Funnel()
        for funnel in days.values():
            total.add(funnel)
        reports.append(BusinessReport(business_id, tz_name, total, days))
    return Report(since, until, reports)


def _business_ids(config: Config, calls: list[Call]) -> list[str]:
    known = [b.id for b in config.businesses]
    return known + sorted({c.business_id for c in calls} - set(known))


def _business_days(session: Session, calls: list[Call], tz: ZoneInfo) -> dict[date, Funnel]:
    days: dict[date, Funnel] = defaultdict(Funnel)
    missed = [c for c in calls if c.decision_reason not in NOT_MISSED]
    for call in missed:
        funnel = days[call.started_at.astimezone(tz).date()]
        funnel.missed_calls += 1
        if call.decision_outcome != "text":
            funnel.skipped[call.decision_reason or "unknown"] += 1
    lead_ids = sorted({c.lead_id for c in missed if c.lead_id})
    if not lead_ids:
        return dict(days)
    texts = _first_texts(session, lead_ids)
    events = _events(session, lead_ids)
    people = {
        lead_id: at
        for lead_id, at in session.execute(
            select(Lead.id, Lead.first_human_response_at).where(Lead.id.in_(lead_ids))
        )
    }
    per_lead: dict[str, list[_Texted]] = defaultdict(list)
    for call in missed:
        if call.decision_outcome != "text" or not call.lead_id or call.decided_at is None:
            continue
        sent_at = _match_text(texts.get(call.lead_id, []), call.decided_at)
        if sent_at is None:
            continue
        texted = _Texted(call, call.started_at.astimezone(tz).date(), call.decided_at, sent_at)
        per_lead[call.lead_id].append(texted)
        funnel = days[texted.day]
        funnel.texted += 1
        funnel.to_text.append(max((sent_at - call.decided_at).total_seconds(), 0.0))
    for lead_id, texted_calls in per_lead.items():
        texted_calls.sort(key=lambda t: t.decided_at)
        starts = [t.decided_at for t in texted_calls]
        hits: dict[int, set[str]] = defaultdict(set)
        for kind, at in events.get(lead_id, []):
            index = bisect_right(starts, at) - 1
            if index >= 0:
                hits[index].add(kind)
        person = people.get(lead_id)
        if person is not None:
            index = bisect_right(starts, person) - 1
            if index >= 0:
                seconds = (person - texted_calls[index].decided_at).total_seconds()
                days[texted_calls[index].day].to_person.append(max(seconds, 0.0))
        for index, kinds in hits.items():
            funnel = days[texted_calls[index].day]
            funnel.replied += "replied" in kinds
            funnel.qualified += "qualified" in kinds
            funnel.booked += "booked" in kinds
            funnel.recovered += bool(kinds & {"replied", "booked"})
    return dict(days)


def _first_texts(session: Session, lead_ids: list[str]) -> dict[str, list[tuple[datetime, datetime | None]]]:
    """Per lead, (created_at, sent_at) of every first text."""
    out: dict[str, list[tuple[datetime, datetime | None]]] = defaultdict(list)
    rows = session.execute(
        select(Message.lead_id, Message.created_at, Message.sent_at).where(
            Message.lead_id.in_(lead_ids), Message.kind == "first_text", Message.direction == "outbound"
        )
    )
    for lead_id, created_at, sent_at in rows:
        out[lead_id].append((created_at, sent_at))
    return out


def _match_text(texts: list[tuple[datetime, datetime | None]], decided_at: datetime) -> datetime | None:
    """When the first text queued with this decision was accepted by Twilio (None: not sent)."""
    near = [
        (abs(created - decided_at), sent) for created, sent in texts if abs(created - decided_at) <= _MATCH
    ]
    if not near:
        return None
    return min(near, key=lambda pair: pair[0])[1]


def _events(session: Session, lead_ids: list[str]) -> dict[str, list[tuple[str, datetime]]]:
    """Per lead, the replied / qualified / booked moments, oldest first."""
    out: dict[str, list[tuple[str, datetime]]] = defaultdict(list)
    replies = session.execute(
        select(Message.lead_id, Message.created_at, Message.body).where(
            Message.lead_id.in_(lead_ids), Message.direction == "inbound"
        )
    )
    for lead_id, at, body in replies:
        if not keywords.is_opt_out(body):
            out[lead_id].append(("replied", at))
    entries = session.execute(
        select(TimelineEntry.lead_id, TimelineEntry.at, TimelineEntry.type, TimelineEntry.data).where(
            TimelineEntry.lead_id.in_(lead_ids), TimelineEntry.type.in_(("classified", "booking"))
        )
    )
    for lead_id, at, type_, data in entries:
        if type_ == "booking":
            out[lead_id].extend([("booked", at), ("qualified", at)])
        elif (data or {}).get("intent") in QUALIFYING:
            out[lead_id].append(("qualified", at))
    for items in out.values():
        items.sort(key=lambda e: e[1])
    return out


def _median(values: list[float]) -> float | None:
    return round(float(statistics.median(values)), 3) if values else None


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


# -- presentation helpers shared by the CLI --------------------------------------------------------

CSV_COLUMNS = (
    "business",
    "date",
    "missed_calls",
    "texted",
    "replied",
    "qualified",
    "booked",
    "recovered",
    "recovered_pct",
    "median_seconds_to_text",
    "median_seconds_to_person",
)


def rows(report: Report) -> list[dict[str, Any]]:
    """One row per business and day, then the business's total (date ``total``), then ``all``."""
    out: list[dict[str, Any]] = []
    for b in report.businesses:
        for day, funnel in sorted(b.days.items()):
            out.append(_row(b.business, day.isoformat(), funnel))
        out.append(_row(b.business, "total", b.total))
    if len(report.businesses) > 1:
        out.append(_row("all", "total", report.total))
    return out


def _row(business: str, day: str, funnel: Funnel) -> dict[str, Any]:
    data = funnel.to_json()
    return {"business": business, "date": day, **{k: data[k] for k in CSV_COLUMNS[2:]}}
