"""Fault suite, webhooks: redelivery (1), status callbacks out of order (2), the web process killed
mid-request (6), mutated and legitimate signatures (7), and replaying every route (8)."""

from __future__ import annotations

import itertools
import os
import random
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlencode

import pytest
import requests
from sqlalchemy import func, select, text
from werkzeug.datastructures import MultiDict

from core.models import Call, Lead, Message, MessageStatusEvent, OutboxJob, WebhookEvent
from tests.conftest import ACCOUNT_SID, AUTH_TOKEN
from tests.faults.harness import (
    PUBLIC,
    World,
    Zygote,
    fault_business,
    gunicorn_workers,
    serve,
    stop_process,
    wait_for,
)
from tests.faults.mutations import KINDS, Mutator, Signed, equivalents

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
            params = {
                "MessageSid": str(message.sid),
                "MessageStatus": status,
                "AccountSid": ACCOUNT_SID,
                "To": caller,
                "ApiVersion": "2010-04-01",
            }
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


# -- 6. the web process SIGKILLed mid-request -------------------------------------------------------------


def _hold_the_database(world: World) -> Callable[[], None]:
    """Block the bridge's transactions half way (PostgreSQL: at the outbox insert) or at BEGIN (SQLite)."""
    if world.db_kind == "sqlite":
        import sqlite3

        path = world.config.database_url.removeprefix("sqlite:///")
        conn = sqlite3.connect(path, isolation_level=None, timeout=30)
        conn.execute("BEGIN IMMEDIATE")

        def release_sqlite() -> None:
            conn.execute("ROLLBACK")
            conn.close()

        return release_sqlite
    holder = world.engine.connect()
    holder.execute(text("LOCK TABLE outbox_jobs IN SHARE ROW EXCLUSIVE MODE"))

    def release_pg() -> None:
        holder.rollback()
        holder.close()

    return release_pg


@pytest.mark.slow
def test_6_web_process_killed_mid_request_never_answers_2xx_without_its_rows(
    make_world: Callable[..., World], zygote: Zygote
) -> None:
    world = make_world(http=True, in_thread=False)
    arbiter = serve(zygote, world, "bridge-killed", world.port, workers=2, threads=4)
    rng = random.Random(6)
    sent: dict[str, dict[str, str]] = {}
    answers: dict[str, int | str] = {}

    def deliver(params: dict[str, str]) -> None:
        sent[params["CallSid"]] = params
        try:
            answers[params["CallSid"]] = world.http_post("/twilio/voice", params, timeout=60).status_code
        except requests.RequestException as exc:
            answers[params["CallSid"]] = type(exc).__name__

    def kill_a_worker() -> int:
        pids = gunicorn_workers(arbiter)
        assert pids, "no gunicorn worker to kill"
        victim = rng.choice(pids)
        os.kill(victim, signal.SIGKILL)
        wait_for(
            "gunicorn to replace it",
            lambda: len(gunicorn_workers(arbiter)) == 2 and victim not in gunicorn_workers(arbiter),
            timeout=30,
        )
        return victim

    try:
        # Requests stuck inside their transaction when both workers die.
        release = _hold_the_database(world)
        stuck = [world.voice_params(f"+1312555{1000 + i:04d}") for i in range(8)]
        with ThreadPoolExecutor(max_workers=8) as pool:
            futures = [pool.submit(deliver, p) for p in stuck]
            time.sleep(1.0)
            for pid in gunicorn_workers(arbiter):
                os.kill(pid, signal.SIGKILL)
            for f in futures:
                f.result(timeout=60)
        release()
        assert all(not isinstance(answers[p["CallSid"]], int) for p in stuck), answers
        wait_for("gunicorn to replace them", lambda: len(gunicorn_workers(arbiter)) == 2, timeout=30)

        # A burst, with a worker killed at random moments during it.
        burst = [world.voice_params(f"+1312555{1100 + i:04d}") for i in range(150)]
        with ThreadPoolExecutor(max_workers=12) as pool:
            futures = [pool.submit(deliver, p) for p in burst]
            for _ in range(3):
                time.sleep(rng.uniform(0.2, 0.6))
                kill_a_worker()
            for f in futures:
                f.result(timeout=120)

        ok = [sid for sid, status in answers.items() if isinstance(status, int) and 200 <= status < 300]
        failed = [sid for sid in answers if sid not in ok]
        assert failed, "no request was in flight when a worker died"
        _assert_every_call_whole(world, set(ok))

        # Twilio retries what failed: each call ends with exactly one lead and one text job.
        for sid in failed:
            answer = world.http_post("/twilio/voice", sent[sid])
            assert answer.status_code == 200, answer.text
        _assert_every_call_whole(world, set(answers))
        assert count(world, Lead) == count(world, Call) == len(sent)
        assert count(world, OutboxJob, OutboxJob.kind == "sms.send") == len(sent)
    finally:
        stop_process(arbiter)


def _assert_every_call_whole(world: World, must_exist: set[str]) -> None:
    """Every call the bridge kept has its decision, lead, message and outbox job: all or nothing."""
    with world.factory() as s:
        calls = {c.call_sid: c for c in s.scalars(select(Call))}
        jobs = {j.dedupe_key for j in s.scalars(select(OutboxJob))}
        leads_by_id = {lead.id for lead in s.scalars(select(Lead))}
        events = set(s.scalars(select(WebhookEvent.key).where(WebhookEvent.kind == "voice.incoming")))
    missing = sorted(must_exist - set(calls))
    assert missing == [], f"answered 2xx without a call row: {missing}"
    assert events == set(calls), "a webhook event without its call, or the reverse"
    for sid, call in calls.items():
        assert call.decision_outcome == "text" and call.lead_id in leads_by_id, sid
        assert f"sms:first:{sid}" in jobs, sid


# -- 7. 10,000 mutated signed requests rejected; the legitimate variants accepted ----------------------

MUTATIONS = 10_000
SECONDARY = "rotated-auth-token-9876543210"


def _signed_flow(world: World) -> list[Signed]:
    """One call through every route (ring-through, voicemail), a text and a status callback."""
    call_sid, child = f"CA{'7' * 32}", f"CA{'8' * 32}"
    caller = "+13125550177"
    voice = world.voice_params(caller, call_sid=call_sid)
    common = {"CallSid": call_sid, "AccountSid": ACCOUNT_SID, "From": caller, "To": voice["To"]}
    recording = {
        **common,
        "RecordingSid": f"RE{'9' * 32}",
        "RecordingUrl": "https://api.twilio.com/r.mp3",
        "RecordingDuration": "7",
    }
    flow = [
        ("/twilio/voice", voice),
        (
            "/twilio/screen",
            {"CallSid": child, "ParentCallSid": call_sid, "To": "+13125550111", "AccountSid": ACCOUNT_SID},
        ),
        ("/twilio/screen-accept", {"CallSid": child, "ParentCallSid": call_sid, "Digits": "2"}),
        ("/twilio/dial-result", {**common, "DialCallStatus": "no-answer", "DialBridged": "false"}),
        ("/twilio/call-status", {**common, "CallStatus": "completed", "CallDuration": "31"}),
        ("/twilio/recording", recording),
        (
            "/twilio/transcription",
            {
                **common,
                "RecordingSid": recording["RecordingSid"],
                "TranscriptionSid": f"TR{'6' * 32}",
                "TranscriptionStatus": "completed",
                "TranscriptionText": "Please call me back about the breaker panel",
            },
        ),
        ("/twilio/sms", world.sms_params(caller, "Can you come tomorrow morning?")),
        (
            f"/twilio/message-status?m={'0' * 8}-0000-4000-8000-{'0' * 12}",
            {"MessageSid": f"SM{'5' * 32}", "MessageStatus": "delivered", "AccountSid": ACCOUNT_SID},
        ),
    ]
    return [Signed(path, tuple(params.items())) for path, params in flow]


def test_7_ten_thousand_mutated_signed_requests_are_all_rejected_without_side_effects(
    make_world: Callable[..., World],
) -> None:
    business = fault_business(mode="ring_through")
    world = make_world(public_url=PUBLIC, businesses=[business], twilio={"secondary_auth_token": SECONDARY})
    bases = _signed_flow(world)
    for base in bases:  # the legitimate originals, once: they are accepted and store the call
        answer = world.client.post(
            base.path,
            data=urlencode(base.pairs),
            content_type="application/x-www-form-urlencoded",
            headers={"X-Twilio-Signature": world.sign(PUBLIC + base.path, MultiDict(base.pairs))},
        )
        assert 200 <= answer.status_code < 300, (base.path, answer.status_code, answer.get_data(as_text=True))
    before = world.dump()
    mutator = Mutator(7, PUBLIC, (AUTH_TOKEN, SECONDARY))
    answers: dict[tuple[str, int], int] = {}
    for mutant in mutator.stream(bases, MUTATIONS):
        response = world.client.post(
            mutant.path, data=mutant.body, content_type=mutant.content_type, headers=mutant.headers
        )
        key = (mutant.kind, response.status_code)
        answers[key] = answers.get(key, 0) + 1
    assert {status for _kind, status in answers} == {403}, answers
    assert sum(answers.values()) == MUTATIONS
    assert {kind for kind, _status in answers} == set(KINDS)
    assert_unchanged(world, before)  # no side effect of any kind


@pytest.mark.slow
def test_7b_legitimate_variants_are_accepted_over_real_http(
    make_world: Callable[..., World], zygote: Zygote
) -> None:
    world = make_world(
        public_url=PUBLIC, http=True, in_thread=False, twilio={"secondary_auth_token": SECONDARY}
    )
    arbiter = serve(zygote, world, "bridge-variants", world.port, workers=1, threads=4)
    proxy = {"Host": "textback.example.com", "X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"}
    try:

        def post(path: str, pairs: list[tuple[str, str]], signed_url: str, token: str = AUTH_TOKEN) -> int:
            signature = world.sign(signed_url, MultiDict(pairs), token)
            response = requests.post(
                f"{world.bridge_url}{path}",
                data=pairs,
                headers={**proxy, "X-Twilio-Signature": signature},
                timeout=30,
            )
            return response.status_code

        def voice(n: int) -> list[tuple[str, str]]:
            return list(world.voice_params(f"+1312555{2200 + n:04d}").items())

        calls = [voice(i) for i in range(7)]
        # Behind the proxy: Twilio signed the public https URL; the bridge got plain http.
        assert post("/twilio/voice", calls[0], f"{PUBLIC}/twilio/voice") == 200
        # With the default port spelled out.
        assert post("/twilio/voice", calls[1], f"{PUBLIC}:443/twilio/voice") == 200
        # A connection-override fragment: Twilio signs the URL without it, and never sends it; a
        # client (or proxy) that does send it must not break the check either.
        configured = f"{PUBLIC}/twilio/voice#rc=2&rp=all"
        assert post("/twilio/voice#rc=2&rp=all", calls[2], configured.split("#")[0]) == 200
        assert _raw_post(world, "/twilio/voice#rc=2&rp=all", calls[3], configured.split("#")[0], proxy) == 200
        # Repeated parameters: every value of a name is signed.
        repeated = calls[4] + [
            ("StirVerstat", "TN-Validation-Passed-A"),
            ("StirVerstat", "TN-Validation-Passed-B"),
        ]
        repeated += [calls[4][2]]  # From, twice
        assert post("/twilio/voice", repeated, f"{PUBLIC}/twilio/voice") == 200
        # During auth-token rotation both tokens are good.
        assert post("/twilio/voice", calls[5], f"{PUBLIC}/twilio/voice", token=SECONDARY) == 200
        assert post("/twilio/voice", calls[6], f"{PUBLIC}:443/twilio/voice", token=AUTH_TOKEN) == 200
        status = [("MessageSid", f"SM{'4' * 32}"), ("MessageStatus", "sent")]
        path = f"/twilio/message-status?m={'1' * 8}-1111-4111-8111-{'1' * 12}"
        assert post(path, status, f"{PUBLIC}{path}", token=SECONDARY) == 204
        with world.factory() as s:
            stored = set(s.scalars(select(Call.call_sid)))
        assert stored == {dict(c)["CallSid"] for c in calls}  # every variant was taken and stored
        # The controls: the same requests signed for the internal URL, or with a third token, are not.
        assert post("/twilio/voice", voice(7), f"{world.bridge_url}/twilio/voice") == 403
        assert post("/twilio/voice", voice(8), f"{PUBLIC}/twilio/voice", token="a-third-token") == 403
    finally:
        stop_process(arbiter)


def _raw_post(
    world: World, target: str, pairs: list[tuple[str, str]], signed_url: str, headers: dict[str, str]
) -> int:
    """A POST whose request line carries ``target`` verbatim (a fragment included)."""
    import http.client

    body = urlencode(pairs)
    conn = http.client.HTTPConnection("127.0.0.1", world.port, timeout=30)
    try:
        conn.putrequest("POST", target, skip_host=True)
        for name, value in {
            **headers,
            "X-Twilio-Signature": world.sign(signed_url, MultiDict(pairs)),
            "Content-Type": "application/x-www-form-urlencoded",
            "Content-Length": str(len(body)),
        }.items():
            conn.putheader(name, value)
        conn.endheaders(body.encode())
        return conn.getresponse().status
    finally:
        conn.close()


def test_7c_requests_twilio_signs_alike_are_replays_without_side_effects(
    make_world: Callable[..., World],
) -> None:
    """Twilio's signature concatenates names and values without separators, so ``From=%2B1312..``
    and a name ``From+1312..`` with no value sign alike. The bridge cannot tell them apart; such a
    variant of a request it processed must change nothing."""
    world = make_world(public_url=PUBLIC, businesses=[fault_business(mode="ring_through")])
    bases = _signed_flow(world)
    for base in bases:
        signature = world.sign(PUBLIC + base.path, MultiDict(base.pairs))
        body = urlencode(base.pairs)
        answer = world.client.post(
            base.path,
            data=body,
            content_type="application/x-www-form-urlencoded",
            headers={"X-Twilio-Signature": signature},
        )
        assert 200 <= answer.status_code < 300, answer.get_data(as_text=True)
    before = world.dump()
    tried = 0
    for base in bases:
        signature = world.sign(PUBLIC + base.path, MultiDict(base.pairs))
        for body in equivalents(base):
            tried += 1
            answer = world.client.post(
                base.path,
                data=body,
                content_type="application/x-www-form-urlencoded",
                headers={"X-Twilio-Signature": signature},
            )
            assert answer.status_code != 500, body
    assert tried >= len(bases)
    assert_unchanged(world, before)


def assert_unchanged(world: World, before: str) -> None:
    after = world.dump()
    added = sorted(set(after.splitlines()) - set(before.splitlines()))
    removed = sorted(set(before.splitlines()) - set(after.splitlines()))
    assert (added, removed) == ([], []), {"added": added, "removed": removed}


# -- 8. replaying any processed webhook, on every route, changes nothing ----------------------------------


def test_8_replaying_every_processed_webhook_has_no_side_effects(make_world: Callable[..., World]) -> None:
    world = make_world(businesses=[fault_business(mode="ring_through")])
    world.add_crm("webhook")
    recorded: list[tuple[str, str, str, int]] = []  # path, body, signature, first answer

    def deliver(path: str, params: dict[str, str]) -> None:
        body = urlencode(params)
        signature = world.sign(world.signed_url(path), params)
        answer = world.client.post(
            path,
            data=body,
            content_type="application/x-www-form-urlencoded",
            headers={"X-Twilio-Signature": signature},
        )
        assert 200 <= answer.status_code < 300, (path, answer.status_code, answer.get_data(as_text=True))
        recorded.append((path, body, signature, answer.status_code))

    caller, hung_up, texter = "+13125550181", "+13125550182", "+13125550183"
    call_sid, child = f"CA{'1' * 32}", f"CA{'2' * 32}"
    voice = world.voice_params(caller, call_sid=call_sid)
    common = {"CallSid": call_sid, "AccountSid": ACCOUNT_SID, "From": caller, "To": voice["To"]}
    deliver("/twilio/voice", voice)
    deliver("/twilio/screen", {"CallSid": child, "ParentCallSid": call_sid, "To": "+13125550111"})
    deliver("/twilio/screen-accept", {"CallSid": child, "ParentCallSid": call_sid, "Digits": "1"})
    deliver("/twilio/dial-result", {**common, "DialCallStatus": "no-answer", "DialBridged": "false"})
    deliver(
        "/twilio/recording",
        {
            **common,
            "RecordingSid": f"RE{'3' * 32}",
            "RecordingDuration": "9",
            "RecordingUrl": f"https://api.twilio.com/2010-04-01/Recordings/RE{'3' * 32}",
        },
    )
    deliver(
        "/twilio/transcription",
        {
            **common,
            "RecordingSid": f"RE{'3' * 32}",
            "TranscriptionSid": f"TR{'4' * 32}",
            "TranscriptionStatus": "completed",
            "TranscriptionText": "The breaker keeps tripping in the kitchen",
        },
    )
    deliver("/twilio/call-status", {**common, "CallStatus": "completed", "CallDuration": "40"})
    # A caller who hangs up while it rings: the status callback alone decides.
    other = world.voice_params(hung_up, call_sid=f"CA{'5' * 32}")
    deliver("/twilio/voice", other)
    deliver(
        "/twilio/call-status",
        {
            **other,
            "CallStatus": "no-answer",
            "CallDuration": "0",
            "Timestamp": "Wed, 10 Jun 2026 15:00:30 +0000",
        },
    )
    world.drain()
    first = next(m for m in world.messages(caller) if m.direction == "outbound")
    for status in ("sent", "delivered"):
        deliver(
            f"/twilio/message-status?m={first.id}",
            {"MessageSid": str(first.sid), "MessageStatus": status, "AccountSid": ACCOUNT_SID},
        )
    deliver("/twilio/sms", world.sms_params(caller, "Yes please, can someone come tomorrow?"))
    deliver("/twilio/sms", world.sms_params(texter, "STOP"))
    world.drain()
    routes = {path.split("?")[0] for path, *_ in recorded}
    assert routes == {
        f"/twilio/{r}"
        for r in (
            "voice",
            "screen",
            "screen-accept",
            "dial-result",
            "recording",
            "transcription",
            "call-status",
            "message-status",
            "sms",
        )
    }
    before, requests_before = world.dump(), len(world.twilio_requests())
    receiver_before = len(world.crms["webhook"].requests())

    def replay(item: tuple[str, str, str, int]) -> int:
        path, body, signature, _ = item
        client = world.app.test_client()
        return int(
            client.post(
                path,
                data=body,
                content_type="application/x-www-form-urlencoded",
                headers={"X-Twilio-Signature": signature},
            ).status_code
        )

    for _ in range(3):
        assert [replay(item) for item in recorded] == [status for *_r, status in recorded]
    with ThreadPoolExecutor(max_workers=8) as pool:  # and all of them at once
        assert list(pool.map(replay, recorded)) == [status for *_r, status in recorded]
    world.drain()
    assert_unchanged(world, before)
    assert len(world.twilio_requests()) == requests_before
    assert len(world.crms["webhook"].requests()) == receiver_before
