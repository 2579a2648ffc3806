"""Two costs of the store that grow where the full-stack benchmark cannot isolate them.

- ``claim``: one outbox claim (``Outbox.claim``'s statement; the job is put back) with ``--backlog`` ready
  jobs queued (three CRM pushes to one text, pushes spread over 1,000 leads), median of
  ``--repeat``, for the text lane and the general lane, on a fresh SQLite file or PostgreSQL schema
  (statistics fresh, as autovacuum keeps them).
- ``commits``: ``--transactions`` SQLite write transactions of ``--rows`` rows of about 400 bytes,
  each through core.db's engine (the write queue and its checkpoint policy), with the commit's
  latency percentiles; ``--sqlite-default`` opens the file with plain ``sqlite3`` and SQLite's own
  checkpoint-on-commit instead (WAL, ``synchronous=NORMAL``, as core.db sets them).

Usage: ``python -m bench.store_costs claim --db sqlite|postgres [--backlog N]`` or
``python -m bench.store_costs commits [--sqlite-default]``. Figures only, no assertions.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import cast

from bench.stack import Database


def claim(args: argparse.Namespace) -> None:
    from sqlalchemy import Table, bindparam, insert, text, update

    from core.db import make_engine, upgrade
    from core.models import OutboxJob, utcnow
    from core.outbox import TEXT_PRIORITY, _claim_statement

    workdir = Path(tempfile.mkdtemp(prefix="textback-claim-"))
    db = Database(args.db, workdir)
    engine = make_engine(db.create())
    try:
        upgrade(engine)
        now = utcnow()
        rows: list[dict[str, object]] = []
        for i in range(args.backlog):
            texting = i % 4 == 0
            rows.append(
                {
                    "kind": "sms.send" if texting else "crm.sync",
                    "target": "twilio" if texting else "hubspot",
                    "dedupe_key": f"k{i}-{uuid.uuid4()}",
                    "ordering_key": f"text-{i}" if texting else f"lead-{i % 1000}",
                    "business_id": "b",
                    "payload": {},
                    "status": "pending",
                    "attempts": 0,
                    "max_attempts": 8,
                    "priority": 0 if texting else 5,
                    "next_attempt_at": now - timedelta(seconds=1),
                    "created_at": now,
                    "updated_at": now,
                }
            )
        with engine.begin() as conn:
            if rows:
                conn.execute(insert(OutboxJob), rows)
            if engine.dialect.name == "postgresql":
                conn.execute(text("ANALYZE outbox_jobs"))
        jobs = cast(Table, OutboxJob.__table__)
        putback = (
            update(jobs)
            .where(jobs.c.id.in_(bindparam("ids", expanding=True)))
            .values(status="pending", attempts=0, locked_until=None, claim_token=None, locked_by=None)
        )
        params = {"now": utcnow(), "worker": "w", "token": "t", "lease_end": utcnow() + timedelta(minutes=1)}
        for lane, label in ((TEXT_PRIORITY, "text lane"), (None, "general lane")):
            times = []
            with engine.connect() as conn:
                for _ in range(args.repeat):
                    tx = conn.begin()
                    started = time.perf_counter()
                    ids = [r.id for r in conn.execute(_claim_statement(1, lane), params)]
                    times.append(time.perf_counter() - started)
                    # Put the job back and commit: a rollback would make psycopg drop its prepared
                    # statements, and every claim would be planned anew, as none is in production.
                    conn.execute(putback, {"ids": ids})
                    tx.commit()
            print(
                f"db={args.db} backlog={args.backlog} {label}: claim median "
                f"{statistics.median(times) * 1000:.2f} ms (of {args.repeat})"
            )
    finally:
        engine.dispose()
        db.drop()
        shutil.rmtree(workdir, ignore_errors=True)


def commits(args: argparse.Namespace) -> None:
    from sqlalchemy import text

    from core.db import make_engine

    workdir = Path(tempfile.mkdtemp(prefix="textback-commits-"))
    path = workdir / "textback.db"
    times: list[float] = []
    try:
        if args.sqlite_default:
            raw = sqlite3.connect(path, isolation_level=None)
            raw.execute("PRAGMA journal_mode=WAL")
            raw.execute("PRAGMA synchronous=NORMAL")
            raw.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT, b TEXT)")
            raw.execute("CREATE INDEX ix_t_a ON t (a)")
            for _ in range(args.transactions):
                raw.execute("BEGIN IMMEDIATE")
                for _ in range(args.rows):
                    raw.execute("INSERT INTO t (a, b) VALUES (?, ?)", (os.urandom(16).hex(), "x" * 400))
                started = time.perf_counter()
                raw.execute("COMMIT")
                times.append(time.perf_counter() - started)
            wal_bytes = _size(f"{path}-wal")
            raw.close()
        else:
            engine = make_engine(f"sqlite:///{path}")
            with engine.begin() as conn:
                conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT, b TEXT)"))
                conn.execute(text("CREATE INDEX ix_t_a ON t (a)"))
            insert = text("INSERT INTO t (a, b) VALUES (:a, :b)")
            for _ in range(args.transactions):
                conn = engine.connect()
                conn.begin()
                for _ in range(args.rows):
                    conn.execute(insert, {"a": os.urandom(16).hex(), "b": "x" * 400})
                started = time.perf_counter()
                conn.commit()
                times.append(time.perf_counter() - started)
                conn.close()
            wal_bytes = _size(f"{path}-wal")
            engine.dispose()
        times.sort()
        n = len(times)
        print(
            f"{'sqlite3, checkpoint on commit' if args.sqlite_default else 'core.db engine'}: "
            f"{n} commits of {args.rows} rows: median {times[n // 2] * 1000:.3f} ms, mean "
            f"{statistics.mean(times) * 1000:.3f} ms, p99 {times[int(n * 0.99)] * 1000:.2f} ms, max "
            f"{times[-1] * 1000:.2f} ms; log file at the end {wal_bytes / 1e6:.1f} MB"
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _size(path: str) -> int:
    return os.path.getsize(path) if os.path.exists(path) else 0


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.store_costs", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    c = sub.add_parser("claim")
    c.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    c.add_argument("--backlog", type=int, default=2000)
    c.add_argument("--repeat", type=int, default=40)
    w = sub.add_parser("commits")
    w.add_argument("--transactions", type=int, default=3000)
    w.add_argument("--rows", type=int, default=8)
    w.add_argument("--sqlite-default", action="store_true")
    args = p.parse_args()
    if args.what == "claim":
        if not 0 <= args.backlog <= 100_000 or not 1 <= args.repeat <= 1000:
            p.error("--backlog must be 0..100000 and --repeat 1..1000")
        claim(args)
    else:
        if not 1 <= args.transactions <= 100_000 or not 1 <= args.rows <= 1000:
            p.error("--transactions must be 1..100000 and --rows 1..1000")
        commits(args)


if __name__ == "__main__":
    main()
