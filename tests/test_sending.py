"""Sending through the outbox against the Twilio emulator: retries, ambiguity, permanent errors."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
import requests

from bridge.runtime import build_worker
from tests.conftest import ACCOUNT_SID
from tests.stack import Stack, all_day_business, outbox_jobs, settle

CALLER = "+13125550142"
MESSAGES = f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"


@pytest.fixture
def stack(tmp_path: Path, db_url: str) -> Iterator[Stack]:
    """The shared test stack, with texting allowed at any minute of the day."""
    s = Stack(tmp_path, db_url, businesses=[all_day_business()])
    try:
        yield s
    finally:
        s.close()


def twilio_error(code: int, status: int, message: str) -> dict[str, Any]:
    return {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


def api_requests(stack: Stack, to: str = CALLER) -> list[tuple[str, str]]:
    """Twilio REST requests about texts to ``to``: creates (form To) and lookups (query To)."""
    got = requests.get(f"{stack.twilio_url}/_emulator/requests", timeout=5).json()["requests"]
    return [
        (r["method"], r["path"])
        for r in got
        if r["path"].startswith("/2010-04-01/")
        and ((r["form"] or {}).get("To") == [to] or parse_qs(r["query"]).get("To") == [to])
    ]


def first_text(stack: Stack, phone: str = CALLER) -> dict[str, Any]:
    lead = stack.lead(phone)
    assert lead is not None
    [message] = [e for e in lead["timeline"] if e["type"] == "message" and e["to"] == phone]
    return message


def decisions(stack: Stack, phone: str = CALLER) -> list[tuple[str, str]]:
    lead = stack.lead(phone)
    assert lead is not None
    return [(e["outcome"], e["reason"]) for e in lead["timeline"] if e["type"] == "decision"]


def wait_until(what: str, check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def configure_number(stack: Stack, phone: str, **settings: Any) -> None:
    resp = requests.post(
        f"{stack.twilio_url}/_emulator/config", json={"numbers": {phone: settings}}, timeout=5
    )
    assert resp.status_code == 200, resp.text


def test_rate_limited_send_is_retried_and_sends_once(stack: Stack) -> None:
    stack.fault(
        method="POST",
        path=MESSAGES,
        status=429,
        body=twilio_error(20429, 429, "Too Many Requests"),
        count=1,
    )
    stack.call(CALLER)
    settle(stack)
    sent = stack.sent(CALLER)
    assert len(sent) == 1
    [job] = outbox_jobs(stack, "sms.send")
    assert (job.status, job.attempts) == ("done", 2)
    assert api_requests(stack).count(("POST", MESSAGES)) == 2
    message = first_text(stack)
    assert message["sid"] == sent[0]["sid"]
    assert stack.lead(CALLER)["status"] == "texted"  # type: ignore[index]


def test_server_error_is_retried_after_a_lookup(stack: Stack) -> None:
    stack.fault(
        method="POST",
        path=MESSAGES,
        status=503,
        body=twilio_error(20503, 503, "Service Unavailable"),
        count=1,
    )
    stack.call(CALLER)
    settle(stack)
    assert len(stack.sent(CALLER)) == 1
    # A 5xx may have been processed: the retry looks for the message before sending again.
    assert api_requests(stack) == [("POST", MESSAGES), ("GET", MESSAGES), ("POST", MESSAGES)]
    [job] = outbox_jobs(stack, "sms.send")
    assert (job.status, job.attempts) == ("done", 2)
    assert first_text(stack)["sid"] == stack.sent(CALLER)[0]["sid"]


def test_ambiguous_timeout_sends_no_duplicate(stack: Stack) -> None:
    assert stack.config.twilio.timeout_seconds == 2
    # The emulator creates the message, then stalls the answer past the client's timeout.
    stack.fault(method="POST", path=MESSAGES, delay_ms=2500, count=1)
    stack.call(CALLER)
    settle(stack, timeout=30)
    sent = stack.sent(CALLER)
    assert len(sent) == 1, sent
    assert api_requests(stack).count(("POST", MESSAGES)) == 1
    [job] = outbox_jobs(stack, "sms.send")
    assert job.status == "done" and job.attempts == 2
    wait_until("the final status callback", lambda: first_text(stack)["status"] == "delivered")
    assert first_text(stack)["sid"] == sent[0]["sid"]
    lead = stack.lead(CALLER)
    assert lead is not None and lead["status"] == "texted"


@pytest.mark.parametrize(
    ("code", "reason"), [(21610, "opted_out"), (21211, "undeliverable"), (21614, "undeliverable")]
)
def test_permanent_codes_end_the_job_and_mark_the_number(stack: Stack, code: int, reason: str) -> None:
    configure_number(stack, CALLER, reject_code=code)
    stack.call(CALLER)
    settle(stack)
    [job] = outbox_jobs(stack, "sms.send")
    assert (job.status, job.attempts, job.last_error_code) == ("dead", 1, str(code))
    assert api_requests(stack).count(("POST", MESSAGES)) == 1
    assert stack.sent(CALLER) == []
    message = first_text(stack)
    assert (message["status"], message["error_code"]) == ("failed", code)
    lead = stack.lead(CALLER)
    assert lead is not None and lead["opted_out"] is (reason == "opted_out")
    # A later call from the same number is skipped, and nothing is sent or queued.
    stack.call(CALLER)
    settle(stack)
    # Twilio's refusal is on the timeline too, so the lead says why it got no text.
    assert decisions(stack) == [("text", "missed_no_answer"), ("skip", f"twilio_{code}"), ("skip", reason)]
    assert stack.sent(CALLER) == []
    assert api_requests(stack).count(("POST", MESSAGES)) == 1
    first_text(stack)  # still the only text to the caller


def test_undelivered_30006_marks_the_number_undeliverable(stack: Stack) -> None:
    configure_number(stack, CALLER, fail_code=30006)
    stack.call(CALLER)
    settle(stack)
    wait_until("the final status callback", lambda: first_text(stack)["status"] == "undelivered")
    [sent] = stack.sent(CALLER)
    assert sent["status"] == "undelivered"
    message = first_text(stack)
    assert (message["sid"], message["status"], message["error_code"]) == (sent["sid"], "undelivered", 30006)
    stack.call(CALLER)
    settle(stack)
    assert decisions(stack) == [("text", "missed_no_answer"), ("skip", "undeliverable")]
    assert len(stack.sent(CALLER)) == 1
    first_text(stack)  # still the only text to the caller


def test_status_callbacks_move_the_message_forward_only(stack: Stack) -> None:
    stack.call(CALLER)
    settle(stack)
    wait_until("the final status callback", lambda: first_text(stack)["status"] == "delivered")
    [sent] = stack.sent(CALLER)
    assert sent["statuses"] == ["queued", "sent", "delivered"]
    message = first_text(stack)
    assert (message["sid"], message["status"]) == (sent["sid"], "delivered")
    # A late, redelivered "sent" never overwrites "delivered"; a repeat "delivered" is harmless.
    for status in ("sent", "delivered", "sent"):
        params = {
            "MessageSid": sent["sid"],
            "SmsSid": sent["sid"],
            "MessageStatus": status,
            "AccountSid": ACCOUNT_SID,
            "From": sent["from"],
            "To": CALLER,
        }
        resp = stack.post_signed(f"/twilio/message-status?m={message['message_id']}", params)
        assert resp.status_code < 300, resp.text
    assert first_text(stack)["status"] == "delivered"


def test_bad_credentials_are_retried_not_dead(stack: Stack) -> None:
    stack.call(CALLER)
    wrong = dataclasses.replace(
        stack.config, twilio=dataclasses.replace(stack.config.twilio, auth_token="not-the-auth-token")
    )
    bad_worker = build_worker(wrong, stack.engine)
    for attempt in (1, 2):  # every attempt says what is wrong: the credentials
        deadline = time.monotonic() + 10
        while not bad_worker.run_once():
            assert time.monotonic() < deadline, "the retry never came"
            time.sleep(0.05)
        [job] = outbox_jobs(stack, "sms.send")
        assert (job.status, job.attempts, job.last_error_code) == ("pending", attempt, "20003")
        assert "not-the-auth-token" not in (job.last_error or "")
    assert stack.sent(CALLER) == []
    # Once the credentials are right again, the same job sends the text exactly once.
    settle(stack)
    assert len(stack.sent(CALLER)) == 1
    [job] = outbox_jobs(stack, "sms.send")
    assert (job.status, job.attempts) == ("done", 3)
