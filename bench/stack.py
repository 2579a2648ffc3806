"""Processes under test: emulators, ``textback serve`` (gunicorn), ``textback worker``, the naive app.

Everything listens on 127.0.0.1 and is started as a subprocess with its output in ``DIR/logs``.
A stack is a context manager: leaving it terminates what it started (by pid) and drops the
PostgreSQL schema it created.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import requests
import yaml

ROOT = Path(__file__).resolve().parents[1]
ACCOUNT_SID = "AC" + "be" * 16
AUTH_TOKEN = "bench-auth-token-0123456789abcdef"
PG_ADMIN_URL = os.environ.get("TEXTBACK_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
# Where each CRM emulator gets its answer delay (a `delay_ms` fault on this path prefix).
# the path prefixes of each CRM's API, which the emulator delays by --crm-latency-ms
CRM_PATHS = {"hubspot": ("/crm/",), "pipedrive": ("/api/", "/v1/"), "webhook": ("/hooks/",)}
CRMS = tuple(CRM_PATHS)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def business_number(index: int) -> str:
    return f"+1312555{100 + index:04d}"


def business(index: int, mode: str) -> dict[str, Any]:
    """One business: texting allowed all day, no line-type lookup, no send delay."""
    return {
        "id": f"bench-{index}",
        "name": f"Bench Business {index}",
        "timezone": "America/Chicago",
        "numbers": [business_number(index)],
        "staff_phones": [f"+1312555{900 + index:04d}"],
        "mode": mode,
        "ring_timeout": 20,
        "hours": {d: ["00:00-24:00"] for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")},
        "booking_link": "https://book.example.com/bench",
        "policy": {
            "min_ring_seconds": 4,
            "cooldown_hours": 12,
            "sending_window": {"start": "00:00", "end": "23:59"},
            "lookup_line_type": False,
        },
    }


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path


@dataclass
class Database:
    """A fresh SQLite file or a fresh PostgreSQL schema (selected through the search_path)."""

    kind: str
    directory: Path
    url: str = ""
    schema: str | None = None

    def create(self) -> str:
        if self.kind == "sqlite":
            self.url = f"sqlite:///{(self.directory / 'textback.db').resolve()}"
            return self.url
        from sqlalchemy import create_engine, text

        self.schema = "bench_" + uuid.uuid4().hex[:12]
        admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f"CREATE SCHEMA {self.schema}"))
        admin.dispose()
        self.url = f"{PG_ADMIN_URL}?options=-csearch_path%3D{self.schema}"
        return self.url

    def drop(self) -> None:
        if self.schema is None:
            return
        from sqlalchemy import create_engine, text

        admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE"))
        admin.dispose()
        self.schema = None

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        """A read that never takes SQLite's write lock (the product's engine begins IMMEDIATE)."""
        if self.kind == "sqlite":
            path = self.url.removeprefix("sqlite:///")
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=15)
            try:
                return [tuple(r) for r in conn.execute(sql).fetchall()]
            finally:
                conn.close()
        from sqlalchemy import create_engine, text

        engine = create_engine(self.url)
        try:
            with engine.connect() as conn:
                return [tuple(r) for r in conn.execute(text(sql)).all()]
        finally:
            engine.dispose()


def peak_rss_kb(pid: int) -> dict[str, int]:
    """VmHWM (peak resident set) and VmRSS of a live process, in kB, from /proc/<pid>/status."""
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = int(value.split()[0])
    except (OSError, ValueError):
        pass
    return out


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        return [int(p) for p in text.split()]
    except OSError:
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text()
                except OSError:
                    continue
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
        return found


class Processes:
    """Spawns subprocesses with logs and stops exactly those (by pid) at the end."""

    def __init__(self, directory: Path, env: dict[str, str] | None = None) -> None:
        self.dir = directory
        self.log_dir = directory / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.env = dict(os.environ)
        self.env.pop("TEXTBACK_CONFIG", None)
        self.env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self.env.update(env or {})
        self.procs: list[Proc] = []

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Proc:
        log_path = self.log_dir / f"{name}.log"
        log = open(log_path, "ab")
        popen = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env={**self.env, **(env or {})}, cwd=str(ROOT)
        )
        log.close()
        proc = Proc(name, popen, log_path)
        self.procs.append(proc)
        return proc

    def textback(self, name: str, *args: str) -> Proc:
        return self.spawn(name, [sys.executable, "-m", "bridge.cli", *args])

    def run(self, *args: str, env: dict[str, str] | None = None) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "bridge.cli", *args],
            capture_output=True,
            text=True,
            cwd=str(ROOT),
            env={**self.env, **(env or {})},
            check=False,
            timeout=120,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"textback {' '.join(args[:3])} failed: {(result.stderr or result.stdout)[-2000:]}"
            )
        return result.stdout

    def roles(self) -> dict[str, list[int]]:
        """Process roots by role: outbox workers together, each emulator and the bridge apart."""
        out: dict[str, list[int]] = {}
        for p in self.procs:
            role = "outbox workers" if p.name.startswith("worker-") else p.name
            out.setdefault(role, []).append(p.popen.pid)
        return out

    def check_alive(self) -> None:
        for proc in self.procs:
            if proc.popen.poll() is not None:
                tail = proc.log.read_text(errors="replace")[-1500:]
                raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{tail}")

    def wait_http(self, urls: list[str], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        for url in urls:
            while True:
                self.check_alive()
                try:
                    if requests.get(url, timeout=2).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{url} did not come up within {timeout:.0f}s (logs in {self.log_dir})"
                    )
                time.sleep(0.1)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in self.procs:
            try:
                proc.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait(timeout=5)
        self.procs.clear()


def add_delay(emulator_url: str, path: str, delay_ms: int) -> None:
    """Every matching request answers ``delay_ms`` later, until reset (the fault has no count)."""
    if delay_ms <= 0:
        return
    r = requests.post(
        f"{emulator_url}/_emulator/faults", json={"path": path, "delay_ms": delay_ms}, timeout=5
    )
    r.raise_for_status()


def emulator_requests(emulator_url: str) -> list[dict[str, Any]]:
    r = requests.get(f"{emulator_url}/_emulator/requests", timeout=120)
    r.raise_for_status()
    return list(r.json()["requests"])


def emulator_state(emulator_url: str) -> dict[str, Any]:
    r = requests.get(f"{emulator_url}/_emulator/state", timeout=120)
    r.raise_for_status()
    return dict(r.json())


@dataclass
class StackInfo:
    """What the load generator and the analysis need to know about a running stack."""

    bridge_url: str
    public_url: str
    auth_token: str
    account_sid: str
    numbers: list[str]
    emulators: dict[str, str] = field(default_factory=dict)


class TextbackStack:
    """Emulators, the bridge under gunicorn with N workers, K outbox workers, a fresh database."""

    def __init__(
        self,
        directory: Path,
        db_kind: str,
        bridge_workers: int,
        outbox_workers: int,
        crms: list[str],
        crm_latency_ms: int,
        mode: str = "forward",
        threads: int | None = None,
        poll_interval: float | None = None,
        batch_size: int | None = None,
        businesses: int = 1,
        log_level: str = "INFO",
        worker_nice: int = 0,
        crm_sync: dict[str, Any] | None = None,
    ) -> None:
        from core.secrets import generate_key

        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.db = Database(db_kind, self.dir)
        self.bridge_workers = bridge_workers
        self.outbox_workers = outbox_workers
        self.crms = crms
        self.crm_latency_ms = crm_latency_ms
        self.mode = mode
        self.threads = threads
        self.poll_interval = poll_interval
        self.batch_size = batch_size
        self.businesses = businesses
        self.log_level = log_level
        self.worker_nice = worker_nice
        self.crm_sync = crm_sync or {}
        self.procs = Processes(self.dir, env={"TEXTBACK_SECRET_KEY": generate_key()})
        self.config_path = self.dir / "textback.yaml"
        self.bridge: Proc | None = None
        self.workers: list[Proc] = []
        self.info: StackInfo | None = None

    def config(self, bridge_port: int, twilio_url: str) -> dict[str, Any]:
        return {
            "database_url": self.db.url,
            "public_url": f"http://127.0.0.1:{bridge_port}",
            "twilio": {
                "account_sid": ACCOUNT_SID,
                "auth_token": AUTH_TOKEN,
                "api_base_url": twilio_url,
                "timeout_seconds": 5,
            },
            # Only what a flag overrides: otherwise the product's own defaults are measured.
            "worker": {
                "lease_seconds": 30,
                **({"poll_interval": self.poll_interval} if self.poll_interval is not None else {}),
                **({"batch_size": self.batch_size} if self.batch_size is not None else {}),
            },
            "logging": {"level": self.log_level},
            "businesses": [business(i, self.mode) for i in range(self.businesses)],
        }

    def start(self) -> StackInfo:
        from connectors import emulators

        self.db.create()
        bridge_port, twilio_port = free_port(), free_port()
        twilio_url = f"http://127.0.0.1:{twilio_port}"
        public_url = f"http://127.0.0.1:{bridge_port}"
        cfg = self.config(bridge_port, twilio_url)
        self.config_path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
        src = str(self.config_path)
        self.procs.run("db", "upgrade", "--config", src)
        self.procs.textback(
            "twilio-emulator",
            "emulator",
            "twilio",
            "--port",
            str(twilio_port),
            "--account-sid",
            ACCOUNT_SID,
            "--auth-token",
            AUTH_TOKEN,
            "--bridge-url",
            public_url,
        )
        urls = {"twilio": twilio_url}
        for crm in self.crms:
            port = free_port()
            self.procs.textback(f"{crm}-emulator", "emulator", crm, "--port", str(port))
            urls[crm] = f"http://127.0.0.1:{port}"
        self.procs.wait_http([f"{u}/_emulator/health" for u in urls.values()])
        for crm in self.crms:
            settings = emulators.sandbox_settings(crm, urls[crm])
            if settings is None:
                raise RuntimeError(f"no sandbox settings for the {crm} connector")
            if self.crm_sync:
                settings["sync"] = {**(settings.get("sync") or {}), **self.crm_sync}
            path = self.dir / f"connector-{crm}.yaml"
            path.write_text(yaml.safe_dump(settings, sort_keys=False), encoding="utf-8")
            path.chmod(0o600)
            for i in range(self.businesses):
                self.procs.run(
                    "connectors",
                    "install",
                    crm,
                    "--config",
                    src,
                    "--business",
                    f"bench-{i}",
                    "--config-file",
                    str(path),
                )
            for prefix in CRM_PATHS[crm]:
                add_delay(urls[crm], prefix, self.crm_latency_ms)
        self.bridge = self.procs.textback(
            "bridge",
            "serve",
            "--config",
            src,
            "--host",
            "127.0.0.1",
            "--port",
            str(bridge_port),
            "--workers",
            str(self.bridge_workers),
            *(["--threads", str(self.threads)] if self.threads is not None else []),
        )
        # A niced worker yields the CPU to the bridge, as deploy.md suggests for a shared machine.
        nice = ["nice", "-n", str(self.worker_nice)] if self.worker_nice else []
        self.workers = [
            self.procs.spawn(
                f"worker-{i + 1}", [*nice, sys.executable, "-m", "bridge.cli", "worker", "--config", src]
            )
            for i in range(self.outbox_workers)
        ]
        self.procs.wait_http([f"{public_url}/healthz"])
        self._wait_gunicorn_workers()
        self.info = StackInfo(
            public_url,
            public_url,
            AUTH_TOKEN,
            ACCOUNT_SID,
            [business_number(i) for i in range(self.businesses)],
            urls,
        )
        return self.info

    def _wait_gunicorn_workers(self, timeout: float = 30.0) -> None:
        assert self.bridge is not None
        deadline = time.monotonic() + timeout
        while len(children(self.bridge.popen.pid)) < self.bridge_workers and time.monotonic() < deadline:
            time.sleep(0.1)

    def pids(self) -> dict[str, list[int]]:
        assert self.bridge is not None
        master = self.bridge.popen.pid
        return {
            "bridge master": [master],
            "bridge worker": children(master),
            "outbox worker": [w.popen.pid for w in self.workers],
        }

    def rss(self) -> dict[str, list[dict[str, int]]]:
        return {role: [{"pid": p, **peak_rss_kb(p)} for p in pids] for role, pids in self.pids().items()}

    def job_counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for kind, status, n in self.db.query(
            "SELECT kind, status, count(*) FROM outbox_jobs GROUP BY kind, status"
        ):
            out.setdefault(str(kind), {})[str(status)] = int(n)
        return out

    def lead_crm_jobs(self) -> dict[str, dict[str, Any]]:
        """Per lead phone: its crm.sync jobs (event, status) per connector."""
        rows = self.db.query(
            "SELECT l.phone, j.target, j.dedupe_key, j.status FROM outbox_jobs j "
            "JOIN leads l ON l.id = j.lead_id WHERE j.kind = 'crm.sync'"
        )
        out: dict[str, dict[str, Any]] = {}
        for phone, target, key, status in rows:
            event = str(key).split(":")[3] if str(key).count(":") >= 4 else "?"
            out.setdefault(str(phone), {}).setdefault(str(target), []).append((event, str(status)))
        return out

    def connector_api_calls(self) -> dict[str, int]:
        rows = self.db.query("SELECT connector_id, sum(api_calls) FROM connector_state GROUP BY connector_id")
        return {str(c): int(n or 0) for c, n in rows}

    def stop(self) -> None:
        self.procs.stop()
        try:
            self.db.drop()
        except Exception as exc:  # the run's figures matter more than a leftover schema
            print(f"warning: could not drop schema {self.db.schema}: {exc}", file=sys.stderr)

    def __enter__(self) -> TextbackStack:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class NaiveStack:
    """The naive baseline: one Flask app calling Twilio and the CRM inside the webhook."""

    def __init__(
        self,
        directory: Path,
        bridge_workers: int,
        crm_latency_ms: int,
        threads: int = 4,
        mode: str = "forward",
    ) -> None:
        self.dir = directory
        self.mode = mode
        self.dir.mkdir(parents=True, exist_ok=True)
        self.bridge_workers = bridge_workers
        self.threads = threads
        self.crm_latency_ms = crm_latency_ms
        self.procs = Processes(self.dir)
        self.bridge: Proc | None = None
        self.info: StackInfo | None = None

    def start(self) -> StackInfo:
        from connectors.hubspot.emulator import SANDBOX_TOKEN

        port, twilio_port, hubspot_port = free_port(), free_port(), free_port()
        public_url = f"http://127.0.0.1:{port}"
        urls = {"twilio": f"http://127.0.0.1:{twilio_port}", "hubspot": f"http://127.0.0.1:{hubspot_port}"}
        self.procs.textback(
            "twilio-emulator",
            "emulator",
            "twilio",
            "--port",
            str(twilio_port),
            "--account-sid",
            ACCOUNT_SID,
            "--auth-token",
            AUTH_TOKEN,
            "--bridge-url",
            public_url,
        )
        self.procs.textback("hubspot-emulator", "emulator", "hubspot", "--port", str(hubspot_port))
        self.procs.wait_http([f"{u}/_emulator/health" for u in urls.values()])
        env = {
            "NAIVE_PUBLIC_URL": public_url,
            "NAIVE_ACCOUNT_SID": ACCOUNT_SID,
            "NAIVE_AUTH_TOKEN": AUTH_TOKEN,
            "NAIVE_TWILIO_URL": urls["twilio"],
            "NAIVE_HUBSPOT_URL": urls["hubspot"],
            "NAIVE_HUBSPOT_TOKEN": SANDBOX_TOKEN,
            "NAIVE_NUMBERS": json.dumps([business_number(0)]),
            "NAIVE_MODE": self.mode,
        }
        # The same gunicorn settings as `textback serve` (bridge/server.py): gthread, timeout 30.
        self.bridge = self.procs.spawn(
            "naive-app",
            [
                sys.executable,
                "-m",
                "gunicorn",
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                str(self.bridge_workers),
                "--threads",
                str(self.threads),
                "--worker-class",
                "gthread" if self.threads > 1 else "sync",
                "--timeout",
                "30",
                "--graceful-timeout",
                "10",
                "--log-level",
                "warning",
                "bench.naive_app:create_app()",
            ],
            env=env,
        )
        self.procs.wait_http([f"{public_url}/healthz"])
        for prefix in CRM_PATHS["hubspot"]:
            add_delay(urls["hubspot"], prefix, self.crm_latency_ms)
        deadline = time.monotonic() + 30
        while len(children(self.bridge.popen.pid)) < self.bridge_workers and time.monotonic() < deadline:
            time.sleep(0.1)
        self.info = StackInfo(public_url, public_url, AUTH_TOKEN, ACCOUNT_SID, [business_number(0)], urls)
        return self.info

    def pids(self) -> dict[str, list[int]]:
        assert self.bridge is not None
        master = self.bridge.popen.pid
        return {"bridge master": [master], "bridge worker": children(master)}

    def rss(self) -> dict[str, list[dict[str, int]]]:
        return {role: [{"pid": p, **peak_rss_kb(p)} for p in pids] for role, pids in self.pids().items()}

    def stop(self) -> None:
        self.procs.stop()

    def __enter__(self) -> NaiveStack:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


# -- CPU accounting: where the CPU went, and how much of the machine the benchmark had ---------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _proc_cpu(pid: int) -> tuple[int, str]:
    """(utime + stime in ticks, comm) of a live process; (0, '') when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0, ""
    comm = stat[stat.index("(") + 1 : stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12]), comm


def _tree(roots: list[int]) -> set[int]:
    seen: set[int] = set()
    todo = list(roots)
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        todo.extend(children(pid))
    return seen


@dataclass
class CpuSample:
    at: float
    busy: int  # machine-wide busy ticks (all CPUs)
    roles: dict[str, int]  # ticks per role of the benchmark's own processes
    postgres: int  # ticks of every postgres process (ours and anybody else's)


def cpu_sample(roles: dict[str, list[int]]) -> CpuSample:
    """``roles`` maps a name to root pids (each counted with its children); "load generator" is us."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    busy = sum(fields[:8]) - idle
    ticks = {"load generator": _proc_cpu(os.getpid())[0]}
    for role, roots in roles.items():
        ticks[role] = ticks.get(role, 0) + sum(_proc_cpu(p)[0] for p in _tree(roots))
    pg = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            n, comm = _proc_cpu(int(entry.name))
            if comm.startswith("postgres"):
                pg += n
    return CpuSample(time.monotonic(), busy, ticks, pg)


def cpu_share(before: CpuSample, after: CpuSample, calls: int = 0) -> dict[str, Any]:
    """Percent of the whole machine (nproc x wall time) over the interval, and CPU ms per call."""
    capacity = max(1e-9, (after.at - before.at) * CLK_TCK * (os.cpu_count() or 1))
    busy = (after.busy - before.busy) / capacity * 100
    roles = {r: after.roles.get(r, 0) - before.roles.get(r, 0) for r in after.roles}
    ours = sum(roles.values()) / capacity * 100
    # Backends that exit between the samples take their ticks with them: clip at zero (approximate).
    pg = max(0, after.postgres - before.postgres) / capacity * 100
    out: dict[str, Any] = {
        "roles_pct": {r: round(t / capacity * 100, 2) for r, t in roles.items()},
        "machine_busy_pct": round(busy, 1),
        "benchmark_pct": round(ours, 1),
        "postgres_pct": round(pg, 1),
        "outside_pct": round(max(0.0, busy - ours - pg), 1),
    }
    if calls:
        per_call = {r: round(t * 1000 / CLK_TCK / calls, 2) for r, t in roles.items()}
        per_call["postgres (all)"] = round(
            max(0, after.postgres - before.postgres) * 1000 / CLK_TCK / calls, 2
        )
        out["cpu_ms_per_call"] = per_call
    return out


def wait_quiet(max_wait: float, threshold_pct: float = 10.0) -> dict[str, Any]:
    """Wait (at most ``max_wait`` s) until other work uses less than ``threshold_pct`` of the machine."""
    started = time.monotonic()
    while True:
        a = cpu_sample({})
        time.sleep(2.0)
        share = cpu_share(a, cpu_sample({}))
        quiet = share["outside_pct"] + share["postgres_pct"] < threshold_pct
        if quiet or time.monotonic() - started > max_wait:
            share["waited_s"] = round(time.monotonic() - started, 1)
            return share
