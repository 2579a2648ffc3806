"""The reply conversation, end to end: signed webhooks, the worker, and the emulators."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from aiosmtpd.controller import Controller
from click.testing import CliRunner
from flask import Flask, request

from bridge.cli import main
from connectors.emulator import serve_in_thread
from connectors.google_calendar.sandbox import settings as gcal_settings
from core.models import Notification
from core.secrets import generate_key
from tests.conftest import BUSINESS_NUMBER, STAFF_PHONE, business
from tests.stack import Stack

CALLER = "+13125550142"
ALL_DAY = {d: ["00:00-24:00"] for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}


class Mailbox:
    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(envelope)
        return "250 OK"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    box = Mailbox()
    port = _port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    yield box, port
    controller.stop()


@pytest.fixture
def chat() -> Iterator[tuple[list[dict[str, Any]], str]]:
    received: list[dict[str, Any]] = []
    app = Flask("chat")

    @app.post("/hook")
    def hook() -> str:
        received.append(request.get_json() or {})
        return "ok"

    server = serve_in_thread(app)
    yield received, server.url + "/hook"
    server.stop()


def make_stack(
    tmp_path: Path,
    db_url: str,
    calendar_url: str,
    monkeypatch: pytest.MonkeyPatch,
    smtp_port: int | None = None,
    chat_url: str | None = None,
    **biz: Any,
) -> Stack:
    monkeypatch.setenv("TEXTBACK_SECRET_KEY", generate_key())
    escalation: dict[str, Any] = {"business_hours_handoff": False, "sms": [STAFF_PHONE]}
    if smtp_port:
        escalation["email"] = ["owner@brightspark.example.com"]
    if chat_url:
        escalation["webhook_url"] = chat_url
    escalation.update(biz.pop("escalation", {}))
    b = business(
        booking={"calendar": "google_calendar", "lead_minutes": 60},
        conversation={
            "pricing_link": "https://brightspark.example.com/pricing",
            "info": {"hours": "Mon-Fri 8am-5pm", "service_area": "Chicago"},
        },
        escalation=escalation,
        **biz,
    )
    extra: dict[str, Any] = {"businesses": [b]}
    if smtp_port:
        extra["smtp"] = {"host": "127.0.0.1", "port": smtp_port, "from": "textback@brightspark.example.com"}
    stack = Stack(tmp_path, db_url, **extra)
    settings = tmp_path / "gcal.yaml"
    settings.write_text(yaml.safe_dump(gcal_settings(calendar_url)))
    result = CliRunner().invoke(
        main,
        [
            "connectors",
            "install",
            "google_calendar",
            "--config",
            str(stack.config_path),
            "--config-file",
            str(settings),
        ],
    )
    assert result.exit_code == 0, result.output
    return stack


@pytest.fixture
def convo(tmp_path: Path, db_url: str, calendar: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    stack = make_stack(tmp_path, db_url, calendar, monkeypatch)
    yield stack
    stack.close()


def texts_to(stack: Stack, phone: str) -> list[str]:
    return [m["body"] for m in stack.sent(phone)]


def start(stack: Stack, caller: str = CALLER) -> None:
    stack.call(caller, "no-answer")
    stack.drain()
    assert len(stack.sent(caller)) == 1


def say(stack: Stack, body: str, caller: str = CALLER) -> list[str]:
    before = len(stack.sent(caller))
    stack.inbound_sms(caller, body)
    stack.drain()
    return texts_to(stack, caller)[before:]


def events(calendar: str) -> list[dict[str, Any]]:
    state = requests.get(f"{calendar}/_emulator/state", timeout=5).json()
    return [e for e in state["events"].get("primary", []) if e.get("status") != "cancelled"]


def test_booking_offers_three_real_slots_and_books_one(convo: Stack, calendar: str) -> None:
    start(convo)
    offer = say(convo, "Hi this is Dana, can someone come out this week to fix an outlet?")
    assert len(offer) == 1 and "Reply 1, 2 or 3" in offer[0]
    lead = convo.lead(CALLER)
    assert lead is not None and lead["name"] == "Dana" and lead["status"] == "qualified"
    confirm = say(convo, "the second one")
    assert len(confirm) == 1 and "You're booked with Bright Spark Electric" in confirm[0]
    booked = events(calendar)
    assert len(booked) == 1 and CALLER in booked[0]["description"]
    lead = convo.lead(CALLER)
    assert lead is not None and lead["status"] == "booked"
    booking = next(e for e in lead["timeline"] if e["type"] == "booking")
    assert booking["event_id"] == booked[0]["id"]
    # The booked slot is no longer offered to the next caller.
    other = "+13125550143"
    start(convo, other)
    offer2 = say(convo, "I'd like to book an appointment", other)
    assert len(offer2) == 1 and "Reply 1, 2 or 3" in offer2[0]


def test_a_slot_taken_meanwhile_is_reoffered_never_double_booked(convo: Stack, calendar: str) -> None:
    start(convo)
    say(convo, "can you come out tomorrow to look at my panel? I want to book")
    lead = convo.lead(CALLER)
    assert lead is not None
    from core.models import Lead

    with convo.factory() as s:
        offered = (s.get(Lead, lead["id"]).convo_data or {})["offered"]  # type: ignore[union-attr]
    first = offered[0]
    from datetime import datetime, timedelta

    start_at = datetime.fromisoformat(first)
    busy = [{"start": start_at.isoformat(), "end": (start_at + timedelta(hours=1)).isoformat()}]
    requests.post(f"{calendar}/_emulator/config", json={"busy": {"primary": busy}}, timeout=5)
    again = say(convo, "1")
    assert len(again) == 1 and again[0].startswith("Sorry, that time was just taken.")
    assert "Reply 1, 2 or 3" in again[0]
    assert events(calendar) == []


def test_unclear_first_reply_gets_the_one_qualifying_question(convo: Stack) -> None:
    start(convo)
    asked = say(convo, "hello")
    assert len(asked) == 1 and "book a visit, get a quote, or is it urgent" in asked[0]
    quote = say(convo, "a quote please, how much for a new panel")
    assert len(quote) == 1 and "https://brightspark.example.com/pricing" in quote[0]
    lead = convo.lead(CALLER)
    assert lead is not None and lead["status"] == "qualified"


def test_urgent_escalates_at_once_and_tells_the_caller(convo: Stack) -> None:
    start(convo)
    reply = say(convo, "there are sparks coming out of my outlet and I smell burning!!")
    assert len(reply) == 1 and "will call you right away" in reply[0]
    alerts = texts_to(convo, STAFF_PHONE)
    assert len(alerts) == 1
    assert "URGENT" in alerts[0] and CALLER in alerts[0] and "tel:" + CALLER in alerts[0]
    assert "sparks" in alerts[0]


def test_wrong_number_is_closed_politely_and_never_texted_again(convo: Stack) -> None:
    start(convo)
    bye = say(convo, "wrong number, I never called you")
    assert len(bye) == 1 and "won't text this number again" in bye[0]
    assert say(convo, "ok whatever") == []
    lead = convo.lead(CALLER)
    assert lead is not None and lead["status"] == "closed"


def test_question_is_answered_from_the_business_info(convo: Stack) -> None:
    start(convo)
    answer = say(convo, "what are your hours?")
    assert len(answer) == 1 and "Mon-Fri 8am-5pm" in answer[0]


def test_staff_reply_is_relayed_and_the_conversation_becomes_human_only(convo: Stack) -> None:
    start(convo)
    say(convo, "I have a question about my invoice from last week")  # existing customer: handed off
    alert = texts_to(convo, STAFF_PHONE)
    assert len(alert) == 1 and "#" in alert[0]
    convo.inbound_sms(STAFF_PHONE, "Hi, this is Sam from Bright Spark, I'll call you in 5 minutes")
    convo.drain()
    relayed = [m for m in convo.sent(CALLER) if "Sam from Bright Spark" in m["body"]]
    assert len(relayed) == 1 and relayed[0]["from"] == BUSINESS_NUMBER
    # From now on nothing automated goes to the caller; their words reach the staff.
    before = len(convo.sent(CALLER))
    convo.inbound_sms(CALLER, "thanks, talk soon")
    convo.drain()
    assert len(convo.sent(CALLER)) == before
    assert any("thanks, talk soon" in body for body in texts_to(convo, STAFF_PHONE))
    lead = convo.lead(CALLER)
    assert lead is not None and any(e["type"] == "takeover" for e in lead["timeline"])


def test_staff_reply_with_a_short_code_picks_the_lead(convo: Stack) -> None:
    first, second = "+13125550144", "+13125550145"
    for caller in (first, second):
        start(convo, caller)
        say(convo, "water is pouring through my ceiling", caller)
    from sqlalchemy import select

    from core.models import Lead

    with convo.factory() as s:
        code = s.scalars(select(Lead.short_code).where(Lead.phone == first)).one()
    assert code
    convo.inbound_sms(STAFF_PHONE, f"#{code} On my way now")
    convo.drain()
    assert any("On my way now" in m["body"] for m in convo.sent(first))
    assert not any("On my way now" in m["body"] for m in convo.sent(second))


def test_repeat_caller_escalates(convo: Stack) -> None:
    convo.call(CALLER, "no-answer")
    convo.call(CALLER, "busy")
    convo.drain()
    assert len(convo.sent(CALLER)) == 1  # cooldown: one text
    alerts = texts_to(convo, STAFF_PHONE)
    assert len(alerts) == 1 and "Repeat caller" in alerts[0]


def test_at_most_three_unsolicited_texts_a_day(
    tmp_path: Path, db_url: str, calendar: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = make_stack(
        tmp_path,
        db_url,
        calendar,
        monkeypatch,
        policy={"cooldown_hours": 0, "sending_window": {"start": "00:00", "end": "00:00"}},
        escalation={"sms": []},
    )
    try:
        for _ in range(4):
            stack.call(CALLER, "no-answer")
            stack.drain()
        assert len(stack.sent(CALLER)) == 3
        lead = stack.lead(CALLER)
        assert lead is not None
        skips = [e["reason"] for e in lead["timeline"] if e["type"] == "decision" and e["outcome"] == "skip"]
        assert skips == ["frequency_cap"]
        # Direct answers to the caller's own texts are not capped.
        assert len(say(stack, "what are your hours?")) == 1
    finally:
        stack.close()


@pytest.mark.parametrize(
    "phrase", ["stop texting me", "Please remove me from your list", "no me envíes más mensajes"]
)
def test_plain_language_opt_out_suppresses_everything(convo: Stack, phrase: str) -> None:
    start(convo)
    confirm = say(convo, phrase)
    assert len(confirm) == 1 and "unsubscribed" in confirm[0]
    assert say(convo, "STOP") == []  # at most one confirmation
    convo.call(CALLER, "no-answer", to=BUSINESS_NUMBER)
    convo.drain()
    lead = convo.lead(CALLER)
    assert lead is not None and lead["opted_out"] is True
    assert len(convo.sent(CALLER)) == 2  # the first text and the one confirmation


def test_can_you_stop_by_is_not_an_opt_out(convo: Stack) -> None:
    start(convo)
    say(convo, "can you stop by tomorrow?")
    lead = convo.lead(CALLER)
    assert lead is not None and lead["opted_out"] is False


def test_business_hours_reply_notifies_by_sms_email_and_chat(
    tmp_path: Path,
    db_url: str,
    calendar: str,
    monkeypatch: pytest.MonkeyPatch,
    mailbox: tuple[Mailbox, int],
    chat: tuple[list[dict[str, Any]], str],
) -> None:
    box, port = mailbox
    received, url = chat
    stack = make_stack(
        tmp_path,
        db_url,
        calendar,
        monkeypatch,
        smtp_port=port,
        chat_url=url,
        hours=ALL_DAY,
        escalation={"business_hours_handoff": True},
    )
    try:
        start(stack)
        say(stack, "hi, can I get a quote for rewiring my garage?")
        assert any("New reply" in body for body in texts_to(stack, STAFF_PHONE))
        assert len(box.messages) == 1
        assert "owner@brightspark.example.com" in box.messages[0].rcpt_tos
        assert b"rewiring my garage" in box.messages[0].content
        assert len(received) == 1 and "rewiring my garage" in received[0]["text"]
        with stack.factory() as s:
            from sqlalchemy import func, select

            assert s.scalar(select(func.count()).select_from(Notification)) == 3
    finally:
        stack.close()


def test_no_human_response_within_the_sla_notifies_the_backup(
    tmp_path: Path,
    db_url: str,
    calendar: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    backup = "+13125550199"
    stack = make_stack(
        tmp_path, db_url, calendar, monkeypatch, escalation={"backup_sms": [backup], "sla_minutes": 1}
    )
    try:
        start(stack)
        say(stack, "my basement is flooding, water everywhere")
        assert len(texts_to(stack, STAFF_PHONE)) == 1
        assert texts_to(stack, backup) == []
        from datetime import timedelta

        import time_machine

        from core.models import utcnow

        with time_machine.travel(utcnow() + timedelta(minutes=2), tick=True):
            stack.drain()
        backup_alerts = texts_to(stack, backup)
        assert len(backup_alerts) == 1 and "No response yet" in backup_alerts[0]
    finally:
        stack.close()


def test_one_follow_up_when_the_caller_never_answers(
    tmp_path: Path, db_url: str, calendar: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from datetime import timedelta

    import time_machine

    from core.models import utcnow

    quiet, talker = "+13125550146", "+13125550147"
    stack = make_stack(
        tmp_path,
        db_url,
        calendar,
        monkeypatch,
        escalation={"sms": []},
        policy={"follow_up_after_hours": 2, "sending_window": {"start": "00:00", "end": "00:00"}},
    )
    try:
        start(stack, quiet)
        start(stack, talker)
        say(stack, "what are your hours?", talker)
        with time_machine.travel(utcnow() + timedelta(hours=2, minutes=1), tick=True):
            stack.drain()
            stack.drain()
        nudges = [b for b in texts_to(stack, quiet) if "just checking in" in b]
        assert len(nudges) == 1 and "STOP" in nudges[0]
        assert not any("just checking in" in b for b in texts_to(stack, talker))
    finally:
        stack.close()


@pytest.mark.parametrize("word", ["START", "unstop", "Yes"])
def test_resubscribe_after_an_opt_out(convo: Stack, word: str) -> None:
    start(convo)
    assert "unsubscribed" in say(convo, "STOP")[0]
    back = say(convo, word)
    assert len(back) == 1 and "resubscribed" in back[0]
    lead = convo.lead(CALLER)
    assert lead is not None and lead["opted_out"] is False
    convo.call(CALLER, "no-answer", to=BUSINESS_NUMBER)  # within the cooldown: still no second first-text
    convo.drain()
    assert say(convo, "what are your hours?") != []  # answers flow again


def test_yes_is_only_an_answer_when_not_opted_out(convo: Stack) -> None:
    start(convo)
    replies = say(convo, "yes")
    assert not any("resubscribed" in r for r in replies)


@pytest.mark.parametrize("word", ["HELP", "info"])
def test_help_and_info_name_the_business_and_how_to_reach_it(convo: Stack, word: str) -> None:
    start(convo)
    [answer] = say(convo, word)
    assert "Bright Spark Electric" in answer and BUSINESS_NUMBER in answer and "STOP" in answer


def test_twilio_advanced_opt_out_is_recorded_without_a_second_confirmation(convo: Stack) -> None:
    start(convo)
    before = len(convo.sent(CALLER))
    convo.inbound_sms(CALLER, "STOP", opt_out_type="STOP")  # Twilio already confirmed it
    convo.drain()
    assert len(convo.sent(CALLER)) == before
    lead = convo.lead(CALLER)
    assert lead is not None and lead["opted_out"] is True
    assert any(e["type"] == "opt_out" and e["source"] == "twilio" for e in lead["timeline"])


def test_an_unclear_answer_to_the_question_goes_to_a_person(convo: Stack) -> None:
    start(convo)
    say(convo, "hello")  # the qualifying question
    handoff = say(convo, "hmm not sure")
    assert len(handoff) == 1 and "Someone from Bright Spark Electric will text you back" in handoff[0]
    assert any("Needs a person" in t for t in texts_to(convo, STAFF_PHONE))
    lead = convo.lead(CALLER)
    assert lead is not None and lead["status"] == "handed_off"
