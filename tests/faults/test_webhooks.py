"""Fault suite, webhooks: redelivery (1), status callbacks out of order (2), the web process killed
mid-request (6), mutated and legitimate signatures (7), and replaying every route (8)."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from sqlalchemy import func, select

from core.models import Call, Lead, Message, MessageStatusEvent, OutboxJob, WebhookEvent
from tests.conftest import ACCOUNT_SID
from tests.faults.harness import World, Zygote, serve, stop_process

pytestmark = pytest.mark.faults

CALLER = "+13125550142"


def count(world: World, model: type, *where: object) -> int:
    with world.factory() as s:
        return int(s.scalar(select(func.count()).select_from(model).where(*where)) or 0)


# -- 1. one signed webhook, 50 deliveries, 20 of them at once, two gunicorn workers ------------------


@pytest.mark.slow
def test_1_one_webhook_delivered_50_times_makes_one_lead_one_job_one_text(
    make_world: Callable[..., World], zygote: Zygote
) -> None:
    world = make_world(http=True, in_thread=False, callbacks=True)
    arbiter = serve(zygote, world, "bridge", world.port, workers=2, threads=4)
    try:
        params = world.voice_params(CALLER)
        signature = world.sign(world.signed_url("/twilio/voice"), params)
        url = f"{world.bridge_url}/twilio/voice"

        def deliver(_: int = 0) -> requests.Response:
            return requests.post(url, data=params, headers={"X-Twilio-Signature": signature}, timeout=30)

        # The first delivery races 19 copies of itself across both gunicorn workers, then 30 more.
        with ThreadPoolExecutor(max_workers=20) as pool:
            responses = list(pool.map(deliver, range(20)))
        responses += [deliver() for _ in range(30)]
        assert len(responses) == 50
        assert [r.status_code for r in responses] == [200] * 50
        assert len({r.text for r in responses}) == 1 and "<Record" in responses[0].text

        assert count(world, Lead) == 1
        assert count(world, Call) == 1
        assert count(world, WebhookEvent, WebhookEvent.kind == "voice.incoming") == 1
        assert count(world, OutboxJob, OutboxJob.kind == "sms.send") == 1
        assert count(world, Message, Message.direction == "outbound") == 1
        world.drain()
        assert len(world.sent(CALLER)) == 1
        assert len(world.twilio_requests("POST")) == 1
        assert [j.status for j in world.jobs("sms.send")] == ["done"]
    finally:
        stop_process(arbiter)


# -- 2. message status callbacks in every order, each twice ------------------------------------------

# The realistic lives of an outbound SMS (Twilio sends no callback for 'accepted'; 'read' is WhatsApp).
LIVES = {
    "delivered": ("queued", "sending", "sent", "delivered"),
    "undelivered": ("queued", "sending", "sent", "undelivered"),
    "failed": ("queued", "sending", "failed"),
}
ERRORS = {"undelivered": "30003", "failed": "30008"}


def twice(order: tuple[str, ...], pattern: int, rng: random.Random) -> list[str]:
    if pattern == 0:
        return [s for s in order for _ in range(2)]  # each twice in a row
    if pattern == 1:
        return list(order) * 2  # the whole story, then all of it again
    out = list(order)  # the copies land anywhere after the first
    for status in order:
        out.insert(rng.randrange(out.index(status) + 1, len(out) + 1), status)
    return out


def test_2_status_callbacks_in_every_order_twice_end_at_the_furthest_state_stored_once(world: World) -> None:
    rng = random.Random(2)
    cases = [(life, order) for life, steps in LIVES.items() for order in itertools.permutations(steps)]
    assert len(cases) == 24 + 24 + 6
    callers = [f"+1312555{3000 + i:04d}" for i in range(len(cases))]
    for caller in callers:
        world.missed_call(caller)
    world.drain()
    by_caller = {m.to_number: m for m in world.messages() if m.direction == "outbound"}
    assert all(by_caller[c].sid and by_caller[c].status == "queued" for c in callers)

    answers = []
    for i, ((_life, order), caller) in enumerate(zip(cases, callers, strict=True)):
        message = by_caller[caller]
        for status in twice(order, i % 3, rng):
            params = {"MessageSid": str(message.sid), "MessageStatus": status, "AccountSid": ACCOUNT_SID,
                      "To": caller, "ApiVersion": "2010-04-01"}
            if status in ERRORS:
                params["ErrorCode"] = ERRORS[status]
            answers.append(world.post(f"/twilio/message-status?m={message.id}", params).status_code)
    assert set(answers) == {204} and len(answers) == 2 * sum(len(order) for _l, order in cases)

    final = {m.to_number: (m.status, m.error_code) for m in world.messages() if m.direction == "outbound"}
    for (life, _order), caller in zip(cases, callers, strict=True):
        expected_code = int(ERRORS[life]) if life in ERRORS else None
        assert final[caller] == (life, expected_code), (caller, _order, final[caller])
    with world.factory() as s:
        stored = s.execute(
            select(MessageStatusEvent.message_sid, MessageStatusEvent.status, func.count()).group_by(
                MessageStatusEvent.message_sid, MessageStatusEvent.status
            )
        ).all()
    assert {n for *_key, n in stored} == {1}
    assert len(stored) == sum(len(order) for _life, order in cases)
