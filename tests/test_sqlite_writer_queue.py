"""SQLite's write lock is queued in the kernel (core.sqlite_writer), and idle claims skip it.

Observed from outside: the queue files beside the database (another process can try the
``flock`` a writer holds), a plain ``sqlite3`` connection holding SQLite's own write lock, and a
killed process. SQLite only: PostgreSQL has no database-wide write lock.
"""

from __future__ import annotations

import fcntl
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from core import outbox, sqlite_writer
from core.db import make_engine, reading, session_factory, transaction
from core.outbox import Outbox


@pytest.fixture
def sqlite_url(tmp_path: Path) -> Iterator[str]:
    url = f"sqlite:///{tmp_path / 'textback.db'}"
    eng = make_engine(url)
    from tests.schema import migrate

    migrate(eng)
    eng.dispose()
    yield url


def _path(url: str) -> str:
    return url.removeprefix("sqlite:///")


def _held_by_someone(lock_file: str) -> bool:
    """True when some connection holds the queue lock: our own probe cannot take it."""
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops a lock this probe took
    return False


def _engine(url: str, background: bool = False) -> Engine:
    return make_engine(url, background=background)


def test_a_write_transaction_holds_the_queue_until_it_commits(sqlite_url: str) -> None:
    eng = _engine(sqlite_url)
    factory = session_factory(eng)
    writer = _path(sqlite_url) + "-writer"
    try:
        with transaction(factory) as s:
            s.execute(text("SELECT 1"))
            assert _held_by_someone(writer)
        assert not _held_by_someone(writer)
        with reading(factory) as s:  # a read never queues for the write lock
            s.execute(text("SELECT 1"))
            assert not _held_by_someone(writer)
        with pytest.raises(RuntimeError), transaction(factory) as s:
            s.execute(text("SELECT 1"))
            raise RuntimeError("roll back")
        assert not _held_by_someone(writer)  # a rollback gives it back too
    finally:
        eng.dispose()


def test_a_workers_write_also_holds_the_background_queue(sqlite_url: str) -> None:
    """Workers queue behind one another first, so a webhook's write competes with one of them."""
    bridge, worker = _engine(sqlite_url), _engine(sqlite_url, background=True)
    background = _path(sqlite_url) + "-background"
    try:
        with transaction(session_factory(worker)) as s:
            s.execute(text("SELECT 1"))
            assert _held_by_someone(background)
        with transaction(session_factory(bridge)) as s:
            s.execute(text("SELECT 1"))
            assert not _held_by_someone(background)
        assert not _held_by_someone(background)
    finally:
        bridge.dispose()
        worker.dispose()


def test_a_writer_waits_in_the_queue_and_goes_when_the_holder_commits(sqlite_url: str) -> None:
    first, second = _engine(sqlite_url), _engine(sqlite_url)
    holding, release = threading.Event(), threading.Event()
    order: list[str] = []

    def hold() -> None:
        with transaction(session_factory(first)) as s:
            outbox.enqueue(s, kind="crm.sync", target="hubspot", dedupe_key="first")
            holding.set()
            release.wait(10)
            order.append("first commits")

    def write() -> None:
        with transaction(session_factory(second)) as s:
            outbox.enqueue(s, kind="crm.sync", target="hubspot", dedupe_key="second")
            s.flush()
            order.append("second writes")

    try:
        holder = threading.Thread(target=hold)
        holder.start()
        assert holding.wait(10)
        waiter = threading.Thread(target=write)
        waiter.start()
        waiter.join(0.5)
        assert waiter.is_alive() and order == []  # queued behind the holder, not failed
        release.set()
        holder.join(10)
        waiter.join(10)
        assert order == ["first commits", "second writes"]
        with reading(session_factory(second)) as s:
            assert s.execute(text("SELECT COUNT(*) FROM outbox_jobs")).scalar() == 2
    finally:
        release.set()
        first.dispose()
        second.dispose()


def test_a_writer_killed_while_it_holds_the_queue_frees_it(sqlite_url: str, tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys, time
        from sqlalchemy import text
        from core.db import make_engine, session_factory, transaction
        eng = make_engine({sqlite_url!r}, background=True)
        with transaction(session_factory(eng)) as s:
            s.execute(text("SELECT 1"))
            print("holding", flush=True)
            time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "holding"
        assert _held_by_someone(_path(sqlite_url) + "-writer")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        eng = _engine(sqlite_url, background=True)
        try:
            with transaction(session_factory(eng)) as s:
                outbox.enqueue(s, kind="crm.sync", target="hubspot", dedupe_key="after-kill")
        finally:
            eng.dispose()
        assert not _held_by_someone(_path(sqlite_url) + "-writer")
        assert not _held_by_someone(_path(sqlite_url) + "-background")
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_claim_with_nothing_ready_does_not_wait_for_the_write_lock(sqlite_url: str) -> None:
    """Idle worker threads look without the write lock: only a claim that finds work queues for it."""
    eng = _engine(sqlite_url, background=True)
    box = Outbox(session_factory(eng), "w")
    other = sqlite3.connect(_path(sqlite_url), isolation_level=None)
    result: list[object] = []
    try:
        other.execute("BEGIN IMMEDIATE")  # SQLite's own write lock, held by a non-textback writer
        claimer = threading.Thread(target=lambda: result.append(box.claim(10)), daemon=True)
        claimer.start()
        claimer.join(5)
        assert result == [[]]  # answered at once; before, it waited out the busy timeout (15 s)
    finally:
        other.execute("ROLLBACK")
        other.close()
    with transaction(session_factory(eng)) as s:
        outbox.enqueue(s, kind="crm.sync", target="hubspot", dedupe_key="ready")
    claimed = box.claim(10)
    assert [j.target for j in claimed] == ["hubspot"]  # with work ready, it claims as before
    eng.dispose()


def _order_of_writes(holder: Engine, writers: list[tuple[Engine, str, bool]]) -> list[str]:
    """The order in which ``writers`` (engine, name, urgent) write after ``holder`` lets go.

    Each starts while ``holder`` holds the lock, in the order given, and waits before the next.
    """
    holding, release = threading.Event(), threading.Event()
    order: list[str] = []

    def hold() -> None:
        with transaction(session_factory(holder)) as s:
            s.execute(text("SELECT 1"))
            holding.set()
            release.wait(10)

    def write(eng: Engine, who: str, urgent: bool) -> None:
        if urgent:
            sqlite_writer.urgent_thread()
        with transaction(session_factory(eng)) as s:
            outbox.enqueue(s, kind="crm.sync", target="hubspot", dedupe_key=who)
            s.flush()
            order.append(who)

    threads = [threading.Thread(target=hold)]
    try:
        threads[0].start()
        assert holding.wait(10)
        for writer in writers:
            t = threading.Thread(target=write, args=writer)
            t.start()
            threads.append(t)
            t.join(0.3)
        assert order == []  # every one of them queued behind the holder
    finally:
        release.set()
        for t in threads:
            t.join(10)
    return order


def test_webhook_writes_waiting_go_before_a_workers_write(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While bridge writers wait for the lock, a worker's write lets them go first."""
    # Longer than the pauses below, so that the order does not depend on the machine's speed.
    monkeypatch.setattr(sqlite_writer, "YIELD_AT_MOST_S", 5.0)
    holder, worker = _engine(sqlite_url), _engine(sqlite_url, background=True)
    bridges = [_engine(sqlite_url), _engine(sqlite_url)]
    try:
        # In arrival order: a webhook, a worker, another webhook.
        writers = [(bridges[0], "bridge 1"), (worker, "worker"), (bridges[1], "bridge 2")]
        order = _order_of_writes(holder, [(eng, who, False) for eng, who in writers])
        assert sorted(order[:2]) == ["bridge 1", "bridge 2"] and order[2] == "worker"
    finally:
        for eng in (holder, worker, *bridges):
            eng.dispose()


def test_a_texts_write_goes_before_crm_writes_queued_ahead_of_it(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Among worker writes, a text's (an urgent thread's) goes first, even past CRM writes already queued."""
    monkeypatch.setattr(sqlite_writer, "BULK_YIELD_AT_MOST_S", 5.0)
    engines = {who: _engine(sqlite_url, background=True) for who in ("holder", "crm 1", "text", "crm 2")}
    try:
        # In arrival order: a CRM write, a text's, another CRM write.
        writers = [(engines[who], who, who == "text") for who in ("crm 1", "text", "crm 2")]
        order = _order_of_writes(engines["holder"], writers)
        assert order[0] == "text" and sorted(order[1:]) == ["crm 1", "crm 2"]
    finally:
        for eng in engines.values():
            eng.dispose()


def test_a_text_in_a_mixed_batch_writes_as_urgently_as_the_text_lane(sqlite_url: str) -> None:
    """A general thread's writes are urgent inside its text only: the urgency does not leak past it."""
    eng = _engine(sqlite_url, background=True)
    urgent = _path(sqlite_url) + "-urgent"
    # The background writers' turn, taken from outside: a worker's write queues for it.
    turn = os.open(_path(sqlite_url) + "-background", os.O_RDWR | os.O_CREAT, 0o600)
    text_done, push_next = threading.Event(), threading.Event()

    def write() -> None:
        with transaction(session_factory(eng)) as s:
            s.execute(text("SELECT 1"))

    def general_thread() -> None:
        with sqlite_writer.urgent():
            write()  # its text
        text_done.set()
        assert push_next.wait(10)
        write()  # a CRM push, in the same thread

    seen: list[bool] = []
    t = threading.Thread(target=general_thread)
    try:
        fcntl.flock(turn, fcntl.LOCK_EX)
        t.start()
        t.join(0.3)
        seen.append(_held_by_someone(urgent))  # a text waiting for its turn says so
        fcntl.flock(turn, fcntl.LOCK_UN)
        assert text_done.wait(10)
        fcntl.flock(turn, fcntl.LOCK_EX)
        push_next.set()
        t.join(0.3)
        seen.append(_held_by_someone(urgent))  # the push after it does not
        fcntl.flock(turn, fcntl.LOCK_UN)
        t.join(20)
        assert not t.is_alive() and seen == [True, False]
    finally:
        push_next.set()
        os.close(turn)
        eng.dispose()
