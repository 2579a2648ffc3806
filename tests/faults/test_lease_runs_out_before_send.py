"""Fault suite: a worker whose lease runs out before it sends must not send as well.

Found by test_many_machines_netns.py on a loaded machine: worker c claimed a first text, stalled
for longer than its lease before sending, worker e took the job over (attempt 2), and both asked
Twilio to send it (c then logged "job lease lost before completion"). The lease was renewed only at
the start of the handler, and the attempt (``attempt_started_at``) was recorded after the line-type
lookup and the caller lookup, so the second worker sent without looking for the first one's text.
Now the transaction that records the attempt renews the lease first, and a worker that lost it
stops there.

Here the stall is made deterministic: Twilio's Lookup answers slowly, and while the first worker
waits on it the clock moves past its lease (a GC pause, a starved CPU, a VM migration).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
import requests
import time_machine

from tests.faults.harness import World, fault_business, wait_for

pytestmark = pytest.mark.faults


def test_a_text_whose_lease_ran_out_before_the_send_goes_out_once(make_world: Callable[..., World]) -> None:
    world = make_world(businesses=[fault_business(policy={"lookup_line_type": True})])
    fault = {"method": "GET", "path": "/v2/PhoneNumbers/", "delay_ms": 1500}
    assert requests.post(f"{world.twilio_url}/_emulator/faults", json=fault, timeout=5).status_code == 201
    caller = "+13125556001"
    with time_machine.travel(datetime.now(UTC), tick=True) as clock:
        world.missed_call(caller)
        first, second = world.worker(), world.worker()
        second.outbox.worker_id = f"{second.outbox.worker_id}-second"
        running = threading.Thread(target=first.run_once, daemon=True)
        running.start()
        wait_for(
            "the first worker's line-type lookup",
            lambda: world.twilio_requests("GET", "/v2/PhoneNumbers/"),
            every=0.005,
        )
        clock.shift(world.config.worker.lease_seconds + 1)  # the first worker stalls past its lease
        assert second.run_once() == 1  # and the second takes the job over
        running.join(timeout=30)
    world.drain()
    asked = [
        r["form"]["To"][0] for r in world.twilio_requests("POST") if r["path"].endswith("/Messages.json")
    ]
    assert asked == [caller]  # one send asked of Twilio
    assert len(world.sent(caller)) == 1
