"""Engines, sessions and migrations for SQLite (default) and PostgreSQL."""

from __future__ import annotations

import contextlib
import select
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

from core import sqlite_checkpoint
from core.errors import ConfigError, NotMigratedError
from core.sqlite_writer import QueuedWriterConnection, open_queue

MIGRATIONS = Path(__file__).with_name("migrations")
SQLITE_BUSY_TIMEOUT_MS = 15000
# Execution options of a transaction that only reads. On SQLite it begins DEFERRED: in WAL mode a
# reader never waits for the write lock, which every other transaction takes up front.
READ_ONLY: dict[str, Any] = {"textback_read_only": True}
# On PostgreSQL such a transaction runs in autocommit: one round trip per statement, where psycopg
# would send BEGIN and COMMIT on round trips of their own, and no ROLLBACK at its end (psycopg
# forgets a connection's prepared statements at a ROLLBACK). Its reads see what READ COMMITTED's
# do (a snapshot per statement).
_PG_READ_ONLY: dict[str, Any] = {**READ_ONLY, "isolation_level": "AUTOCOMMIT"}


def read_only(dialect: str) -> dict[str, Any]:
    """The execution options of a transaction that only reads, on ``dialect``."""
    return _PG_READ_ONLY if dialect == "postgresql" else READ_ONLY


def normalise_url(url: str) -> str:
    """Accept plain ``postgresql://`` URLs and use the psycopg 3 driver for them."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def make_engine(url: str, *, background: bool = False, **kwargs: Any) -> Engine:
    """An engine for ``url``. ``background`` (outbox workers): on SQLite the bridge's writes go first."""
    url = normalise_url(url)
    try:
        parsed = make_url(url)
    except Exception:
        raise ConfigError(f"database_url is not a database URL: {url.split('://')[0]}://...") from None
    # INSERT ... ON CONFLICT DO NOTHING reports "did it insert?" through rowcount (outbox dedupe,
    # webhook dedupe). SQLAlchemy 2.1 leaves rowcount at -1 for an INSERT with implicit RETURNING
    # (every autoincrement table on PostgreSQL) unless asked to keep it.
    kwargs["execution_options"] = {"preserve_rowcount": True, **kwargs.get("execution_options", {})}
    if parsed.get_backend_name() == "sqlite":
        connect_args = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "factory": QueuedWriterConnection}
        engine = create_engine(url, connect_args=connect_args, **kwargs)
        _tune_sqlite(engine, parsed.database, background)
        return engine
    if parsed.get_backend_name() != "postgresql":
        raise ConfigError("database_url must be sqlite:///FILE or postgresql://...")
    kwargs.setdefault("pool_size", 5)
    kwargs.setdefault("max_overflow", 10)
    engine = create_engine(url, **kwargs)
    if not kwargs.get("pool_pre_ping"):
        event.listen(engine, "checkout", _check_alive)
    return engine


def _check_alive(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
    """Replace a pooled connection the server closed (a restart, ``pg_terminate_backend``).

    Instead of ``pool_pre_ping``'s ``SELECT 1`` round trip on every checkout (about a dozen per
    missed call, each a transaction PostgreSQL runs), ask the socket: an idle connection has nothing
    to read unless the server wrote to it, and a server that ends a session writes its FATAL message
    and closes. Only then does the check talk to the server (a real ping, or a new connection). A
    server that vanishes without closing the socket is noticed by the statement that fails on it,
    as with a ping; SQLAlchemy then replaces every connection of the pool opened before.
    """
    pgconn = getattr(dbapi_conn, "pgconn", None)
    if pgconn is None:
        return
    from psycopg import pq

    if dbapi_conn.closed or dbapi_conn.broken:
        raise DisconnectionError("the pooled connection is closed")
    poller = select.poll()
    poller.register(pgconn.socket, select.POLLIN | select.POLLERR | select.POLLHUP)
    if not poller.poll(0):
        return  # nothing from the server since the connection was last used: alive
    try:
        pgconn.consume_input()
        alive = pgconn.status == pq.ConnStatus.OK and _ping(dbapi_conn)
    except Exception:
        alive = False
    if not alive:
        raise DisconnectionError("the server closed the pooled connection")


def _ping(dbapi_conn: Any) -> bool:
    autocommit = dbapi_conn.autocommit
    dbapi_conn.autocommit = True
    try:
        dbapi_conn.execute("SELECT 1")
    finally:
        if not dbapi_conn.closed:
            dbapi_conn.autocommit = autocommit
    return True


def _tune_sqlite(engine: Engine, database: str | None, background: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control away from pysqlite so BEGIN IMMEDIATE below is what runs.
        dbapi_conn.isolation_level = None
        open_queue(dbapi_conn, database, background)
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA synchronous=NORMAL")
        if database and database != ":memory:":
            # Checkpoints run beside the writers, not in a commit that holds the write queue.
            cur.execute("PRAGMA wal_autocheckpoint=0")
            sqlite_checkpoint.ensure_running(engine, database)
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Every transaction that may write takes the write lock up front: a read that later upgrades
        # to a write is what makes SQLite answer SQLITE_BUSY despite the busy timeout.
        if conn.get_execution_options().get("textback_read_only"):
            conn.exec_driver_sql("BEGIN")
            return
        dbapi_conn = conn.connection.dbapi_connection
        if isinstance(dbapi_conn, QueuedWriterConnection):
            dbapi_conn.take_writer_lock()
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextlib.contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any exception."""
    with factory() as session, session.begin():
        yield session


@contextlib.contextmanager
def reading(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose transaction only reads: on SQLite it does not queue for the write lock.

    A write inside it fails on SQLite (the deferred transaction cannot upgrade while another
    connection writes), so only pure reads belong here.
    """
    with factory() as session:
        session.connection(execution_options=read_only(session.get_bind().dialect.name))
        yield session


def _alembic_config(engine: Engine) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def head_revision() -> str:
    script = ScriptDirectory(str(MIGRATIONS))
    head = script.get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    command.upgrade(_alembic_config(engine), revision)


def require_migrated(engine: Engine, config_path: str | None = None) -> None:
    """Refuse to run against a database whose schema is not at head."""
    current = current_revision(engine)
    if current == head_revision():
        return
    cmd = "textback db upgrade" + (f" --config {config_path}" if config_path else "")
    state = "has no textback tables yet" if current is None else f"is at revision {current}"
    raise NotMigratedError(f"the database {state}, but this version needs {head_revision()}. Run: {cmd}")
