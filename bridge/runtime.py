"""Wiring: the worker, its job handlers and the connector instances, built from a config."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, bindparam, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from bridge import metrics
from connectors import registry
from connectors.base import Connector, ConnectorContext
from connectors.notify.chat import ChatWebhookJob
from connectors.notify.email import EmailJob
from connectors.twilio.client import make_client
from connectors.twilio.sms import TwilioGateway
from core import connector_state, sqlite_writer, sync
from core.breaker import Breaker
from core.config import Config
from core.conversation import ConversationJob, FollowUpJob
from core.crm import Capability, Remote
from core.db import make_engine, read_only, reading, require_migrated, session_factory, transaction
from core.errors import ConfigError, RateLimited
from core.escalation import SlaJob
from core.models import ConnectorInstall, utcnow
from core.outbox import Outbox
from core.secrets import SecretBox
from core.sending import SmsJob
from core.sync import SyncJob
from core.worker import Handler, Worker

T = TypeVar("T")

# Caller lookups from a CRM that failed this many in a row pause for this long (then one is tried).
LOOKUP_FAILURES = 3
LOOKUP_COOL_OFF_S = 30.0


def _find_many(connector: Any, phones: list[str]) -> dict[str, Remote]:
    return dict(connector.find_contacts(phones))


log = logging.getLogger("textback.runtime")


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def twilio_gateway(config: Config) -> TwilioGateway:
    t = config.twilio
    if not t.account_sid or not t.auth_token:
        raise ConfigError(
            "twilio.account_sid and twilio.auth_token are needed to send texts", source=config.source
        )
    return TwilioGateway(
        make_client(t.account_sid, t.auth_token, base_url=t.api_base_url, timeout=t.timeout_seconds),
        observe=metrics.sms_result,
    )


@dataclass
class _Cached:
    stamp: Any
    connector: Connector


class Connectors:
    """Instantiates installed connectors (lazily, one per business and id) for this process."""

    def __init__(
        self,
        config: Config,
        factory: sessionmaker[Session],
        lookup_threads: int = 4,
        traits: ConnectorTraits | None = None,
    ) -> None:
        self.config = config
        self.factory = factory
        self._cache: dict[tuple[str, str], _Cached] = {}
        self._building: dict[tuple[str, str], threading.Lock] = {}
        # One lookup per job thread at once, or texts queue here behind each other's lookups.
        threads = max(4, lookup_threads)
        # A lookup is part of its text: on SQLite its rate-limit writes go before the CRM pushes' too.
        self._pool = ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix="crm-lookup", initializer=sqlite_writer.urgent_thread
        )
        # A lookup that outlives its text's budget keeps its thread until the CRM answers. When every
        # thread is held so, the CRM is slow right now: a new text does not queue behind them.
        self._free = threading.BoundedSemaphore(threads)
        self._lock = threading.Lock()
        self._box: SecretBox | None = None
        self.traits = traits or ConnectorTraits()
        self._breaker = Breaker(LOOKUP_FAILURES, LOOKUP_COOL_OFF_S)

    @property
    def box(self) -> SecretBox:
        if self._box is None:
            self._box = SecretBox(self.config.secret_key_file)
        return self._box

    def build(
        self, business_id: str, connector_id: str, install: ConnectorInstall | None = None
    ) -> Connector:
        if install is None:
            with self.factory() as session:
                install = session.get(ConnectorInstall, (business_id, connector_id))
        if install is None:
            raise ConfigError(f"connector {connector_id!r} is not installed for business {business_id!r}")
        loaded = registry.load(connector_id)
        config = {**install.config, **self.box.open(install.secrets)}
        limits = [
            (r["name"], connector_state.Limit(r["requests"], r["per_seconds"]))
            for r in loaded.manifest.rate_limits
        ]
        scoped = set(getattr(loaded.cls, "scoped_limits", ()))
        factory = self.factory

        def refuse_if_paused(session: Session) -> None:
            # A vendor's 429 pauses the connector for every worker at once, jobs in progress too.
            left = connector_state.rate_limit_pause(session, business_id, connector_id)
            if left > 0:
                raise RateLimited(f"{connector_id} is paused after a rate limit", retry_after=left)

        def limited(limit: connector_state.Limit, wait: float) -> RateLimited:
            rate = f"{limit.requests}/{limit.per_seconds:g}s"
            return RateLimited(f"{connector_id}: local rate limit ({rate})", retry_after=wait)

        def throttle(cost: int = 1, *scopes: str) -> None:
            # An endpoint's own budget (HubSpot search) binds only the calls that name it.
            applying = [
                (f"{business_id}:{connector_id}:{i}", limit)
                for i, (name, limit) in enumerate(limits)
                if name not in scoped or name in scopes
            ]
            # Under load most calls find a window used up: finding that out must not queue for
            # SQLite's write lock, which every write of the bridge needs.
            with reading(factory) as session:
                refuse_if_paused(session)
                full = connector_state.full_window(session, applying, cost)
            if full is not None:
                raise limited(*full)
            # The pause and the shared windows in one transaction (each window is one statement).
            refused: tuple[connector_state.Limit, float] | None = None
            with transaction(factory) as session:
                refuse_if_paused(session)
                for limiter, limit in applying:
                    wait = connector_state.acquire(factory, limiter, limit, cost, session=session)
                    if wait > 0:
                        refused = (limit, wait)  # raised once the windows already taken are committed
                        break
            if refused is not None:
                raise limited(*refused)
            metrics.crm_call(connector_id)  # every connector throttles right before each request

        context = ConnectorContext(
            business_id=business_id,
            connector_id=connector_id,
            tokens=connector_state.TokenStore(self.factory, self.box, business_id, connector_id),
            throttle=throttle,
        )
        return loaded.cls(config, context)

    def find_contact(self, business_id: str, phone: str, budget: float) -> tuple[str, Remote] | None:
        """The caller as a CRM contact, asked of every installed CRM that can look people up.

        Gives up after ``budget`` seconds (the first text must not wait for a slow CRM); a lookup
        still running then finishes in the background and is ignored.
        """
        candidates = self._finders_for(business_id)
        if not candidates:
            return None

        def look() -> tuple[str, Remote] | None:
            for connector_id, stamp in candidates:
                found = self._ask(business_id, connector_id, stamp, lambda c: c.find_contact(phone))
                if found is not None:
                    return connector_id, found
            return None

        try:
            return self._submit(look, budget)
        except FutureTimeout:
            return None

    def _finders_for(self, business_id: str) -> list[tuple[str, Any]]:
        """The business's enabled connectors that can look a caller up, each with its install's stamp.

        Read per text, so an install, removal or disabling is seen by the very next text; the stamps
        come with it so that asking each one does not read its stamp again (see ``_built``).
        """
        with self._connect() as conn:
            installed = conn.execute(_finders_of(), {"b": business_id}).all()
        return [(c, stamp) for c, stamp in installed if self._finds_contacts(c)]

    @contextlib.contextmanager
    def _connect(self) -> Iterator[Connection]:
        # A bare Connection: an ORM Session costs more than the one small read it would run.
        bind = self.factory.kw.get("bind")
        if isinstance(bind, Engine):
            with bind.connect() as conn:
                yield conn.execution_options(**read_only(bind.dialect.name))
            return
        with reading(self.factory) as session:
            yield session.connection()

    def find_contacts(
        self, business_id: str, phones: list[str], budget: float
    ) -> dict[str, tuple[str, Remote] | None] | None:
        """Many callers at once (texts claimed together), within one ``budget``: phone -> match.

        Only when every CRM installed that looks people up can look up many in one request
        (``find_contacts``); otherwise None, and each text looks its caller up alone. A phone whose
        answer did not come within the budget counts as not found, as after a single lookup.
        """
        candidates = self._finders_for(business_id)
        if not all(self._finds_contacts(c, Capability.FIND_CONTACTS) for c, _ in candidates):
            return None
        nobody: dict[str, tuple[str, Remote] | None] = dict.fromkeys(phones)

        def look() -> dict[str, tuple[str, Remote] | None]:
            found = dict(nobody)
            for connector_id, stamp in candidates:
                left = [p for p in phones if found[p] is None]
                if not left:
                    break
                lookup = functools.partial(_find_many, phones=left)
                hits = self._ask(business_id, connector_id, stamp, lookup) or {}
                for phone, remote in hits.items():
                    if phone in found:
                        found[phone] = (connector_id, remote)
            return found

        if not candidates:
            return nobody
        try:
            return self._submit(look, budget)
        except FutureTimeout:
            return nobody

    def _submit(self, look: Callable[[], T], budget: float) -> T:
        """``look()`` on a lookup thread within ``budget`` seconds; FutureTimeout when it cannot be."""
        if not self._free.acquire(blocking=False):
            log.info("caller lookup skipped: every lookup thread waits on a slow CRM")
            raise FutureTimeout()

        def run() -> T:
            try:
                return look()
            finally:
                self._free.release()

        try:
            future = self._pool.submit(run)
        except BaseException:
            self._free.release()
            raise
        return future.result(timeout=budget)

    def _ask(self, business_id: str, connector_id: str, stamp: Any, lookup: Callable[[Any], T]) -> T | None:
        """One CRM's answer to a caller lookup, or None: a CRM problem never holds up or fails a text.

        A CRM that failed LOOKUP_FAILURES lookups in a row is not asked for LOOKUP_COOL_OFF_S
        (core.breaker); 429s are not failures here, they pause the connector for every worker.
        """
        key = (business_id, connector_id)
        if not self._breaker.allow(key, time.time()):
            return None
        try:
            answer = lookup(self._built(business_id, connector_id, stamp))
        except RateLimited as exc:
            self._rate_limited(business_id, connector_id, exc)
            return None
        except Exception as exc:
            extra = {"connector": connector_id, "error": type(exc).__name__}
            log.info("caller lookup failed", extra=extra)
            if self._breaker.failed(key, time.time()):
                log.warning(
                    "caller lookups paused: the CRM keeps failing; texts go out without them",
                    extra={**extra, "seconds": LOOKUP_COOL_OFF_S},
                )
            return None
        if self._breaker.succeeded(key):
            log.info("caller lookups resumed", extra={"connector": connector_id})
        return answer

    def _rate_limited(self, business_id: str, connector_id: str, exc: RateLimited) -> None:
        if exc.code is not None:  # the vendor's 429 pauses the connector for every worker
            until = utcnow() + timedelta(seconds=max(float(exc.retry_after or 1.0), 0.5))
            with transaction(self.factory) as session:
                connector_state.pause(session, business_id, connector_id, until, f"rate limited: {exc}")
                connector_state.record_error(
                    session, business_id, connector_id, str(exc), 1, rate_limited=True
                )

    def _finds_contacts(self, connector_id: str, capability: Capability = Capability.FIND_CONTACT) -> bool:
        return self.traits.has(connector_id, capability)

    def resolve(self, business_id: str, connector_id: str) -> Connector:
        # Only the install's stamp per push (no ORM load of its config and secrets): most find the
        # connector built already.
        with reading(self.factory) as session:
            stamp = session.connection().execute(_stamp_of(), {"b": business_id, "c": connector_id}).scalar()
        return self._built(business_id, connector_id, stamp)

    def _built(self, business_id: str, connector_id: str, stamp: Any) -> Connector:
        """The connector built from the install as of ``stamp`` (its ``updated_at`` read just now)."""
        key = (business_id, connector_id)
        with self._lock:
            cached = self._cache.get(key)
            if cached and cached.stamp == stamp:
                return cached.connector
            building = self._building.setdefault(key, threading.Lock())
        # One build at a time per connector: at a worker's start its text threads' lookups and its
        # job threads all ask at once, and each built its own (an ORM read, the secrets decrypted,
        # an SDK client) on a machine busy enough already.
        with building:
            with self._lock:
                cached = self._cache.get(key)
                if cached and cached.stamp == stamp:
                    return cached.connector
            with self.factory() as session:
                install = session.get(ConnectorInstall, (business_id, connector_id))
            if install is not None:
                stamp = install.updated_at  # what is built, should it have changed since the read above
            connector = self.build(business_id, connector_id, install)
            with self._lock:
                self._cache[key] = _Cached(stamp, connector)
            return connector


@functools.cache
def _stamp_of() -> Any:
    installs = ConnectorInstall.__table__
    return select(installs.c.updated_at).where(
        installs.c.business_id == bindparam("b"), installs.c.connector_id == bindparam("c")
    )


@functools.cache
def _finders_of() -> Any:
    installs = ConnectorInstall.__table__
    return select(installs.c.connector_id, installs.c.updated_at).where(
        installs.c.business_id == bindparam("b"), installs.c.enabled.is_(True)
    )


class ConnectorTraits:
    """What the process knows of each connector's class and manifest: whether it writes a lead's
    first text into its call activity, and its capabilities (core.sync.know_folding, and which
    CRMs a caller lookup asks).

    Asked once per connector id and process: registry.load reads the package metadata (~10 ms).
    """

    def __init__(self) -> None:
        self._known: dict[str, tuple[bool, frozenset[Capability]]] = {}  # id -> (folds, capabilities)

    def _traits(self, connector_id: str) -> tuple[bool, frozenset[Capability]]:
        known = self._known.get(connector_id)
        if known is None:
            loaded = registry.load(connector_id)
            folds = bool(getattr(loaded.cls, "folds_first_text", False))  # not every class derives from ours
            # Two threads asking at once both load it and store the same answer.
            known = self._known[connector_id] = (folds, frozenset(loaded.manifest.capabilities))
        return known

    def __call__(self, connector_id: str) -> bool:
        """Whether the connector folds the first text into the call activity."""
        return self._traits(connector_id)[0]

    def has(self, connector_id: str, capability: Capability) -> bool:
        return capability in self._traits(connector_id)[1]

    def finds(self, connector_id: str) -> bool:
        return self.has(connector_id, Capability.FIND_CONTACT)

    def warm(self, engine: Engine) -> ConnectorTraits:
        """Ask now for every connector installed, while the process starts.

        Otherwise the first missed call of each process asks inside its transaction, which on
        SQLite holds the write lock for every other webhook and text meanwhile.
        """
        try:
            with engine.connect() as conn:
                ids = conn.execute(select(ConnectorInstall.connector_id).distinct()).scalars().all()
        except SQLAlchemyError as exc:
            log.warning("connector folding not known yet", extra={"error": type(exc).__name__})
            return self
        for connector_id in ids:
            try:
                self(connector_id)
            except Exception as exc:  # asked again at the first missed call, which copes (core.sync)
                extra = {"connector": connector_id, "error": type(exc).__name__}
                log.warning("connector folding not known yet", extra=extra)
        return self


def build_worker(config: Config, engine: Engine | None = None) -> Worker:
    w = config.worker
    job_threads = w.threads + w.text_threads
    if engine is None:
        pool: dict[str, Any] = {}
        if not config.database_url.startswith("sqlite"):
            # A connection per job thread, plus the lookups running beside them (core.db's default
            # of 5 + 10 would make text threads queue for a connection at 100 texts/s).
            pool = {"pool_size": job_threads, "max_overflow": job_threads + 2}
        engine = make_engine(config.database_url, background=True, **pool)
    require_migrated(engine, config.source)
    traits = ConnectorTraits().warm(engine)
    sync.know_folding(traits, traits.finds)
    factory = session_factory(engine)
    outbox = Outbox(factory, worker_id(), w.lease_seconds, w.backoff_initial, w.backoff_max, w.max_attempts)
    connectors = Connectors(config, factory, lookup_threads=job_threads, traits=traits)
    handlers: dict[str, Handler] = {
        "sms.send": SmsJob(config, factory, twilio_gateway(config), find_contact=connectors.find_contact),
        "crm.sync": SyncJob(config, factory, connectors.resolve, on_rate_limited=metrics.crm_rate_limited),
        "convo.reply": ConversationJob(config, factory, connectors.resolve),
        "convo.follow_up": FollowUpJob(config, factory),
        "escalation.sla": SlaJob(config, factory),
        "notify.email": EmailJob(config.smtp),
        "notify.webhook": ChatWebhookJob(),
    }
    return Worker(
        outbox,
        handlers,
        poll_interval=w.poll_interval,
        batch_size=w.batch_size,
        on_outcome=metrics.job_outcome,
        threads=w.threads,
        text_threads=w.text_threads,
        text_batch_size=w.text_batch_size,
        probe_interval=w.probe_interval,
    )
