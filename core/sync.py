"""The sync engine: lead events become outbox jobs, and each job pushes one event to one CRM.

A lead event (missed call, texted, replied, qualified, booked, opted out, handed off, voicemail)
becomes one ``crm.sync`` job per connector installed for the business, written in the same
transaction as the event. The sync ledger maps the lead to each remote record, so every push is
an upsert or an update. A create that may have happened (the worker died between the vendor's
answer and our commit) is looked up by its key before it is tried again.

Jobs claimed together share requests (``SyncJob.prepare``): one contact upsert for all their leads,
then one batch create per record type (core.sync_batch), with the same intents and keys.

A push that writes a lead's first text into its call activity (a connector that ``folds_first_text``)
also finishes that text's own "texted" push, unclaimed, in the transaction that records the fold in
the ledger (``_record_folds``): it would only find the text logged. That push is always still
pending then: it was queued with the sent text, after the call's push, and a lead's pushes to a
connector run one at a time, oldest first (core.outbox).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import Connection, Row, Table, and_, bindparam, delete, select
from sqlalchemy.orm import Session, sessionmaker

from core import connector_state, outbox, sync_batch
from core.config import Business, Config
from core.crm import ActivityData, Capability, ContactData, DealData, NewRecord, Remote, TaskData
from core.db import reading, transaction
from core.errors import AuthError, JobError, RateLimited, TransientError
from core.leads import documents
from core.models import ConnectorInstall, ConnectorState, SyncLedger, utcnow
from core.outbox import Deferred, Job
from core.phones import national
from core.worker import crash_point

log = logging.getLogger("textback.sync")

EVENTS = ("missed_call", "texted", "replied", "qualified", "booked", "opted_out", "handed_off", "voicemail")

# A push outlives a CRM outage of about an hour at the default backoff (2 s doubling, at most 600 s
# apart: 16 attempts span ~77 min); the outbox's default of 8 gives up after ~4 min.
MAX_ATTEMPTS = 16

# A missed call's push waits for the outcome of the lead's first text (sent, failed or skipped) so
# that a connector which folds the text into the call activity (``folds_first_text``) spends one
# request on both instead of a note of its own. The wait is decided when the call is stored: when
# its first text is queued to go now, the push is queued FOLD_WAIT_S later, held for FOLD_REASON
# (``emit``). The text's outcome makes it due at once (``release``: the "texted" event, a rejected
# or skipped text); a text that never completes holds the call back no longer than FOLD_WAIT_S
# (its note follows when it does go out).
FOLD_WAIT_S = 2.0
FOLD_REASON = "waiting for the first text to go out"
# A connector that does not fold the text still waits, as long, for the text's caller lookup when
# there is one: a push that reached the CRM first would make or touch the very contact the lookup
# then finds, and a caller the CRM knew could not be told from one this push just made. The lookup
# makes it due (``lookup_done``), found or not, before the text goes out.
LOOKUP_REASON = "waiting for the first text's caller lookup"

# connector id -> whether its class folds the first text into the call activity. Only code that
# loads connectors knows (the bridge and the workers set it, see know_folding); until then every
# connector whose settings log the call with its texts waits, as one that folds must.
_folds_first_text: Callable[[str], bool] | None = None


# connector id -> whether it can look a caller up (its pushes may then wait for the text's lookup)
_finds_contacts: Callable[[str], bool] | None = None


def know_folding(folds: Callable[[str], bool] | None, finds: Callable[[str], bool] | None = None) -> None:
    """Tell ``emit`` which connectors fold the first text (the others' call pushes need not wait
    for it) and which can look a caller up (only those wait for the text's lookup)."""
    global _folds_first_text, _finds_contacts
    _folds_first_text = folds
    _finds_contacts = finds

SYNC_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "deal_on": {"enum": ["missed_call", "first_reply", "qualified", "never"]},
        "pipeline": {"type": ["string", "null"]},
        "stages": {
            "type": "object",
            "additionalProperties": False,
            "properties": {k: {"type": ["string", "null"]} for k in ("new", "qualified", "booked")},
        },
        "create_task": {"type": "boolean"},
        "task_sla_minutes": {"type": "integer", "minimum": 1, "maximum": 10080},
        "owner": {"type": ["string", "null"]},
        "log_calls": {"type": "boolean"},
        "log_messages": {"type": "boolean"},
    },
}


@dataclass(frozen=True)
class SyncSettings:
    # The lean defaults (docs/config.md): a deal when the caller answers the text, no call-back task.
    deal_on: str = "first_reply"
    pipeline: str | None = None
    stages: dict[str, str | None] = field(default_factory=dict)
    create_task: bool = False
    task_sla_minutes: int = 15
    owner: str | None = None
    log_calls: bool = True
    log_messages: bool = True

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> SyncSettings:
        return cls(**(data or {}))


def _table(model: type[Any]) -> Table:
    return cast(Table, model.__table__)


@dataclass(frozen=True)
class _Statements:
    installed: Any
    target: Any
    ledger: Any
    forget_contacts: Any


@functools.cache
def _statements() -> _Statements:
    """The engine's reads, built once (Core: no ORM entity loads, no statement built per job)."""
    installs, state, ledger = _table(ConnectorInstall), _table(ConnectorState), _table(SyncLedger)
    b: Any = bindparam("business_id")
    c: Any = bindparam("connector_id")
    with_pause = installs.outerjoin(
        state,
        and_(state.c.business_id == installs.c.business_id, state.c.connector_id == installs.c.connector_id),
    )
    # A job's connector: its install and its pause in one read, so a deferred job costs only this.
    target = (
        select(installs.c.enabled, installs.c.sync, state.c.paused_until)
        .select_from(with_pause)
        .where(installs.c.business_id == b, installs.c.connector_id == c)
    )
    # Each enabled connector with its pause: a push due while a rate limit pauses its connector
    # waits for the pause's end (``emit``) instead of being claimed and put back.
    installed = (
        select(installs.c.connector_id, installs.c.sync, state.c.paused_until, state.c.pause_reason)
        .select_from(with_pause)
        .where(installs.c.business_id == b, installs.c.enabled.is_(True))
    )
    return _Statements(
        installed=installed,
        target=target,
        ledger=select(ledger.c.remote_id, ledger.c.remote_url, ledger.c.intent_at).where(
            ledger.c.lead_id == bindparam("lead_id"),
            ledger.c.connector_id == c,
            ledger.c.key == bindparam("key"),
        ),
        forget_contacts=delete(ledger).where(
            ledger.c.lead_id.in_(bindparam("lead_ids", expanding=True)),
            ledger.c.connector_id == c,
            ledger.c.key == "contact",
            ledger.c.remote_id.is_(None),
        ),
    )


def emit(
    session: Session,
    business_id: str,
    lead_id: str,
    event: str,
    ref: str,
    data: dict[str, Any] | None = None,
    *,
    first_text_due: bool = False,
    caller_lookup: bool = False,
) -> int:
    """Queue ``event`` for every enabled connector of the business. ``ref`` makes it idempotent.

    ``first_text_due``: the lead's first text was queued to go now in this transaction. A missed
    call's push then waits for it (see FOLD_WAIT_S) where the call is logged with the texts, and
    otherwise, with ``caller_lookup`` (that text looks its caller up in the CRM first), for the
    lookup (LOOKUP_REASON).
    """
    assert event in EVENTS, event
    conn = session.connection()
    installed = conn.execute(_statements().installed, {"business_id": business_id}).all()
    now = utcnow()
    hold = event == "missed_call" and first_text_due
    queued = 0
    for connector_id, sync, paused_until, pause_reason in installed:
        reason = _hold_reason(connector_id, sync) if hold else None
        if reason == LOOKUP_REASON and not caller_lookup:
            reason = None
        until = now + timedelta(seconds=FOLD_WAIT_S) if reason else None
        resumes = connector_state.rate_limit_end(paused_until, pause_reason, now)
        if resumes is not None and (until is None or resumes > until):
            # A worker would only claim it and put it back: under load, once per new lead per
            # rate-limit window. The text has gone out by the pause's end; the push then logs it.
            until, reason = resumes, paused_reason(connector_id)
        queued += outbox.enqueue(
            session,
            kind="crm.sync",
            target=connector_id,
            dedupe_key=_dedupe_key(connector_id, lead_id, event, ref),
            ordering_key=_ordering_key(business_id, connector_id, lead_id),
            business_id=business_id,
            lead_id=lead_id,
            payload={"event": event, "ref": ref, "data": data or {}},
            max_attempts=MAX_ATTEMPTS,
            run_at=until,
            reason=reason,
        )
    if event == "texted" and installed:
        # A text went out: a missed call's push held for it goes now, and writes it in. It is ahead
        # of this "texted" push in order.
        _wake_or_postpone(session, business_id, lead_id, installed, now)
    return queued


def release(session: Session, business_id: str, lead_id: str) -> int:
    """The lead's first text failed or was skipped: a missed call's push held for it goes now."""
    conn = session.connection()
    installed = conn.execute(_statements().installed, {"business_id": business_id}).all()
    return _wake_or_postpone(session, business_id, lead_id, installed, utcnow())


def paused_reason(connector_id: str) -> str:
    """Why a job waits for its connector's pause to end (also a deferral's reason, see SyncJob)."""
    return f"{connector_id} is paused"


def _wake_or_postpone(
    session: Session, business_id: str, lead_id: str, installed: Sequence[Row[Any]], now: datetime
) -> int:
    """A lead's pushes held for its first text go now, or at the end of their connector's
    rate-limit pause (``installed``: rows of ``_statements().installed``)."""
    woken = 0
    now_ids = []
    for row in installed:
        connector_id = row.connector_id
        resumes = connector_state.rate_limit_end(row.paused_until, row.pause_reason, now)
        if resumes is None:
            now_ids.append(connector_id)
            continue
        keys = [_ordering_key(business_id, connector_id, lead_id)]
        woken += outbox.postpone(
            session, keys, resumes, paused_reason(connector_id), FOLD_REASON, LOOKUP_REASON
        )
    return woken + _wake(session, business_id, [lead_id], now_ids, FOLD_REASON, LOOKUP_REASON)


def looks_caller_up(business: Business) -> bool:
    """Whether a first text queued to go now looks its caller up in the CRM first (core.sending).

    A text delayed on purpose (``send_delay_seconds``) looks up later than a push should wait.
    """
    return business.policy.crm_lookup_budget_ms > 0 and business.policy.send_delay_seconds <= 0


def lookup_held(conn: Connection, business_id: str) -> list[str]:
    """The business's connectors whose missed-call pushes may wait for a first text's caller lookup
    (LOOKUP_REASON): those that can look a caller up and do not fold the text.

    Read before the text's write transaction, so that a business with none of them (HubSpot alone)
    runs nothing more under SQLite's write lock.
    """
    installed = conn.execute(_statements().installed, {"business_id": business_id}).all()
    return [r.connector_id for r in installed if _hold_reason(r.connector_id, r.sync) == LOOKUP_REASON]


def lookup_done(session: Session, business_id: str, connector_ids: list[str], *lead_ids: str) -> int:
    """The first texts' caller lookups are on record: pushes held for them (LOOKUP_REASON) go now.

    ``connector_ids``: from ``lookup_held``. One UPDATE, none when it is empty.
    """
    return _wake(session, business_id, lead_ids, connector_ids, LOOKUP_REASON)


def _wake(
    session: Session, business_id: str, lead_ids: Iterable[str], connector_ids: list[str], *reasons: str
) -> int:
    keys = [_ordering_key(business_id, c, lead_id) for c in connector_ids for lead_id in lead_ids]
    return outbox.wake(session, keys, *reasons)


def _hold_reason(connector_id: str, sync: dict[str, Any] | None) -> str | None:
    """What a missed call's push to this connector waits for when its first text goes now: the
    text (FOLD_REASON), the text's caller lookup (LOOKUP_REASON), or nothing."""
    if _folds_texts(sync) and _connector_folds(connector_id):
        return FOLD_REASON
    if _asked(_finds_contacts, connector_id):
        return LOOKUP_REASON
    return None


def _folds_texts(sync: dict[str, Any] | None) -> bool:
    """Whether these sync settings log the call with its texts, so its push should wait for them.

    Whether the connector itself folds texts (``folds_first_text``) is asked of know_folding's
    function (``_connector_folds``).
    """
    settings = sync or {}
    return bool(
        settings.get("log_calls", SyncSettings.log_calls)
        and settings.get("log_messages", SyncSettings.log_messages)
    )


def _connector_folds(connector_id: str) -> bool:
    """Whether the connector folds the first text; when that cannot be known, it is taken to."""
    return _asked(_folds_first_text, connector_id)


def _asked(trait: Callable[[str], bool] | None, connector_id: str) -> bool:
    """A connector's trait as know_folding's functions tell it; when that cannot be known, True:
    a push then waits as one that needs to would."""
    if trait is None:
        return True
    try:
        return trait(connector_id)
    except Exception:  # a connector that cannot be loaded here still gets its push, held as before
        return True


def _dedupe_key(connector_id: str, lead_id: str, event: str, ref: str) -> str:
    return f"crm:{connector_id}:{lead_id}:{event}:{ref}"


def _record_folds(session: Session, connector_id: str, folds: list[tuple[str, str, Remote]]) -> int:
    """Finish the pending "texted" pushes of texts written into call activities, unclaimed.

    ``folds``: (lead id, the text's ledger key ``msg:<message id>``, the call), which the caller
    records in the ledger in this same transaction: a crash loses both or neither. Returns how many
    pushes it finished. A push that is running or dead is left alone; one that runs later finds its
    text logged and adds nothing.
    """
    results = {
        _dedupe_key(connector_id, lead_id, "texted", key.removeprefix("msg:")): {"folded_into": call.id}
        for lead_id, key, call in folds
    }
    return outbox.complete_pending(session, results)


def _ordering_key(business_id: str, connector_id: str, lead_id: str) -> str:
    """One lead's pushes to one connector run one at a time, oldest first."""
    return f"crm:{business_id}:{connector_id}:{lead_id}"


Resolver = Callable[[str, str], Any]  # (business_id, connector_id) -> connector instance
# Told the connector id when a CRM answered a push with HTTP 429 (the bridge counts them).
RateLimitHook = Callable[[str], None]


class SyncJob:
    """Handler for ``crm.sync`` jobs."""

    def __init__(
        self,
        config: Config,
        factory: sessionmaker[Session],
        resolve: Resolver,
        on_rate_limited: RateLimitHook | None = None,
    ) -> None:
        self.config = config
        self.factory = factory
        self.resolve = resolve
        self.on_rate_limited = on_rate_limited
        # Contacts already pushed by a batch call for jobs claimed together (see ``prepare``), with
        # the signature of what was pushed.
        self._fresh: dict[tuple[str, str], tuple[Remote, str]] = {}
        # Ledger keys (lead, connector, key) whose records a batch call just created for those jobs.
        self._made: set[tuple[str, str, str]] = set()
        self._fresh_lock = threading.Lock()

    def prepare(self, jobs: list[Job]) -> int:
        """Push the records of jobs claimed together in one batch call per connector and kind.

        A connector that offers ``upsert_contacts`` gets one request for a whole queue of leads'
        contacts instead of one each, and one with ``batch_create`` one request per kind for their
        deals, then their calls, tasks and notes (see core.sync_batch); the jobs then find their
        records already made. Any failure here is left to the jobs themselves, which map and retry
        it one by one.
        """
        groups: dict[tuple[str, str], list[Job]] = {}
        for job in jobs:
            if job.lead_id:
                groups.setdefault((job.business_id or "", job.target), []).append(job)
        pushed = 0
        for (business_id, connector_id), group in groups.items():
            if len({j.lead_id for j in group}) < 2:
                continue
            try:
                pushed += self._prepare_group(business_id, connector_id, group)
            except RateLimited as exc:
                # A 429 binds every call: pause the connector now, or each job would retry at once.
                until = utcnow() + timedelta(seconds=max(float(exc.retry_after or 1.0), 0.5))
                with transaction(self.factory) as session:
                    reason = connector_state.rate_limit_reason(exc)
                    connector_state.pause(session, business_id, connector_id, until, reason)
                    connector_state.record_error(
                        session, business_id, connector_id, str(exc), 1, rate_limited=exc.code is not None
                    )
                if self.on_rate_limited and exc.code is not None:
                    self.on_rate_limited(connector_id)
            except Exception as exc:  # the jobs themselves will report it properly
                log.info(
                    "batch contact push skipped",
                    extra={"connector": connector_id, "error": type(exc).__name__},
                )
        return pushed

    def _prepare_group(self, business_id: str, connector_id: str, group: list[Job]) -> int:
        with reading(self.factory) as session:
            install = _target(session, business_id, connector_id)
            if install is None or not install.enabled or _paused(install):
                return 0
            leads_json = documents(session, [job.lead_id for job in group if job.lead_id])
        connector = self.resolve(business_id, connector_id)
        settings = SyncSettings.from_dict(install.sync)
        runs = [
            _Run(self.factory, connector, connector_id, leads_json[job.lead_id], settings, job)
            for job in group
            if job.lead_id in leads_json
        ]
        by_lead = {run.lead["id"]: run for run in runs}
        _read_ledgers(self.factory, connector_id, runs)
        pushed = self._push_contacts(connector_id, connector, [r for r in by_lead.values() if r.needs_push()])
        if Capability.BATCH_CREATE in set(getattr(connector, "capabilities", set())):
            pushed += self._create_batched(connector_id, connector, runs)
        return pushed

    def _push_contacts(self, connector_id: str, connector: Any, runs: list[_Run]) -> int:
        if len(runs) < 2 or not callable(getattr(connector, "upsert_contacts", None)):
            return 0
        items = [(run.contact_data(), run.known("contact")) for run in runs]
        # As in _Run.contact: an intent first, so a retry never takes the contact this call creates
        # for an existing customer's, even when its job is deferred (a 429 on its next call) or dies.
        fresh = [run for run in runs if run._ledger("contact") is None]
        for run in fresh:
            run._save("contact", None, intent=True)
        try:
            remotes = connector.upsert_contacts(items)
        except (RateLimited, AuthError):
            _forget_intents(self.factory, connector_id, fresh)  # refused: nothing was created
            raise
        crash_point("after_vendor_call")  # test hook: inert unless $TEXTBACK_CRASH_AT is set
        for run, remote in zip(runs, remotes, strict=True):
            if remote.created:
                run._save("contact", remote)
        # A contact the CRM already had: no intent left behind, so the job judges "existing customer".
        _forget_intents(
            self.factory,
            connector_id,
            [r for r, m in zip(runs, remotes, strict=True) if r in fresh and not m.created],
        )
        with self._fresh_lock:
            for run, remote, (data, _) in zip(runs, remotes, items, strict=True):
                # Saved to the ledger by the job itself, which also judges "existing customer".
                self._fresh[(run.lead["id"], connector_id)] = (remote, _signature(data))
        return len(remotes)

    def _create_batched(self, connector_id: str, connector: Any, runs: list[_Run]) -> int:
        """Deals first (the other records link to them), then calls, tasks and notes together."""
        with self._fresh_lock:
            for run in runs:
                run.fresh = self._fresh.get((run.lead["id"], connector_id))
        _read_ledgers(self.factory, connector_id, runs)  # as the contacts' push left it
        plans = [(run, run.plan()) for run in runs if run.creates_anything()]
        deals = [(r, k, n) for r, p in plans for k, n in p if n.kind == "deal"]
        made = self._create(connector_id, connector, deals)
        if deals:
            _read_ledgers(self.factory, connector_id, [run for run, _ in plans])  # with the deals made
        later: list[tuple[_Run, str, NewRecord]] = []
        for run, plan in plans:
            if any(n.kind == "deal" for _, n in plan):
                plan = run.plan()  # again, now that its deal is made (the rest links to it)
            if not any(n.kind == "deal" for _, n in plan):  # a deal not made yet: the job does it all
                later.extend((run, k, n) for k, n in plan)
        return made + self._create(connector_id, connector, later)

    def _create(self, connector_id: str, connector: Any, todo: list[tuple[_Run, str, NewRecord]]) -> int:
        keys = [(run.lead["id"], key) for run, key, _ in todo]
        # Only records never tried before: one with an intent left may exist, and its job looks first.
        fresh = sync_batch.untouched(self.factory, connector_id, keys)
        todo = [t for t, k in zip(todo, keys, strict=True) if k in fresh]
        if len(todo) < 2:
            return 0
        keys = [(run.lead["id"], key) for run, key, _ in todo]
        # Texts folded into a call are marked with it, as a single create does (_Run._log_call).
        keys += [(run.lead["id"], k) for run, key, _ in todo for k in run.folds.get(key, ())]
        sync_batch.mark_intents(self.factory, connector_id, keys)
        try:
            answers = connector.create_records([record for _, _, record in todo])
        except (RateLimited, AuthError):
            sync_batch.forget_intents(self.factory, connector_id, keys)  # refused: nothing was created
            raise
        except TransientError:
            raise  # some may exist: the intents stay, so each job looks before it creates
        except JobError:
            sync_batch.forget_intents(self.factory, connector_id, keys)
            raise
        crash_point("after_vendor_call")  # test hook: inert unless $TEXTBACK_CRASH_AT is set
        done: list[tuple[str, str, Remote]] = []
        folded: list[tuple[str, str, Remote]] = []
        refused: list[tuple[str, str]] = []
        for (run, key, _), answer in zip(todo, answers, strict=True):
            if isinstance(answer, Remote):
                done.append((run.lead["id"], key, answer))
                folded.extend((run.lead["id"], k, answer) for k in run.folds.get(key, ()))
            elif not isinstance(answer, TransientError):
                refused.append((run.lead["id"], key))
                refused.extend((run.lead["id"], k) for k in run.folds.get(key, ()))
        with transaction(self.factory) as session:
            sync_batch.save(session, connector_id, done + folded, intent=False)
            _record_folds(session, connector_id, folded)
        sync_batch.forget_intents(self.factory, connector_id, refused)
        with self._fresh_lock:
            self._made.update((lead_id, connector_id, key) for lead_id, key, _ in done)
        return len(done)

    def take_fresh(self, lead_id: str, connector_id: str) -> tuple[Remote, str] | None:
        with self._fresh_lock:
            return self._fresh.pop((lead_id, connector_id), None)

    def take_made(self, lead_id: str, connector_id: str) -> set[str]:
        with self._fresh_lock:
            keys = {m for m in self._made if m[0] == lead_id and m[1] == connector_id}
            self._made -= keys
        return {key for _, _, key in keys}

    def __call__(self, job: Job) -> dict[str, Any]:
        try:
            return self._push(job)
        except Deferred as exc:
            # A vendor's 429 carries its code; a pause by the shared local rate limiter does not.
            cause = exc.__context__
            if self.on_rate_limited and isinstance(cause, RateLimited) and cause.code is not None:
                self.on_rate_limited(job.target)
            raise

    def _push(self, job: Job) -> dict[str, Any]:
        business_id, connector_id = job.business_id or "", job.target
        with reading(self.factory) as session:
            # The install and the pause first, in one small read: a deferred job reads nothing else.
            install = _target(session, business_id, connector_id)
            if install is None or not install.enabled:
                return {"skipped": "connector not installed"}
            until = _paused(install)
            if until is not None:
                raise Deferred(until, paused_reason(connector_id))
            lead_json = documents(session, [job.lead_id]).get(job.lead_id) if job.lead_id else None
        if lead_json is None:
            return {"skipped": "lead no longer exists"}
        connector = self.resolve(business_id, connector_id)
        calls_before = getattr(connector, "api_calls", 0)
        run = _Run(
            self.factory, connector, connector_id, lead_json, SyncSettings.from_dict(install.sync), job
        )
        run.fresh = self.take_fresh(lead_json["id"], connector_id)
        run.made_now = self.take_made(lead_json["id"], connector_id)
        try:
            result = run.apply(job.payload["event"], job.payload.get("data") or {})
        except RateLimited as exc:
            retry_after = max(float(exc.retry_after or 1.0), 0.5)
            until = utcnow() + timedelta(seconds=retry_after)
            with transaction(self.factory) as session:
                reason = connector_state.rate_limit_reason(exc)
                connector_state.pause(session, business_id, connector_id, until, reason)
                connector_state.record_error(
                    session,
                    business_id,
                    connector_id,
                    str(exc),
                    getattr(connector, "api_calls", 0) - calls_before,
                    rate_limited=True,
                )
            raise Deferred(until, f"{connector_id} rate limited; paused for every worker") from None
        except AuthError as exc:
            # Credentials are an admin's job: pause the connector (no job is dropped) and say so.
            until = utcnow() + timedelta(minutes=15)
            with transaction(self.factory) as session:
                connector_state.pause(session, business_id, connector_id, until, f"auth failed: {exc}")
                connector_state.record_error(
                    session,
                    business_id,
                    connector_id,
                    str(exc),
                    getattr(connector, "api_calls", 0) - calls_before,
                )
                connector_state.alert(
                    session,
                    business_id,
                    connector_id,
                    "auth_failed",
                    f"{connector_id} rejected its credentials: {exc}. Fix them with "
                    f"`textback connectors install` and the paused jobs resume.",
                )
            raise Deferred(until, f"{connector_id} auth failed; paused") from None
        except Exception as exc:
            with transaction(self.factory) as session:
                connector_state.record_error(
                    session,
                    business_id,
                    connector_id,
                    str(exc),
                    getattr(connector, "api_calls", 0) - calls_before,
                )
            raise
        with transaction(self.factory) as session:
            connector_state.record_success(
                session, business_id, connector_id, getattr(connector, "api_calls", 0) - calls_before
            )
        return result


def _target(session: Session, business_id: str, connector_id: str) -> Row[Any] | None:
    """(enabled, sync, paused_until) of the connector's install, or None when not installed."""
    params = {"business_id": business_id, "connector_id": connector_id}
    return session.connection().execute(_statements().target, params).first()


def _paused(install: Row[Any]) -> datetime | None:
    until: datetime | None = install.paused_until
    return until if until is not None and until > utcnow() else None


def _read_ledgers(factory: sessionmaker[Session], connector_id: str, runs: list[_Run]) -> None:
    """Give a batch's runs their leads' ledger rows, read at once (``_Run.snapshot``).

    Only the runs of a batch's preparation read it: a job's own run reads each row afresh. Read one
    row per key and lead, in a session each, they took a fifth of a loaded worker's profile.
    """
    rows = sync_batch.rows(factory, connector_id, [run.lead["id"] for run in runs])
    for run in runs:
        run.snapshot = rows[run.lead["id"]]


def _forget_intents(factory: sessionmaker[Session], connector_id: str, runs: list[_Run]) -> None:
    """Drop the bare contact intents (no remote id) that ``runs`` wrote."""
    if not runs:
        return
    with transaction(factory) as session:
        session.connection().execute(
            _statements().forget_contacts,
            {"lead_ids": [run.lead["id"] for run in runs], "connector_id": connector_id},
        )


class _Run:
    """One event pushed to one connector."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        connector: Any,
        connector_id: str,
        lead: dict[str, Any],
        settings: SyncSettings,
        job: Job,
    ) -> None:
        self.factory = factory
        self.c = connector
        self.cid = connector_id
        self.lead = lead
        self.s = settings
        self.job = job
        self.caps: set[Capability] = set(getattr(connector, "capabilities", set()))
        # The contact a batch call pushed moments ago for this claim, and the signature pushed.
        self.fresh: tuple[Remote, str] | None = None
        # Ledger keys whose records a batch call made moments ago with this very data: no update.
        self.made_now: set[str] = set()
        # A call activity's key -> the ledger keys of texts written into it (no note of their own).
        self.folds: dict[str, list[str]] = {}
        self.planner: sync_batch.Planner | None = None  # set while only working out what to create
        # A batch's preparation reads its leads' ledgers at once (_read_ledgers); a job reads afresh.
        self.snapshot: dict[str, Row[Any]] | None = None
        self.folds_texts = bool(getattr(connector, "folds_first_text", False)) and settings.log_messages

    def plan(self) -> list[tuple[str, NewRecord]]:
        """The records this job's event would create now, worked out without calling the CRM."""
        real, self.planner = self.c, sync_batch.Planner()
        self.c, self.folds = self.planner, {}
        try:
            self.apply(self.job.payload["event"], self.job.payload.get("data") or {})
        except sync_batch.Unplanned:
            pass  # what was noted before it still stands: the job would create those first
        finally:
            records, self.c, self.planner = self.planner.records, real, None
        return records

    def creates_anything(self) -> bool:
        """Whether these settings ever create more than the contact (else there is nothing to plan)."""
        s = self.s
        return s.deal_on != "never" or s.create_task or s.log_calls or s.log_messages

    def needs_push(self) -> bool:
        """The contact is not in the CRM yet, or changed since it was last pushed."""
        if not self.has(Capability.UPSERT_CONTACT):
            return False
        pushed = self.known("contact_sig")
        return self.known("contact") is None or pushed is None or pushed.id != _signature(self.contact_data())

    def has(self, cap: Capability) -> bool:
        return cap in self.caps

    # -- the ledger --------------------------------------------------------------------------
    def _ledger(self, key: str) -> Row[Any] | None:
        """The ledger row under ``key`` (remote_id, remote_url, intent_at), read afresh each time.

        Except in a batch's preparation, which reads the batch's rows at once (``snapshot``).
        """
        if self.snapshot is not None:
            return self.snapshot.get(key)
        params = {"lead_id": self.lead["id"], "connector_id": self.cid, "key": key}
        with reading(self.factory) as session:
            return session.connection().execute(_statements().ledger, params).first()

    def _save(self, key: str, remote: Remote | None, intent: bool = False) -> None:
        if self.planner is not None:
            return  # planning writes nothing
        with transaction(self.factory) as session:
            sync_batch.save(session, self.cid, [(self.lead["id"], key, remote)], intent=intent)

    def known(self, key: str) -> Remote | None:
        row = self._ledger(key)
        if row and row.remote_id:
            return Remote(row.remote_id, row.remote_url, key)
        return None

    def ensure(self, key: str, kind: str, create: Callable[[], Remote]) -> Remote:
        """The remote record for ``key``, created at most once."""
        row = self._ledger(key)
        if row and row.remote_id:
            return Remote(row.remote_id, row.remote_url, kind)
        if self.planner is not None:
            if row is not None:
                raise sync_batch.Unplanned("an earlier try may have made it: the job looks first")
            self.planner.key = key
            return create()
        if row and row.intent_at and hasattr(self.c, "find_record"):
            found = self.c.find_record(kind, self.marker(key))
            if found is not None:
                self._save(key, found)
                return found
        self._save(key, None, intent=True)
        remote = create()
        crash_point("after_vendor_call")  # test hook: inert unless $TEXTBACK_CRASH_AT is set
        self._save(key, remote)
        return remote

    def marker(self, key: str) -> str:
        """A short, stable reference written into created records so a retry can find them."""
        import hashlib

        return "tb-" + hashlib.sha1(f"{self.lead['id']}:{key}".encode()).hexdigest()[:12]  # noqa: S324

    # -- building blocks ---------------------------------------------------------------------
    def contact_data(self) -> ContactData:
        name = (self.lead.get("name") or "").split(" ", 1)
        return ContactData(
            phone=self.lead["phone"],
            first_name=name[0] or None,
            last_name=name[1] if len(name) > 1 else None,
            email=self.lead.get("email"),
            lead_source="Missed call" if self.lead.get("source") == "missed_call" else "Text message",
            opted_out=bool(self.lead.get("opted_out")),
        )

    def contact(self) -> Remote | None:
        if not self.has(Capability.UPSERT_CONTACT):
            return None
        existing = self.known("contact")
        if self.fresh is not None:
            fresh, pushed_sig = self.fresh  # pushed moments ago by the batch call for this claim
            if existing is None or existing.id != fresh.id or existing.url != fresh.url:
                self._save("contact", fresh)
            self._save("contact_sig", Remote(pushed_sig))
            return fresh
        data = self.contact_data()
        signature = _signature(data)
        pushed = self.known("contact_sig")
        if existing is not None and pushed is not None and pushed.id == signature:
            return existing  # nothing about the person changed since the last push: no API call
        if self.planner is not None:
            raise sync_batch.Unplanned("contact push")
        if existing is None and self._ledger("contact") is None:
            # Remember that we are about to create it: if this attempt dies after the vendor made
            # the contact, the retry must not mistake our own contact for an existing customer's.
            self._save("contact", None, intent=True)
        remote: Remote = self.c.upsert_contact(data, existing)
        crash_point("after_vendor_call")  # test hook: inert unless $TEXTBACK_CRASH_AT is set
        if existing is None or existing.id != remote.id or existing.url != remote.url:
            self._save("contact", remote)
        self._save("contact_sig", Remote(signature))
        return remote

    def deal(self, contact: Remote | None, stage_key: str = "new") -> Remote | None:
        if not self.has(Capability.UPSERT_DEAL) or contact is None:
            return None
        existing = self.known("deal")
        stage = self.s.stages.get(stage_key)
        data = DealData(
            name=f"Missed call: {self.lead.get('name') or national(self.lead['phone'])}",
            stage=stage or stage_key,
            pipeline=self.s.pipeline,
            owner=self.s.owner,
        )
        if existing is None and self.planner is not None and stage_key != "new":
            raise sync_batch.Unplanned("a deal made at a later stage")
        if existing is not None:
            # Stages only move forward: a repeat call or a late "qualified" never undoes "booked".
            reached = self.known("deal_stage")
            order = ("new", "qualified", "booked")
            if stage_key == "new" or (reached and order.index(reached.id) >= order.index(stage_key)):
                return existing
            self.c.upsert_deal(self.marker("deal"), data, contact, existing)
            self._save("deal_stage", Remote(stage_key))
            return existing
        return self.ensure(
            "deal", "deal", lambda: self.c.upsert_deal(self.marker("deal"), data, contact, None)
        )

    def activity(self, key: str, data: ActivityData, contact: Remote | None) -> Remote | None:
        if not self.has(Capability.LOG_ACTIVITY):
            return None
        deal = self.known("deal")
        existing = self.known(key)
        if existing is not None and key in self.made_now:
            return existing  # a batch call made it from this same data moments ago
        if existing is not None:
            return self.c.log_activity(self.marker(key), data, contact, deal, existing)
        return self.ensure(
            key, data.kind, lambda: self.c.log_activity(self.marker(key), data, contact, deal, None)
        )

    # -- events --------------------------------------------------------------------------------
    def apply(self, event: str, data: dict[str, Any]) -> dict[str, Any]:
        if self.has(Capability.EVENTS):
            delivery = f"{self.job.payload.get('ref')}:{event}:{self.lead['id']}"
            self.c.on_event(event, self.lead, delivery)
        handler = getattr(self, f"on_{event}", None)
        done: dict[str, Any] = {"event": event}
        if handler is not None and (self.caps - {Capability.EVENTS}):
            done.update(handler(data) or {})
        return done

    def on_missed_call(self, data: dict[str, Any]) -> dict[str, Any]:
        row = self._ledger("contact")
        had_contact = row is not None  # a ledger row (even a bare intent) means we made or saw it
        contact = self.contact()
        # A caller the CRM already knew is an existing customer: no new deal for them. Remembered,
        # so a retry or a repeat call (which finds the contact in the ledger) judges the same.
        existing_customer = bool(contact is not None and not had_contact and contact.created is False)
        if existing_customer:
            self._save("existing_customer", Remote("yes"))
        existing_customer = existing_customer or self.known("existing_customer") is not None
        if self.s.deal_on == "missed_call" and not existing_customer:
            self.deal(contact)
        call_sid = data.get("call_sid", "")
        if self.s.log_calls:
            self._log_call(call_sid, contact)
        if self.s.create_task and self.has(Capability.CREATE_TASK) and not data.get("repeat"):
            task = TaskData(
                subject=f"Call back {self.lead.get('name') or national(self.lead['phone'])}",
                body=f"Missed call from {self.lead['phone']}. textback texted them; call back within "
                f"{self.s.task_sla_minutes} minutes.",
                due_at=utcnow() + timedelta(minutes=self.s.task_sla_minutes),
                owner=self.s.owner,
            )
            deal = self.known("deal")
            self.ensure(
                f"task:{call_sid}",
                "task",
                lambda: self.c.create_task(self.marker(f"task:{call_sid}"), task, contact, deal),
            )
        return {"contact": contact.id if contact else None, "existing_customer": existing_customer}

    def _log_call(self, call_sid: str, contact: Remote | None) -> None:
        """The missed call as a call activity, with the first text written in when it is folded.

        The texts folded into a call are marked in the ledger (a bare intent under their own key)
        before the call is created, so a retry after a crash writes the same texts into it, and
        then point at the call. Their own "texted" pushes, still pending behind this one, are
        finished in that same transaction, never claimed (``_record_folds``).
        """
        key = f"call:{call_sid}"
        rows: dict[str, Row[Any] | None] = {}
        texts = self._folded_texts(key, rows)
        self.folds[key] = [f"msg:{m['message_id']}" for m in texts]
        for folded in self.folds[key]:
            if rows[folded] is None:
                self._save(folded, None, intent=True)
        call = self.activity(key, self._call_activity(call_sid, texts), contact)
        if call is None or key in self.made_now or self.planner is not None:
            return  # a batch call recorded its folds with it (SyncJob._create)
        todo = [
            (self.lead["id"], folded, call)
            for folded in self.folds[key]
            if (row := rows[folded]) is None or (row.remote_id, row.remote_url) != (call.id, call.url)
        ]
        if todo:
            with transaction(self.factory) as session:
                sync_batch.save(session, self.cid, todo, intent=False)
                _record_folds(session, self.cid, todo)

    def _folded_texts(self, key: str, rows: dict[str, Row[Any] | None] | None = None) -> list[dict[str, Any]]:
        """The sent first texts that belong in the call activity under ``key``.

        For a call never tried: those not in the CRM yet. Afterwards: those marked as folded into
        it (a bare intent, from a try that died, or pointing at this call). ``rows`` receives the
        ledger rows read for them, by ledger key.
        """
        if not self.folds_texts:
            return []
        sent = [
            e
            for e in self.lead["timeline"]
            if e.get("type") == "message"
            and e.get("direction") == "outbound"
            and e.get("kind") == "first_text"
            and e.get("sid")
        ]
        call = self._ledger(key)
        read = {f"msg:{m['message_id']}": self._ledger(f"msg:{m['message_id']}") for m in sent}
        if rows is not None:
            rows.update(read)
        if call is None:
            return [m for m in sent if read[f"msg:{m['message_id']}"] is None]
        return [
            m
            for m in sent
            if (row := read[f"msg:{m['message_id']}"]) is not None
            and (row.remote_id is None or row.remote_id == call.remote_id)
        ]

    def _call_activity(self, call_sid: str, texts: list[dict[str, Any]] | None = None) -> ActivityData:
        entries = [e for e in self.lead["timeline"] if e.get("call_sid") == call_sid]
        empty: dict[str, Any] = {}
        call = next((e for e in entries if e["type"] == "call"), empty)
        voicemail = next((e for e in entries if e["type"] == "voicemail"), empty)
        transcript = next((e for e in entries if e["type"] == "transcript"), empty)
        at = _parse_at(call.get("at"))
        lines = [f"Missed inbound call ({call.get('status') or 'no answer'})."]
        if voicemail.get("recording_url"):
            lines.append(f"Voicemail: {voicemail['recording_url']}")
        if transcript.get("text"):
            lines.append(f"Transcript: {transcript['text']}")
        for text in self._folded_texts(f"call:{call_sid}") if texts is None else texts:
            lines.append(f"Texted back to {text.get('to') or 'the caller'}:\n{text.get('body') or ''}")
        return ActivityData(
            kind="call",
            at=at,
            body="\n".join(lines),
            direction="inbound",
            status="missed",
            duration_seconds=int(voicemail.get("duration") or 0),
            from_number=self.lead["phone"],
            recording_url=voicemail.get("recording_url"),
            to_number=call.get("to"),
            extra={"call_sid": call_sid},
        )

    def on_voicemail(self, data: dict[str, Any]) -> dict[str, Any]:
        contact = self.contact()
        if self.s.log_calls:
            self._log_call(data.get("call_sid", ""), contact)
        return {}

    def _message(self, data: dict[str, Any], direction: str) -> dict[str, Any]:
        contact = self.contact()
        if self.s.log_messages and self.known(f"msg:{data.get('message_id')}") is None:
            # Already in the CRM: its own note, or written into the missed call's activity.
            msg = next(
                (e for e in self.lead["timeline"] if e.get("message_id") == data.get("message_id")), None
            )
            if msg is not None:
                self.activity(
                    f"msg:{data['message_id']}",
                    ActivityData(
                        kind="sms",
                        at=_parse_at(msg["at"]),
                        body=msg["body"],
                        direction=direction,
                        from_number=msg["from"],
                        to_number=msg["to"],
                    ),
                    contact,
                )
        return {"contact": contact.id if contact else None}

    def on_texted(self, data: dict[str, Any]) -> dict[str, Any]:
        return self._message(data, "outbound")

    def on_replied(self, data: dict[str, Any]) -> dict[str, Any]:
        result = self._message(data, "inbound")
        if self.s.deal_on == "first_reply":
            self.deal(self.contact())
        return result

    def on_qualified(self, data: dict[str, Any]) -> dict[str, Any]:
        contact = self.contact()
        deal = self.deal(contact, "qualified") if self.s.deal_on != "never" else None
        return {"deal": deal.id if deal else None}

    def on_booked(self, data: dict[str, Any]) -> dict[str, Any]:
        contact = self.contact()
        deal = self.deal(contact, "booked") if self.s.deal_on != "never" else None
        return {"deal": deal.id if deal else None}

    def on_opted_out(self, data: dict[str, Any]) -> dict[str, Any]:
        contact = self.contact()
        if contact is not None and self.has(Capability.MARK_OPTED_OUT):
            self.c.mark_opted_out(contact)
        return {"contact": contact.id if contact else None}

    def on_handed_off(self, data: dict[str, Any]) -> dict[str, Any]:
        contact = self.contact()
        note = ActivityData(
            kind="note", at=utcnow(), body=f"Handed off to a person: {data.get('reason', '')}".strip()
        )
        self.activity(f"handoff:{self.job.payload.get('ref')}", note, contact)
        return {}


def _parse_at(value: str | None) -> datetime:
    if not value:
        return utcnow()
    at = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _signature(data: ContactData) -> str:
    """What was last pushed about a person, so an unchanged contact is not pushed again."""
    import hashlib

    return hashlib.sha256(repr(data).encode()).hexdigest()[:32]
