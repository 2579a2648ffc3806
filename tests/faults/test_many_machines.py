"""Fault suite, many machines: two bridges and three workers, separate processes, on one PostgreSQL,
under load, with one worker SIGKILLed mid-job: nothing lost, nothing duplicated.

Every process is what a machine would run (``textback serve``, ``textback worker``); they share
nothing but the database, exactly as on separate hosts (docs/deploy.md). SQLite is one machine's
database, so this runs on PostgreSQL only.
"""

from __future__ import annotations

import os
import signal
import socket
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from sqlalchemy import select

from connectors.hubspot import mappers
from core.models import Lead, OutboxJob
from tests.faults.harness import World, Zygote, free_port, serve, spawn_worker, stop_process, wait_for

pytestmark = pytest.mark.faults

CALLS = 300
CONTACTS_ONLY = {"deal_on": "never", "create_task": False, "log_calls": False, "log_messages": False}


@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_many_machines_two_bridges_three_workers_one_killed_lose_and_duplicate_nothing(
    make_world: Callable[..., World], zygote: Zygote
) -> None:
    world = make_world(
        http=True, in_thread=False, callbacks=True, worker={"lease_seconds": 5, "batch_size": 5}
    )
    hub = world.add_crm("hubspot", sync=CONTACTS_ONLY, rate_limit=None, search_rate_limit=None)
    second = free_port()
    bridges = [
        serve(zygote, world, "machine-a-bridge", world.port, workers=2, threads=4),
        serve(zygote, world, "machine-b-bridge", second, workers=2, threads=4),
    ]
    urls = [world.bridge_url, f"http://127.0.0.1:{second}"]
    env = {"FAULTS_NO_LOCAL_RATE_LIMIT": "1"}
    workers = [spawn_worker(zygote, world, f"machine-{m}-worker", env) for m in "abc"]
    victim = workers[1]
    try:
        callers = [f"+1312555{3000 + i:04d}" for i in range(CALLS)]

        def call(i: int) -> int:
            # A load balancer in front of both bridges; Twilio signs the one public URL.
            params = world.voice_params(callers[i])
            return int(world.http_post("/twilio/voice", params, base=urls[i % 2]).status_code)

        with ThreadPoolExecutor(max_workers=16) as pool:
            answers = pool.map(call, range(CALLS))
            # Mid-run, the victim dies holding a job: SIGKILL, no goodbye.
            held = f"{socket.gethostname()}:{victim}"
            wait_for(
                "the victim to hold a job",
                lambda: any(j.status == "running" and j.locked_by == held for j in world.jobs()),
                timeout=60,
                every=0.01,
            )
            os.kill(victim, signal.SIGKILL)
            assert list(answers) == [200] * CALLS
        world.wait_done(timeout=180)
        summary = world.job_summary()
        assert set(summary) == {"sms.send:done", "crm.sync:done"}, summary
        with world.factory() as s:
            taken_over = list(s.scalars(select(OutboxJob).where(OutboxJob.attempts >= 2)))
            leads = list(s.scalars(select(Lead.phone)))
        assert taken_over and all(j.locked_by != held for j in taken_over)  # the victim's job went on
        assert sorted(leads) == sorted(callers)
        # Nothing lost, nothing twice: one text per lead at Twilio, one contact per lead in the CRM.
        assert Counter(m["to"] for m in world.sent()) == Counter(dict.fromkeys(callers, 1))
        with hub.emulator.lock:
            contacts = hub.emulator._state()["contacts"]
        assert Counter(c["properties"].get(mappers.PHONE_PROPERTY) for c in contacts) == Counter(
            dict.fromkeys(callers, 1)
        )
        assert all(requests.get(f"{u}/healthz", timeout=5).status_code == 200 for u in urls)
    finally:
        for pid in workers:
            stop_process(pid)
        for pid in bridges:
            stop_process(pid)
