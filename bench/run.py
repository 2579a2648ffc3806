"""Run textback's benchmarks: ``python -m bench.run --help``. Figures go to docs/benchmarks.md.

One cell = one database (SQLite or PostgreSQL) and one number of bridge (gunicorn) workers:

1. start the Twilio and CRM emulators and a fresh database (``textback db upgrade``), install the
   CRM connector (``textback connectors install --config-file``), give the CRM emulator a
   ``delay_ms`` fault on its API path, start ``textback serve --workers N`` and the outbox workers;
2. warm up (a few calls), then a CRM phase at a rate one CRM account can take (``--crm-rate``);
3. load steps at fixed arrival rates (open loop, ``bench/load.py``), each followed by a bounded wait
   for the text backlog to drain;
4. read the emulators' request logs (their own timestamps), the outbox, and /proc for peak RSS.

The naive baseline (``bench/naive_app.py``) runs the same phases behind the same gunicorn settings.
Everything is bounded: a fixed number of calls per step, bounded waits, every process stopped.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from bench import analyze
from bench.load import Result, Signer, make_calls, run_phase
from bench.stack import (
    ROOT,
    NaiveStack,
    StackInfo,
    TextbackStack,
    cpu_sample,
    cpu_share,
    emulator_requests,
    emulator_state,
    wait_quiet,
)

GOALS = {
    "webhook_p99_ms": 25.0,  # at 200 calls/s
    "sms_p99_ms": 250.0,  # at 100 calls/s
    "crm_p99_ms": 2000.0,  # CRM answering in 100 ms
    "hubspot_calls_per_lead": 3,
    "bridge_worker_rss_mb": 120.0,
}
# A short burst, so every gunicorn thread opens its database connection before anything is measured;
# 8 calls are 48 HubSpot calls, well inside one 10-second window of the connector's 100-call budget.
WARMUP_CALLS = 8
WARMUP_RATE = 40.0
CRM_WINDOW_S = 10  # the HubSpot manifest's burst window (textback's limiter uses fixed windows)
Phase = tuple[str, list[Result], dict[str, Any]]


def product_version() -> dict[str, Any]:
    """The commit the product code was at, and the files changed outside bench/ and docs/ (read-only git)."""

    def git(*argv: str) -> str:
        result = subprocess.run(["git", *argv], capture_output=True, text=True, check=False, cwd=str(ROOT))
        return result.stdout.rstrip("\n")

    changed = [line[3:] for line in git("status", "--porcelain").splitlines()
               if not line[3:].startswith(("bench/", "docs/"))]  # fmt: skip
    return {"commit": git("rev-parse", "--short", "HEAD").strip(), "uncommitted": changed}


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
        "calibration_ms": calibration_ms(),
    }


def calibration_ms() -> float:
    """CPU milliseconds of a fixed piece of Python (dict, str, JSON), the quickest of five.

    The model name says little: two sessions' "AMD EPYC" machines ran the same code at speeds a
    factor of two apart, and one machine's speed moves from minute to minute. Taken at the start
    and the end of a run, this says how fast the machine was, so that runs compare.
    """
    best = float("inf")
    for _ in range(5):
        started = time.process_time()
        table = {str(i): [i, i * 2, f"caller-{i}"] for i in range(50_000)}
        json.loads(json.dumps(table))
        best = min(best, time.process_time() - started)
    return round(best * 1000, 1)


class Driver:
    """Sends the phases of one cell to one running stack; callers are unique across the cell."""

    def __init__(self, info: StackInfo, roles: dict[str, list[int]], args: argparse.Namespace) -> None:
        self.info = info
        self.roles = roles
        self.args = args
        self.signer = Signer(info.public_url, info.auth_token, info.account_sid)
        self.next_caller = 0

    def phase(self, rate: float, duration: float) -> tuple[list[Result], dict[str, Any]]:
        n = max(1, round(rate * duration))
        calls = make_calls(self.signer, self.next_caller, n, self.info.numbers, self.args.mode)
        self.next_caller += n
        before, started = cpu_sample(self.roles), time.time()
        results = run_phase(self.info.bridge_url, calls, rate, self.args.timeout)
        meta = {
            "rate": rate,
            "duration_s": duration,
            "calls": n,
            "started": started,
            "wall_s": round(time.time() - started, 2),
            "cpu": cpu_share(before, cpu_sample(self.roles), n),
        }
        return results, meta


def wait_drained(stack: TextbackStack, kinds: tuple[str, ...], timeout: float) -> tuple[bool, float]:
    """Wait until no job of ``kinds`` is pending or running; (drained, seconds waited)."""
    if stack.outbox_workers == 0:
        return False, 0.0  # bridge only: nothing runs the outbox
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


def new_workdir(args: argparse.Namespace, name: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"textback-bench-{name}-", dir=args.workdir))


def done_with(workdir: Path, args: argparse.Namespace, ok: bool) -> None:
    if ok and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)


def run_textback_cell(args: argparse.Namespace, db: str, workers: int) -> dict[str, Any]:
    workdir = new_workdir(args, f"{db}-w{workers}")
    cell: dict[str, Any] = {
        "system": "textback",
        "db": db,
        "bridge_workers": workers,
        "gunicorn_threads": args.threads,
        "outbox_workers": args.outbox_workers,
        "worker_batch_size": args.batch_size,
        "worker_poll_interval": args.poll_interval,
        "worker_nice": args.worker_nice,
        "crm_sync": args.crm_sync,
        "mode": args.mode,
        "crm": args.crm,
        "crm_latency_ms": args.crm_latency_ms,
        "workdir": str(workdir),
    }
    cell["quiet_before"] = wait_quiet(args.wait_quiet)
    cell["product_at_start"] = product_version()
    t0 = time.monotonic()
    stack = TextbackStack(
        workdir, db, workers, args.outbox_workers, args.crm, args.crm_latency_ms, mode=args.mode,
        threads=args.threads, poll_interval=args.poll_interval, batch_size=args.batch_size,
        businesses=args.businesses, worker_nice=args.worker_nice, crm_sync=args.crm_sync,
    )  # fmt: skip
    phases: list[Phase] = []
    warmup: list[Result] = []
    ok = False
    try:
        info = stack.start()
        cell["setup_s"] = round(time.monotonic() - t0, 1)
        driver = Driver(info, stack.procs.roles(), args)
        every = ("sms.send", "crm.sync")
        warmup, _ = driver.phase(WARMUP_RATE, WARMUP_CALLS / WARMUP_RATE)
        wait_drained(stack, every, 30)
        if args.idle_seconds > 0:
            # No traffic at all: what the processes cost while waiting (outbox polling, gunicorn).
            before = cpu_sample(stack.procs.roles())
            time.sleep(args.idle_seconds)
            idle = cpu_share(before, cpu_sample(stack.procs.roles()))
            cell["idle_cpu"] = {**idle, "seconds": args.idle_seconds}
            print("idle CPU (% of the machine):", idle)
        if args.crm and args.crm_duration > 0:
            # Start the CRM phase in a fresh rate window, so the warm-up's calls do not count against it.
            time.sleep(CRM_WINDOW_S - time.time() % CRM_WINDOW_S + 0.05)
        if args.crm_duration > 0:
            results, meta = driver.phase(args.crm_rate, args.crm_duration)
            meta["drained"], meta["drain_s"] = wait_drained(stack, every, args.drain_timeout)
            phases.append(("crm", results, meta))
        if args.crm and args.crm_burst > 0:
            # Leads arriving faster than one CRM account's budget: jobs queue up and are claimed
            # together, so this is where batch requests show (HubSpot calls per lead, loaded).
            time.sleep(CRM_WINDOW_S - time.time() % CRM_WINDOW_S + 0.05)
            results, meta = driver.phase(args.crm_burst_rate, args.crm_burst / args.crm_burst_rate)
            meta["drained"], meta["drain_s"] = wait_drained(stack, every, args.crm_burst_wait)
            phases.append(("crm-burst", results, meta))
        for rate in args.steps:
            results, meta = driver.phase(rate, args.duration)
            meta["backlog_at_end"] = backlog(stack.job_counts())
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
        ok = True
    finally:
        stack.stop()
        cell["job_log"] = job_log(stack.procs.log_dir)
        done_with(workdir, args, ok)
    cell["wall_s"] = round(time.monotonic() - t0, 1)
    cell["product_at_end"] = product_version()
    if args.raw_out:
        write_raw(args.raw_out, f"{db}-w{workers}", phases, twilio_log, crm_logs)
    sms_at = analyze.sms_requests(twilio_log)
    phones = {r.caller for _, results, _ in phases for r in results} | {r.caller for r in warmup}
    complete = {c: analyze.complete_leads(lead_jobs, c) for c in args.crm}
    crm = {c: analyze.CrmLog(c, log, state, phones) for c, (log, state) in crm_logs.items()}
    cell["crm_emulator"] = {
        c: {"api_calls": state.get("api_calls"), "rate_limited_429": state.get("rate_limited"),
            "unattributed_calls": len(crm[c].unattributed)}
        for c, (_log, state) in crm_logs.items()
    }  # fmt: skip
    cell["phases"] = {}
    for name, results, meta in phases:
        callers = {r.caller for r in results}
        entry: dict[str, Any] = {
            **meta,
            "webhooks": analyze.webhook_summary(results),
            "sms": analyze.sms_summary(results, sms_at),
            "trend": analyze.trend(results, sms_at),
            "sms_by_second": analyze.sms_by_second(results, sms_at),
            "crm": {},
        }
        for c, log in crm.items():
            entry["crm"][c] = log.completion_summary(results, complete[c])
            entry["crm"][c]["calls_per_lead"] = log.calls_per_lead(complete[c] & callers)
        cell["phases"][name] = entry
    return cell


def job_log(log_dir: Path) -> dict[str, Any]:
    """The outbox workers' job outcomes over the whole cell (warm-up included), from their logs:
    how many jobs were done, failed or deferred (put back untried), and why they were deferred."""
    outcomes: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    for path in sorted(log_dir.glob("worker-*.log")):
        for line in path.read_text(errors="replace").splitlines():
            if '"event": "job ' not in line:
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            outcome = str(entry.get("event", ""))[len("job ") :]
            outcomes[outcome] += 1
            if outcome == "deferred":
                reasons[str(entry.get("reason"))] += 1
    return {**dict(outcomes), "deferred_reasons": dict(reasons)}


def write_raw(
    path: str, cell: str, phases: list[Phase], twilio_log: list[Any], crm_logs: dict[str, Any]
) -> None:
    """Every call of the steps and the emulators' request logs, for timelines of single leads."""
    calls = [
        {"phase": name, "caller": r.caller, "scheduled": r.scheduled, "sent": r.sent,
         "missed_at": r.missed_at, "latencies": r.latencies, "error": r.error}
        for name, results, _ in phases for r in results
    ]  # fmt: skip
    raw = {"calls": calls, "twilio": twilio_log, "crm": {c: log for c, (log, _state) in crm_logs.items()}}
    out = Path(path)
    out = out.with_name(f"{out.stem}-{cell}{out.suffix}") if out.suffix else out / f"{cell}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(raw))


def naive_complete(state: dict[str, Any], phones: set[str]) -> set[str]:
    """Leads whose last naive CRM write (the note with the text) exists."""
    done = set()
    for note in state.get("notes", []):
        text = (note.get("properties") or {}).get("hs_note_body") or ""
        for phone in analyze.PHONE.findall(text):
            if phone in phones:
                done.add(phone)
    return done


def run_naive_cell(args: argparse.Namespace, workers: int) -> dict[str, Any]:
    workdir = new_workdir(args, f"naive-w{workers}")
    cell: dict[str, Any] = {
        "system": "naive",
        "bridge_workers": workers,
        "gunicorn_threads": args.threads,
        "mode": args.mode,
        "crm": ["hubspot"],
        "crm_latency_ms": args.crm_latency_ms,
        "workdir": str(workdir),
    }
    cell["quiet_before"] = wait_quiet(args.wait_quiet)
    t0 = time.monotonic()
    stack = NaiveStack(workdir, workers, args.crm_latency_ms, threads=args.threads or 4, mode=args.mode)
    phases: list[Phase] = []
    warmup: list[Result] = []
    ok = False
    try:
        info = stack.start()
        driver = Driver(info, stack.procs.roles(), args)
        warmup, _ = driver.phase(WARMUP_RATE, WARMUP_CALLS / WARMUP_RATE)
        if args.crm_duration > 0:
            results, meta = driver.phase(args.crm_rate, args.crm_duration)
            phases.append(("crm", results, meta))
        for rate in args.naive_steps:
            results, meta = driver.phase(rate, args.duration)
            phases.append((f"load@{rate:g}", results, meta))
            failed = sum(1 for r in results if r.error)
            t = analyze.trend(results, {})
            growing = (t["web_p50_last_ms"] or float("inf")) > 1.5 * (t["web_p50_first_ms"] or 0) + 1000
            if failed > 0.1 * len(results) or growing:
                meta["stopped_ramp"] = f"{failed} of {len(results)} calls failed or answers kept slowing"
                break
            time.sleep(1.0)
        cell["rss"] = analyze.rss_summary(stack.rss())
        time.sleep(2.0)  # the last CRM writes of answered calls
        twilio_log = emulator_requests(info.emulators["twilio"])
        hub_log, hub_state = (
            emulator_requests(info.emulators["hubspot"]),
            emulator_state(info.emulators["hubspot"]),
        )
        ok = True
    finally:
        stack.stop()
        cell["job_log"] = job_log(stack.procs.log_dir)
        done_with(workdir, args, ok)
    cell["wall_s"] = round(time.monotonic() - t0, 1)
    sms_at = analyze.sms_requests(twilio_log)
    phones = {r.caller for _, results, _ in phases for r in results} | {r.caller for r in warmup}
    complete = naive_complete(hub_state, phones)
    crm = analyze.CrmLog("hubspot", hub_log, hub_state, phones)
    cell["crm_emulator"] = {"hubspot": {"api_calls": hub_state.get("api_calls"),
                                        "rate_limited_429": hub_state.get("rate_limited")}}  # fmt: skip
    cell["phases"] = {}
    for name, results, meta in phases:
        callers = {r.caller for r in results}
        block = crm.completion_summary(results, complete)
        block["calls_per_lead"] = crm.calls_per_lead(complete & callers)
        cell["phases"][name] = {
            **meta,
            "webhooks": analyze.webhook_summary(results),
            "sms": analyze.sms_summary(results, sms_at),
            "trend": analyze.trend(results, sms_at),
            "crm": {"hubspot": block},
        }
    return cell


# -- verdicts and the printed report --------------------------------------------------------------


def bridge_only(entry: dict[str, Any]) -> bool:
    return (
        "sms_drained" in entry
        and entry.get("sms_drain_s") == 0.0
        and entry["sms"]["missing"] == entry["calls"]
    )


def step_ok(entry: dict[str, Any]) -> bool:
    """A step is sustained when the texting path meets its goals and no text piles up."""
    web, sms = entry["webhooks"], entry["sms"]
    if bridge_only(entry):  # --outbox-workers 0: only the webhook answers count
        return bool(web["calls_failed"] == 0 and (web["p99_ms"] or 1e9) <= GOALS["webhook_p99_ms"])
    pending_sms = entry.get("backlog_at_end", {}).get("sms.send", 0)
    return bool(
        web["calls_failed"] == 0
        and web["p99_ms"] is not None
        and web["p99_ms"] <= GOALS["webhook_p99_ms"]
        and sms["p99_ms"] is not None
        and sms["p99_ms"] <= GOALS["sms_p99_ms"]
        and pending_sms <= max(5, 0.25 * entry["rate"])
        and entry.get("sms_drained", True)
    )


def sustained(cell: dict[str, Any]) -> dict[str, Any]:
    loads = sorted((e["rate"], e) for n, e in cell["phases"].items() if n.startswith("load@"))
    best = relaxed = 0.0
    for rate, entry in loads:
        if not step_ok(entry):
            break
        best = rate
    for rate, entry in loads:
        if not analyze.keeps_up(entry):
            break
        relaxed = rate
    crm_best = 0.0
    if cell["crm"]:
        ordered = sorted(cell["phases"].values(), key=lambda e: e["rate"])
        for entry in ordered:
            block = entry["crm"].get(cell["crm"][0]) or {}
            if block.get("p99_ms") is None or block["p99_ms"] > GOALS["crm_p99_ms"]:
                break
            crm_best = entry["rate"]
    return {"within_goals": best, "keeps_up": relaxed, "crm_within_goal": crm_best}


def verdicts(cell: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    phases = cell["phases"]
    out: dict[str, Any] = {}
    web = phases.get(f"load@{args.rate:g}")
    if web:
        p99 = web["webhooks"]["p99_ms"]
        out[f"webhook_p99_ms@{args.rate:g}"] = {"value": p99, "met": p99 is not None and p99 <= 25}
    sms = phases.get(f"load@{args.sms_rate:g}")
    if sms:
        p99 = sms["sms"]["p99_ms"]
        out[f"sms_p99_ms@{args.sms_rate:g}"] = {"value": p99, "met": p99 is not None and p99 <= 250}
    crm_phase = phases.get("crm")
    if crm_phase:
        for c, block in crm_phase["crm"].items():
            out[f"{c}_sync_p99_ms@{crm_phase['rate']:g}"] = {
                "value": block["p99_ms"],
                "met": block["p99_ms"] is not None and block["p99_ms"] <= 2000,
            }
            cpl = block.get("calls_per_lead", {})
            if c == "hubspot" and cpl.get("leads"):
                # A lone lead (1 call/s): no job waits for another, so nothing is batched.
                out["hubspot_calls_per_new_lead_alone"] = {
                    "value": cpl["mean"],
                    "max": cpl["max"],
                    "met": cpl["mean"] <= 3,
                }
    burst = phases.get("crm-burst")
    if burst:
        cpl = burst["crm"].get("hubspot", {}).get("calls_per_lead", {})
        if cpl.get("leads"):
            # Batch requests are attributed to one of their leads, so the mean is requests / leads.
            out["hubspot_calls_per_new_lead_queued"] = {
                "value": cpl["mean"],
                "leads": cpl["leads"],
                "of": burst["calls"],
                "met": cpl["mean"] <= 3,
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
    print(
        f"== {cell['system']} db={cell.get('db', '-')} bridge workers={cell['bridge_workers']} "
        f"outbox workers={cell.get('outbox_workers', '-')} mode={cell['mode']} wall={cell['wall_s']}s "
        f"(outside load before: {cell['quiet_before']})"
    )
    print(
        f"{'phase':<10}{'calls':>6}{'web p50':>9}{'p99':>8}{'p99.9':>9}{'fail':>6}{'sms p50':>9}{'p99':>9}"
        f"{'no sms':>7}{'crm p50':>9}{'p99':>9}{'synced':>7}{'calls/lead':>11}{'cpu ours/out%':>14}  backlog"
    )
    for name, e in cell["phases"].items():
        w, s = e["webhooks"], e["sms"]
        c = next(iter(e["crm"].values()), {})
        cpu = e.get("cpu", {})
        print(
            f"{name:<10}{e['calls']:>6}{fmt(w['p50_ms']):>9}{fmt(w['p99_ms']):>8}{fmt(w['p99.9_ms']):>9}"
            f"{w['calls_failed']:>6}{fmt(s['p50_ms']):>9}{fmt(s['p99_ms']):>9}{s['missing']:>7}"
            f"{fmt(c.get('p50_ms')):>9}{fmt(c.get('p99_ms')):>9}{c.get('complete', 0):>7}"
            f"{fmt(c.get('calls_per_lead', {}).get('mean')):>11}"
            f"{fmt(cpu.get('benchmark_pct')) + '/' + fmt(cpu.get('outside_pct')):>14}"
            f"  {e.get('backlog_at_end', '')}"
        )
    print("peak RSS (MB):", {k: v["peak_mb_each"] for k, v in cell["rss"].items()})
    if "sustained" in cell:
        print("sustained calls/s:", cell["sustained"])
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
    crm = "hubspot" if "hubspot" in ours["crm"] else None
    for name, e in ours["phases"].items():
        n = naive["phases"].get(name)
        if not n:
            continue
        ours_crm = (e["crm"].get(crm) or {}).get("p99_ms") if crm else None
        out[name] = {
            "webhook_p99": analyze.ratio(e["webhooks"]["p99_ms"], n["webhooks"]["p99_ms"]),
            "sms_p99": analyze.ratio(e["sms"]["p99_ms"], n["sms"]["p99_ms"]),
            "crm_p99": analyze.ratio(ours_crm, n["crm"]["hubspot"]["p99_ms"]),
            "naive_calls_failed": n["webhooks"]["calls_failed"],
            "naive_crm_synced": n["crm"]["hubspot"]["complete"],
        }
    for key in ("within_goals", "keeps_up"):
        out[f"sustained_{key}"] = analyze.ratio(ours["sustained"][key], naive["sustained"][key])
    ours_rss = ours["rss"].get("bridge worker", {}).get("peak_mb_max")
    naive_rss = naive["rss"].get("bridge worker", {}).get("peak_mb_max")
    out["bridge_worker_rss"] = analyze.ratio(ours_rss, naive_rss)
    return out


def sync_settings(text: str) -> dict[str, Any]:
    """``key=value,...`` with YAML values (``false``, ``15``), as in a connector's ``sync:`` block."""
    out: dict[str, Any] = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"{item!r} is not key=value")
        out[key.strip()] = yaml.safe_load(value)
    return out


def rates(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    add = p.add_argument
    add("--db", choices=["sqlite", "postgres"], default="sqlite")
    add("--workers", type=int, default=2, help="bridge (gunicorn) workers")
    add("--threads", type=int, default=None, help="threads per gunicorn worker (default: serve's)")
    add("--outbox-workers", type=int, default=2, help="`textback worker` processes (0: the bridge alone)")
    add("--batch-size", type=int, default=None, help="worker.batch_size (default: the product's)")
    add("--poll-interval", type=float, default=None, help="worker.poll_interval (default: the product's)")
    add(
        "--crm-sync",
        type=sync_settings,
        default={},
        help="the CRM install's sync settings, e.g. deal_on=first_reply,create_task=false "
        "(default: the product's)",
    )
    add("--worker-nice", type=int, default=0, help="run the outbox workers under `nice -n N` (0: not)")
    add("--rate", type=float, default=200.0, help="the webhook goal's rate, calls/s")
    add("--sms-rate", type=float, default=100.0, help="the SMS goal's rate, calls/s")
    add("--ramp", default="", help="more step rates, comma-separated (the two goal rates are always run)")
    add("--duration", type=float, default=20.0, help="seconds per load step")
    add("--crm-rate", type=float, default=1.0, help="calls/s in the CRM phase")
    add("--crm-duration", type=float, default=15.0, help="seconds of the CRM phase (0: skip it)")
    add("--crm-latency-ms", type=int, default=100, help="the CRM emulator's answer delay")
    add("--crm-burst", type=int, default=0, help="calls in a CRM burst phase after the CRM phase "
        "(faster than the CRM budget, so jobs queue up and batch); 0: skip it")
    add("--crm-burst-rate", type=float, default=20.0, help="calls/s of the CRM burst")
    add("--crm-burst-wait", type=float, default=90.0, help="max wait for the burst's CRM jobs to finish")
    add(
        "--crm",
        default=None,
        help="CRM connectors, comma-separated, or none (default: hubspot, else webhook)",
    )
    add("--businesses", type=int, default=1, help="businesses, each with its own CRM install")
    add("--mode", choices=["forward", "ring_through"], default="forward")
    add("--timeout", type=float, default=15.0, help="webhook answer timeout (Twilio's is 15 s)")
    add("--drain-timeout", type=float, default=20.0, help="max wait for a text backlog to drain")
    add("--naive-ramp", default="10,25", help="extra naive step rates below ours, to find where it holds")
    add("--no-naive", action="store_true", help="skip the naive baseline")
    add("--idle-seconds", type=float, default=0.0, help="measure CPU with no traffic for this long first")
    add(
        "--matrix",
        action="store_true",
        help="SQLite and PostgreSQL x 1, 2, 4 bridge workers, naive per count",
    )
    add("--matrix-workers", default="1,2,4")
    add("--matrix-dbs", default="sqlite,postgres")
    add("--wait-quiet", type=float, default=0.0, help="before each cell, wait up to this many seconds "
        "for other load on the machine to stop")  # fmt: skip
    add("--out", default=None, help="write every figure as JSON here")
    add("--workdir", default=None, help="parent of the per-cell directories (config, logs)")
    add("--keep", action="store_true", help="keep each cell's directory (config, logs)")
    add("--raw-out", help="also write every call and the emulators' request logs (FILE-<cell>.json)")
    args = p.parse_args(argv)
    if args.crm is None:
        from connectors import emulators, registry

        have = set(emulators.available()) & set(registry.available())
        args.crm = ["hubspot"] if "hubspot" in have else ["webhook"]
    elif args.crm == "none":
        args.crm = []
    else:
        args.crm = [c.strip() for c in args.crm.split(",") if c.strip()]
    from bench.stack import CRMS

    if any(c not in CRMS for c in args.crm):
        p.error(f"--crm: choose from {', '.join(CRMS)} or none")
    args.steps = sorted(set(rates(args.ramp)) | {args.sms_rate, args.rate})
    args.naive_steps = sorted(set(rates(args.naive_ramp)) | set(args.steps))
    total = sum(args.naive_steps) * args.duration + args.crm_rate * args.crm_duration
    if any(s <= 0 for s in args.naive_steps) or args.duration <= 0 or args.crm_rate <= 0 or total > 200_000:
        p.error("rates and durations must be positive, and a cell may send at most 200,000 calls")
    if not 1 <= args.workers <= 16 or not 0 <= args.outbox_workers <= 32 or not 1 <= args.businesses <= 50:
        p.error("--workers must be 1..16, --outbox-workers 0..32 and --businesses 1..50")
    if args.outbox_workers == 0:
        args.crm, args.crm_duration = [], 0.0  # bridge only: webhook answers, nothing else
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    report: dict[str, Any] = {
        "machine": machine(),
        "product": product_version(),
        "command": "python -m bench.run " + " ".join(sys.argv[1:] if argv is None else argv),
        "goals": GOALS,
        "cells": [],
        "naive": [],
        "ratios": [],
    }
    print("machine:", report["machine"])
    dbs, counts = [args.db], [args.workers]
    if args.matrix:
        dbs = [d.strip() for d in args.matrix_dbs.split(",")]
        counts = [int(w) for w in args.matrix_workers.split(",")]
    started = time.monotonic()
    naive_by_workers: dict[int, dict[str, Any]] = {}
    for workers in [] if args.no_naive else counts:
        naive = run_naive_cell(args, workers)
        naive["sustained"] = sustained(naive)
        naive_by_workers[workers] = naive
        report["naive"].append(naive)
        print_cell(naive)
    for db in dbs:
        for workers in counts:
            cell = run_textback_cell(args, db, workers)
            cell["sustained"] = sustained(cell)
            cell["verdicts"] = verdicts(cell, args)
            report["cells"].append(cell)
            print_cell(cell)
            if workers in naive_by_workers:
                r = ratios(cell, naive_by_workers[workers])
                report["ratios"].append({"db": db, "bridge_workers": workers, **r})
                print("ratios to naive (ours / naive):", json.dumps(r))
    report["wall_s"] = round(time.monotonic() - started, 1)
    report["calibration_end_ms"] = calibration_ms()
    start_ms, end_ms = report["machine"]["calibration_ms"], report["calibration_end_ms"]
    print(f"calibration: {start_ms} ms at the start, {end_ms} ms at the end")
    print(f"total wall time: {report['wall_s']} s")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
        print("figures written to", args.out)


if __name__ == "__main__":
    main()
