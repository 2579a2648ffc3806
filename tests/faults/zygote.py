"""A fork server for the fault suite: real textback processes in milliseconds, not seconds.

``python -m tests.faults.zygote`` imports textback once (everything but prometheus_client, which
``textback serve`` must import only after it has set up its multiprocess directory), then reads
JSON commands on stdin, one a line, and answers each with one JSON line on stdout:

- ``{"cmd": "spawn", "name": N, "argv": [...], "env": {...}, "log": PATH}`` -> ``{"pid": P}``:
  fork a child that runs ``bridge.cli.main(argv)``, exactly what the ``textback`` command runs,
  with stdout and stderr in ``log`` and ``env`` added to its environment;
- ``{"cmd": "supervise", "argv": [...], "workers": W, "kills": K, "points": [...],
  "probability": {point: p}, "log_dir": DIR}`` -> keep W children alive: while fewer than K
  children have died of SIGKILL, new ones get ``TEXTBACK_CRASH_AT`` (one point each, round robin)
  and kill themselves there (core.worker.crash_point); after that, new children run clean;
- ``{"cmd": "unsupervise"}`` -> stop replacing children;
- ``{"cmd": "status"}`` -> what has exited (pid, name, signal, exit code) and the kills per point;
- ``{"cmd": "stop", "grace": S}`` -> SIGTERM every child, SIGKILL what is left after S seconds;
- ``{"cmd": "exit"}`` -> the same, then exit.

Test-only environment a child understands (removed before textback runs): ``FAULTS_CLOCK=PATH``
puts it on the test's simulated clock (follow_clock), ``FAULTS_NO_LOCAL_RATE_LIMIT=1`` turns off
the shared rate limiter where a test is not about it.

Children get PR_SET_PDEATHSIG, so nothing outlives the zygote. Only this process forks, and only
from its single thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import signal
import sys
import time
from pathlib import Path
from typing import Any


def preload() -> None:
    import gunicorn.app.base
    import gunicorn.workers.gthread
    import gunicorn.workers.sync
    import psycopg
    import sqlalchemy.dialects.postgresql
    import sqlalchemy.dialects.sqlite
    import time_machine

    import bridge.app
    import bridge.cli
    import bridge.server
    import bridge.twilio_routes
    from connectors import registry

    for connector_id in registry.available():
        with contextlib.suppress(Exception):
            registry.load(connector_id)
    import core.conversation
    import core.escalation
    import core.sending
    import core.sync  # noqa: F401

    # What the SDKs import lazily on first use, so a fresh worker does not pay for it every time.
    with contextlib.suppress(Exception):
        from twilio.rest import Client

        client = Client("AC" + "0" * 32, "preload")
        _ = (client.api.v2010.account.messages, client.lookups.v2.phone_numbers)
    with contextlib.suppress(Exception):
        from hubspot import HubSpot

        _ = HubSpot(access_token="preload", retry=False).crm.objects.basic_api.api_client
    assert "prometheus_client" not in sys.modules, "serve children must import prometheus_client"
    del bridge, gunicorn, psycopg, sqlalchemy, time_machine


def follow_clock(path: str) -> None:
    """Run this process on the test's simulated clock: real time plus the offset in ``path``.

    The test (tests/faults/harness.py SharedClock) writes the offset whenever it moves its own clock
    with time-machine; a thread here follows within ~10 ms, so backoffs, leases and pauses of every
    worker process see the same simulated minutes.
    """
    import threading
    from datetime import UTC, datetime, timedelta

    import time_machine

    def offset() -> float:
        try:
            return float(Path(path).read_text().strip() or 0)
        except (OSError, ValueError):
            return current

    def stamp() -> tuple[int, int]:
        try:
            st = os.stat(path)
        except OSError:
            return (0, 0)
        return (st.st_ino, st.st_mtime_ns)  # the test replaces the file: a new inode per move

    current = 0.0
    seen = stamp()  # before the read: a move between the two is seen again, never missed
    current = offset()
    coordinates = time_machine.travel(datetime.now(UTC) + timedelta(seconds=current), tick=True).start()

    def follow() -> None:
        nonlocal current, seen
        while True:
            # A stat per tick, a read only on a move: py-spy put 100 reads a second in every worker
            # at about 5 % of the GIL samples of the fault suite's busiest test (test 3).
            time.sleep(0.01)
            now = stamp()
            if now == seen:
                continue
            seen = now
            wanted = offset()
            if wanted != current:
                coordinates.shift(wanted - current)
                current = wanted

    threading.Thread(target=follow, name="faults-clock", daemon=True).start()


class Zygote:
    def __init__(self) -> None:
        self.children: dict[int, dict[str, Any]] = {}
        self.exited: list[dict[str, Any]] = []
        self.plan: dict[str, Any] | None = None
        self.kills: dict[str, int] = {}
        self.spawned = 0

    # -- children ---------------------------------------------------------------------------------
    def spawn(self, name: str, argv: list[str], env: dict[str, str], log: str, meta: Any = None) -> int:
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:  # the child
            code = 1
            try:
                with contextlib.suppress(Exception):
                    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
                os.setpgid(0, 0)
                fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                os.close(fd)
                null = os.open(os.devnull, os.O_RDONLY)
                os.dup2(null, 0)
                os.close(null)
                sys.stdin = open(0, closefd=False)
                os.environ.update(env)
                clock_file = os.environ.pop("FAULTS_CLOCK", None)
                if clock_file:
                    follow_clock(clock_file)
                if os.environ.pop("FAULTS_NO_LOCAL_RATE_LIMIT", None) == "1":
                    # Test tuning: the shared rate limiter has its own tests; here it would only slow.
                    from core import connector_state

                    connector_state.acquire = lambda *_a, **_k: 0.0
                from bridge.cli import main

                try:
                    main(argv, prog_name="textback", standalone_mode=False)
                    code = 0
                except SystemExit as exc:
                    code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                import traceback

                traceback.print_exc()
            finally:
                with contextlib.suppress(Exception):
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(code)
        self.children[pid] = {"pid": pid, "name": name, "meta": meta}
        self.spawned += 1
        return pid

    def reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            info = self.children.pop(pid, {"pid": pid, "name": "?", "meta": None})
            sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
            code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
            entry = {"pid": pid, "name": info["name"], "signal": sig, "code": code, "meta": info["meta"]}
            self.exited.append(entry)
            if sig == signal.SIGKILL and info["meta"]:
                self.kills[info["meta"]] = self.kills.get(info["meta"], 0) + 1

    def stop_all(self, grace: float = 10.0) -> None:
        self.plan = None
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while self.children and time.monotonic() < deadline:
            self.reap()
            time.sleep(0.02)
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        while self.children:
            self.reap()
            time.sleep(0.01)

    # -- the kill plan ------------------------------------------------------------------------------
    def supervise(self) -> None:
        plan = self.plan
        if plan is None:
            return
        points: list[str] = plan["points"]
        while len(self.children) < plan["workers"]:
            killed = sum(self.kills.values())
            armed = sum(1 for c in self.children.values() if c["meta"])
            env = dict(plan.get("env") or {})
            point = None
            if killed + armed < plan["kills"]:
                point = points[plan["next"] % len(points)]
                plan["next"] += 1
                env["TEXTBACK_CRASH_AT"] = point
                env["TEXTBACK_CRASH_PROBABILITY"] = str(plan["probability"][point])
            name = f"{plan['name']}-{self.spawned}"
            self.spawn(name, plan["argv"], env, os.path.join(plan["log_dir"], f"{name}.log"), point)

    def status(self) -> dict[str, Any]:
        return {
            "alive": [
                {"pid": c["pid"], "name": c["name"], "meta": c["meta"]} for c in self.children.values()
            ],
            "exited": self.exited,
            "kills": self.kills,
            "spawned": self.spawned,
        }

    # -- the command loop ---------------------------------------------------------------------------
    def handle(self, line: str) -> dict[str, Any] | None:
        cmd = json.loads(line)
        kind = cmd.get("cmd")
        if kind == "spawn":
            pid = self.spawn(cmd["name"], cmd["argv"], cmd.get("env") or {}, cmd["log"], cmd.get("meta"))
            return {"pid": pid}
        if kind == "supervise":
            self.plan = {**cmd, "next": 0}
            self.kills, self.exited = {}, []
            self.supervise()
            return {"ok": True}
        if kind == "unsupervise":
            self.plan = None
            return {"ok": True}
        if kind == "status":
            self.reap()
            return self.status()
        if kind == "stop":
            self.stop_all(float(cmd.get("grace", 10)))
            return self.status()
        if kind == "exit":
            return None
        return {"error": f"unknown command {kind!r}"}

    def run(self) -> None:
        stdin = sys.stdin.buffer
        buffer = b""
        print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
        while True:
            ready, _, _ = select.select([stdin], [], [], 0.02)
            if ready:
                chunk = os.read(stdin.fileno(), 65536)
                if not chunk:
                    break  # the test process went away
                buffer += chunk
                stop = False
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    answer = self.handle(line.decode())
                    if answer is None:
                        stop = True
                        break
                    print(json.dumps(answer), flush=True)
                if stop:
                    break
            self.reap()
            self.supervise()
        self.stop_all()


def main() -> None:
    preload()
    Zygote().run()


if __name__ == "__main__":
    main()
