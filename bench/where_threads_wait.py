"""Where a process's threads spend their time, from a py-spy profile taken with ``--idle``.

Take the profile of a running bridge or outbox worker during a benchmark step::

    py-spy record --idle --threads -r 100 -d 12 -f raw -o worker.txt -p PID
    python -m bench.where_threads_wait worker.txt --threads worker-text

Prints the share of the matching threads' samples by what they were doing (the innermost textback
frame and the innermost frame of all), then, for the samples spent queueing for SQLite's write
lock (``core/sqlite_writer.py``), the transaction each was about to open. ``--idle`` is what makes
waiting visible: without it py-spy only samples threads that run. A ``.gz`` profile is read as is.
"""

from __future__ import annotations

import argparse
import gzip
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

OURS = re.compile(r"\((core|bridge|connectors)/")
SITE_PACKAGES = re.compile(r"\(/\S*?site-packages/")


def samples(path: Path, threads: str) -> Iterator[tuple[list[str], int]]:
    """(frames outermost first, count) per line of a py-spy raw file, for threads matching ``threads``."""
    pattern = re.compile(threads)
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    for line in raw.decode("utf-8").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        if pattern.search(frames[0]):
            yield frames[1:], int(count)


def _short(frame: str) -> str:
    return SITE_PACKAGES.sub("(", OURS.sub("(", frame))


def doing(path: Path, threads: str) -> tuple[int, Counter[tuple[str, str]]]:
    total, shares = 0, Counter[tuple[str, str]]()
    for frames, n in samples(path, threads):
        total += n
        ours = [f for f in frames if OURS.search(f)]
        shares[(_short(ours[-1]) if ours else "?", _short(frames[-1]) if frames else "?")] += n
    return total, shares


def lock_waits(path: Path, threads: str, depth: int = 4) -> Counter[str]:
    """Samples queueing for the write lock, by the textback frames that led to the queue."""
    waits = Counter[str]()
    for frames, n in samples(path, threads):
        ours = [_short(f) for f in frames if OURS.search(f)]
        at = next((i for i, f in enumerate(ours) if "take_writer_lock" in f), None)
        if at is not None:
            waits[" > ".join(ours[max(0, at - depth) : at])] += n
    return waits


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("profile", type=Path, help="a py-spy raw profile (record -f raw --idle --threads)")
    p.add_argument("--threads", default=".", help="a regular expression on the thread's name")
    p.add_argument("--top", type=int, default=15)
    args = p.parse_args()
    total, shares = doing(args.profile, args.threads)
    if not total:
        raise SystemExit(f"no samples of threads matching {args.threads!r} in {args.profile}")
    print(f"{total} samples")
    for (frame, leaf), n in shares.most_common(args.top):
        print(f"{100 * n / total:5.1f} %  {frame}  [{leaf}]")
    waits = lock_waits(args.profile, args.threads)
    if waits:
        print("\nqueued for the write lock, by the transaction about to open:")
        for site, n in waits.most_common(args.top):
            print(f"{100 * n / total:5.1f} %  {site}")


if __name__ == "__main__":
    main()
