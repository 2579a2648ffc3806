"""The `textback` command: db, leads, jobs, serve/worker refusals, config errors, demo and sandbox."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner, Result

from bridge.cli import main
from core.db import make_engine, session_factory, transaction
from core.errors import Rejected
from core.models import utcnow
from core.outbox import Outbox, enqueue
from tests.conftest import config_dict, write_config
from tests.stack import Stack, all_day_business

CALLER = "+13125550142"


@pytest.fixture
def stack(tmp_path: Path, db_url: str) -> Iterator[Stack]:
    """The shared test stack, with texting allowed at any minute of the day."""
    s = Stack(tmp_path, db_url, businesses=[all_day_business()])
    try:
        yield s
    finally:
        s.close()


def cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def env() -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TEXTBACK_")}
    clean["PYTHONUNBUFFERED"] = "1"
    return clean


def run(*args: str, cwd: Path, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=env(),
    )


@pytest.fixture
def config_path(tmp_path: Path, db_url: str) -> Path:
    return write_config(tmp_path / "textback.yaml", config_dict(db_url))


# -- db and leads -----------------------------------------------------------------------------------


def test_db_upgrade_then_leads_list_and_show(stack: Stack) -> None:
    cfg = str(stack.config_path)
    upgraded = cli("db", "upgrade", "--config", cfg)  # already at head: harmless
    assert upgraded.exit_code == 0 and "database at revision" in upgraded.output
    stack.call(CALLER)
    stack.drain()
    stack.call("+12125550142", "completed")  # answered: decided, but no lead

    listed = cli("leads", "list", "--json", "--config", cfg)
    assert listed.exit_code == 0, listed.output
    [lead] = json.loads(listed.stdout)
    assert {"id", "business", "phone", "status", "opted_out", "timeline"} <= set(lead)
    assert (lead["business"], lead["phone"], lead["status"], lead["opted_out"]) == (
        "bright-spark",
        CALLER,
        "texted",
        False,
    )
    types = [e["type"] for e in lead["timeline"]]
    assert {"call", "decision", "message"} <= set(types)
    for entry in lead["timeline"]:
        assert isinstance(entry["at"], str) and entry["at"].endswith("Z")
        assert isinstance(entry["type"], str)
    [decision] = [e for e in lead["timeline"] if e["type"] == "decision"]
    assert (decision["outcome"], decision["reason"]) == ("text", "missed_no_answer")
    [message] = [e for e in lead["timeline"] if e["type"] == "message" and e["to"] == CALLER]
    assert message["sid"] == stack.sent(CALLER)[0]["sid"]

    for key in ("(312) 555-0142", "312.555.0142", "+1 312 555 0142", lead["id"], lead["id"][:8]):
        shown = cli("leads", "show", key, "--json", "--config", cfg)
        assert shown.exit_code == 0, (key, shown.output)
        assert json.loads(shown.stdout) == lead

    assert cli("leads", "list", "--business", "nobody", "--json", "--config", cfg).stdout.strip() == "[]"
    missing = CliRunner().invoke(main, ["leads", "show", "(212) 555-0199", "--config", cfg])
    assert missing.exit_code == 1 and "no lead matches" in missing.stderr
    human = cli("leads", "show", "(312) 555-0142", "--config", cfg)
    assert human.exit_code == 0 and CALLER in human.stdout and "missed_no_answer" in human.stdout


def test_serve_and_worker_refuse_an_unmigrated_database(config_path: Path) -> None:
    started = time.monotonic()
    commands = {
        "serve": ["serve", "--config", str(config_path), "--port", str(_free_port())],
        "worker": ["worker", "--config", str(config_path)],
    }
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "bridge.cli", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=config_path.parent,
            env=env(),
        )
        for name, args in commands.items()
    }
    try:
        for name, proc in procs.items():
            _, stderr = proc.communicate(timeout=30)
            assert proc.returncode == 2, (name, stderr)
            assert f"textback db upgrade --config {config_path}" in stderr, (name, stderr)
            assert "Traceback" not in stderr
            # serve fails before gunicorn starts: gunicorn never logs, never boots a worker.
            assert "gunicorn" not in stderr.lower() and "Booting" not in stderr
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert time.monotonic() - started < 25


def test_db_upgrade_makes_the_database_usable(config_path: Path) -> None:
    before = CliRunner().invoke(main, ["jobs", "list", "--config", str(config_path)])
    assert before.exit_code == 2 and "textback db upgrade" in before.stderr
    upgraded = cli("db", "upgrade", "--config", str(config_path))
    assert upgraded.exit_code == 0 and "(was empty)" in upgraded.output
    again = cli("db", "upgrade", "--config", str(config_path))
    assert again.exit_code == 0 and "(was empty)" not in again.output
    assert json.loads(cli("jobs", "list", "--json", "--config", str(config_path)).stdout) == []


# -- jobs -------------------------------------------------------------------------------------------


@pytest.fixture
def jobs_db(config_path: Path, db_url: str) -> Iterator[dict[str, int]]:
    assert cli("db", "upgrade", "--config", str(config_path)).exit_code == 0
    engine = make_engine(db_url)
    factory = session_factory(engine)
    with transaction(factory) as s:
        for key in ("old-done", "old-dead", "new-dead", "pending"):
            enqueue(s, kind="sms.send", target="twilio", dedupe_key=key, business_id="bright-spark")
    box = Outbox(factory, "test")
    jobs = box.claim()
    ids = {}
    with factory() as s:
        from core.models import OutboxJob

        for job in jobs:
            row = s.get(OutboxJob, job.id)
            assert row is not None
            ids[row.dedupe_key] = job.id
    by_key = {j.id: j for j in jobs}
    old = utcnow() - timedelta(days=30)
    box.complete(by_key[ids["old-done"]], now=old)
    box.fail(by_key[ids["old-dead"]], Rejected("Twilio error 21211"), now=old)
    box.fail(by_key[ids["new-dead"]], Rejected("Twilio error 21610"))
    box.defer(by_key[ids["pending"]], utcnow() + timedelta(hours=1), "later")
    try:
        yield ids
    finally:
        engine.dispose()


def statuses(config_path: Path) -> dict[int, str]:
    listed = cli("jobs", "list", "--json", "--config", str(config_path))
    assert listed.exit_code == 0, listed.output
    return {j["id"]: j["status"] for j in json.loads(listed.stdout)}


def test_jobs_list(config_path: Path, jobs_db: dict[str, int]) -> None:
    listed = cli("jobs", "list", "--json", "--config", str(config_path))
    data = json.loads(listed.stdout)
    assert [j["id"] for j in data] == sorted(jobs_db.values(), reverse=True)  # newest first
    for job in data:
        assert {"id", "kind", "target", "status", "attempts", "next_attempt_at", "last_error"} <= set(job)
    assert statuses(config_path) == {
        jobs_db["old-done"]: "done",
        jobs_db["old-dead"]: "dead",
        jobs_db["new-dead"]: "dead",
        jobs_db["pending"]: "pending",
    }
    dead = json.loads(cli("jobs", "list", "--status", "dead", "--json", "--config", str(config_path)).stdout)
    assert {j["id"] for j in dead} == {jobs_db["old-dead"], jobs_db["new-dead"]}
    assert all("Twilio error" in j["last_error"] for j in dead)
    table = cli("jobs", "list", "--config", str(config_path))
    assert table.exit_code == 0 and "sms.send" in table.stdout


def test_jobs_retry(config_path: Path, jobs_db: dict[str, int]) -> None:
    one = cli("jobs", "retry", str(jobs_db["old-dead"]), "--config", str(config_path))
    assert one.exit_code == 0 and "1 job(s)" in one.stdout
    assert statuses(config_path)[jobs_db["old-dead"]] == "pending"
    assert statuses(config_path)[jobs_db["new-dead"]] == "dead"
    missing = CliRunner().invoke(main, ["jobs", "retry", "999999", "--config", str(config_path)])
    assert missing.exit_code == 1 and "999999" in missing.stderr
    neither = CliRunner().invoke(main, ["jobs", "retry", "--config", str(config_path)])
    assert neither.exit_code == 2 and "--dead" in neither.stderr
    every = cli("jobs", "retry", "--dead", "--config", str(config_path))
    assert every.exit_code == 0 and "1 job(s)" in every.stdout
    after = statuses(config_path)
    assert "dead" not in after.values()
    assert after[jobs_db["old-done"]] == "done"


def test_jobs_purge_keeps_dead_jobs(config_path: Path, jobs_db: dict[str, int]) -> None:
    purged = cli("jobs", "purge", "--older-than", "7d", "--config", str(config_path))
    assert purged.exit_code == 0
    assert "1 done job(s) deleted" in purged.stdout and "dead jobs were kept" in purged.stdout
    assert set(statuses(config_path)) == {jobs_db["old-dead"], jobs_db["new-dead"], jobs_db["pending"]}
    purged = cli("jobs", "purge", "--older-than", "7d", "--include-dead", "--config", str(config_path))
    assert purged.exit_code == 0 and "1 dead job(s) deleted" in purged.stdout
    assert set(statuses(config_path)) == {jobs_db["new-dead"], jobs_db["pending"]}
    bad = CliRunner().invoke(main, ["jobs", "purge", "--older-than", "7x", "--config", str(config_path)])
    assert bad.exit_code == 2 and "7x" in bad.stderr


# -- config errors ----------------------------------------------------------------------------------


def test_a_config_error_is_one_line_and_exit_2(tmp_path: Path) -> None:
    data = config_dict(f"sqlite:///{tmp_path / 'x.db'}")
    data["businesses"][0]["colour"] = "red"
    path = write_config(tmp_path / "bad.yaml", data)
    done = run("jobs", "list", "--config", str(path), cwd=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"error: {path}: businesses.0.colour: ")
    assert done.stdout == ""


@pytest.mark.parametrize(
    "command", [["worker"], ["serve"], ["db", "upgrade"], ["leads", "list"], ["jobs", "purge"]]
)
def test_config_errors_exit_2_for_every_command(tmp_path: Path, command: list[str]) -> None:
    data = config_dict(f"sqlite:///{tmp_path / 'x.db'}")
    data["worker"]["lease_seconds"] = 1.5
    path = write_config(tmp_path / "bad.yaml", data)
    result = CliRunner().invoke(main, [*command, "--config", str(path)])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines() == [
        f"error: {path}: worker.lease_seconds: must be longer than twilio.timeout_seconds, "
        "or a slow send could be claimed twice"
    ]


def test_a_missing_config_says_how_to_give_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TEXTBACK_CONFIG", raising=False)
    result = CliRunner().invoke(main, ["jobs", "list"])
    assert result.exit_code == 2
    [line] = result.stderr.strip().splitlines()
    assert "--config" in line and "TEXTBACK_CONFIG" in line and "./textback.yaml" in line


def test_warnings_go_to_stderr(config_path: Path) -> None:
    import yaml

    data = yaml.safe_load(config_path.read_text())
    data["businesses"][0]["templates"] = {
        "business_hours": "{hi}, it's {business}. " + "Sorry we could not pick up today. " * 10 + "Reply STOP"
    }
    config_path.write_text(yaml.safe_dump(data))
    result = cli("db", "upgrade", "--config", str(config_path))
    assert result.exit_code == 0
    assert "warning:" in result.stderr and "segments" in result.stderr
    assert "warning" not in result.stdout


# -- demo and sandbox (real processes) --------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_open(url: str) -> bool:
    host, port = url.split("://", 1)[1].split("/")[0].rsplit(":", 1)
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, int(port))) == 0


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
def test_demo_json(tmp_path: Path) -> None:
    done = run("demo", "--json", cwd=tmp_path, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    facts: dict[str, Any] = json.loads(done.stdout)
    business = facts["business"]["name"]
    assert business in facts["text"]["body"] and "STOP" in facts["text"]["body"]
    # "texted" in the first slice; later issues carry the story on (a reply, a booking), never back.
    assert facts["lead"]["status"] in ("texted", "replied", "qualified", "booked", "handed_off")
    assert facts["lead"]["phone"] == facts["caller"]["phone"] == facts["text"]["to"]
    assert (facts["decision"]["outcome"], facts["decision"]["reason"]) == ("text", "missed_no_answer")
    assert facts["text"]["sid"] in {e.get("sid") for e in facts["lead"]["timeline"]}


def _as_a_background_job() -> None:
    """What a shell does for a job it starts in the background: Ctrl-C is ignored there."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.slow
@pytest.mark.parametrize("started", ["in the foreground", "as a background job"])
def test_sandbox_runs_until_ctrl_c_and_then_stops_everything(tmp_path: Path, started: str) -> None:
    directory = tmp_path / "sb"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge.cli", "sandbox", "--dir", str(directory)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
        env=env(),
        start_new_session=True,
        preexec_fn=_as_a_background_job if started == "as a background job" else None,
    )
    try:
        manifest_path = directory / "sandbox.json"
        # The sandbox itself gives up after 60 s (Sandbox.start) and exits; this waits longer, so
        # that on a loaded machine it is the sandbox's own answer that shows.
        deadline = time.monotonic() + 120
        while not manifest_path.exists() and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            time.sleep(0.1)
        if not manifest_path.exists():
            logs = {f.name: f.read_text()[-1500:] for f in sorted((directory / "logs").glob("*.log"))}
            raise AssertionError(f"sandbox.json was never written; the sandbox's logs: {logs}")
        time.sleep(0.2)  # let the writer finish
        manifest = json.loads(manifest_path.read_text())
        assert set(manifest) >= {"bridge_url", "emulators", "twilio", "businesses"}
        assert manifest["bridge_url"].startswith("http://127.0.0.1:")
        assert manifest["emulators"]["twilio"].startswith("http://127.0.0.1:")
        assert set(manifest["twilio"]) >= {"account_sid", "auth_token"}
        assert manifest["twilio"]["account_sid"].startswith("AC") and manifest["twilio"]["auth_token"]
        [biz] = manifest["businesses"]
        assert set(biz) >= {"id", "name", "numbers", "staff_phones"}
        assert all(n.startswith("+") for n in (*biz["numbers"], *biz["staff_phones"]))
        assert (directory / "textback.yaml").is_file()
        health = requests.get(f"{manifest['bridge_url']}/healthz", timeout=5)
        assert health.status_code == 200 and health.json()["ok"] is True
        for url in manifest["emulators"].values():
            assert requests.get(f"{url}/_emulator/health", timeout=5).status_code == 200

        children = _descendants(proc.pid)
        assert len(children) >= 3  # emulator(s), bridge, worker
        urls = [manifest["bridge_url"], *manifest["emulators"].values()]
        proc.send_signal(signal.SIGINT)  # Ctrl-C, to the sandbox process only
        try:
            # Its processes get 10 s together before they are killed (Sandbox.stop); the rest is
            # headroom for a loaded machine.
            assert proc.wait(timeout=60) == 0
        except subprocess.TimeoutExpired:
            alive = sorted(p for p in children if _alive(p))
            logs = {f.name: f.read_text()[-1500:] for f in sorted((directory / "logs").glob("*.log"))}
            raise AssertionError(f"the sandbox did not stop; alive: {alive}; its logs: {logs}") from None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (
            any(_alive(p) for p in children) or any(_port_open(u) for u in urls)
        ):
            time.sleep(0.1)
        assert [p for p in children if _alive(p)] == []
        assert [u for u in urls if _port_open(u)] == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # only what this test started
        except ProcessLookupError:
            pass
