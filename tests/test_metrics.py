"""`/metrics` (in process and under gunicorn with several workers), the worker's own endpoint, and
the structured logs of a whole call and reply."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import yaml
from click.testing import CliRunner
from twilio.request_validator import RequestValidator

from bridge.cli import main
from bridge.metrics import samples
from connectors.emulator import serve_in_thread
from connectors.webhook.emulator import PATH, SANDBOX_SECRET, WebhookReceiver
from core import logs
from core.db import make_engine
from core.secrets import generate_key
from tests.conftest import AUTH_TOKEN, BUSINESS_NUMBER, config_dict, write_config
from tests.schema import migrate
from tests.stack import Stack, all_day_business, configure_emulator, settle

CALLER = "+13125550142"
REJECTED = "+13125550143"
Values = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Values:
    resp = requests.get(f"{url}/metrics", timeout=10)
    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"].startswith("text/plain")
    return {(name, tuple(sorted(labels.items()))): value for name, labels, value in samples(resp.text)}


def value(values: Values, name: str, **labels: str) -> float:
    return values.get((name, tuple(sorted(labels.items()))), 0.0)


def delta(before: Values, after: Values, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


@pytest.fixture
def stack(tmp_path: Path, db_url: str) -> Iterator[Stack]:
    s = Stack(tmp_path, db_url, businesses=[all_day_business()])
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def receiver() -> Iterator[str]:
    rx = WebhookReceiver(SANDBOX_SECRET)
    server = serve_in_thread(rx.app)
    yield server.url
    server.stop()


def install_webhook(stack: Stack, receiver: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEXTBACK_SECRET_KEY", generate_key())
    settings = stack.tmp_path / "webhook.yaml"
    settings.write_text(yaml.safe_dump({"url": receiver + PATH, "signing_secret": SANDBOX_SECRET}))
    result = CliRunner().invoke(
        main,
        [
            "connectors",
            "install",
            "webhook",
            "--config",
            str(stack.config_path),
            "--config-file",
            str(settings),
        ],
    )
    assert result.exit_code == 0, result.output


def pushes(receiver: str) -> int:
    got = requests.get(f"{receiver}/_emulator/requests", timeout=5).json()["requests"]
    return sum(1 for r in got if r["path"] == PATH)


def test_metrics_count_what_the_stack_did(
    stack: Stack, receiver: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_webhook(stack, receiver, monkeypatch)
    # The CRM answers its first push with a 429 (Retry-After 0): paused, then delivered.
    requests.post(
        f"{receiver}/_emulator/faults",
        json={"path": PATH, "status": 429, "count": 1, "headers": {"Retry-After": "0"}},
        timeout=5,
    ).raise_for_status()
    configure_emulator(stack, numbers={REJECTED: {"reject_code": 21211}})
    pushed_before = pushes(receiver)  # the install's check ping
    before = scrape(stack.bridge_url)

    stack.call(CALLER, "no-answer")
    stack.call(REJECTED, "busy")
    stack.call("Anonymous", "no-answer")
    settle(stack, callbacks=0.5)
    after = scrape(stack.bridge_url)

    def d(name: str, **labels: str) -> float:
        return delta(before, after, name, **labels)

    assert d("textback_decisions_total", outcome="text", reason="missed_no_answer") == 1
    assert d("textback_decisions_total", outcome="text", reason="missed_busy") == 1
    assert d("textback_decisions_total", outcome="skip", reason="anonymous_caller") == 1
    assert d("textback_webhook_seconds_count", route="/twilio/voice") == 3
    assert d("textback_webhook_seconds_count", route="/twilio/dial-result") == 3
    assert d("textback_webhook_seconds_bucket", route="/twilio/voice", le="+Inf") == 3
    assert d("textback_webhook_seconds_sum", route="/twilio/voice") > 0
    assert d("textback_sms_total", result="sent", code="") == 1
    assert d("textback_sms_total", result="failed", code="21211") == 1
    assert d("textback_sms_total", result="delivered", code="") == 1
    assert d("textback_jobs_total", kind="sms.send", outcome="done") == 1
    assert d("textback_jobs_total", kind="sms.send", outcome="dead") == 1
    # The 429'd push, and the other caller's push that found the connector paused.
    assert d("textback_jobs_total", kind="crm.sync", outcome="deferred") == 2
    # missed_call x2 (the anonymous caller has no lead), texted x1, and the 429'd attempt.
    assert pushes(receiver) - pushed_before == 4
    assert d("textback_crm_api_calls_total", connector="webhook") == 4
    assert d("textback_crm_rate_limited_total", connector="webhook") == 1
    assert d("textback_jobs_total", kind="crm.sync", outcome="done") == 3
    # The outbox, read from this test's database at scrape time.
    assert value(after, "textback_outbox_jobs", target="twilio", status="dead") == 1
    assert value(after, "textback_outbox_jobs", target="twilio", status="pending") == 0
    assert value(after, "textback_outbox_oldest_age_seconds", target="twilio") == 0
    assert value(after, "textback_database_up") == 1


def test_outbox_gauges_show_a_waiting_backlog(stack: Stack) -> None:
    stack.call(CALLER, "no-answer")  # the text's job waits: no worker runs
    time.sleep(0.3)
    values = scrape(stack.bridge_url)
    assert value(values, "textback_outbox_jobs", target="twilio", status="pending") == 1
    assert value(values, "textback_outbox_oldest_age_seconds", target="twilio") > 0.2


def test_metrics_token(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEXTBACK_METRICS_TOKEN", "s3cret-token")
    assert requests.get(f"{stack.bridge_url}/metrics", timeout=5).status_code == 401
    ok = requests.get(
        f"{stack.bridge_url}/metrics", headers={"Authorization": "Bearer s3cret-token"}, timeout=5
    )
    assert ok.status_code == 200 and "textback_webhook_seconds" in ok.text


# -- logs -------------------------------------------------------------------------------------------


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    buffer = io.StringIO()
    logs.setup("INFO", stream=buffer)
    try:
        yield buffer
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)


def test_logs_of_a_call_and_reply_are_json_with_ids_and_no_numbers_or_bodies(
    stack: Stack, json_logs: io.StringIO
) -> None:
    reply = "Hi, I need a quote for a new breaker panel"
    stack.call(CALLER, "no-answer")
    stack.drain()
    stack.inbound_sms(CALLER, reply)
    stack.drain()
    sent = [m["body"] for m in stack.sent(CALLER)]
    assert len(sent) >= 2  # the first text and the conversation's answer
    lines = [json.loads(line) for line in json_logs.getvalue().splitlines()]  # every line is JSON
    ours = [e for e in lines if e["logger"].startswith("textback")]
    events = {e["event"] for e in ours}
    assert {"request", "call decided", "sms received", "sms sent", "job done"} <= events
    for entry in ours:
        if entry["logger"].startswith("textback.bridge"):
            assert re.fullmatch(r"[0-9a-f]{16}", str(entry.get("request_id"))), entry
        if "job_id" in entry:
            assert "lead_id" in entry and "kind" in entry, entry
    # Lines logged inside a job carry its ids even when the call site passed only some of them.
    sms_sent = next(e for e in ours if e["event"] == "sms sent")
    assert sms_sent["job_id"] and sms_sent["lead_id"] and sms_sent["to"] == "+1********42"
    decided = next(e for e in ours if e["event"] == "call decided")
    assert decided["lead_id"] and decided["request_id"]
    text = json_logs.getvalue()
    for number in (CALLER, BUSINESS_NUMBER):
        assert number[2:] not in text  # not in any format: +1312..., 312...
    for body in [reply, *sent]:
        assert body not in text
    assert "breaker panel" not in text


# -- several gunicorn workers ----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_up(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} never came up:\n{log.read_text()[-3000:]}")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEXTBACK_", "PROMETHEUS_"))}
    env.update(PYTHONUNBUFFERED="1", **extra)
    return env


def _pids(directory: Path, kind: str) -> set[int]:
    return {int(p.stem.rsplit("_", 1)[1]) for p in directory.glob(f"{kind}_*.db")}


@pytest.mark.slow
def test_counts_add_up_across_gunicorn_workers(tmp_path: Path, db_url: str) -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    config_path = write_config(tmp_path / "textback.yaml", config_dict(db_url, public_url=url))
    engine = make_engine(db_url)
    migrate(engine)
    engine.dispose()
    multiproc = tmp_path / "prom"
    multiproc.mkdir()
    (multiproc / "counter_999999.db").write_bytes(b"stale")  # an earlier run's file: wiped at start
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bridge.cli",
                "serve",
                "--config",
                str(config_path),
                "--port",
                str(port),
                "--workers",
                "2",
                "--threads",
                "2",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            env=_env(PROMETHEUS_MULTIPROC_DIR=str(multiproc)),
        )
    try:
        _wait_up(f"{url}/healthz", proc, log)
        assert not (multiproc / "counter_999999.db").exists()
        validator = RequestValidator(AUTH_TOKEN)
        sent = 0

        def post(n: int) -> int:
            params = {
                "CallSid": f"CA{n:032x}",
                "From": f"+1312555{n:04d}",
                "To": BUSINESS_NUMBER,
                "Direction": "inbound",
                "CallStatus": "ringing",
            }
            signature = validator.compute_signature(f"{url}/twilio/voice", params)
            resp = requests.post(
                f"{url}/twilio/voice", data=params, headers={"X-Twilio-Signature": signature}, timeout=10
            )
            return resp.status_code

        # Keep going until both workers have answered some (the kernel picks who accepts).
        with ThreadPoolExecutor(max_workers=8) as pool:
            while sent < 200 and (sent < 24 or len(_pids(multiproc, "histogram")) < 2):
                statuses = list(pool.map(post, range(sent, sent + 12)))
                assert statuses == [200] * 12, statuses
                sent += 12
        served_by = _pids(multiproc, "histogram")
        assert len(served_by) == 2, f"one worker answered all {sent} webhooks"
        for _ in range(6):
            values = scrape(url)
            assert value(values, "textback_webhook_seconds_count", route="/twilio/voice") == sent
            assert value(values, "textback_outbox_jobs", target="twilio", status="pending") == 0
        # A worker that dies keeps its counts; gunicorn starts another in its place.
        killed = min(served_by)
        os.kill(killed, signal.SIGKILL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and (_workers(proc.pid) - {killed}).__len__() < 2:
            time.sleep(0.1)
        assert killed not in _workers(proc.pid) and len(_workers(proc.pid)) == 2
        for _ in range(4):
            assert value(scrape(url), "textback_webhook_seconds_count", route="/twilio/voice") == sent
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _workers(master: int) -> set[int]:
    """The live child processes of the gunicorn master."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == master and fields[0] != "Z":
            found.add(int(entry.name))
    return found


def test_serve_owns_a_fresh_directory_when_none_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    from bridge import metrics_multiproc

    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    hooks = metrics_multiproc.gunicorn_options()
    directory = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    try:
        assert directory.is_dir() and not any(directory.iterdir())
        assert set(hooks) == {"child_exit", "on_exit"}
    finally:
        hooks["on_exit"](None)
        monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")
    assert not directory.exists()


@pytest.mark.slow
def test_worker_serves_its_own_metrics_and_ignores_the_bridge_directory(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'textback.db'}"
    config_path = write_config(tmp_path / "textback.yaml", config_dict(db_url))
    engine = make_engine(db_url)
    migrate(engine)
    engine.dispose()
    bridge_dir = tmp_path / "prom"
    bridge_dir.mkdir()
    port = _free_port()
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bridge.cli",
                "worker",
                "--config",
                str(config_path),
                "--metrics-port",
                str(port),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            env=_env(PROMETHEUS_MULTIPROC_DIR=str(bridge_dir)),
        )
    try:
        _wait_up(f"http://127.0.0.1:{port}/metrics", proc, log)
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        for name in ("textback_jobs_total", "textback_sms_total", "textback_crm_api_calls_total"):
            assert f"# TYPE {name} counter" in text
        assert list(bridge_dir.iterdir()) == []
        lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        assert any(e["event"] == "worker metrics" and e["port"] == port for e in lines)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
