"""Real worker processes killed with SIGKILL mid-job: nothing is lost and nothing is sent twice."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
import requests
from sqlalchemy import Engine, select

from bridge.app import create_app
from connectors.emulator import serve_in_thread
from connectors.emulator.base import ServerThread
from connectors.twilio.emulator import TwilioEmulator
from core import config as config_mod
from core import leads
from core.db import make_engine, session_factory
from core.models import OutboxJob
from core.outbox import Outbox
from tests.conftest import ACCOUNT_SID, AUTH_TOKEN, config_dict, write_config
from tests.stack import all_day_business

pytestmark = pytest.mark.slow

CALLER = "+13125550142"
MESSAGES = f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"
LEASE = 3  # must stay above twilio.timeout_seconds (2)


@dataclass
class World:
    tmp: Path
    config_path: Path
    config: config_mod.Config
    engine: Engine
    twilio_url: str
    bridge_url: str

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "bridge.cli", *args, "--config", str(self.config_path)],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.tmp,
            env=_env(),
        )

    def worker(self, name: str) -> subprocess.Popen[bytes]:
        with open(self.tmp / f"{name}.log", "wb") as log:  # the child keeps its own copy
            return subprocess.Popen(
                [sys.executable, "-m", "bridge.cli", "worker", "--config", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.tmp,
                env=_env(),
            )

    def log(self, name: str) -> str:
        path = self.tmp / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else "(no log)"

    def call(self, caller: str = CALLER) -> None:
        body = {"from": caller, "to": self.config.businesses[0].numbers[0], "outcome": "no-answer"}
        resp = requests.post(f"{self.twilio_url}/_emulator/calls", json=body, timeout=30)
        assert resp.status_code == 200, resp.text

    def requests(self) -> list[tuple[str, str]]:
        """Twilio REST requests about texts to the caller: creates (form To) and lookups (query To)."""
        got = requests.get(f"{self.twilio_url}/_emulator/requests", timeout=5).json()["requests"]
        return [
            (r["method"], r["path"])
            for r in got
            if r["path"].startswith("/2010-04-01/")
            and ((r["form"] or {}).get("To") == [CALLER] or parse_qs(r["query"]).get("To") == [CALLER])
        ]

    def sent(self) -> list[dict[str, Any]]:
        state = requests.get(f"{self.twilio_url}/_emulator/state", timeout=5).json()
        return [m for m in state["messages"] if m["to"] == CALLER]

    def job(self) -> OutboxJob:
        with session_factory(self.engine)() as s:
            [job] = s.scalars(select(OutboxJob).where(OutboxJob.kind == "sms.send"))
            return job

    def lead(self) -> dict[str, Any]:
        with session_factory(self.engine)() as s:
            row = leads.find(s, self.config.businesses[0].id, CALLER)
            assert row is not None
            return leads.to_json(s, row)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEXTBACK_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(
    what: str, check: Callable[[], Any], timeout: float = 20.0, diagnose: Callable[[], str] | None = None
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    detail = f"\n{diagnose()}" if diagnose else ""
    raise AssertionError(f"timed out after {timeout} s waiting for {what}{detail}")


def worker_id(proc: subprocess.Popen[bytes]) -> str:
    return f"{socket.gethostname()}:{proc.pid}"


@pytest.fixture
def world(tmp_path: Path, db_url: str) -> Iterator[World]:
    # Status callbacks come late, so a retry must find the message at Twilio by itself.
    emulator = TwilioEmulator(ACCOUNT_SID, AUTH_TOKEN, status_delay_ms=5000)
    servers: list[ServerThread] = [serve_in_thread(emulator.app)]
    twilio_url = servers[0].url
    port = _free_port()
    bridge_url = f"http://127.0.0.1:{port}"
    data = config_dict(db_url, public_url=bridge_url, twilio_url=twilio_url, businesses=[all_day_business()])
    data["worker"]["lease_seconds"] = LEASE
    data["twilio"]["timeout_seconds"] = 2
    config_path = write_config(tmp_path / "textback.yaml", data)
    config = config_mod.load(str(config_path))
    engine = make_engine(config.database_url)
    w = World(tmp_path, config_path, config, engine, twilio_url, bridge_url)
    try:
        upgraded = w.cli("db", "upgrade")
        assert upgraded.returncode == 0, upgraded.stderr
        servers.append(serve_in_thread(create_app(config, engine=engine), port=port))
        resp = requests.post(f"{twilio_url}/_emulator/config", json={"bridge_url": bridge_url}, timeout=5)
        assert resp.status_code == 200
        yield w
    finally:
        for server in servers:
            server.stop()
        engine.dispose()


def _stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_worker_killed_mid_send_loses_nothing_and_sends_once(world: World) -> None:
    world.call()
    assert world.job().status == "pending"
    # The emulator takes the message, then answers a second late: the worker dies waiting.
    resp = requests.post(
        f"{world.twilio_url}/_emulator/faults",
        json={"method": "POST", "path": "/2010-04-01", "delay_ms": 1000, "count": 1},
        timeout=5,
    )
    assert resp.status_code == 201
    first = world.worker("worker-1")
    try:
        wait_for(
            "the first worker's send",
            lambda: ("POST", MESSAGES) in world.requests(),
            diagnose=lambda: world.log("worker-1"),
        )
        first.send_signal(signal.SIGKILL)
        assert first.wait(timeout=10) == -signal.SIGKILL
    finally:
        if first.poll() is None:
            first.kill()
    job = world.job()
    assert (job.status, job.locked_by, job.attempts) == ("running", worker_id(first), 1)
    # Twilio has the text; textback does not know its sid yet.
    wait_for("the emulator to hold the message", lambda: len(world.sent()) == 1, timeout=5)

    second = world.worker("worker-2")
    try:
        wait_for("the job to finish", lambda: world.job().status == "done", timeout=LEASE + 20)
        job = world.job()
        assert (job.locked_by, job.attempts) == (worker_id(second), 2)
        assert _stop(second) == 0  # SIGTERM stops a worker cleanly
    finally:
        if second.poll() is None:
            second.kill()

    listed = world.cli("jobs", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    [entry] = [j for j in json.loads(listed.stdout) if j["kind"] == "sms.send"]
    assert (entry["status"], entry["attempts"]) == ("done", 2)
    sent = world.sent()
    assert len(sent) == 1 and sent[0]["to"] == CALLER
    reqs = world.requests()
    assert reqs.count(("POST", MESSAGES)) == 1
    # The second worker looked before it would have sent, unless Twilio's status callback for the
    # first send reached the bridge first: then the message already had its sid, and nothing to send.
    looked = ("GET", MESSAGES) in reqs
    assert looked or (world.job().result or {}).get("note") == "already sent", world.job().result
    lead = world.lead()
    [message] = [e for e in lead["timeline"] if e["type"] == "message" and e["to"] == CALLER]
    assert message["sid"] == sent[0]["sid"]
    assert lead["status"] == "texted"


def test_worker_dead_after_claim_is_taken_over_after_the_lease(world: World) -> None:
    world.call()
    factory = session_factory(world.engine)
    doomed = Outbox(factory, "doomed-worker", lease_seconds=LEASE)
    claimed_at = time.monotonic()
    [claimed] = doomed.claim()  # claims, then "dies" before calling Twilio
    worker = world.worker("worker")
    try:
        # While the dead worker's lease runs, the live one must leave the job alone.
        time.sleep(max(0.0, LEASE - 1.0 - (time.monotonic() - claimed_at)))
        assert world.requests() == []
        assert world.job().locked_by == "doomed-worker"
        wait_for("the job to finish", lambda: world.job().status == "done", timeout=LEASE + 20)
        job = world.job()
        assert time.monotonic() - claimed_at >= LEASE - 0.5
        assert (job.locked_by, job.attempts) == (worker_id(worker), 2)
        assert _stop(worker) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
    assert doomed.complete(claimed) is False
    assert world.job().status == "done"
    sent = world.sent()
    assert len(sent) == 1 and sent[0]["to"] == CALLER
    assert world.requests().count(("POST", MESSAGES)) == 1
    [message] = [e for e in world.lead()["timeline"] if e["type"] == "message" and e["to"] == CALLER]
    assert message["sid"] == sent[0]["sid"]
