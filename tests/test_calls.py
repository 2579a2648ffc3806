"""Every way a call can end, played through the Twilio emulator against the real bridge and worker.

Each test checks the decision (its reason code on the lead timeline, or on the ``calls`` row when
no lead is made), and that exactly one text or none reached the emulator.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import time_machine

from core.models import Call, Lead, OutboxJob
from tests.conftest import BUSINESS_NUMBER, STAFF_PHONE
from tests.stack import (
    Stack,
    business_with,
    call_row,
    configure_emulator,
    emulator_requests,
    timeline,
    webhook_steps,
)

CALLER = "+13125550142"
CHICAGO = ZoneInfo("America/Chicago")


@pytest.fixture
def make_stack(tmp_path: Path, db_url: str) -> Iterator[Any]:
    """Build stacks with a custom config; every one is closed at the end."""
    made: list[Stack] = []

    def build(**overrides: Any) -> Stack:
        path = tmp_path / f"s{len(made)}"
        path.mkdir()
        made.append(Stack(path, db_url, **overrides))
        return made[-1]

    yield build
    for s in made:
        s.close()


def decisions(stack: Stack, phone: str) -> list[tuple[str, str]]:
    return [(e["outcome"], e["reason"]) for e in timeline(stack, phone, "decision")]


def first_texts(stack: Stack, phone: str) -> list[dict[str, Any]]:
    return [e for e in timeline(stack, phone, "message") if e["kind"] == "first_text"]


def assert_no_error(report: dict[str, Any]) -> None:
    assert "error" not in report, report.get("error")
    statuses = [s["status"] for s in report["steps"] if "url" in s]
    assert statuses and all(200 <= s < 300 for s in statuses), statuses


# -- missed calls that are texted ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("outcome", "reason"),
    [
        ("no-answer", "missed_no_answer"),
        ("busy", "missed_busy"),
        ("failed", "missed_failed"),
        ("voicemail", "missed_voicemail"),
    ],
)
def test_missed_outcome_texts_once(stack: Stack, outcome: str, reason: str) -> None:
    report = stack.call(CALLER, outcome)
    assert_no_error(report)
    stack.drain(settle=0.1)
    assert decisions(stack, CALLER) == [("text", reason)]
    sent = stack.sent(CALLER)
    assert len(sent) == 1
    assert sent[0]["from"] == BUSINESS_NUMBER
    call = call_row(stack, report["call_sid"])
    assert (call.decision_outcome, call.decision_reason) == ("text", reason)
    lead = stack.lead(CALLER)
    assert lead is not None and lead["status"] == "texted"
    assert [e["call_sid"] for e in timeline(stack, CALLER, "call")] == [report["call_sid"]]


def test_staff_voicemail_is_never_taken_for_an_answer(stack: Stack) -> None:
    report = stack.call(CALLER, "voicemail")
    screen = webhook_steps(report, "screen")
    assert len(screen) == 1 and screen[0]["leg"] == "child"
    # The machine never pressed 1, so the bridge was never told the call was accepted.
    assert webhook_steps(report, "screen-accept") == []
    result = webhook_steps(report, "dial-result")[0]
    assert result["params"]["DialCallStatus"] == "completed"
    assert "<Record" in result["twiml"]  # the caller is offered voicemail, not hung up on
    assert call_row(stack, report["call_sid"]).screen_accepted is False


def test_answered_call_is_skipped_without_a_lead(stack: Stack) -> None:
    report = stack.call(CALLER, "completed")
    assert_no_error(report)
    stack.drain(settle=0.1)
    assert webhook_steps(report, "screen-accept"), "the staff member pressed 1"
    call = call_row(stack, report["call_sid"])
    assert (call.decision_outcome, call.decision_reason) == ("skip", "answered")
    assert call.screen_accepted is True and call.lead_id is None
    assert stack.lead(CALLER) is None
    assert stack.count(Lead) == 0 and stack.count(OutboxJob) == 0
    assert stack.sent() == []
    assert "<Hangup" in webhook_steps(report, "dial-result")[0]["twiml"]


def test_caller_hanging_up_after_min_ring_is_texted(stack: Stack) -> None:
    report = stack.call(CALLER, "canceled", ring_seconds=7)
    assert_no_error(report)
    assert webhook_steps(report, "dial-result") == []  # the caller left before <Dial> ended
    stack.drain(settle=0.1)
    assert decisions(stack, CALLER) == [("text", "missed_hangup")]
    assert len(stack.sent(CALLER)) == 1
    call = call_row(stack, report["call_sid"])
    assert call.ring_seconds is not None and 6 <= call.ring_seconds <= 7.5


def test_caller_hanging_up_at_exactly_min_ring_is_texted(stack: Stack) -> None:
    # Pin the clock to a whole second: Twilio's Timestamp has one-second resolution, and a ring
    # of exactly min_ring_seconds is not "shorter than the minimum".
    with time_machine.travel(datetime(2026, 11, 25, 16, 0, 0, tzinfo=CHICAGO), tick=True):
        report = stack.call(CALLER, "canceled", ring_seconds=4)
        assert_no_error(report)
        stack.drain(settle=0.1)
    assert decisions(stack, CALLER) == [("text", "missed_hangup")]
    assert len(stack.sent(CALLER)) == 1


def test_short_ring_hang_up_is_skipped(stack: Stack) -> None:
    report = stack.call(CALLER, "canceled", ring_seconds=2)
    assert_no_error(report)
    stack.drain(settle=0.1)
    call = call_row(stack, report["call_sid"])
    assert (call.decision_outcome, call.decision_reason) == ("skip", "short_ring")
    assert call.lead_id is None and stack.lead(CALLER) is None
    assert stack.sent() == []


def test_forward_mode_every_call_is_a_miss(make_stack: Any) -> None:
    stack = make_stack(businesses=[business_with(mode="forward", staff_phones=[])])
    report = stack.call(CALLER, "no-answer", voicemail_text="Hi, my breaker keeps tripping")
    assert_no_error(report)
    voice = webhook_steps(report, "voice")[0]
    root = ET.fromstring(voice["twiml"])  # noqa: S314 - our own bridge's answer
    assert root.find("Dial") is None, "forwarded calls already rang the business"
    assert root.find("Say") is not None and root.find("Record") is not None
    assert webhook_steps(report, "dial-result") == []
    stack.drain(settle=0.1)
    assert decisions(stack, CALLER) == [("text", "missed_forwarded")]
    assert len(stack.sent(CALLER)) == 1
    assert [e["text"] for e in timeline(stack, CALLER, "transcript")] == ["Hi, my breaker keeps tripping"]


# -- calls that are skipped -----------------------------------------------------------------------


NEVER_TEXTED = {
    "Anonymous": "anonymous_caller",
    "+266696687": "anonymous_caller",
    "Restricted": "anonymous_caller",
    "12": "invalid_caller_id",
    BUSINESS_NUMBER: "own_number",
    STAFF_PHONE: "staff_phone",
}


def test_callers_never_texted(stack: Stack) -> None:
    reports = {caller: stack.call(caller, "no-answer") for caller in NEVER_TEXTED}
    for report in reports.values():
        assert_no_error(report)
    stack.drain(settle=0.1)
    decided = {}
    for caller, report in reports.items():
        call = call_row(stack, report["call_sid"])
        decided[caller] = call.decision_reason
        assert call.decision_outcome == "skip" and call.lead_id is None
    assert decided == NEVER_TEXTED
    assert stack.count(Lead) == 0 and stack.count(OutboxJob) == 0
    assert stack.sent() == []


def test_blocklisted_number_is_skipped(make_stack: Any) -> None:
    stack = make_stack(businesses=[business_with(policy={"blocklist": ["(312) 555-0142"]})])
    report = stack.call(CALLER, "no-answer")
    stack.drain(settle=0.1)
    call = call_row(stack, report["call_sid"])
    assert (call.decision_outcome, call.decision_reason) == ("skip", "blocklisted")
    assert stack.count(Lead) == 0
    assert stack.sent() == []
    # Somebody else still gets their text: the blocklist is not a blanket skip.
    stack.call("+13125550143", "no-answer")
    stack.drain(settle=0.1)
    assert len(stack.sent("+13125550143")) == 1


def test_repeat_call_within_cooldown_is_recorded_but_not_texted(stack: Stack) -> None:
    first = stack.call(CALLER, "no-answer")
    stack.drain(settle=0.1)
    second = stack.call(CALLER, "busy")
    stack.drain(settle=0.1)
    assert len(stack.sent(CALLER)) == 1
    assert stack.count(Lead) == 1 and len(first_texts(stack, CALLER)) == 1
    assert decisions(stack, CALLER) == [("text", "missed_no_answer"), ("skip", "cooldown")]
    calls = timeline(stack, CALLER, "call")
    assert [c["call_sid"] for c in calls] == [first["call_sid"], second["call_sid"]]
    assert [c["repeat"] for c in calls] == [False, True]
    lead = stack.lead(CALLER)
    assert lead is not None and call_row(stack, second["call_sid"]).lead_id == lead["id"]
    assert call_row(stack, second["call_sid"]).decision_reason == "cooldown"


def test_cooldown_ends_after_twelve_hours(stack: Stack) -> None:
    start = datetime(2026, 11, 24, 9, 0, tzinfo=CHICAGO)  # a Tuesday
    with time_machine.travel(start, tick=True):
        stack.call(CALLER, "no-answer")
        stack.drain(settle=0.1)
    with time_machine.travel(start + timedelta(hours=11, minutes=50), tick=True):
        stack.call(CALLER, "no-answer")
        stack.drain(settle=0.1)
    assert len(stack.sent(CALLER)) == 1
    with time_machine.travel(start + timedelta(hours=12, minutes=10), tick=True):
        stack.call(CALLER, "no-answer")
        stack.drain(settle=0.1)
    assert len(stack.sent(CALLER)) == 2
    assert [r for _o, r in decisions(stack, CALLER)] == ["missed_no_answer", "cooldown", "missed_no_answer"]


def test_opted_out_caller_is_not_texted(stack: Stack) -> None:
    stack.inbound_sms(CALLER, "STOP")
    stack.drain(settle=0.1)
    confirmations = stack.sent(CALLER)
    assert len(confirmations) == 1 and "unsubscribed" in confirmations[0]["body"]
    report = stack.call(CALLER, "no-answer")
    stack.drain(settle=0.1)
    # Compared by sid: the confirmation's own delivery callbacks may still move its status.
    assert [m["sid"] for m in stack.sent(CALLER)] == [m["sid"] for m in confirmations]
    assert decisions(stack, CALLER) == [("skip", "opted_out")]
    assert first_texts(stack, CALLER) == []
    assert call_row(stack, report["call_sid"]).decision_reason == "opted_out"
    lead = stack.lead(CALLER)
    assert lead is not None and lead["opted_out"] is True and lead["status"] == "opted_out"


def test_landline_is_looked_up_once_and_never_texted(make_stack: Any) -> None:
    stack = make_stack(businesses=[business_with(policy={"lookup_line_type": True})])
    configure_emulator(stack, numbers={CALLER: {"line_type": "landline"}})
    stack.call(CALLER, "no-answer")
    stack.drain(settle=0.1)
    lookups = emulator_requests(stack, "/v2/PhoneNumbers/")
    assert len(lookups) == 1
    assert stack.sent(CALLER) == []
    assert decisions(stack, CALLER)[-1] == ("skip", "landline")
    lead = stack.lead(CALLER)
    assert lead is not None and lead["status"] == "closed"

    second = stack.call(CALLER, "no-answer")
    stack.drain(settle=0.1)
    assert len(emulator_requests(stack, "/v2/PhoneNumbers/")) == 1, "the line type is cached"
    assert stack.sent(CALLER) == []
    assert call_row(stack, second["call_sid"]).decision_reason == "landline"
    assert [m["status"] for m in first_texts(stack, CALLER)] == ["canceled"]  # only the first call's


def test_mobile_caller_passes_the_line_type_check(make_stack: Any) -> None:
    stack = make_stack(businesses=[business_with(policy={"lookup_line_type": True})])
    stack.call(CALLER, "no-answer")
    stack.drain(settle=0.1)
    assert len(emulator_requests(stack, "/v2/PhoneNumbers/")) == 1
    assert len(stack.sent(CALLER)) == 1


# -- what the caller hears and reads ---------------------------------------------------------------


def test_voicemail_and_transcript_are_attached_to_the_lead(stack: Stack) -> None:
    words = "Hi this is Dana, the kitchen lights flicker, please call me back"
    report = stack.call(CALLER, "no-answer", voicemail_text=words)
    assert_no_error(report)
    recording = webhook_steps(report, "recording")
    assert len(recording) == 1
    stack.drain(settle=0.1)
    [voicemail] = timeline(stack, CALLER, "voicemail")
    assert voicemail["call_sid"] == report["call_sid"]
    assert voicemail["recording_sid"] == recording[0]["params"]["RecordingSid"]
    assert voicemail["recording_url"] == recording[0]["params"]["RecordingUrl"]
    assert voicemail["duration"] == len(words.split())
    [transcript] = timeline(stack, CALLER, "transcript")
    assert transcript["text"] == words and transcript["recording_sid"] == voicemail["recording_sid"]
    assert len(stack.sent(CALLER)) == 1


def test_dial_twiml_rings_every_staff_phone_with_screening(make_stack: Any) -> None:
    staff = [STAFF_PHONE, "+13125550112"]
    stack = make_stack(businesses=[business_with(staff_phones=staff)])
    report = stack.call(CALLER, "voicemail")
    voice = webhook_steps(report, "voice")[0]
    root = ET.fromstring(voice["twiml"])  # noqa: S314 - our own bridge's answer
    dial = root.find("Dial")
    assert dial is not None
    assert dial.get("answerOnBridge") == "true"
    assert dial.get("timeout") == "20"
    assert (dial.get("action") or "").endswith("/twilio/dial-result")
    numbers = dial.findall("Number")
    assert [(n.text or "").strip() for n in numbers] == staff
    assert all((n.get("url") or "").endswith("/twilio/screen") for n in numbers)
    screen = ET.fromstring(webhook_steps(report, "screen")[0]["twiml"])  # noqa: S314
    gather = screen.find("Gather")
    assert gather is not None and gather.get("numDigits") == "1"
    assert (gather.get("action") or "").endswith("/twilio/screen-accept")
    prompt = gather.find("Say")
    assert prompt is not None and "Bright Spark Electric" in (prompt.text or "")
    assert "Press 1" in (prompt.text or "")
    # Nobody pressed 1: the screening leg hangs up instead of bridging.
    assert screen.find("Hangup") is not None


def test_ring_timeout_is_configurable(make_stack: Any) -> None:
    stack = make_stack(businesses=[business_with(ring_timeout=25)])
    report = stack.call(CALLER, "no-answer")
    dial = ET.fromstring(webhook_steps(report, "voice")[0]["twiml"]).find("Dial")  # noqa: S314
    assert dial is not None and dial.get("timeout") == "25"


def _first_text_at(stack: Stack, moment: datetime) -> tuple[dict[str, Any], Any]:
    with time_machine.travel(moment, tick=True):
        report = stack.call(CALLER, "no-answer")
        stack.drain(settle=0.1)
    [sent] = stack.sent(CALLER)
    return sent, call_row(stack, report["call_sid"])


def test_first_text_after_hours(stack: Stack) -> None:
    moment = datetime(2026, 11, 28, 12, 0, tzinfo=CHICAGO)  # a Saturday: closed all day
    sent, call = _first_text_at(stack, moment)
    # The threaded bridge and emulator saw the travelled clock too.
    assert abs((call.started_at - moment).total_seconds()) < 30
    body = sent["body"]
    assert "Bright Spark Electric" in body and "STOP" in body
    assert "closed right now" in body


def test_first_text_in_business_hours(stack: Stack) -> None:
    moment = datetime(2026, 11, 25, 10, 30, tzinfo=CHICAGO)  # a Wednesday morning
    sent, call = _first_text_at(stack, moment)
    assert abs((call.started_at - moment).total_seconds()) < 30
    body = sent["body"]
    assert "Bright Spark Electric" in body and "Reply STOP to opt out" in body
    assert "closed" not in body and "missed your call" in body


def test_first_text_after_closing_time_on_a_weekday(stack: Stack) -> None:
    sent, _call = _first_text_at(stack, datetime(2026, 11, 25, 19, 15, tzinfo=CHICAGO))
    assert "closed right now" in sent["body"]


def test_every_outcome_in_one_stack_gives_one_text_per_missed_caller(stack: Stack) -> None:
    outcomes = {
        "+13125550150": ("no-answer", 1),
        "+13125550151": ("busy", 1),
        "+13125550152": ("failed", 1),
        "+13125550153": ("voicemail", 1),
        "+13125550154": ("completed", 0),
        "+13125550155": ("canceled", 1),
    }
    for caller, (outcome, _n) in outcomes.items():
        assert_no_error(stack.call(caller, outcome))
    stack.drain(settle=0.1)
    for caller, (outcome, expected) in outcomes.items():
        assert len(stack.sent(caller)) == expected, outcome
    assert stack.count(Call) == len(outcomes)
    assert stack.count(Lead) == 5
