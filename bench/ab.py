"""Two versions of the stack, measured alternately: ``python -m bench.ab --help``.

This machine's speed moves by up to two times from one minute to the next (the calibration loop
of ``bench.run`` took 118-302 ms within one session), so one run of each version says little. This
runs ``bench.run`` for side A and side B in turns, A B B A A B ..., each side with its own flags,
environment and, optionally, its own commit (checked out in a temporary git worktree and run from
there). It then prints one row per run and the median of each side, from the runs' JSON files:

    python -m bench.ab --pairs 5 --a-flags "--outbox-workers 1" --b-flags "--outbox-workers 2" \\
        --out bench/results/run11-ab -- --db sqlite --workers 2 --no-naive --crm-duration 0 \\
        --crm-burst 0 --duration 10 --drain-timeout 10 --wait-quiet 20
    python -m bench.ab --a-rev 4bd4903 --pairs 3 --out /tmp/ab -- --db sqlite ...
    python -m bench.ab --a-rev 4bd4903 --same-bench ... -- --crm pipedrive ...   # only the product differs
    python -m bench.ab --summarize bench/results/run11-ab-a-*.json -- bench/results/run11-ab-b-*.json

Figures only: nothing here judges a difference. Medians of a handful of runs still move with the
machine; compare them with the spread the table shows.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = (
    "run",
    "code",
    "calibration (ms)",
    "webhook p99 at the webhook goal's rate",
    "SMS p50 / p99 at the SMS goal's rate",
    "texts queued at the end of that step",
    "machine busy at that step",
    "CRM p50 / p99 in the CRM phase",
    "jobs put back untried (whole run)",
)


def figures(path: Path) -> dict[str, Any]:
    """What one ``bench.run --out`` file says about the two latency goals' steps."""
    data = json.loads(path.read_text(encoding="utf-8"))
    [cell] = [c for c in data["cells"] if c.get("system") != "naive"][:1] or [None]
    if cell is None:
        raise SystemExit(f"{path}: no textback cell")
    rates = {}
    for key in cell.get("verdicts", {}):
        name, _, rate = key.partition("@")
        rates[name] = rate
    web = cell["phases"].get(f"load@{rates.get('webhook_p99_ms', '200')}", {})
    sms = cell["phases"].get(f"load@{rates.get('sms_p99_ms', '100')}", {})
    crm = cell["phases"].get("crm", {}).get("crm") or {}
    synced = [v for v in crm.values() if v.get("p50_ms") is not None]
    product = data.get("product", {})
    code = product.get("commit", "?") + ("+" if product.get("uncommitted") else "")
    return {
        "file": path.name,
        "code": code,
        "calibration": (data.get("machine", {}).get("calibration_ms"), data.get("calibration_end_ms")),
        "web_p99": web.get("webhooks", {}).get("p99_ms"),
        "sms_p50": sms.get("sms", {}).get("p50_ms"),
        "sms_p99": sms.get("sms", {}).get("p99_ms"),
        "queued": (sms.get("backlog_at_end") or {}).get("sms.send", 0),
        "busy": sms.get("cpu", {}).get("machine_busy_pct"),
        # the slowest connector's figures when several are installed
        "crm_p50": max((v["p50_ms"] for v in synced), default=None),
        "crm_p99": max((v["p99_ms"] for v in synced if v.get("p99_ms") is not None), default=None),
        # every load step's SMS p99 (a --ramp adds steps), and the highest within both latency goals
        "steps": {
            float(name.removeprefix("load@")): phase.get("sms", {}).get("p99_ms")
            for name, phase in cell["phases"].items()
            if name.startswith("load@")
        },
        "within": cell.get("sustained", {}).get("within_goals"),
        "deferred": cell["job_log"].get("deferred", 0) if "job_log" in cell else None,
    }


def _ms(v: float | None) -> str:
    return "n/a" if v is None else f"{v:,.0f} ms" if v >= 100 else f"{v:.1f} ms"


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1f} %"


def _count(v: float | None) -> str:
    return "n/a" if v is None else f"{v:,.0f}"


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def table(sides: dict[str, list[Path]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    medians = []
    for side, paths in sides.items():
        rows = [figures(p) for p in paths]
        for r in rows:
            start, end = r["calibration"]
            lines.append(
                f"| {side}: `{r['file']}` | {r['code']} | {start}-{end} | {_ms(r['web_p99'])} | "
                f"{_ms(r['sms_p50'])} / {_ms(r['sms_p99'])} | {r['queued']} | {r['busy']} % | "
                f"{_ms(r['crm_p50'])} / {_ms(r['crm_p99'])} | {_count(r['deferred'])} |"
            )
        if rows:
            keys = ("web_p99", "sms_p50", "sms_p99", "crm_p50", "crm_p99")
            web, p50, p99, crm50, crm99 = (_ms(_median([r[k] for r in rows])) for k in keys)
            queued, busy = (_median([r[k] for r in rows]) for k in ("queued", "busy"))
            medians.append(
                f"| **{side}: median of {len(rows)}** | | | {web} | {p50} / {p99} | "
                f"{_count(queued)} | {_pct(busy)} | "
                f"{crm50} / {crm99} | {_count(_median([r['deferred'] for r in rows]))} |"
            )
    return "\n".join(lines + medians + ["", *steps_table(sides)])


def steps_table(sides: dict[str, list[Path]]) -> list[str]:
    """SMS p99 at every load step, and the highest step within both latency goals, per side."""
    figs = {side: [figures(p) for p in paths] for side, paths in sides.items()}
    rates = sorted({rate for rows in figs.values() for r in rows for rate in r["steps"]})
    if len(rates) < 3:
        return []  # only the two goal steps: the table above has them
    head = ["run", *(f"SMS p99 at {rate:g}/s" for rate in rates), "highest step within both goals"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    medians = []
    for side, rows in figs.items():
        for r in rows:
            cells = [_ms(r["steps"].get(rate)) for rate in rates]
            lines.append(f"| {side}: `{r['file']}` | " + " | ".join(cells) + f" | {r['within']:g}/s |")
        if rows:
            cells = [_ms(_median([r["steps"].get(rate) for r in rows])) for rate in rates]
            within = _median([r["within"] for r in rows])
            medians.append(
                f"| **{side}: median of {len(rows)}** | " + " | ".join(cells) + f" | {within:g}/s |"
            )
    return lines + medians


@contextmanager
def checkout(rev: str | None, same_bench: bool = False) -> Iterator[Path]:
    """The code to run: this checkout, or ``rev`` in a temporary worktree (with this checkout's
    ``bench/`` copied over its own when ``same_bench``: only the product then differs)."""
    if rev is None:
        yield ROOT
        return
    where = Path(tempfile.mkdtemp(prefix="textback-ab-")) / "tree"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(where), rev], check=True)
    if same_bench:
        skip = shutil.ignore_patterns("results")
        shutil.copytree(ROOT / "bench", where / "bench", dirs_exist_ok=True, ignore=skip)
    try:
        yield where
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(where)], check=False)
        subprocess.run(["git", "-C", str(ROOT), "worktree", "prune"], check=False)


def run_side(code: Path, flags: list[str], env: dict[str, str], common: list[str], out: Path) -> None:
    environ = {**os.environ, **env, "PYTHONPATH": os.pathsep.join([str(code), env.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "bench.run", *common, *flags, "--out", str(out)]
    print("+", shlex.join(command), f"(in {code})", flush=True)
    subprocess.run(command, cwd=code, env=environ, check=True, stdout=subprocess.DEVNULL)


def _env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for item in pairs:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--a-env/--b-env take KEY=VALUE, not {item!r}")
        env[key] = value
    return env


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.split("\n")[0])
    p.add_argument("--pairs", type=int, default=3, help="runs of each side")
    for side in ("a", "b"):
        p.add_argument(f"--{side}-rev", help=f"side {side.upper()}'s commit (default: this checkout)")
        p.add_argument(f"--{side}-flags", default="", help=f"bench.run flags for side {side.upper()} only")
        p.add_argument(f"--{side}-env", action="append", default=[], help="KEY=VALUE, repeatable")
    p.add_argument(
        "--same-bench", action="store_true", help="a side at another commit runs this checkout's bench/ too"
    )
    p.add_argument("--out", default="bench-ab", help="file prefix: PREFIX-a-1.json, PREFIX-b-1.json, ...")
    p.add_argument("--summarize", action="store_true", help="only print the table of existing files")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="after --: bench.run's flags for both sides")
    args = p.parse_args(argv)
    rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest
    if args.summarize:
        # FILE... -- FILE...: side A's files, then side B's
        split = rest.index("--") if "--" in rest else len(rest)
        print(table({"A": [Path(f) for f in rest[:split]], "B": [Path(f) for f in rest[split + 1 :]]}))
        return
    if not 1 <= args.pairs <= 20:
        p.error("--pairs must be 1..20")
    if "--out" in rest:
        p.error("give --out to bench.ab, not to bench.run")
    prefix = Path(args.out).resolve()
    prefix.parent.mkdir(parents=True, exist_ok=True)
    sides = {
        "A": (args.a_rev, shlex.split(args.a_flags), _env(args.a_env)),
        "B": (args.b_rev, shlex.split(args.b_flags), _env(args.b_env)),
    }
    made: dict[str, list[Path]] = {"A": [], "B": []}
    with checkout(args.a_rev, args.same_bench) as code_a, checkout(args.b_rev, args.same_bench) as code_b:
        codes = {"A": code_a, "B": code_b}
        for i in range(1, args.pairs + 1):
            for side in ("A", "B") if i % 2 else ("B", "A"):  # A B, B A, ...: neither always goes first
                _, flags, env = sides[side]
                out = Path(f"{prefix}-{side.lower()}-{i}.json")
                run_side(codes[side], flags, env, rest, out)
                made[side].append(out)
    print(table(made))


if __name__ == "__main__":
    main()
