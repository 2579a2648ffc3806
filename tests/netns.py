"""Machines for tests: Linux network namespaces on a private bridge, and a TCP forwarder to reach 127.0.0.1.

A :class:`Network` is a bridge in the host namespace (``10.77.S.1/24``, S picked per run) and one
network namespace per "machine", each with its own veth on that bridge and its own address
(``10.77.S.11`` up). A process started in a machine sees only its veth and its own loopback: it
cannot reach the host's 127.0.0.1, so anything it uses on the host (PostgreSQL, an emulator) must
be reached across the link, through :class:`Forwarder` listening on the bridge address. A service
a machine must find on its own 127.0.0.1 (a CRM connector accepts an emulator only on loopback) gets
a second forwarder inside the machine, on its loopback, relaying across the link.

``python -m tests.netns forward LOG NAME@HOST:PORT=TARGET_HOST:TARGET_PORT ...`` is that forwarder: it
prints the ports it listens on as one JSON line, then relays bytes, writing one line to LOG per
connection (which listener, which peer address). ``python -m tests.netns textback ARGS...`` runs
the ``textback`` command exactly, with the fault suite's one test tuning (FAULTS_NO_LOCAL_RATE_LIMIT).

Only addresses inside namespaces made here and 127.0.0.1 are ever used. Needs root and ``ip``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "tbn"  # every namespace, veth and bridge made here is named tbn<pid>..., nothing else is touched


def unavailable() -> str | None:
    """Why namespaces cannot be made here, or None."""
    if sys.platform != "linux":
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    probe = f"{PREFIX}{os.getpid()}probe"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"ip netns add failed: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _free_subnet() -> int:
    """A 10.77.S.0/24 no route of this host uses yet (runs in parallel get different ones)."""
    routes = _ip("-4", "route", "show", "table", "all").stdout + _ip("-4", "addr").stdout
    start = os.getpid() % 200 + 20
    for i in range(200):
        s = (start + i - 20) % 200 + 20
        if f"10.77.{s}." not in routes:
            return s
    raise RuntimeError("no free 10.77.S.0/24 subnet")


@dataclass
class Machine:
    name: str
    netns: str
    address: str


@dataclass
class Network:
    """A bridge and its machines; ``close()`` removes everything it made (safe to call twice)."""

    tag: str = field(default_factory=lambda: f"{PREFIX}{os.getpid()}")
    machines: list[Machine] = field(default_factory=list)
    subnet: int = 0
    bridge: str = ""

    def __post_init__(self) -> None:
        self.remove_leftovers()
        self.subnet = _free_subnet()
        self.bridge = f"{self.tag}br"
        _ip("link", "add", self.bridge, "type", "bridge")
        try:
            _ip("addr", "add", f"{self.host}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
        except BaseException:
            self.close()
            raise

    @property
    def host(self) -> str:
        """The host namespace's address on the bridge: where machines reach the host's services."""
        return f"10.77.{self.subnet}.1"

    def add(self, name: str) -> Machine:
        i = len(self.machines)
        machine = Machine(name, f"{self.tag}-{name}", f"10.77.{self.subnet}.{11 + i}")
        outside, inside = f"{self.tag}h{i}", f"{self.tag}n{i}"
        self.machines.append(machine)  # before it exists, so close() removes a half-made one too
        _ip("netns", "add", machine.netns)
        _ip("link", "add", outside, "type", "veth", "peer", "name", inside, "netns", machine.netns)
        _ip("link", "set", outside, "master", self.bridge)
        _ip("link", "set", outside, "up")
        _ip("-n", machine.netns, "addr", "add", f"{machine.address}/24", "dev", inside)
        _ip("-n", machine.netns, "link", "set", inside, "up")
        _ip("-n", machine.netns, "link", "set", "lo", "up")
        return machine

    def close(self) -> None:
        # Deleting a namespace deletes the veth end inside it, and with it the end on the bridge.
        for i, machine in enumerate(self.machines):
            _ip("netns", "del", machine.netns, check=False)
            _ip("link", "del", f"{self.tag}h{i}", check=False)
        self.machines = []
        if self.bridge:
            _ip("link", "del", self.bridge, check=False)

    @staticmethod
    def remove_leftovers() -> None:
        """Namespaces and links an earlier run left behind when it was killed (its pid is gone)."""
        names = [line.split()[0] for line in _ip("netns", "list").stdout.splitlines() if line.strip()]
        links = [
            line.split(":")[1].strip().split("@")[0]
            for line in _ip("-o", "link").stdout.splitlines()
            if line.count(":") >= 2
        ]
        for name in names + links:
            owner = re.match(rf"{PREFIX}(\d+)", name)
            if owner and not _alive(int(owner.group(1))):
                kind = "netns" if name in names else "link"
                _ip(kind, "del", name, check=False)


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEXTBACK_", "PROMETHEUS_"))}
    env.update(PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""))
    env.update(extra or {})
    return env


@dataclass
class Process:
    """A process started by the test (its own session, so ``stop`` ends it and its children)."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stop(self, grace: float = 15.0) -> None:
        if self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            self.popen.wait(timeout=10)
        # Children of a SIGKILLed parent (gunicorn workers) may still be in the group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)


def start_in(machine: Machine, argv: list[str], log: Path, env: dict[str, str] | None = None) -> Process:
    """``textback ARGV`` in ``machine``: ``ip netns exec`` execs it, so the pid is textback's own."""
    cmd = ["ip", "netns", "exec", machine.netns, sys.executable, "-m", "tests.netns", "textback", *argv]
    with log.open("ab") as out:
        popen = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            cwd=ROOT,
            env=clean_env(env),
            start_new_session=True,
        )
    return Process(f"{machine.name}:{argv[0]}", popen, log)


class Forwarder:
    """The forwarder subprocess, in the host namespace or in ``machine``.

    ``routes`` maps a name to (listen host, listen port or 0 for any, target host, target port).
    """

    def __init__(
        self, routes: dict[str, tuple[str, int, str, int]], log: Path, machine: Machine | None = None
    ) -> None:
        self.log = log
        specs = [f"{name}@{h}:{p}={th}:{tp}" for name, (h, p, th, tp) in routes.items()]
        inside = ["ip", "netns", "exec", machine.netns] if machine else []
        self.popen = subprocess.Popen(
            [*inside, sys.executable, "-m", "tests.netns", "forward", str(log), *specs],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log.with_suffix(".err").open("ab"),
            cwd=ROOT,
            env=clean_env(),
            start_new_session=True,
        )
        assert self.popen.stdout is not None
        line = self.popen.stdout.readline()
        if not line:
            raise RuntimeError(f"the forwarder did not start; see {log.with_suffix('.err')}")
        self.ports: dict[str, int] = {k: int(v) for k, v in json.loads(line).items()}

    def peers(self) -> dict[str, set[str]]:
        """For each route, the addresses connections came from."""
        out: dict[str, set[str]] = {}
        with contextlib.suppress(FileNotFoundError):
            for line in self.log.read_text(encoding="utf-8").splitlines():
                row = json.loads(line)
                out.setdefault(row["route"], set()).add(row["peer"])
        return out

    def stop(self) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=10)
        if self.popen.stdout:
            self.popen.stdout.close()


# -- the subprocess side ---------------------------------------------------------------------------


async def _pipe(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, source: asyncio.StreamWriter
) -> None:
    """Relay ``reader`` (whose own writer is ``source``) to ``writer`` until EOF or a reset."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()  # a half-close is passed on, not turned into a reset
    except (ConnectionError, OSError):
        # A reset is passed on as a reset, both ways: a process SIGKILLed mid-transaction must
        # not leave its PostgreSQL session (and the row locks it holds) open behind the forwarder.
        for side in (writer, source):
            side.transport.abort()


async def _forward(log: IO[str], specs: list[str]) -> None:
    servers: list[asyncio.AbstractServer] = []
    ports: dict[str, int] = {}
    for spec in specs:
        name, _, rest = spec.partition("@")
        listen, _, target = rest.partition("=")
        host, _, port = listen.rpartition(":")
        t_host, _, t_port = target.rpartition(":")

        async def handle(
            reader: asyncio.StreamReader,
            writer: asyncio.StreamWriter,
            name: str = name,
            t_host: str = t_host,
            t_port: int = int(t_port),
        ) -> None:
            peer = writer.get_extra_info("peername")
            log.write(json.dumps({"route": name, "peer": peer[0] if peer else "?"}) + "\n")
            try:
                t_reader, t_writer = await asyncio.open_connection(t_host, t_port)
            except OSError:
                writer.close()
                return
            await asyncio.gather(_pipe(reader, t_writer, writer), _pipe(t_reader, writer, t_writer))
            for w in (writer, t_writer):
                w.close()

        server = await asyncio.start_server(handle, host, int(port), backlog=512)
        servers.append(server)
        ports[name] = server.sockets[0].getsockname()[1]
    print(json.dumps(ports), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    for listening in servers:
        listening.close()


def _textback(argv: list[str]) -> None:
    if os.environ.pop("FAULTS_NO_LOCAL_RATE_LIMIT", None) == "1":
        # The same test tuning as tests/faults/zygote.py: the shared rate limiter has its own tests.
        from core import connector_state

        connector_state.acquire = lambda *_a, **_k: 0.0
    from bridge.cli import main

    main(argv, prog_name="textback")


def main(argv: list[str]) -> None:
    if argv[:1] == ["forward"]:
        with open(argv[1], "a", encoding="utf-8", buffering=1) as log:
            asyncio.run(_forward(log, argv[2:]))
    elif argv[:1] == ["textback"]:
        _textback(argv[1:])
    else:
        sys.exit("usage: python -m tests.netns forward LOG NAME@HOST:PORT=HOST:PORT... | textback ARGS...")


if __name__ == "__main__":
    main(sys.argv[1:])
