"""Redelivered webhooks change nothing: the same signed request 50 times, 20 of them at once.

Twilio retries webhooks on timeouts and proxies replay them, so every route must be idempotent
through unique keys in the database (not memory): one lead, one outbox job, one SMS.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import func, select

from core.models import Call, Lead, Message, MessageStatusEvent, OutboxJob, TimelineEntry, WebhookEvent
from tests.conftest import ACCOUNT_SID, BUSINESS_NUMBER
from tests.stack import Stack, business_with, call_row, configure_emulator, timeline

CALLER = "+13125550142"
SEQUENTIAL = 30
CONCURRENT = 20


def sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


def call_params(call_sid: str, **extra: str) -> dict[str, str]:
    return {
        "CallSid": call_sid,
        "AccountSid": ACCOUNT_SID,
        "From": CALLER,
        "To": BUSINESS_NUMBER,
        "Caller": CALLER,
        "Called": BUSINESS_NUMBER,
        "CallStatus": "ringing",
        "Direction": "inbound",
        "ApiVersion": "2010-04-01",
        **extra,
    }


def deliver(stack: Stack, path: str, params: dict[str, str]) -> list[requests.Response]:
    """The same signed request 30 times one after another, then 20 times at once."""
    signature = stack.sign(f"{stack.public_url}{path}", params)
    url = f"{stack.bridge_url}{path}"

    def post(_: int = 0) -> requests.Response:
        return requests.post(url, data=params, headers={"X-Twilio-Signature": signature}, timeout=30)

    responses = [post() for _ in range(SEQUENTIAL)]
    with ThreadPoolExecutor(max_workers=CONCURRENT) as pool:
        responses += list(pool.map(post, range(CONCURRENT)))
    assert len(responses) == 50
    return responses


def statuses(responses: list[requests.Response]) -> set[int]:
    return {r.status_code for r in responses}


def count_where(stack: Stack, model: Any, *where: Any) -> int:
    with stack.factory() as s:
        return int(s.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def assert_one_text(stack: Stack) -> None:
    assert stack.count(Lead) == 1
    assert stack.count(OutboxJob) == 1
    stack.drain(settle=0.1)
    assert len(stack.sent(CALLER)) == 1
    assert len(stack.sent()) == 1


def test_dial_result_replayed_50_times(stack: Stack) -> None:
    call_sid = sid("CA")
    assert stack.post_signed("/twilio/voice", call_params(call_sid)).status_code == 200
    params = call_params(call_sid, DialCallStatus="no-answer", DialCallSid=sid("CA"), DialBridged="false")
    responses = deliver(stack, "/twilio/dial-result", params)
    assert statuses(responses) == {200}
    # Every replay gets the same answer: the caller is offered voicemail each time.
    assert all("<Record" in r.text for r in responses)
    assert_one_text(stack)
    assert [(e["outcome"], e["reason"]) for e in timeline(stack, CALLER, "decision")] == [
        ("text", "missed_no_answer")
    ]
    assert len(timeline(stack, CALLER, "call")) == 1
    assert count_where(stack, WebhookEvent, WebhookEvent.kind == "voice.dial_result") == 1


def test_voice_replayed_50_times_in_ring_through_mode(stack: Stack) -> None:
    call_sid = sid("CA")
    responses = deliver(stack, "/twilio/voice", call_params(call_sid))
    assert statuses(responses) == {200}
    assert all("<Dial" in r.text for r in responses)
    assert stack.count(Call) == 1
    assert count_where(stack, WebhookEvent, WebhookEvent.kind == "voice.incoming") == 1
    assert stack.count(Lead) == 0  # nothing is decided before the dial result
    dial = call_params(call_sid, DialCallStatus="busy", DialBridged="false")
    assert stack.post_signed("/twilio/dial-result", dial).status_code == 200
    assert_one_text(stack)


def test_voice_replayed_50_times_in_forward_mode(tmp_path: Path, db_url: str) -> None:
    stack = Stack(tmp_path, db_url, businesses=[business_with(mode="forward", staff_phones=[])])
    try:
        responses = deliver(stack, "/twilio/voice", call_params(sid("CA")))
        assert statuses(responses) == {200}
        assert all("<Record" in r.text for r in responses)
        assert stack.count(Call) == 1
        assert_one_text(stack)
        assert [e["reason"] for e in timeline(stack, CALLER, "decision")] == ["missed_forwarded"]
    finally:
        stack.close()


def test_call_status_replayed_50_times(stack: Stack) -> None:
    call_sid = sid("CA")
    assert stack.post_signed("/twilio/voice", call_params(call_sid)).status_code == 200
    hung_up = datetime.now(UTC) + timedelta(seconds=10)
    params = call_params(
        call_sid,
        CallStatus="no-answer",
        CallDuration="0",
        Timestamp=format_datetime(hung_up.replace(microsecond=0)),
    )
    responses = deliver(stack, "/twilio/call-status", params)
    assert statuses(responses) == {204}
    assert_one_text(stack)
    assert [e["reason"] for e in timeline(stack, CALLER, "decision")] == ["missed_hangup"]
    assert count_where(stack, WebhookEvent, WebhookEvent.kind == "voice.status") == 1


def test_call_status_for_an_unseen_call_replayed_50_times(stack: Stack) -> None:
    # The voice webhook was lost (say the bridge was down): the status callback alone records the call.
    call_sid = sid("CA")
    params = call_params(call_sid, CallStatus="canceled", Timestamp=format_datetime(datetime.now(UTC)))
    responses = deliver(stack, "/twilio/call-status", params)
    assert statuses(responses) == {204}
    assert stack.count(Call) == 1
    assert call_row(stack, call_sid).status == "canceled"


def test_inbound_sms_replayed_50_times(stack: Stack) -> None:
    message_sid = sid("SM")
    params = {
        "MessageSid": message_sid,
        "SmsSid": message_sid,
        "AccountSid": ACCOUNT_SID,
        "From": CALLER,
        "To": BUSINESS_NUMBER,
        "Body": "STOP",
        "NumMedia": "0",
    }
    responses = deliver(stack, "/twilio/sms", params)
    assert statuses(responses) == {200}
    assert stack.count(Lead) == 1
    assert count_where(stack, Message, Message.direction == "inbound") == 1
    assert count_where(stack, WebhookEvent, WebhookEvent.kind == "sms.inbound") == 1
    assert len(timeline(stack, CALLER, "opt_out")) == 1
    # One opt-out confirmation, not fifty.
    assert_one_text(stack)
    assert "unsubscribed" in stack.sent(CALLER)[0]["body"]


def test_recording_and_transcription_replayed_50_times(stack: Stack) -> None:
    call_sid = sid("CA")
    assert stack.post_signed("/twilio/voice", call_params(call_sid)).status_code == 200
    dial = call_params(call_sid, DialCallStatus="no-answer", DialBridged="false")
    assert stack.post_signed("/twilio/dial-result", dial).status_code == 200
    recording_sid = sid("RE")
    recording = call_params(
        call_sid,
        RecordingSid=recording_sid,
        RecordingUrl=f"https://api.twilio.com/2010-04-01/Accounts/{ACCOUNT_SID}/Recordings/{recording_sid}",
        RecordingDuration="7",
    )
    assert statuses(deliver(stack, "/twilio/recording", recording)) == {200}
    transcription = call_params(
        call_sid,
        RecordingSid=recording_sid,
        TranscriptionSid=sid("TR"),
        TranscriptionText="Please call me back about the panel",
        TranscriptionStatus="completed",
    )
    assert statuses(deliver(stack, "/twilio/transcription", transcription)) == {204}
    [voicemail] = timeline(stack, CALLER, "voicemail")
    assert voicemail["recording_sid"] == recording_sid and voicemail["duration"] == 7
    [transcript] = timeline(stack, CALLER, "transcript")
    assert transcript["text"] == "Please call me back about the panel"
    assert count_where(stack, TimelineEntry, TimelineEntry.type.in_(("voicemail", "transcript"))) == 2
    assert_one_text(stack)


# -- message status callbacks ---------------------------------------------------------------------

TERMINAL = ("delivered", "undelivered")
RANK = {"queued": 0, "sending": 1, "sent": 2, "delivered": 3, "undelivered": 3}


def expected_final(order: tuple[str, ...]) -> str:
    """The furthest status reached; the first terminal one sticks."""
    best = "queued"
    for status in order:
        if best in TERMINAL:
            break
        if RANK[status] > RANK[best]:
            best = status
    return best


ORDERS = list(itertools.permutations(("sent", "delivered", "undelivered")))
ORDERS += [p for p in itertools.permutations(("queued", "sent", "delivered")) if p[-1] != "delivered"]
ORDERS += list(itertools.permutations(("queued", "sending", "sent")))  # no terminal status at all


@pytest.fixture
def sent_messages(stack: Stack) -> Callable[[int], list[tuple[str, str]]]:
    """``n`` texts sent through the worker, as (message id, sid), with the emulator's own callbacks held."""

    def make(n: int) -> list[tuple[str, str]]:
        configure_emulator(stack, status_delay_ms=60_000)
        callers = [f"+1312555{1000 + i:04d}" for i in range(n)]
        for caller in callers:
            assert "error" not in stack.call(caller, "no-answer")
        stack.drain(settle=0)
        # Bump the emulator's generation so the held callbacks are dropped, never delivered.
        requests.post(f"{stack.twilio_url}/_emulator/reset", timeout=5)
        with stack.factory() as s:
            rows = s.execute(select(Message.id, Message.sid, Message.status).where(Message.sid.is_not(None)))
            found = [(r.id, r.sid, r.status) for r in rows]
        assert len(found) == n and all(status == "queued" for *_x, status in found), found
        return [(mid, msid) for mid, msid, _s in found]

    return make


@pytest.mark.parametrize("interleaved", [False, True], ids=["each-twice-in-a-row", "all-then-all-again"])
def test_status_callbacks_in_every_order_never_regress(
    stack: Stack, sent_messages: Callable[[int], list[tuple[str, str]]], interleaved: bool
) -> None:
    messages = sent_messages(len(ORDERS))
    for (message_id, message_sid), order in zip(messages, ORDERS, strict=True):
        sequence = list(order) * 2 if interleaved else [s for s in order for _ in range(2)]
        for status in sequence:
            params = {"MessageSid": message_sid, "MessageStatus": status, "AccountSid": ACCOUNT_SID}
            if status == "undelivered":
                params["ErrorCode"] = "30003"
            response = stack.post_signed(f"/twilio/message-status?m={message_id}", params)
            assert response.status_code == 204, response.text
    with stack.factory() as s:
        final = {str(k): v for k, v in s.execute(select(Message.sid, Message.status))}
        events = s.execute(
            select(MessageStatusEvent.message_sid, MessageStatusEvent.status, func.count()).group_by(
                MessageStatusEvent.message_sid, MessageStatusEvent.status
            )
        ).all()
    for (_mid, message_sid), order in zip(messages, ORDERS, strict=True):
        assert final[message_sid] == expected_final(order), (order, final[message_sid])
    assert all(n == 1 for *_key, n in events)
    assert len(events) == 3 * len(ORDERS)


def test_concurrent_duplicate_status_callbacks_are_stored_once(
    stack: Stack, sent_messages: Callable[[int], list[tuple[str, str]]]
) -> None:
    [(message_id, message_sid)] = sent_messages(1)
    for status in ("sent", "delivered", "sent"):
        params = {"MessageSid": message_sid, "MessageStatus": status, "AccountSid": ACCOUNT_SID}
        responses = deliver(stack, f"/twilio/message-status?m={message_id}", params)
        assert statuses(responses) == {204}
    assert count_where(stack, MessageStatusEvent, MessageStatusEvent.message_sid == message_sid) == 2
    with stack.factory() as s:
        assert s.get(Message, message_id).status == "delivered"  # type: ignore[union-attr]


def test_status_callback_without_message_id_finds_the_message_by_sid(
    stack: Stack, sent_messages: Callable[[int], list[tuple[str, str]]]
) -> None:
    [(message_id, message_sid)] = sent_messages(1)
    for status in ("delivered", "sent"):
        params = {"MessageSid": message_sid, "MessageStatus": status}
        assert stack.post_signed("/twilio/message-status", params).status_code == 204
    with stack.factory() as s:
        assert s.get(Message, message_id).status == "delivered"  # type: ignore[union-attr]
