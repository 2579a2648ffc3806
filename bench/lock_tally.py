"""How long each kind of write transaction holds SQLite's write lock, in every process of a run.

Run a benchmark with this folder's ``lock_tally_site`` on PYTHONPATH and a directory to write to::

    TEXTBACK_LOCK_TALLY=/tmp/tally PYTHONPATH=bench/lock_tally_site \\
        python -m bench.run --db sqlite --workers 2 --no-naive --crm-duration 0 --crm-burst 0 \\
        --rate 100 --sms-rate 100 --duration 20 --wait-quiet 20
    python -m bench.lock_tally /tmp/tally --calls 2000

Each process (bridge workers, outbox workers) then times every write transaction from the moment
it holds the write queue (core/sqlite_writer.py) to its commit or rollback, and how long it waited
for it, by the code that opened the transaction; it writes its tally to ``DIR/<pid>.json`` once a
second. The report sums them: per kind of transaction, how many, and the milliseconds of lock
held per call (``--calls``: the missed calls of the run, warm-up included). Diagnostics only: the
stack walk costs a few microseconds per transaction.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

OURS = ("/core/", "/bridge/", "/connectors/")
SKIP = ("/sqlalchemy/", "/core/db.py", "/core/sqlite_writer.py", "contextlib.py", "/bench/lock_tally")


def _site() -> str:
    """The textback function that opened the transaction (the first frame outside the plumbing)."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename
        if not any(s in name for s in SKIP) and any(o in name for o in OURS):
            return f"{Path(name).parent.name}/{Path(name).name}:{frame.f_code.co_name}"
        frame = frame.f_back  # type: ignore[assignment]
    return "?"


def install(directory: str) -> None:
    from core import sqlite_writer

    conn_cls: Any = sqlite_writer.QueuedWriterConnection
    # site -> [count, waited s, held s, longest hold s, longest wait s]
    tally: dict[str, list[float]] = {}
    lock = threading.Lock()
    take, give = conn_cls.take_writer_lock, conn_cls.give_writer_lock_back

    def timed_take(self: Any) -> None:
        started = time.perf_counter()
        take(self)
        if self.writer_locked:
            self._tally = (_site(), started, time.perf_counter())

    def timed_give(self: Any) -> None:
        held = getattr(self, "_tally", None) if self.writer_locked else None
        give(self)
        if held is not None:
            site, started, got = held
            hold = time.perf_counter() - got
            self._tally = None
            with lock:
                row = tally.setdefault(site, [0, 0.0, 0.0, 0.0, 0.0])
                row[0] += 1
                row[1] += got - started
                row[2] += hold
                row[3] = max(row[3], hold)
                row[4] = max(row[4], got - started)

    conn_cls.take_writer_lock, conn_cls.give_writer_lock_back = timed_take, timed_give
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)

    def dump() -> None:
        with lock:
            data = {"argv": sys.argv, "tally": {k: list(v) for k, v in tally.items()}}
        if data["tally"]:
            (out / f"{os.getpid()}.json").write_text(json.dumps(data), encoding="utf-8")

    def every_second() -> None:
        while True:
            time.sleep(1.0)
            dump()

    threading.Thread(target=every_second, name="lock-tally", daemon=True).start()
    atexit.register(dump)


def _role(argv: list[str]) -> str:
    text = " ".join(argv)
    if " worker" in text:
        return "outbox worker"
    return "bridge" if "serve" in text or "gunicorn" in text else text[:40]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("directory", type=Path)
    p.add_argument("--calls", type=int, default=0, help="missed calls in the run, for ms of lock per call")
    args = p.parse_args()
    rows: dict[tuple[str, str], list[float]] = {}
    for path in sorted(args.directory.glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        role = _role(data["argv"])
        for site, (n, waited, held, longest, *rest) in data["tally"].items():
            row = rows.setdefault((role, site), [0, 0.0, 0.0, 0.0, -1.0])
            row[0] += n
            row[1] += waited
            row[2] += held
            row[3] = max(row[3], longest)
            row[4] = max(row[4], rest[0] if rest else -1.0)  # -1: a tally from before the longest wait
    if not rows:
        raise SystemExit(f"no tallies in {args.directory}")
    total = sum(r[2] for r in rows.values())
    per = f" | ms held per call ({args.calls} calls)" if args.calls else ""
    print(
        f"| process | transaction | count | mean hold | longest | mean wait | longest wait "
        f"| share of the lock{per} |"
    )
    print("|---|---|---|---|---|---|---|---|" + ("---|" if args.calls else ""))
    for (role, site), (n, waited, held, longest, most) in sorted(rows.items(), key=lambda kv: -kv[1][2]):
        line = (
            f"| {role} | `{site}` | {int(n)} | {1000 * held / n:.2f} ms | {1000 * longest:.1f} ms "
            f"| {1000 * waited / n:.2f} ms | {f'{1000 * most:.1f} ms' if most >= 0 else 'n/a'} "
            f"| {100 * held / total:.1f} %"
        )
        if args.calls:
            line += f" | {1000 * held / args.calls:.2f}"
        print(line + " |")
    if args.calls:
        print(f"\nall: {1000 * total / args.calls:.2f} ms of lock held per missed call")


if __name__ == "__main__":
    main()
