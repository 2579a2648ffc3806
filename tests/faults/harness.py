"""The fault suite's world: one textback (config, database, bridge, workers) and its emulators.

A :class:`World` is built per test on the test's database (SQLite or PostgreSQL, ``db_url``):
the Twilio emulator and any CRM emulators run in threads of the test process, the bridge is the
real Flask app (driven through its test client, and over real HTTP when a test needs it), and
workers are either the real Worker in-process or real ``textback`` processes forked by the
session's zygote (``tests/faults/zygote.py``).

Everything sensitive a world uses (caller numbers, message bodies, tokens, keys) is recorded in
the session's registry, and every table is dumped when the world closes, so the last test of the
suite (test_zz_leaks.py) can look for them in every log line and every dump.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import requests
from sqlalchemy import Engine, func, literal, select, text, union_all
from sqlalchemy.orm import Session, sessionmaker
from twilio.request_validator import RequestValidator
from werkzeug.datastructures import MultiDict

from bridge.app import create_app
from connectors.emulator import serve_in_thread
from connectors.emulator.base import ServerThread
from connectors.twilio.emulator import TwilioEmulator
from core import config as config_mod
from core.db import make_engine, session_factory
from core.models import Base, Message, OutboxJob, utcnow
from core.secrets import generate_key
from core.worker import Worker
from tests.conftest import ACCOUNT_SID, AUTH_TOKEN, BUSINESS_NUMBER, STAFF_PHONE
from tests.schema import migrate

ROOT = Path(__file__).resolve().parents[2]
SECOND_NUMBER = "+13125550200"
SECONDARY_TOKEN = "rotated-auth-token-9876543210"
PUBLIC = "https://textback.example.com"  # only ever a signed URL: no request goes there
NOISY = ("werkzeug", "urllib3", "twilio.http_client", "gunicorn.access")


# -- the session: logs, dumps and the registry of sensitive values ----------------------------------


class Registry:
    """Values that must never appear in a log line or (secrets) in a database dump."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()

    def add(self, kind: str, *values: str | None) -> None:
        rows = [json.dumps({"kind": kind, "value": v}) for v in values if v]
        if rows:
            with self.lock, self.path.open("a", encoding="utf-8") as f:
                f.write("\n".join(rows) + "\n")

    def load(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                row = json.loads(line)
                out.setdefault(row["kind"], set()).add(row["value"])
        return out


@dataclass
class FaultSession:
    root: Path
    logs: Path
    dumps: Path
    registry: Registry
    handler: logging.Handler | None = None

    @classmethod
    def create(cls, root: Path) -> FaultSession:
        logs, dumps = root / "logs", root / "dumps"
        logs.mkdir(parents=True, exist_ok=True)
        dumps.mkdir(parents=True, exist_ok=True)
        return cls(root, logs, dumps, Registry(root / "registry.jsonl"))

    def capture_in_process_logs(self) -> None:
        """Every record the test process logs, as the JSON lines textback's own handler writes."""
        from core import logs

        handler = logging.FileHandler(self.logs / "in-process.jsonl", encoding="utf-8")
        handler.setFormatter(logs.JsonFormatter())
        handler.addFilter(logs.ContextFilter())
        handler.setLevel(logging.DEBUG)
        root = logging.getLogger()
        root.addHandler(handler)
        self.handler = handler
        self._levels = {"": root.level, **{n: logging.getLogger(n).level for n in NOISY}}
        root.setLevel(logging.DEBUG)
        for name in NOISY:
            logging.getLogger(name).setLevel(logging.WARNING)

    def close(self) -> None:
        if self.handler is not None:
            logging.getLogger().removeHandler(self.handler)
            self.handler.close()
            for name, level in self._levels.items():
                logging.getLogger(name).setLevel(level)


# -- the zygote: real textback processes, forked ------------------------------------------------------


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEXTBACK_", "PROMETHEUS_"))}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


class Zygote:
    """Client of tests/faults/zygote.py (one per session)."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.lock = threading.Lock()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.faults.zygote"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log.open("ab"),
            cwd=ROOT,
            env=clean_env(),
        )
        ready = self._read(timeout=60)
        assert ready.get("ready"), ready

    def _read(self, timeout: float = 30) -> dict[str, Any]:
        import select

        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                raise RuntimeError(f"the zygote did not answer; see {self.log}")
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 1)
                if not chunk:
                    raise RuntimeError(f"the zygote exited; see {self.log}")
                line += chunk
        return dict(json.loads(line))

    def ask(self, **cmd: Any) -> dict[str, Any]:
        with self.lock:
            assert self.proc.stdin is not None
            self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
            self.proc.stdin.flush()
            return self._read()

    def spawn(self, name: str, argv: list[str], log: Path, env: dict[str, str] | None = None) -> int:
        return int(self.ask(cmd="spawn", name=name, argv=argv, env=env or {}, log=str(log))["pid"])

    def status(self) -> dict[str, Any]:
        return self.ask(cmd="status")

    def stop_children(self, grace: float = 10.0) -> dict[str, Any]:
        return self.ask(cmd="stop", grace=grace)

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self.ask(cmd="stop", grace=5)
            with contextlib.suppress(Exception):
                assert self.proc.stdin is not None
                self.proc.stdin.write(b'{"cmd": "exit"}\n')
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


class SharedClock:
    """time-machine in this process, followed by worker processes started with ``env()``.

    Simulated time is real time plus an offset; every shift is written to a file the zygote's
    children watch (tests/faults/zygote.py follow_clock), so all of them see the same minutes.
    """

    def __init__(self, path: Path, start: datetime) -> None:
        import time_machine

        self.path = path
        self.offset = (start - datetime.now(UTC)).total_seconds()
        self._write()
        self.coordinates = time_machine.travel(start, tick=True)
        self._started = self.coordinates.start()

    def _write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(repr(self.offset), encoding="utf-8")
        tmp.replace(self.path)

    def env(self) -> dict[str, str]:
        return {"FAULTS_CLOCK": str(self.path)}

    def shift(self, delta: float | timedelta) -> None:
        seconds = delta.total_seconds() if isinstance(delta, timedelta) else float(delta)
        self._started.shift(seconds)
        self.offset += seconds
        self._write()
        time.sleep(0.05)  # the other processes follow within ~10 ms

    def move_to(self, moment: datetime) -> None:
        self.shift((moment - datetime.now(UTC)).total_seconds())

    def stop(self) -> None:
        self.coordinates.stop()


def gunicorn_workers(arbiter_pid: int) -> list[int]:
    """The pids of a ``textback serve`` process's gunicorn workers (its children)."""
    pids: list[int] = []
    with contextlib.suppress(FileNotFoundError):
        for task in Path(f"/proc/{arbiter_pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError):
                pids += [int(p) for p in (task / "children").read_text().split()]
    return sorted(set(pids))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        if Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z"):
            return False
    except FileNotFoundError:
        pass
    except ProcessLookupError:
        return False  # reaped between the two looks
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(
    what: str,
    check: Callable[[], Any],
    timeout: float = 20.0,
    every: float = 0.05,
    diagnose: Callable[[], Any] | None = None,
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            detail = f": {diagnose()}" if diagnose else ""
            raise AssertionError(f"timed out after {timeout} s waiting for {what}{detail}")
        time.sleep(every)


# -- the world ------------------------------------------------------------------------------------------


def fault_business(**overrides: Any) -> dict[str, Any]:
    """Two Twilio numbers, forwarded calls (every call that arrives is a miss), texting all day."""
    data: dict[str, Any] = {
        "id": "bright-spark",
        "name": "Bright Spark Electric",
        "timezone": "America/Chicago",
        "numbers": [BUSINESS_NUMBER, SECOND_NUMBER],
        "staff_phones": [STAFF_PHONE],
        "mode": "forward",
        "hours": {d: ["08:00-17:00"] for d in ("mon", "tue", "wed", "thu", "fri")},
        "booking_link": "https://book.example.com/bright-spark",
        "policy": {
            "min_ring_seconds": 4,
            "cooldown_hours": 12,
            "sending_window": {"start": "00:00", "end": "00:00"},
        },
    }
    policy = overrides.pop("policy", None)
    data.update(overrides)
    if policy:
        data["policy"] = {**data["policy"], **policy}
    return data


def sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


@dataclass
class Crm:
    name: str
    emulator: Any
    server: ServerThread
    settings: dict[str, Any] = field(default_factory=dict)
    # (arrived, answered, method, path, status) of every API request, in the emulator's own clock
    answers: list[tuple[float, float, str, str, int]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.server.url

    def state(self) -> dict[str, Any]:
        return dict(requests.get(f"{self.url}/_emulator/state", timeout=10).json())

    def requests(self, prefix: str = "/") -> list[dict[str, Any]]:
        got = requests.get(f"{self.url}/_emulator/requests", timeout=10).json()["requests"]
        return [r for r in got if str(r["path"]).startswith(prefix)]

    def configure(self, **spec: Any) -> None:
        resp = requests.post(f"{self.url}/_emulator/config", json=spec, timeout=10)
        assert resp.status_code == 200, resp.text

    def fault(self, **spec: Any) -> None:
        resp = requests.post(f"{self.url}/_emulator/faults", json=spec, timeout=10)
        assert resp.status_code == 201, resp.text

    def reset_faults(self) -> None:
        with self.emulator.emulator.lock:
            self.emulator.emulator.faults.clear()


class World:
    def __init__(
        self,
        session: FaultSession,
        tmp_path: Path,
        db_url: str,
        *,
        businesses: list[dict[str, Any]] | None = None,
        http: bool = False,
        in_thread: bool = True,
        public_url: str | None = None,
        callbacks: bool = False,
        worker: dict[str, Any] | None = None,
        twilio: dict[str, Any] | None = None,
        status_delay_ms: int = 10,
        name: str = "world",
        **extra: Any,
    ) -> None:
        self.session = session
        self.tmp = tmp_path
        self.name = name
        self.db_kind = "sqlite" if db_url.startswith("sqlite") else "postgresql"
        self.crms: dict[str, Crm] = {}
        self.process_logs: dict[int, Path] = {}
        self.servers: list[ServerThread] = []
        self.closed = False
        self.twilio = TwilioEmulator(ACCOUNT_SID, AUTH_TOKEN, status_delay_ms=status_delay_ms)
        self.twilio_server = serve_in_thread(self.twilio.app)
        self.twilio_url = self.twilio_server.url
        port = free_port()
        self.port = port
        self.bridge_url = f"http://127.0.0.1:{port}"
        # With callbacks the emulator posts status callbacks to the bridge; without, public_url is
        # left unset (no callback URL is given to Twilio) unless the test names one.
        self.public_url = public_url or (self.bridge_url if (callbacks or http) else None)
        key = generate_key()
        self.key_file = tmp_path / "secret.key"
        self.key_file.write_text(key + "\n", encoding="utf-8")
        self.key_file.chmod(0o600)
        data: dict[str, Any] = {
            "database_url": db_url,
            "twilio": {
                "account_sid": ACCOUNT_SID,
                "auth_token": AUTH_TOKEN,
                "api_base_url": self.twilio_url,
                "timeout_seconds": 2,
                **(twilio or {}),
            },
            "secret_key_file": str(self.key_file),
            "worker": {
                "poll_interval": 0.05,
                "lease_seconds": 4,
                "backoff_initial": 0.2,
                "backoff_max": 1,
                "threads": 1,
                **(worker or {}),
            },
            "logging": {"level": "DEBUG"},
            "businesses": businesses or [fault_business()],
            **extra,
        }
        if self.public_url:
            data["public_url"] = self.public_url
        self.data = data
        self.config_path = tmp_path / f"{name}.yaml"
        self.write_config()
        self.config = config_mod.load(str(self.config_path))
        # In-process only: no pre-ping round trip per checkout (the processes use the defaults).
        self.engine: Engine = make_engine(self.config.database_url, **self._engine_options())
        migrate(self.engine)
        self.factory: sessionmaker[Session] = session_factory(self.engine)
        self.app = create_app(self.config, engine=self.engine)
        self.client = self.app.test_client()
        if (http or callbacks) and in_thread:
            self.servers.append(serve_in_thread(self.app, port=port))
        if self.public_url and self.public_url.startswith("http://127.0.0.1"):
            self.twilio.bridge_url = self.public_url
        session.registry.add("secret", AUTH_TOKEN, self.config.twilio.secondary_auth_token, key)
        for b in self.config.businesses:
            session.registry.add("number", *b.numbers, *b.staff_phones)

    def _engine_options(self) -> dict[str, Any]:
        return {} if self.db_kind == "sqlite" else {"pool_pre_ping": False}

    def write_config(self) -> None:
        import yaml

        self.config_path.write_text(yaml.safe_dump(self.data, sort_keys=False), encoding="utf-8")

    # -- CRMs -------------------------------------------------------------------------------------------
    def add_crm(
        self,
        name: str,
        settings: dict[str, Any] | None = None,
        sync: dict[str, Any] | None = None,
        check: bool = True,
        **emulator_kwargs: Any,
    ) -> Crm:
        from bridge.installer import install
        from bridge.runtime import Connectors
        from connectors import emulators

        module, _, cls = emulators.CLASSES[name].partition(":")
        import importlib

        emulator = getattr(importlib.import_module(module), cls)(**emulator_kwargs)
        answers: list[tuple[float, float, str, str, int]] = []
        _record_answers(emulator.app, answers)
        server = serve_in_thread(emulator.app)
        crm = Crm(name, emulator, server, answers=answers)
        self.crms[name] = crm
        base = emulators.sandbox_settings(name, server.url) or {}
        merged = {**base, **(settings or {})}
        if sync is not None:
            merged["sync"] = sync
        merged = {k: v for k, v in merged.items() if v is not None}
        crm.settings = merged
        business = self.config.businesses[0].id
        install(self.config, self.factory, name, business, merged, f"faults:{name}")
        if check:
            result = Connectors(self.config, self.factory).build(business, name).check()
            assert result.ok, (name, result)
        from connectors import registry

        secret_keys = registry.load(name).manifest.secret_keys  # what the connector declares secret
        self.session.registry.add("secret", *(str(v) for k, v in merged.items() if k in secret_keys and v))
        if "service_account_json" in merged:  # and the parts of it a leak would show
            info = json.loads(merged["service_account_json"])
            self.session.registry.add("secret", info["private_key"].split("\n")[1], info["private_key_id"])
        return crm

    def reinstall(self, name: str, settings: dict[str, Any]) -> None:
        """What ``textback connectors install`` does with new settings (a reconnect)."""
        from bridge.installer import install

        install(self.config, self.factory, name, self.config.businesses[0].id, settings, f"faults:{name}")
        self.crms[name].settings = settings

    # -- signing and posting --------------------------------------------------------------------------
    def signed_url(self, path: str) -> str:
        return f"{self.public_url or 'http://localhost'}{path}"

    @staticmethod
    def sign(url: str, params: Any, token: str = AUTH_TOKEN) -> str:
        return str(RequestValidator(token).compute_signature(url, params))

    def post(self, path: str, params: dict[str, str] | list[tuple[str, str]], token: str = AUTH_TOKEN) -> Any:
        """A signed webhook through the Flask test client (no HTTP)."""
        multi = MultiDict(params)
        signature = self.sign(self.signed_url(path), multi, token)
        body = urlencode(list(multi.items(multi=True)))
        return self.client.post(
            path,
            data=body,
            content_type="application/x-www-form-urlencoded",
            headers={"X-Twilio-Signature": signature},
        )

    def http_post(self, path: str, params: dict[str, str], base: str | None = None, **kw: Any) -> Any:
        signature = self.sign(self.signed_url(path), params)
        return requests.post(
            f"{base or self.bridge_url}{path}",
            data=params,
            headers={"X-Twilio-Signature": signature},
            timeout=kw.pop("timeout", 30),
            **kw,
        )

    def voice_params(
        self, caller: str, to: str = BUSINESS_NUMBER, call_sid: str | None = None
    ) -> dict[str, str]:
        self.session.registry.add("number", caller)
        return {
            "CallSid": call_sid or sid("CA"),
            "AccountSid": ACCOUNT_SID,
            "From": caller,
            "To": to,
            "Caller": caller,
            "Called": to,
            "CallStatus": "ringing",
            "Direction": "inbound",
            "ApiVersion": "2010-04-01",
        }

    def sms_params(
        self, caller: str, body: str, to: str = BUSINESS_NUMBER, message_sid: str | None = None
    ) -> dict[str, str]:
        self.session.registry.add("number", caller)
        if len(body) >= 16:
            self.session.registry.add("body", body)
        message_sid = message_sid or sid("SM")
        return {
            "MessageSid": message_sid,
            "SmsSid": message_sid,
            "AccountSid": ACCOUNT_SID,
            "From": caller,
            "To": to,
            "Body": body,
            "NumMedia": "0",
            "ApiVersion": "2010-04-01",
        }

    def missed_call(self, caller: str, to: str = BUSINESS_NUMBER) -> str:
        params = self.voice_params(caller, to)
        response = self.post("/twilio/voice", params)
        assert response.status_code == 200, response.get_data(as_text=True)
        return params["CallSid"]

    def text_in(self, caller: str, body: str, to: str = BUSINESS_NUMBER) -> Any:
        response = self.post("/twilio/sms", self.sms_params(caller, body, to))
        assert response.status_code == 200, response.get_data(as_text=True)
        return response

    # -- workers ----------------------------------------------------------------------------------------
    def worker(self) -> Worker:
        from bridge.runtime import build_worker

        return build_worker(self.config, self.engine)

    def drain(self, worker: Worker | None = None, timeout: float = 30.0, horizon: float = 0.0) -> None:
        """Run a worker until no job is due within ``horizon`` seconds (waiting out short backoffs)."""

        worker = worker or self.worker()
        deadline = time.monotonic() + timeout
        while True:
            if worker.run_once():
                continue
            if not self.due(horizon):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"the outbox did not drain in {timeout} s: {self.job_summary()}")
            time.sleep(0.02)

    def due(self, horizon: float = 0.0) -> int:
        """Jobs a worker could claim within ``horizon`` s (not waiting behind an earlier one)."""
        from datetime import timedelta

        from sqlalchemy import and_, exists
        from sqlalchemy.orm import aliased

        earlier = aliased(OutboxJob)
        blocked = exists().where(
            and_(
                earlier.ordering_key == OutboxJob.ordering_key,
                earlier.id < OutboxJob.id,
                earlier.status.in_(("pending", "running")),
            )
        )
        with self.factory() as s:
            return int(
                s.scalar(
                    select(func.count())
                    .select_from(OutboxJob)
                    .where(
                        OutboxJob.status.in_(("pending", "running")),
                        OutboxJob.next_attempt_at <= utcnow() + timedelta(seconds=horizon),
                        ~blocked,
                    )
                )
                or 0
            )

    def wait_done(self, timeout: float = 60.0, horizon: float = 5.0) -> dict[str, int]:
        """Wait (for workers running elsewhere) until no job is running or due within ``horizon`` s.

        Jobs scheduled further out (an SLA reminder, a quiet-hours text) are left alone; a dead job
        fails the wait at once.
        """

        def check() -> bool:
            summary = self.job_summary()
            dead = {k: n for k, n in summary.items() if k.endswith(":dead")}
            assert not dead, f"dead jobs: {summary}"
            return not any(k.endswith(":running") for k in summary) and not self.due(horizon)

        wait_for("every job to be done", check, timeout=timeout, every=0.1, diagnose=self.job_summary)
        return self.job_summary()

    # -- observing --------------------------------------------------------------------------------------
    def sent(self, to: str | None = None) -> list[dict[str, Any]]:
        with self.twilio.lock:
            return [m.summary() for m in self.twilio.messages if to is None or m.to == to]

    def twilio_requests(
        self, method: str | None = None, prefix: str = "/2010-04-01/"
    ) -> list[dict[str, Any]]:
        with self.twilio.emulator.lock:
            got = list(self.twilio.emulator.requests)
        return [r for r in got if r["path"].startswith(prefix) and (method is None or r["method"] == method)]

    def jobs(self, kind: str | None = None) -> list[OutboxJob]:
        query = select(OutboxJob).order_by(OutboxJob.id)
        if kind:
            query = query.where(OutboxJob.kind == kind)
        with self.factory() as s:
            return list(s.scalars(query))

    def job_summary(self) -> dict[str, int]:
        with self.factory() as s:
            rows = s.execute(
                select(OutboxJob.kind, OutboxJob.status, func.count()).group_by(
                    OutboxJob.kind, OutboxJob.status
                )
            ).all()
        return {f"{k}:{st}": int(n) for k, st, n in rows}

    def lead_timeline(self, phone: str) -> list[dict[str, Any]]:
        from core import leads

        with self.factory() as s:
            row = leads.find(s, self.config.businesses[0].id, phone)
            return list(leads.to_json(s, row)["timeline"]) if row else []

    def messages(self, to: str | None = None) -> list[Message]:
        query = select(Message).order_by(Message.created_at)
        if to:
            query = query.where(Message.to_number == to)
        with self.factory() as s:
            return list(s.scalars(query))

    def counts(self) -> dict[str, int]:
        parts = [
            select(literal(t.name).label("name"), select(func.count()).select_from(t).scalar_subquery())
            for t in Base.metadata.sorted_tables
        ]
        with self.engine.connect() as conn:
            return {str(name): int(n) for name, n in conn.execute(union_all(*parts))}

    def dump(self) -> str:
        """Every row of every table, as text, in a stable order."""
        lines = []
        with self.engine.connect() as conn:
            for table in Base.metadata.sorted_tables:
                rows = conn.execute(select(table).order_by(*table.primary_key.columns)).all()
                lines += [f"{table.name}: {tuple(row)}" for row in rows]
        return "\n".join(lines)

    def raw_dump(self) -> str:
        """Every table read with plain SQL (no type processing): what a pg_dump or .dump would show."""
        out = []
        with self.engine.connect() as conn:
            for table in Base.metadata.sorted_tables:
                for row in conn.execute(text(f"SELECT * FROM {table.name}")):  # noqa: S608 - our names
                    out.append(f"{table.name}: {tuple(row)}")
        return "\n".join(out)

    def close(self, dump_name: str | None = None) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            with self.twilio.lock:
                bodies = {m.body for m in self.twilio.messages} | {m.to for m in self.twilio.messages}
            self.session.registry.add("body", *(b for b in bodies if not b.startswith("+")))
            self.session.registry.add("number", *(b for b in bodies if b.startswith("+")))
            with contextlib.suppress(Exception):
                self._record_crm_secrets()
            with contextlib.suppress(Exception):
                name = dump_name or f"{self.name}-{secrets.token_hex(4)}"
                (self.session.dumps / f"{self.db_kind}-{name}.txt").write_text(
                    self.raw_dump(), encoding="utf-8"
                )
        finally:
            from tests.stack import stop_servers

            stop_servers(*self.servers, self.twilio_server, *(c.server for c in self.crms.values()))
            self.engine.dispose()

    def _record_crm_secrets(self) -> None:
        """Access tokens the OAuth emulators issued (stored encrypted: never in plain text)."""
        for crm in self.crms.values():
            auth = getattr(crm.emulator, "auth", None)
            for attr in ("access_tokens", "tokens", "refresh_tokens"):
                held = getattr(auth, attr, None)
                if isinstance(held, dict):
                    self.session.registry.add("secret", *(str(k) for k in held if len(str(k)) >= 12))


def _record_answers(app: Any, answers: list[tuple[float, float, str, str, int]]) -> None:
    from flask import request

    @app.before_request
    def _arrived() -> None:
        request.environ["faults.arrived"] = time.time()

    @app.after_request
    def _answered(response: Any) -> Any:
        if not request.path.startswith("/_emulator/"):
            arrived = request.environ.get("faults.arrived", time.time())
            answers.append((arrived, time.time(), request.method, request.path, response.status_code))
        return response


def run_threads(target: Callable[[int], Any], n: int, timeout: float = 60) -> list[Any]:
    """Run ``target(i)`` in ``n`` threads started together; returns their results (re-raises)."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=timeout)
            results[i] = target(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timeout)
    if errors:
        raise errors[0]
    return results


@contextlib.contextmanager
def worker_threads(world: World, n: int) -> Iterator[list[Worker]]:
    """``n`` in-process workers (each its own Worker, like separate processes) running until exit."""
    stop = threading.Event()
    workers = [world.worker() for _ in range(n)]
    for i, w in enumerate(workers):
        w.outbox.worker_id = f"{w.outbox.worker_id}-t{i}"
    threads = [threading.Thread(target=w.run, args=(stop,), daemon=True) for w in workers]
    for t in threads:
        t.start()
    try:
        yield workers
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)


def serve(zygote: Zygote, world: World, name: str, port: int, workers: int = 2, threads: int = 4) -> int:
    """``textback serve`` (gunicorn) for ``world``, forked by the zygote; returns the arbiter's pid."""
    log = world.session.logs / f"{world.db_kind}-{name}-{port}.log"
    argv = [
        "serve",
        "--config",
        str(world.config_path),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--threads",
        str(threads),
    ]
    pid = zygote.spawn(name, argv, log)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        with contextlib.suppress(requests.RequestException):
            return requests.get(f"{url}/healthz", timeout=1).status_code == 200
        if not alive(pid):
            raise AssertionError(f"textback serve exited; see {log}:\n{log.read_text()[-2000:]}")
        return False

    # Generous: on a loaded 2-core CI box the fault suite's other processes slow every import.
    wait_for(f"textback serve on {url}", up, timeout=90)
    wait_for("its gunicorn workers", lambda: len(gunicorn_workers(pid)) >= workers, timeout=60)
    return pid


def stop_process(pid: int, timeout: float = 15) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    with contextlib.suppress(AssertionError):
        wait_for(f"process {pid} to stop", lambda: not alive(pid), timeout=timeout)
    if alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def spawn_worker(zygote: Zygote, world: World, name: str, env: dict[str, str] | None = None) -> int:
    log = world.session.logs / f"{world.db_kind}-{name}-{secrets.token_hex(3)}.log"
    pid = zygote.spawn(name, ["worker", "--config", str(world.config_path)], log, env)
    world.process_logs[pid] = log
    return pid


def log_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of a process's log (anything else it printed is left out)."""
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
    return out
