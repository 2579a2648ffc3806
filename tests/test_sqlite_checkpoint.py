"""SQLite's write-ahead log is copied back beside the writers (core.sqlite_checkpoint), not in a commit.

Observed from outside: the database file's size (pages land in it only when a checkpoint copies
them from the log), the log file's size, and the process's threads. SQLite only: PostgreSQL has
no such log to copy back.
"""

from __future__ import annotations

import gc
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from core import sqlite_checkpoint
from core.db import make_engine

ROW = "x" * 3000  # about one page a row


def _make(tmp_path: Path) -> tuple[Engine, Path]:
    db = tmp_path / "textback.db"
    engine = make_engine(f"sqlite:///{db}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT)"))
    return engine, db


def _write(engine: Engine, pages: int, per_transaction: int = 10) -> None:
    for _ in range(pages // per_transaction):
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO t (body) VALUES (:b)"), [{"b": ROW}] * per_transaction)


def _until(condition: Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def _threads_on(db: Path) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"textback-wal-checkpoint:{db}"]


def test_a_commit_leaves_the_log_to_the_checkpoint_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite's own checkpoint would copy 1,000 pages back inside the commit that passes them."""
    monkeypatch.setattr(sqlite_checkpoint, "INTERVAL_S", 3600.0)  # the thread sleeps through this test
    engine, db = _make(tmp_path)
    try:
        before = db.stat().st_size
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO t (body) VALUES (:b)"), [{"b": ROW}] * 1500)
        assert db.stat().st_size == before  # nothing copied back by the commit
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 0
            assert conn.exec_driver_sql("SELECT count(*) FROM t").scalar() == 1500
    finally:
        engine.dispose()


def test_the_thread_copies_the_log_back_and_keeps_it_bounded_under_steady_writes(tmp_path: Path) -> None:
    engine, db = _make(tmp_path)
    wal = Path(f"{db}-wal")
    try:
        before = db.stat().st_size
        largest = 0
        for _ in range(24):  # 400 pages every 0.1 s, with no pause for the log to be copied back whole
            _write(engine, 400)
            largest = max(largest, wal.stat().st_size)
            time.sleep(0.1)
        # Without the pass under the write queue the log would hold all ~9,600 pages (~38 MB).
        assert largest < 6000 * 4096, largest
        assert _until(lambda: db.stat().st_size > before + 9000 * 4096)  # the pages are in the file
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM t").scalar() == 9600
    finally:
        engine.dispose()


def test_the_thread_ends_with_its_engine(tmp_path: Path) -> None:
    engine, db = _make(tmp_path)
    assert len(_threads_on(db)) == 1
    second = make_engine(f"sqlite:///{db}")  # another engine of the process on the same file
    with second.connect():
        pass
    assert len(_threads_on(db)) == 1  # one thread per process and file
    engine.dispose()
    del engine
    gc.collect()
    time.sleep(sqlite_checkpoint.INTERVAL_S * 3)
    assert len(_threads_on(db)) == 1  # the second engine still uses the file
    second.dispose()
    del second
    gc.collect()
    assert _until(lambda: not _threads_on(db))


def test_the_thread_ends_when_the_database_is_removed(tmp_path: Path) -> None:
    engine, db = _make(tmp_path)
    try:
        assert len(_threads_on(db)) == 1
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(f"{db}{suffix}"):
                os.remove(f"{db}{suffix}")
        assert _until(lambda: not _threads_on(db))
    finally:
        engine.dispose()


def test_a_process_forked_while_the_thread_registry_was_busy_opens_the_database(tmp_path: Path) -> None:
    """gunicorn forks its workers from a master that may have opened the database already."""
    engine, db = _make(tmp_path)
    try:
        with sqlite_checkpoint._lock:  # the parent's thread in the middle of a round, at the fork
            pid = os.fork()
            if pid == 0:  # the child: a fresh engine, as a gunicorn worker builds its app
                code = 1
                try:
                    child = make_engine(f"sqlite:///{db}")
                    with child.begin() as conn:
                        conn.execute(text("INSERT INTO t (body) VALUES ('from the child')"))
                    code = 0 if _until(lambda: len(_threads_on(db)) == 1, 5) else 2
                finally:
                    os._exit(code)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.05)
        else:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the forked process hung opening the database")
        assert os.waitstatus_to_exitcode(status) == 0
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT body FROM t").scalars().all() == ["from the child"]
    finally:
        engine.dispose()
