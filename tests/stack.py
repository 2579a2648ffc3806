"""A running textback stack for tests: Twilio emulator, bridge and worker on 127.0.0.1.

The bridge and the emulator are real HTTP servers in threads; the worker is the real Worker,
driven step by step (``drain``) so tests are deterministic, or in a thread (``start_worker``).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import func, select
from twilio.request_validator import RequestValidator

from bridge.app import create_app
from bridge.runtime import build_worker
from connectors.emulator import serve_in_thread
from connectors.twilio.emulator import TwilioEmulator
from core import config as config_mod
from core import leads
from core.db import make_engine, session_factory
from core.models import Base, OutboxJob
from core.worker import Worker
from tests.conftest import ACCOUNT_SID, AUTH_TOKEN, config_dict, write_config
from tests.schema import migrate


class _Later:
    """A WSGI app that forwards to one set after the server is already listening."""

    app: Any = None

    def __call__(self, environ: Any, start_response: Any) -> Any:
        return self.app(environ, start_response)


class Stack:
    def __init__(
        self, tmp_path: Path, db_url: str, public_url: str | None = None, **config_overrides: Any
    ) -> None:
        self.tmp_path = tmp_path
        self.emulator = TwilioEmulator(ACCOUNT_SID, AUTH_TOKEN, status_delay_ms=10)
        self.twilio_server = serve_in_thread(self.emulator.app)
        self.twilio_url = self.twilio_server.url
        # The bridge's port must be known before its config (public_url) is written, so the server
        # binds first (no free-port race) and serves the app once it exists.
        self._dispatch = _Later()
        self.bridge_server = serve_in_thread(self._dispatch)  # type: ignore[arg-type]
        self.bridge_url = self.bridge_server.url
        self.public_url = public_url or self.bridge_url
        data = config_dict(db_url, public_url=self.public_url, twilio_url=self.twilio_url)
        for key, value in config_overrides.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key].update(value)
            else:
                data[key] = value
        self.config_path = write_config(tmp_path / "textback.yaml", data)
        self.config = config_mod.load(str(self.config_path))
        self.engine = make_engine(self.config.database_url)
        migrate(self.engine)
        self.factory = session_factory(self.engine)
        self.app = create_app(self.config, engine=self.engine)
        self._dispatch.app = self.app
        requests.post(f"{self.twilio_url}/_emulator/config", json={"bridge_url": self.bridge_url}, timeout=5)
        self.worker: Worker = build_worker(self.config, self.engine)
        self._worker_thread: threading.Thread | None = None
        self._stop = threading.Event()

    # -- driving ---------------------------------------------------------------------------------
    def call(
        self, caller: str, outcome: str = "no-answer", to: str | None = None, **extra: Any
    ) -> dict[str, Any]:
        body = {
            "from": caller,
            "to": to or self.config.businesses[0].numbers[0],
            "outcome": outcome,
            "ring_seconds": extra.pop("ring_seconds", 20),
            **extra,
        }
        resp = requests.post(f"{self.twilio_url}/_emulator/calls", json=body, timeout=30)
        assert resp.status_code == 200, resp.text
        self.last_call_sid = resp.json().get("call_sid")
        return dict(resp.json())

    def inbound_sms(self, caller: str, body: str, **extra: Any) -> dict[str, Any]:
        payload = {"from": caller, "to": self.config.businesses[0].numbers[0], "body": body, **extra}
        resp = requests.post(f"{self.twilio_url}/_emulator/inbound-sms", json=payload, timeout=30)
        assert resp.status_code == 200, resp.text
        return dict(resp.json())

    def fault(self, **spec: Any) -> None:
        resp = requests.post(f"{self.twilio_url}/_emulator/faults", json=spec, timeout=5)
        assert resp.status_code == 201, resp.text

    def drain(self, timeout: float = 10.0, settle: float = 0.3) -> None:
        """Run the worker until nothing is due, then let status callbacks land (up to ``settle`` s)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.worker.run_once():
                if not self.due_jobs():
                    break
                time.sleep(0.05)
        self.await_callbacks(settle)

    def await_callbacks(self, limit: float) -> None:
        """Wait, up to ``limit`` s, until every text sent has reached its last status and each of its
        status callbacks has been answered by the bridge."""
        deadline = time.monotonic() + limit
        while self.emulator.progressing and time.monotonic() < deadline:
            time.sleep(0.005)

    def due_jobs(self) -> int:
        from core.models import utcnow

        with self.factory() as s:
            return int(
                s.scalar(
                    select(func.count())
                    .select_from(OutboxJob)
                    .where(
                        OutboxJob.status.in_(("pending", "running")), OutboxJob.next_attempt_at <= utcnow()
                    )
                )
                or 0
            )

    def start_worker(self) -> None:
        self._worker_thread = threading.Thread(target=self.worker.run, args=(self._stop,), daemon=True)
        self._worker_thread.start()

    # -- observing -------------------------------------------------------------------------------
    def sent(self, to: str | None = None) -> list[dict[str, Any]]:
        state = requests.get(f"{self.twilio_url}/_emulator/state", timeout=5).json()
        return [m for m in state["messages"] if to is None or m["to"] == to]

    def lead(self, phone: str) -> dict[str, Any] | None:
        with self.factory() as s:
            row = leads.find(s, self.config.businesses[0].id, phone)
            return leads.to_json(s, row) if row else None

    def count(self, model: type[Base]) -> int:
        with self.factory() as s:
            return int(s.scalar(select(func.count()).select_from(model)) or 0)

    def sign(self, url: str, params: dict[str, str], token: str = AUTH_TOKEN) -> str:
        return str(RequestValidator(token).compute_signature(url, params))

    def post_signed(
        self,
        path: str,
        params: dict[str, str],
        *,
        sign_url: str | None = None,
        token: str = AUTH_TOKEN,
        headers: dict[str, str] | None = None,
    ) -> requests.Response:
        url = f"{self.bridge_url}{path}"
        signature = self.sign(sign_url or f"{self.public_url}{path}", params, token)
        return requests.post(
            url, data=params, headers={"X-Twilio-Signature": signature, **(headers or {})}, timeout=10
        )

    def close(self) -> None:
        self._stop.set()
        if self._worker_thread:
            self._worker_thread.join(timeout=5)
        stop_servers(self.bridge_server, self.twilio_server)
        # A request the bridge was still handling (a status callback for the last text) holds a
        # connection in its own thread: let it finish before the test's database is dropped, or
        # PostgreSQL's DROP SCHEMA and its write deadlock.
        checked_out = getattr(self.engine.pool, "checkedout", lambda: 0)
        deadline = time.monotonic() + 5
        while checked_out() and time.monotonic() < deadline:
            time.sleep(0.01)
        self.engine.dispose()


# -- helpers for the call, security, dedupe and fuzz suites ----------------------------------------


# For a test whose point is what the caller lookup finds, not its budget (that is
# test_a_slow_crm_never_delays_the_first_text's): on a loaded machine the first lookup, which also
# builds the connector and reads the account's schema, can outlast the default 800 ms, and the text
# then goes out generic.
PATIENT_LOOKUP = {"crm_lookup_budget_ms": 5000}
# The same, for a test that takes the ``stack`` fixture (tests/conftest.py).
patient_lookup = pytest.mark.parametrize("stack", [PATIENT_LOOKUP], indirect=True, ids=["patient lookup"])


def business_with(policy: dict[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
    """The default test business with some keys replaced and ``policy`` merged into its policy."""
    from tests.conftest import business

    data = business(**overrides)
    if policy:
        data["policy"] = {**data["policy"], **policy}
    return data


def table_counts(stack: Stack) -> dict[str, int]:
    """Rows in every table the models declare, in one round trip."""
    from sqlalchemy import literal, union_all

    parts = [
        select(literal(t.name).label("name"), select(func.count()).select_from(t).scalar_subquery())
        for t in Base.metadata.sorted_tables
    ]
    with stack.engine.connect() as conn:
        return {str(name): int(n) for name, n in conn.execute(union_all(*parts))}


def call_row(stack: Stack, call_sid: str) -> Any:
    from core.models import Call

    with stack.factory() as s:
        return s.get(Call, call_sid)


def emulator_requests(stack: Stack, path_prefix: str = "/") -> list[dict[str, Any]]:
    got = requests.get(f"{stack.twilio_url}/_emulator/requests", timeout=5).json()["requests"]
    return [r for r in got if str(r["path"]).startswith(path_prefix)]


def configure_emulator(stack: Stack, **spec: Any) -> dict[str, Any]:
    resp = requests.post(f"{stack.twilio_url}/_emulator/config", json=spec, timeout=5)
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def webhook_steps(report: dict[str, Any], route: str) -> list[dict[str, Any]]:
    """The requests the emulator made to ``/twilio/<route>`` during a call, with what came back."""
    return [s for s in report["steps"] if str(s.get("url", "")).endswith(f"/twilio/{route}")]


def timeline(stack: Stack, phone: str, type_: str) -> list[dict[str, Any]]:
    lead = stack.lead(phone)
    return [e for e in (lead or {}).get("timeline", []) if e["type"] == type_]


# -- helpers for the outbox, sending, worker-kill and quiet-hours suites ----------------------------


def settle(stack: Stack, timeout: float = 20.0, horizon: float = 5.0, callbacks: float = 0.3) -> None:
    """Run the worker until no job is pending or running with an attempt due within ``horizon`` s.

    Unlike ``drain`` this waits out retry backoffs, so a job that failed once gets its retry.
    Jobs scheduled further out (quiet hours) are left alone.
    """
    from datetime import timedelta

    from core.models import utcnow

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stack.worker.run_once():
            continue
        with stack.factory() as s:
            waiting = s.scalar(
                select(func.count())
                .select_from(OutboxJob)
                .where(
                    OutboxJob.status.in_(("pending", "running")),
                    OutboxJob.next_attempt_at <= utcnow() + timedelta(seconds=horizon),
                )
            )
        if not waiting:
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"the outbox did not settle within {timeout} s")
    stack.await_callbacks(callbacks)


def outbox_jobs(stack: Stack, kind: str | None = None) -> list[OutboxJob]:
    query = select(OutboxJob).order_by(OutboxJob.id)
    if kind:
        query = query.where(OutboxJob.kind == kind)
    with stack.factory() as s:
        return list(s.scalars(query))


def stop_servers(*servers: Any) -> None:
    """Stop werkzeug servers together (each stop wakes its own server: ServerThread.stop)."""
    stoppers = [threading.Thread(target=srv.stop) for srv in servers]
    for t in stoppers:
        t.start()
    for t in stoppers:
        t.join(timeout=5)


def all_day_business(**overrides: Any) -> dict[str, Any]:
    """The test business allowed to text at any minute of the day (00:00-00:00 is the whole day).

    conftest's window ends at 23:59, so a test run in the last minute of a Chicago day would
    see its text scheduled instead of sent.
    """
    from tests.conftest import business

    data = business(**overrides)
    data["policy"] = {**data["policy"], "sending_window": {"start": "00:00", "end": "00:00"}}
    return data
