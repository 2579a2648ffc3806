"""The connector port: what the sync engine asks of a CRM or calendar, in vendor-neutral terms.

A connector opts into capabilities by implementing their methods; the manifest lists the same
capabilities and the two must be equal (checked when the connector loads). Connectors map vendor
errors onto core.errors and never sleep or retry: the outbox owns retries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum


class Capability(StrEnum):
    FIND_CONTACT = "find_contact"
    UPSERT_CONTACT = "upsert_contact"
    UPSERT_DEAL = "upsert_deal"
    CREATE_TASK = "create_task"
    LOG_ACTIVITY = "log_activity"
    MARK_OPTED_OUT = "mark_opted_out"
    FREE_BUSY = "free_busy"
    BOOKING = "booking"  # create, move and cancel
    EVENTS = "events"  # receives every lead event with the whole lead record (webhooks)
    # Optional batch forms, for jobs that queue up together: one request for many leads.
    FIND_CONTACTS = "find_contacts"  # many callers looked up in one request
    BATCH_CREATE = "batch_create"  # deals, tasks and activities of many leads, one request per kind


# The method(s) whose presence means a capability is implemented.
CAPABILITY_METHODS: dict[Capability, tuple[str, ...]] = {
    Capability.FIND_CONTACT: ("find_contact",),
    Capability.UPSERT_CONTACT: ("upsert_contact",),
    Capability.UPSERT_DEAL: ("upsert_deal",),
    Capability.CREATE_TASK: ("create_task",),
    Capability.LOG_ACTIVITY: ("log_activity",),
    Capability.MARK_OPTED_OUT: ("mark_opted_out",),
    Capability.FREE_BUSY: ("free_busy",),
    Capability.BOOKING: ("create_booking", "move_booking", "cancel_booking"),
    Capability.EVENTS: ("on_event",),
    Capability.FIND_CONTACTS: ("find_contacts",),
    Capability.BATCH_CREATE: ("create_records",),
}


@dataclass(frozen=True)
class Remote:
    """A record in the vendor's system."""

    id: str
    url: str | None = None
    kind: str = ""
    created: bool | None = None  # True/False when the vendor says whether the upsert created it
    name: str | None = None  # the person's name as the vendor has it (find_contact)


@dataclass(frozen=True)
class ContactData:
    phone: str  # E.164
    first_name: str | None = None
    last_name: str | None = None
    email: str | None = None
    lead_source: str = "Missed call"
    opted_out: bool = False


@dataclass(frozen=True)
class DealData:
    name: str
    stage: str  # the vendor's stage id, from the business's sync settings
    pipeline: str | None = None
    owner: str | None = None
    amount: float | None = None


@dataclass(frozen=True)
class TaskData:
    subject: str
    body: str
    due_at: datetime
    owner: str | None = None
    priority: str = "HIGH"


@dataclass(frozen=True)
class ActivityData:
    kind: str  # "call", "sms" or "note"
    at: datetime
    body: str
    direction: str = "inbound"  # calls and texts
    status: str | None = None  # calls: missed, answered, ...
    duration_seconds: int | None = None
    from_number: str | None = None
    to_number: str | None = None
    recording_url: str | None = None
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class NewRecord:
    """One record to create in a batch (``create_records``): what ``upsert_deal`` (with no existing
    deal), ``create_task`` or ``log_activity`` (with no existing activity) would create alone."""

    kind: str  # "deal", "task", or an activity kind ("call", "sms", "note")
    marker: str
    data: DealData | TaskData | ActivityData
    contact: Remote | None
    deal: Remote | None = None


@dataclass(frozen=True)
class Slot:
    start: datetime
    end: datetime


@dataclass(frozen=True)
class BookingData:
    key: str  # deterministic per lead and slot: a retry must find, not duplicate
    slot: Slot
    summary: str
    description: str
    time_zone: str
    attendee_email: str | None = None


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    summary: str
    details: list[str] = field(default_factory=list)
