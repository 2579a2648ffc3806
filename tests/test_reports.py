"""`textback report`: the recovery funnel and response times, exact, from calls driven through the stack."""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from bridge.cli import main
from bridge.cli_reports import parse_since
from core import leads, relay
from core.db import transaction
from core.models import Call, Lead, Message, utcnow
from tests.stack import Stack, all_day_business

A, B, C, D, E = "+13125550142", "+13125550143", "Anonymous", "+13125550145", "+13125550146"


@pytest.fixture
def stack(tmp_path: Path, db_url: str) -> Iterator[Stack]:
    s = Stack(tmp_path, db_url, businesses=[all_day_business()])
    try:
        yield s
    finally:
        s.close()


def run_report(stack: Stack, *args: str) -> Any:
    result = CliRunner().invoke(
        main, ["report", "--config", str(stack.config_path), *args], env={"COLUMNS": "160"}
    )
    assert result.exit_code == 0, result.output
    return result


def drive(stack: Stack) -> None:
    stack.call(A, "no-answer")  # texted, replies, qualifies (a quote), then a person answers
    stack.call(B, "busy")  # texted, no reply; booked by the office later
    stack.call(C, "no-answer")  # missed, no number to text
    stack.call(D, "completed")  # answered: not a missed call
    stack.call(E, "canceled", ring_seconds=1)  # hung up at once: not a missed caller
    stack.drain()
    stack.inbound_sms(A, "Hi, can I get a quote for a new breaker panel?")
    stack.drain()
    stack.call(A, "no-answer")  # again within the cooldown: missed, not texted
    business = stack.config.businesses[0]
    with transaction(stack.factory) as session:
        lead_a = leads.find(session, business.id, A)
        lead_b = leads.find(session, business.id, B)
        assert lead_a is not None and lead_b is not None
        assert relay.send_human(session, business, lead_a, "Hi, this is Sam", author="console:sam", ref="t1")
        leads.add_entry(session, lead_b.id, "booking", start="2030-01-01T15:00:00+00:00", event_id="ev1")
    stack.drain()


def expected(stack: Stack) -> dict[str, Any]:
    """The numbers the report must show, computed straight from the rows."""
    business = stack.config.businesses[0]
    with stack.factory() as s:
        calls = {c.from_number: c for c in s.scalars(select(Call).where(Call.from_number.in_((A, B))))}
        first = {
            m.lead_id: m
            for m in s.scalars(
                select(Message).where(Message.kind == "first_text", Message.sent_at.is_not(None))
            )
        }
        lead_a = leads.find(s, business.id, A)
        assert lead_a is not None and lead_a.first_human_response_at is not None
        a_calls = sorted(s.scalars(select(Call).where(Call.from_number == A)), key=lambda c: c.started_at)
        to_text = []
        for c in (a_calls[0], calls[B]):
            sent_at = first[c.lead_id or ""].sent_at
            assert sent_at is not None and c.decided_at is not None
            to_text.append((sent_at - c.decided_at).total_seconds())
        assert a_calls[0].decided_at is not None
        to_person = (lead_a.first_human_response_at - a_calls[0].decided_at).total_seconds()
    return {
        "missed_calls": 4,
        "texted": 2,
        "replied": 1,
        "qualified": 2,  # A's quote, and B's booking
        "booked": 1,
        "recovered": 2,  # A replied, B booked
        "recovered_pct": 50.0,
        "median_seconds_to_text": round(statistics.median(to_text), 3),
        "median_seconds_to_person": round(to_person, 3),
        "skipped": {"anonymous_caller": 1, "cooldown": 1},
    }


def test_report_numbers_are_exact(stack: Stack) -> None:
    drive(stack)
    want = expected(stack)
    data = json.loads(run_report(stack, "--since", "1h", "--format", "json").stdout)
    [biz] = data["businesses"]
    assert (biz["business"], biz["timezone"]) == ("bright-spark", "America/Chicago")
    assert biz["total"] == want
    assert data["total"] == want
    today = datetime.now(UTC).astimezone(stack.config.businesses[0].tz).date()
    assert {d["date"] for d in biz["days"]} <= {today.isoformat(), (today - timedelta(days=1)).isoformat()}
    assert sum(d["missed_calls"] for d in biz["days"]) == 4
    # The same numbers as CSV, and a table for people.
    csv_lines = run_report(stack, "--format", "csv").stdout.splitlines()
    assert csv_lines[0] == (
        "business,date,missed_calls,texted,replied,qualified,booked,recovered,recovered_pct,"
        "median_seconds_to_text,median_seconds_to_person"
    )
    total = next(line for line in csv_lines if line.startswith("bright-spark,total,"))
    assert total.startswith("bright-spark,total,4,2,1,2,1,2,50.0,")
    table = run_report(stack).stdout
    assert "bright-spark (America/Chicago)" in table and "50.0%" in table
    assert "anonymous_caller 1, cooldown 1" in table


def test_a_reply_counts_once_for_the_callers_latest_text(stack: Stack) -> None:
    later = utcnow() + timedelta(hours=13)  # past the 12 h cooldown: A is texted twice
    stack.call(A, "no-answer")
    stack.drain()
    with transaction(stack.factory) as session:
        # Move the first call and its text 13 hours back, as if A had called yesterday.
        call = session.scalars(select(Call).where(Call.from_number == A)).one()
        lead = session.get(Lead, call.lead_id)
        assert lead is not None and call.decided_at is not None
        shift = timedelta(hours=13)
        call.started_at, call.decided_at = call.started_at - shift, call.decided_at - shift
        lead.last_text_at = (lead.last_text_at or later) - shift
        for message in session.scalars(select(Message).where(Message.lead_id == lead.id)):
            message.created_at = message.created_at - shift
            message.sent_at = message.sent_at - shift if message.sent_at else None
    stack.call(A, "no-answer")
    stack.drain()
    stack.inbound_sms(A, "yes please call me")
    stack.drain()
    data = json.loads(run_report(stack, "--since", "2d", "--format", "json").stdout)
    total = data["total"]
    assert (total["missed_calls"], total["texted"], total["replied"], total["recovered"]) == (2, 2, 1, 1)


def test_report_options(stack: Stack) -> None:
    bad = CliRunner().invoke(main, ["report", "--config", str(stack.config_path), "--business", "nope"])
    assert bad.exit_code == 2 and "no business 'nope'" in bad.output
    since = CliRunner().invoke(main, ["report", "--config", str(stack.config_path), "--since", "last week"])
    assert since.exit_code == 2 and "7d, 12h or 30m" in since.output
    empty = json.loads(run_report(stack, "--business", "bright-spark", "--format", "json").stdout)
    assert empty["total"]["missed_calls"] == 0 and empty["total"]["recovered_pct"] is None
    now = datetime(2026, 1, 31, 12, tzinfo=UTC)
    assert parse_since("7d", now) == datetime(2026, 1, 24, 12, tzinfo=UTC)
    assert parse_since("2026-01-01", now) == datetime(2026, 1, 1, tzinfo=UTC)
