"""Run textback's benchmarks: ``python -m bench.run --help``. Figures go to docs/benchmarks.md.

One cell = one database (SQLite or PostgreSQL) and one number of bridge (gunicorn) workers:

1. start the Twilio and CRM emulators, a fresh database (``textback db upgrade``), install the CRM
   connector (``textback connectors install --config-file``), give the CRM emulator a
   ``delay_ms`` fault on its API path, start ``textback serve --workers N`` and the outbox workers;
2. warm up (a few calls), then a CRM phase at a rate one CRM account takes (``--crm-rate``);
3. load steps at fixed arrival rates (open loop, ``bench/load.py``), each followed by a bounded wait
   for the text backlog to drain;
4. read the emulators' request logs (their own timestamps), the outbox and /proc for peak RSS.

The naive baseline (``bench/naive_app.py``) runs the same steps behind the same gunicorn settings.
Everything is bounded: a fixed number of calls per step, bounded waits, every process stopped.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import analyze
from bench.load import Signer, make_calls, run_phase
from bench.stack import NaiveStack, StackInfo, TextbackStack, emulator_requests, emulator_state

GOALS = {
    "webhook_p99_ms": 25.0,  # at 200 calls/s
    "sms_p99_ms": 250.0,  # at 100 calls/s
    "crm_p99_ms": 2000.0,  # CRM answering in 100 ms
    "hubspot_calls_per_lead": 3,
    "bridge_worker_rss_mb": 120.0,
}
WARMUP_CALLS = 20
WARMUP_RATE = 10.0


class Counter:
    """Caller numbers are unique across every phase of a cell."""

    def __init__(self) -> None:
        self.next = 0

    def take(self, n: int) -> int:
        first = self.next
        self.next += n
        return first


def machine() -> dict[str, Any]:
    cpu = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    nproc = subprocess.run(["nproc"], capture_output=True, text=True, check=False).stdout.strip()
    return {
        "nproc": int(nproc or 0),
        "cpu": cpu,
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def wait_drained(stack: TextbackStack, kinds: tuple[str, ...], timeout: float) -> tuple[bool, float]:
    """Wait until no job of ``kinds`` is pending or running; (drained, seconds waited)."""
    started = time.monotonic()
    while True:
        counts = stack.job_counts()
        busy = sum(counts.get(k, {}).get(s, 0) for k in kinds for s in ("pending", "running"))
        waited = time.monotonic() - started
        if busy == 0:
            return True, round(waited, 2)
        if waited > timeout:
            return False, round(waited, 2)
        time.sleep(0.25)


def backlog(counts: dict[str, dict[str, int]]) -> dict[str, int]:
    return {k: v.get("pending", 0) + v.get("running", 0) for k, v in counts.items()}


def phase(
    info: StackInfo, signer: Signer, ids: Counter, rate: float, duration: float, mode: str, timeout: float
) -> tuple[list[Any], dict[str, Any]]:
    n = max(1, round(rate * duration))
    calls = make_calls(signer, ids.take(n), n, info.numbers, mode)
    started = time.time()
    results = run_phase(info.bridge_url, calls, rate, timeout)
    return results, {
        "rate": rate,
        "duration_s": duration,
        "calls": n,
        "started": started,
        "wall_s": round(time.time() - started, 2),
    }


def run_textback_cell(args: argparse.Namespace, db: str, workers: int, steps: list[float]) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix=f"textback-bench-{db}-w{workers}-", dir=args.workdir))
    cell: dict[str, Any] = {
        "system": "textback",
        "db": db,
        "bridge_workers": workers,
        "outbox_workers": args.outbox_workers,
        "worker_batch_size": args.batch_size,
        "worker_poll_interval": args.poll_interval,
        "mode": args.mode,
        "crm": args.crm,
        "crm_latency_ms": args.crm_latency_ms,
        "workdir": str(workdir),
    }
    t0 = time.monotonic()
    with TextbackStack(
        workdir,
        db,
        workers,
        args.outbox_workers,
        args.crm,
        args.crm_latency_ms,
        mode=args.mode,
        threads=args.threads,
        poll_interval=args.poll_interval,
        batch_size=args.batch_size,
        businesses=args.businesses,
    ) as stack:
        info = stack.start()
        cell["setup_s"] = round(time.monotonic() - t0, 1)
        signer = Signer(info.public_url, info.auth_token, info.account_sid)
        ids = Counter()
        all_kinds = ("sms.send", "crm.sync")
        phase(info, signer, ids, WARMUP_RATE, WARMUP_CALLS / WARMUP_RATE, args.mode, args.timeout)
        wait_drained(stack, all_kinds, 30)
        phases: list[tuple[str, list[Any], dict[str, Any]]] = []
        if args.crm_duration > 0:
            results, meta = phase(
                info, signer, ids, args.crm_rate, args.crm_duration, args.mode, args.timeout
            )
            meta["drained"], meta["drain_s"] = wait_drained(stack, all_kinds, args.drain_timeout)
            phases.append(("crm", results, meta))
        for rate in steps:
            results, meta = phase(info, signer, ids, rate, args.duration, args.mode, args.timeout)
            counts = stack.job_counts()
            meta["backlog_at_end"] = backlog(counts)
            meta["sms_drained"], meta["sms_drain_s"] = wait_drained(stack, ("sms.send",), args.drain_timeout)
            meta["backlog_after_drain"] = backlog(stack.job_counts())
            phases.append((f"load@{rate:g}", results, meta))
            stack.procs.check_alive()
        cell["rss"] = analyze.rss_summary(stack.rss())
        cell["jobs"] = stack.job_counts()
        twilio_log = emulator_requests(info.emulators["twilio"])
        crm_logs = {
            c: (emulator_requests(info.emulators[c]), emulator_state(info.emulators[c])) for c in args.crm
        }
        lead_jobs = stack.lead_crm_jobs()
        cell["connector_state_api_calls"] = stack.connector_api_calls()
    cell["wall_s"] = round(time.monotonic() - t0, 1)
    sms_at = analyze.sms_requests(twilio_log)
    phones = {r.caller for _, results, _ in phases for r in results}
    complete = {c: analyze.complete_leads(lead_jobs, c) for c in args.crm}
    crm = {c: analyze.CrmLog(c, log, state, phones) for c, (log, state) in crm_logs.items()}
    cell["phases"] = {}
    for name, results, meta in phases:
        callers = {r.caller for r in results}
        entry: dict[str, Any] = {
            **meta,
            "webhooks": analyze.webhook_summary(results),
            "sms": analyze.sms_summary(results, sms_at),
            "crm": {},
        }
        for c, log in crm.items():
            entry["crm"][c] = log.completion_summary(results, complete[c])
            entry["crm"][c]["calls_per_lead"] = log.calls_per_lead(complete[c] & callers)
        cell["phases"][name] = entry
    cell["crm_unattributed_calls"] = {c: len(log.unattributed) for c, log in crm.items()}
    return cell


def naive_complete(state: dict[str, Any], phones: set[str]) -> set[str]:
    """Leads whose last naive CRM write (the note with the text) exists."""
    done = set()
    for note in state.get("notes", []):
        text = (note.get("properties") or {}).get("hs_note_body") or ""
        for phone in analyze._PHONE.findall(text):
            if phone in phones:
                done.add(phone)
    return done


def run_naive_cell(args: argparse.Namespace, workers: int, steps: list[float]) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix=f"textback-bench-naive-w{workers}-", dir=args.workdir))
    cell: dict[str, Any] = {
        "system": "naive",
        "bridge_workers": workers,
        "mode": args.mode,
        "crm": ["hubspot"],
        "crm_latency_ms": args.crm_latency_ms,
        "workdir": str(workdir),
    }
    t0 = time.monotonic()
    with NaiveStack(workdir, workers, args.crm_latency_ms, threads=args.threads, mode=args.mode) as stack:
        info = stack.start()
        signer = Signer(info.public_url, info.auth_token, info.account_sid)
        ids = Counter()
        phase(info, signer, ids, WARMUP_RATE, WARMUP_CALLS / WARMUP_RATE, args.mode, args.timeout)
        phases: list[tuple[str, list[Any], dict[str, Any]]] = []
        if args.crm_duration > 0:
            results, meta = phase(
                info, signer, ids, args.crm_rate, args.crm_duration, args.mode, args.timeout
            )
            phases.append(("crm", results, meta))
        for rate in steps:
            results, meta = phase(info, signer, ids, rate, args.duration, args.mode, args.timeout)
            phases.append((f"load@{rate:g}", results, meta))
            failed = sum(1 for r in results if r.error)
            if failed > 0.1 * len(results):
                meta["stopped_ramp"] = f"{failed} of {len(results)} calls failed; later steps skipped"
                break
            time.sleep(1.0)
        cell["rss"] = analyze.rss_summary(stack.rss())
        # Let the last answers finish (bounded) before reading the logs.
        time.sleep(2.0)
        twilio_log = emulator_requests(info.emulators["twilio"])
        hub_log, hub_state = (
            emulator_requests(info.emulators["hubspot"]),
            emulator_state(info.emulators["hubspot"]),
        )
    cell["wall_s"] = round(time.monotonic() - t0, 1)
    sms_at = analyze.sms_requests(twilio_log)
    phones = {r.caller for _, results, _ in phases for r in results}
    complete = naive_complete(hub_state, phones)
    crm = analyze.CrmLog("hubspot", hub_log, hub_state, phones)
    cell["hubspot_rate_limited"] = hub_state.get("rate_limited")
    cell["phases"] = {}
    for name, results, meta in phases:
        callers = {r.caller for r in results}
        cell["phases"][name] = {
            **meta,
            "webhooks": analyze.webhook_summary(results),
            "sms": analyze.sms_summary(results, sms_at),
            "crm": {
                "hubspot": {
                    **crm.completion_summary(results, complete),
                    "calls_per_lead": crm.calls_per_lead(complete & callers),
                }
            },
        }
    return cell


# -- verdicts and the printed report --------------------------------------------------------------


def step_ok(entry: dict[str, Any]) -> bool:
    """A step is sustained when the texting path meets its goals and nothing piles up."""
    web, sms = entry["webhooks"], entry["sms"]
    rate = entry["rate"]
    pending_sms = entry.get("backlog_at_end", {}).get("sms.send", 0)
    return (
        web["calls_failed"] == 0
        and web["p99_ms"] is not None
        and web["p99_ms"] <= GOALS["webhook_p99_ms"]
        and sms["p99_ms"] is not None
        and sms["p99_ms"] <= GOALS["sms_p99_ms"]
        and pending_sms <= max(5, 0.25 * rate)
        and entry.get("sms_drained", True)
    )


def crm_keeps_up(entry: dict[str, Any], crm: str) -> bool:
    block = entry["crm"].get(crm) or {}
    return bool(block.get("p99_ms") is not None and block["p99_ms"] <= GOALS["crm_p99_ms"])


def sustained(cell: dict[str, Any]) -> dict[str, Any]:
    loads = [(e["rate"], e) for n, e in cell["phases"].items() if n.startswith("load@")]
    best = 0.0
    for rate, entry in sorted(loads):
        if not step_ok(entry):
            break
        best = rate
    crm_best = 0.0
    crm_name = cell["crm"][0]
    for name, entry in sorted(cell["phases"].items(), key=lambda kv: kv[1]["rate"]):
        if crm_keeps_up(entry, crm_name):
            crm_best = max(crm_best, entry["rate"])
        elif name.startswith("load@"):
            break
    return {
        "texting_calls_per_s": best,
        "crm_calls_per_s": crm_best,
        "note": "highest step with webhook p99 <= 25 ms, SMS p99 <= 250 ms, no errors and no SMS backlog; "
        "CRM: highest rate whose CRM p99 <= 2 s",
    }


def verdicts(cell: dict[str, Any], sms_rate: float, web_rate: float) -> dict[str, Any]:
    phases = cell["phases"]
    out: dict[str, Any] = {}
    web = phases.get(f"load@{web_rate:g}")
    if web:
        p99 = web["webhooks"]["p99_ms"]
        out[f"webhook_p99_ms_at_{web_rate:g}"] = {"value": p99, "met": p99 is not None and p99 <= 25}
    sms = phases.get(f"load@{sms_rate:g}")
    if sms:
        p99 = sms["sms"]["p99_ms"]
        out[f"sms_p99_ms_at_{sms_rate:g}"] = {"value": p99, "met": p99 is not None and p99 <= 250}
    crm_phase = phases.get("crm")
    if crm_phase:
        for c, block in crm_phase["crm"].items():
            out[f"{c}_sync_p99_ms_at_{crm_phase['rate']:g}"] = {
                "value": block["p99_ms"],
                "met": block["p99_ms"] is not None and block["p99_ms"] <= 2000,
            }
            cpl = block.get("calls_per_lead", {})
            if c == "hubspot" and cpl.get("leads"):
                out["hubspot_calls_per_new_lead"] = {
                    "value": cpl["max"],
                    "mean": cpl["mean"],
                    "met": cpl["max"] <= 3,
                }
    bw = cell["rss"].get("bridge worker", {}).get("peak_mb_max")
    out["bridge_worker_peak_rss_mb"] = {"value": bw, "met": bw is not None and bw <= 120}
    return out


def fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.1f}" if v >= 10 else f"{v:.2f}"
    return str(v)


def print_cell(cell: dict[str, Any]) -> None:
    head = (
        f"== {cell['system']} db={cell.get('db', '-')} bridge workers={cell['bridge_workers']} "
        f"outbox workers={cell.get('outbox_workers', '-')} mode={cell['mode']} wall={cell['wall_s']}s"
    )
    print(head)
    print(
        f"{'phase':<12}{'calls':>6}{'web p50':>9}{'p99':>8}{'p99.9':>8}{'fail':>6}{'sms p50':>9}{'p99':>8}"
        f"{'sms miss':>9}{'crm p50':>9}{'p99':>9}{'crm done':>9}{'calls/lead':>11}  backlog"
    )
    for name, e in cell["phases"].items():
        w, s = e["webhooks"], e["sms"]
        c = next(iter(e["crm"].values()), {})
        print(
            f"{name:<12}{e['calls']:>6}{fmt(w['p50_ms']):>9}{fmt(w['p99_ms']):>8}{fmt(w['p99.9_ms']):>8}"
            f"{w['calls_failed']:>6}{fmt(s['p50_ms']):>9}{fmt(s['p99_ms']):>8}{s['missing']:>9}"
            f"{fmt(c.get('p50_ms')):>9}{fmt(c.get('p99_ms')):>9}{c.get('complete', 0):>9}"
            f"{fmt(c.get('calls_per_lead', {}).get('mean')):>11}  {e.get('backlog_at_end', '')}"
        )
    print("peak RSS (MB):", {k: v["peak_mb_each"] for k, v in cell["rss"].items()})
    if "sustained" in cell:
        print(
            "sustained:",
            cell["sustained"]["texting_calls_per_s"],
            "calls/s (texting);",
            cell["sustained"]["crm_calls_per_s"],
            "calls/s (CRM)",
        )
    if "verdicts" in cell:
        print(
            "goals:",
            {
                k: ("met" if v["met"] else "NOT met") + f" ({fmt(v['value'])})"
                for k, v in cell["verdicts"].items()
            },
        )
    sys.stdout.flush()


def ratios(ours: dict[str, Any], naive: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, e in ours["phases"].items():
        n = naive["phases"].get(name)
        if not n:
            continue
        crm = ours["crm"][0] if "hubspot" not in ours["crm"] else "hubspot"
        out[name] = {
            "webhook_p99": analyze.ratio(e["webhooks"]["p99_ms"], n["webhooks"]["p99_ms"]),
            "sms_p99": analyze.ratio(e["sms"]["p99_ms"], n["sms"]["p99_ms"]),
            "crm_p99": analyze.ratio((e["crm"].get(crm) or {}).get("p99_ms"), n["crm"]["hubspot"]["p99_ms"]),
            "naive_webhook_p99_ms": n["webhooks"]["p99_ms"],
            "naive_calls_failed": n["webhooks"]["calls_failed"],
        }
    out["sustained_texting"] = analyze.ratio(
        ours["sustained"]["texting_calls_per_s"], naive["sustained"]["texting_calls_per_s"]
    )
    ours_rss = ours["rss"].get("bridge worker", {}).get("peak_mb_max")
    naive_rss = naive["rss"].get("bridge worker", {}).get("peak_mb_max")
    out["bridge_worker_rss"] = analyze.ratio(ours_rss, naive_rss)
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    p.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    p.add_argument("--workers", type=int, default=2, help="bridge (gunicorn) workers")
    p.add_argument("--threads", type=int, default=4, help="threads per gunicorn worker (serve's default)")
    p.add_argument("--outbox-workers", type=int, default=2, help="`textback worker` processes")
    p.add_argument("--rate", type=float, default=200.0, help="webhook goal rate, calls/s")
    p.add_argument("--sms-rate", type=float, default=100.0, help="SMS goal rate, calls/s")
    p.add_argument(
        "--ramp", default=None, help="comma-separated step rates (default: the SMS rate, then --rate)"
    )
    p.add_argument("--duration", type=float, default=20.0, help="seconds per load step")
    p.add_argument("--crm-rate", type=float, default=1.0, help="calls/s in the CRM phase")
    p.add_argument("--crm-duration", type=float, default=15.0, help="seconds of the CRM phase (0: skip)")
    p.add_argument("--crm-latency-ms", type=int, default=100, help="CRM emulator answer delay")
    p.add_argument("--crm", default=None, help="CRM connectors to install (default: hubspot, else webhook)")
    p.add_argument("--businesses", type=int, default=1, help="businesses (each with its own CRM install)")
    p.add_argument("--mode", choices=["forward", "ring_through"], default="forward")
    p.add_argument("--poll-interval", type=float, default=0.2, help="worker.poll_interval (product default)")
    p.add_argument("--batch-size", type=int, default=10, help="worker.batch_size (product default)")
    p.add_argument("--timeout", type=float, default=15.0, help="webhook answer timeout (Twilio's is 15 s)")
    p.add_argument("--drain-timeout", type=float, default=20.0, help="max wait for a backlog to drain")
    p.add_argument("--no-naive", action="store_true", help="skip the naive baseline")
    p.add_argument(
        "--matrix",
        action="store_true",
        help="SQLite and PostgreSQL x 1, 2, 4 bridge workers (plus the naive baseline per count)",
    )
    p.add_argument("--matrix-workers", default="1,2,4")
    p.add_argument("--matrix-dbs", default="sqlite,postgres")
    p.add_argument("--out", default=None, help="write every figure as JSON here")
    p.add_argument("--workdir", default=None, help="parent of the per-cell directories (logs, config)")
    args = p.parse_args(argv)
    if args.crm is None:
        from connectors import emulators, registry

        have = set(emulators.available()) & set(registry.available())
        args.crm = ["hubspot"] if "hubspot" in have else ["webhook"]
    else:
        args.crm = [c.strip() for c in args.crm.split(",") if c.strip()]
    steps = [float(x) for x in args.ramp.split(",")] if args.ramp else [args.sms_rate, args.rate]
    args.steps = sorted(set(steps))
    total_calls = sum(args.steps) * args.duration + args.crm_rate * args.crm_duration
    if any(s <= 0 for s in args.steps) or args.duration <= 0 or total_calls > 200_000:
        p.error("rates and durations must be positive, and a cell may send at most 200,000 calls")
    if not 1 <= args.workers <= 16 or not 1 <= args.outbox_workers <= 32:
        p.error("--workers must be 1..16 and --outbox-workers 1..32")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    report: dict[str, Any] = {
        "machine": machine(),
        "command": "python -m bench.run " + " ".join(sys.argv[1:]),
        "goals": GOALS,
        "cells": [],
        "naive": [],
        "ratios": [],
    }
    print("machine:", report["machine"])
    if args.matrix:
        dbs = [d.strip() for d in args.matrix_dbs.split(",")]
        counts = [int(w) for w in args.matrix_workers.split(",")]
    else:
        dbs, counts = [args.db], [args.workers]
    started = time.monotonic()
    naive_by_workers: dict[int, dict[str, Any]] = {}
    for workers in counts:
        if args.no_naive:
            break
        naive = run_naive_cell(args, workers, args.steps)
        naive["sustained"] = sustained(naive)
        naive_by_workers[workers] = naive
        report["naive"].append(naive)
        print_cell(naive)
    for db in dbs:
        for workers in counts:
            cell = run_textback_cell(args, db, workers, args.steps)
            cell["sustained"] = sustained(cell)
            cell["verdicts"] = verdicts(cell, args.sms_rate, args.rate)
            report["cells"].append(cell)
            print_cell(cell)
            if workers in naive_by_workers:
                r = ratios(cell, naive_by_workers[workers])
                report["ratios"].append({"db": db, "bridge_workers": workers, **r})
                print("ratios to naive (ours / naive):", json.dumps(r))
    report["wall_s"] = round(time.monotonic() - started, 1)
    print(f"total wall time: {report['wall_s']} s")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
        print("figures written to", args.out)


if __name__ == "__main__":
    main()
