"""What every connector is: a small class, declared by a manifest, opting into capabilities.

A connector implements the methods of the capabilities it declares (see core.crm):

===================  ============================================================================
capability           methods
===================  ============================================================================
find_contact         ``find_contact(phone) -> Remote | None``
upsert_contact       ``upsert_contact(contact: ContactData, existing: Remote | None) -> Remote``
upsert_deal          ``upsert_deal(marker, deal: DealData, contact, existing) -> Remote``
create_task          ``create_task(marker, task: TaskData, contact, deal) -> Remote``
log_activity         ``log_activity(marker, activity: ActivityData, contact, deal, existing) -> Remote``
mark_opted_out       ``mark_opted_out(contact: Remote) -> None``
free_busy            ``free_busy(start, end) -> list[Slot]``  (busy intervals)
booking              ``create_booking(booking, contact)``, ``move_booking(remote, booking)``,
                     ``cancel_booking(remote)``
events               ``on_event(event, lead_json, delivery_id) -> None``
===================  ============================================================================

Every connector also implements ``check() -> CheckResult`` (a live, harmless call) and, when it
creates records that have no natural key, ``find_record(kind, marker) -> Remote | None`` so an
interrupted create is found instead of repeated. ``marker`` is a short stable string the sync
engine derives from the lead and the record's key; write it into the record.

Optional: ``upsert_contacts([(ContactData, Remote | None), ...]) -> list[Remote]`` pushes many
contacts in one batch call; the worker uses it when several leads' jobs are claimed together
(after an outage, or at busy times), and each job then finds its contact already pushed. Two
optional capabilities do the same for lookups and creates (declare them like the others):

===================  ============================================================================
find_contacts        ``find_contacts(phones) -> dict[phone, Remote]`` (the found ones; one request)
batch_create         ``create_records([NewRecord, ...]) -> list[Remote | JobError]`` (in order; an
                     error for an input the vendor refused; raise for the whole request, a
                     TransientError meaning some may exist: each carries its marker, as above)
===================  ============================================================================

Errors: raise only core.errors types (AuthError, RateLimited, TransientError, Rejected,
ConnectorConfigError). Never sleep, never retry: the outbox does that.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from core.connector_state import TokenStore
from core.crm import CAPABILITY_METHODS, Capability, CheckResult


@dataclass
class ConnectorContext:
    """What the runtime hands a connector besides its config."""

    business_id: str
    connector_id: str
    tokens: TokenStore | None = None
    # throttle(cost, *scopes): take ``cost`` from the manifest's rate limits before a request. A limit
    # the connector lists in ``scoped_limits`` binds only the calls that name it (see Connector).
    throttle: Callable[..., None] = field(default=lambda cost, *scopes: None)
    timeout: float = 10.0


class Connector:
    """Base class. Subclasses set ``id`` (equal to the manifest id) and implement capabilities."""

    id: ClassVar[str] = ""
    #: Manifest rate limits (by name) that bind only calls naming them, e.g. HubSpot's search budget:
    #: ``self.context.throttle(1, "search")``. Every other manifest limit binds every call.
    scoped_limits: ClassVar[frozenset[str]] = frozenset()
    #: The sync engine may write a lead's first text into its missed-call activity (when the text
    #: went out before the call was pushed) instead of logging it as an activity of its own.
    folds_first_text: ClassVar[bool] = False

    def __init__(self, config: Mapping[str, Any], context: ConnectorContext) -> None:
        self.config = dict(config)
        self.context = context
        self.api_calls = 0

    @classmethod
    def implemented(cls) -> set[Capability]:
        return {
            cap
            for cap, methods in CAPABILITY_METHODS.items()
            if all(callable(getattr(cls, m, None)) for m in methods)
        }

    @property
    def capabilities(self) -> set[Capability]:
        return self.implemented()

    def check(self) -> CheckResult:
        raise NotImplementedError

    def __repr__(self) -> str:
        # Config holds secrets; never print it.
        return f"<{type(self).__name__} {self.context.business_id}/{self.context.connector_id}>"
