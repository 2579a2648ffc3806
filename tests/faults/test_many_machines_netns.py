"""Fault suite, many machines across a real network: every bridge and worker in its own namespace.

test_many_machines.py runs the same cast as separate processes on one host. Here each process is
on its own "machine", a Linux network namespace with its own address on a private bridge
(tests/netns.py): it cannot reach the host's 127.0.0.1, so it reaches PostgreSQL, the Twilio
emulator and the HubSpot emulator only across its veth link (through a TCP forwarder on the host's
bridge address), and the test's webhooks reach the bridges across the links too. Two bridges, three
workers, load, one worker SIGKILLed holding a job: nothing lost, nothing duplicated.

Needs root and iproute2 (skipped otherwise); PostgreSQL only, like its sibling.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import secrets
import signal
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import requests
import yaml
from sqlalchemy import select, text

from connectors.hubspot import mappers
from core.models import Lead, OutboxJob
from tests import netns
from tests.conftest import ACCOUNT_SID
from tests.faults.harness import World, wait_for

pytestmark = pytest.mark.faults

CALLS = 200
REDELIVERIES = 10
BRIDGE_PORT = 8000  # every machine has its own port space: both bridges listen on 8000
CONTACTS_ONLY = {"deal_on": "never", "create_task": False, "log_calls": False, "log_messages": False}


@pytest.fixture
def network() -> Iterator[netns.Network]:
    reason = netns.unavailable()
    if reason:
        pytest.skip(f"no network namespaces here: {reason}")
    net = netns.Network()
    try:
        yield net
    finally:
        net.close()


def _across(url: str, host: str, port: int) -> str:
    """``url`` with its host and port replaced: the same service, reached through the forwarder."""
    parts = urlsplit(url)
    netloc = f"{parts.username}@{host}:{port}" if parts.username else f"{host}:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


def _up(url: str, proc: netns.Process) -> bool:
    if proc.popen.poll() is not None:
        raise AssertionError(f"{proc.name} exited; see {proc.log}:\n{proc.log.read_text()[-2000:]}")
    with contextlib.suppress(requests.RequestException):
        return requests.get(f"{url}/healthz", timeout=2).status_code == 200
    return False


def _stuck(world: World) -> str:
    """What a stuck outbox is waiting on: unfinished jobs and the sessions PostgreSQL holds open."""
    with world.factory() as s:
        jobs = [
            (j.id, j.kind, j.status, j.locked_by, j.attempts, str(j.locked_until))
            for j in s.scalars(select(OutboxJob).where(OutboxJob.status != "done"))
        ]
        sessions = s.execute(
            text(
                "SELECT pid, client_addr, state, wait_event_type, left(query, 80) FROM pg_stat_activity"
                " WHERE datname = current_database() AND state <> 'idle' AND pid <> pg_backend_pid()"
            )
        ).all()
    return f"unfinished jobs: {jobs}\nsessions: {[tuple(r) for r in sessions]}"


def _started(proc: netns.Process) -> bool:
    if proc.popen.poll() is not None:
        raise AssertionError(f"{proc.name} exited; see {proc.log}:\n{proc.log.read_text()[-2000:]}")
    return '"worker started"' in proc.log.read_text(encoding="utf-8", errors="replace")


@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_many_machines_across_network_namespaces_one_worker_killed_lose_and_duplicate_nothing(
    network: netns.Network, make_world: Callable[..., World], db_url: str, tmp_path: Path
) -> None:
    a, b = network.add("bridge-a"), network.add("bridge-b")
    machines = [network.add(f"worker-{m}") for m in "cde"]
    urls = [f"http://{a.address}:{BRIDGE_PORT}", f"http://{b.address}:{BRIDGE_PORT}"]
    # Twilio signs the one public URL (a load balancer in front of both bridges); its status
    # callbacks go there, across the link to bridge A.
    world = make_world(
        http=True,
        in_thread=False,
        callbacks=True,
        public_url=urls[0],
        worker={"lease_seconds": 5, "batch_size": 5},
    )
    hub = world.add_crm("hubspot", sync=CONTACTS_ONLY, rate_limit=None, search_rate_limit=None)
    hub_port = int(urlsplit(hub.url).port or 0)
    forwarder = netns.Forwarder(
        {
            "postgresql": (network.host, 0, "127.0.0.1", urlsplit(db_url).port or 5432),
            "twilio": (network.host, 0, "127.0.0.1", int(urlsplit(world.twilio_url).port or 0)),
            "hubspot": (network.host, 0, "127.0.0.1", hub_port),
        },
        tmp_path / "forwarder.log",
    )
    sidecars: list[netns.Forwarder] = []
    processes: list[netns.Process] = []
    try:
        # The HubSpot connector takes an emulator only on 127.0.0.1 (anything else must be
        # https://api.hubapi.com): each machine finds it on its own loopback, relayed across its link.
        for m in (a, b, *machines):
            route = {"hubspot": ("127.0.0.1", hub_port, network.host, forwarder.ports["hubspot"])}
            sidecars.append(netns.Forwarder(route, tmp_path / f"sidecar-{m.name}.log", m))
        # What the machines are told: every host service at the host's address on the bridge.
        data = copy.deepcopy(world.data)
        data["database_url"] = _across(db_url, network.host, forwarder.ports["postgresql"])
        data["twilio"]["api_base_url"] = f"http://{network.host}:{forwarder.ports['twilio']}"
        machine_config = tmp_path / "machines.yaml"
        machine_config.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        logs = world.session.logs
        for machine in (a, b):
            argv = ["serve", "--config", str(machine_config), "--host", machine.address]
            argv += ["--port", str(BRIDGE_PORT), "--workers", "2", "--threads", "4"]
            proc = netns.start_in(machine, argv, logs / f"netns-{machine.name}-{secrets.token_hex(3)}.log")
            processes.append(proc)
        for proc, url in zip(processes, urls, strict=True):
            wait_for(f"{proc.name} on {url}", functools.partial(_up, url, proc), timeout=90, every=0.2)
        env = {"FAULTS_NO_LOCAL_RATE_LIMIT": "1"}
        workers = [
            netns.start_in(
                m,
                ["worker", "--config", str(machine_config)],
                logs / f"netns-{m.name}-{secrets.token_hex(3)}.log",
                env,
            )
            for m in machines
        ]
        processes += workers
        for proc in workers:
            wait_for(f"{proc.name} to start", functools.partial(_started, proc), timeout=90, every=0.2)
        victim = workers[1]
        held = f"{socket.gethostname()}:{victim.pid}"

        callers = [f"+1312555{4000 + i:04d}" for i in range(CALLS)]

        redelivered: list[int] = []

        def call(i: int) -> int:
            # A 503 is the bridge's "nothing stored, try again" (the database refused a connection
            # or was busy: PostgreSQL is shared with other test runs here). Twilio redelivers the
            # same webhook, same CallSid, possibly to the other bridge; so does this.
            params = world.voice_params(callers[i])
            for attempt in range(REDELIVERIES + 1):
                status = int(
                    world.http_post("/twilio/voice", params, base=urls[(i + attempt) % 2]).status_code
                )
                if status != 503:
                    break
                redelivered.append(i)
                time.sleep(0.5)
            return status

        with ThreadPoolExecutor(max_workers=16) as pool:
            answers = pool.map(call, range(CALLS))
            wait_for(
                "the victim to hold a job",
                lambda: any(j.status == "running" and j.locked_by == held for j in world.jobs()),
                timeout=90,
                every=0.01,
            )
            victim.popen.send_signal(signal.SIGKILL)  # no goodbye, mid-job
            assert list(answers) == [200] * CALLS
        assert victim.popen.wait(timeout=30) == -signal.SIGKILL
        print(f"webhooks redelivered after a 503: {len(redelivered)}")  # shown with pytest -s
        try:
            world.wait_done(timeout=240)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{_stuck(world)}") from None

        assert set(world.job_summary()) == {"sms.send:done", "crm.sync:done"}, world.job_summary()
        with world.factory() as s:
            taken_over = list(s.scalars(select(OutboxJob).where(OutboxJob.attempts >= 2)))
            leads = list(s.scalars(select(Lead.phone)))
        assert taken_over and all(j.locked_by != held for j in taken_over)  # the victim's job went on
        assert Counter(leads) == Counter(dict.fromkeys(callers, 1))
        # One text asked of Twilio per caller (its request log), one sent, one contact in the CRM.
        messages = f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"
        asked = [r["form"]["To"][0] for r in world.twilio_requests("POST") if r["path"] == messages]
        assert Counter(asked) == Counter(dict.fromkeys(callers, 1))
        assert Counter(m["to"] for m in world.sent()) == Counter(dict.fromkeys(callers, 1))
        with hub.emulator.lock:
            contacts = hub.emulator._state()["contacts"]
        assert Counter(c["properties"].get(mappers.PHONE_PROPERTY) for c in contacts) == Counter(
            dict.fromkeys(callers, 1)
        )
        # The work crossed the links: every machine reached PostgreSQL from its own address, both
        # surviving workers reached Twilio (the victim may die before its first text), and nothing
        # reached a service from anywhere but a machine.
        peers = forwarder.peers()
        assert peers["postgresql"] >= {m.address for m in (a, b, *machines)}, peers
        assert peers["twilio"] >= {m.address for m in machines if m is not machines[1]}, peers
        assert set() < peers["hubspot"] <= {m.address for m in (a, b, *machines)}, peers
        assert all(p.startswith(f"10.77.{network.subnet}.") for ps in peers.values() for p in ps), peers
        assert all(requests.get(f"{u}/healthz", timeout=10).status_code == 200 for u in urls)
    finally:
        for proc in processes:
            proc.stop()
        for f in (*sidecars, forwarder):
            f.stop()
