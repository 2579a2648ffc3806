"""`textback replay-calls`: a Twilio call export decided as textback would, with no side effects."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from bridge.cli import main
from core import config as config_mod
from core import replay
from core.phones import mask
from core.replay import CallRecord, ReplayFileError
from tests.conftest import business, config_dict, write_config
from tests.stack import Stack, emulator_requests, table_counts

DATA = Path(__file__).parent / "data"
BULK = DATA / "calls-2024-05-01.jsonl.gz"
CONSOLE_CSV = DATA / "calls-console.csv"


def sid(n: int, leg: str = "") -> str:
    return f"CA{n:02d}{leg}".ljust(34, "0")


def make_config(tmp_path: Path, **policy: Any) -> config_mod.Config:
    b = business()
    b["policy"] = {**b["policy"], "blocklist": ["+13125550149"], **policy}
    path = write_config(
        tmp_path / "textback.yaml", config_dict(f"sqlite:///{tmp_path / 'unused.db'}", businesses=[b])
    )
    return config_mod.load(str(path))


# Every inbound call of the BulkExport fixture, in start-time order, and what textback would do.
BULK_EXPECTED = [
    (sid(1), "skip", "answered"),  # a dial leg completed with 95 s of talk
    (sid(2), "text", "missed_no_answer"),
    (sid(3), "skip", "cooldown"),  # the same caller 50 minutes after their text
    (sid(4), "skip", "anonymous_caller"),
    (sid(5), "skip", "short_ring"),  # hung up after 2 s (every leg canceled)
    (sid(6), "text", "missed_hangup"),  # hung up after 9 s
    (sid(7), "skip", "staff_phone"),
    (sid(8), "text", "missed_no_answer"),  # one phone busy, the other not answered
    (sid(9), "ignored", "unknown_number"),  # called a number no business owns
    (sid(11), "text", "missed_failed"),
    (sid(13), "skip", "own_number"),
    (sid(14), "skip", "blocklisted"),
    (sid(15), "skip", "invalid_caller_id"),  # client:alice
    (sid(12), "text", "missed_no_answer"),  # the caller of call 2 again, 13 h 50 min later
]


def test_bulk_export_decisions_per_call(tmp_path: Path) -> None:
    records = replay.read(BULK)
    assert len(records) == 29
    result = replay.replay(records, make_config(tmp_path))
    assert [(c.call_sid, c.outcome, c.reason) for c in result.calls] == BULK_EXPECTED
    assert result.not_replayed == {"parent call outbound-api": 1}
    assert result.summary == {
        "text": {"missed_no_answer": 3, "missed_failed": 1, "missed_hangup": 1},
        "skip": {
            "answered": 1,
            "anonymous_caller": 1,
            "blocklisted": 1,
            "cooldown": 1,
            "invalid_caller_id": 1,
            "own_number": 1,
            "short_ring": 1,
            "staff_phone": 1,
        },
        "ignored": {"unknown_number": 1},
    }
    by_sid = {c.call_sid: c for c in result.calls}
    assert by_sid[sid(2)].ring_seconds == 20.0 and by_sid[sid(6)].ring_seconds == 9.0
    # Callers 143 (twice), 145, 146 and 148: four different people texted.
    assert result.texted_callers == 4
    estimate = result.estimate(reply_rate=0.5)
    assert (estimate.would_be_lost, estimate.recovered) == pytest.approx((3.4, 1.7))


def test_the_sending_window_holds_a_night_text(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, sending_window={"start": "08:00", "end": "21:00"})
    result = replay.replay(replay.read(BULK), cfg)
    night = next(c for c in result.calls if c.call_sid == sid(12))  # 00:00 in Chicago
    assert (night.outcome, night.reason, night.held) == ("text", "missed_no_answer", True)
    assert night.send_at == datetime(2024, 5, 2, 13, 0, tzinfo=UTC)  # 08:00 CDT
    day = next(c for c in result.calls if c.call_sid == sid(2))
    assert not day.held


def test_console_csv_with_twilio_headers(tmp_path: Path) -> None:
    records = replay.read(CONSOLE_CSV)
    assert [r.line for r in records] == [2, 3, 4, 5, 6, 7, 8, 9]
    assert records[3].duration == 90 and records[3].status == "completed"  # 0:01:30, "Completed"
    assert records[1].direction == "outbound-dial" and records[1].status == "no-answer"
    result = replay.replay(records, make_config(tmp_path))
    assert [(c.call_sid, c.outcome, c.reason) for c in result.calls] == [
        (sid(21), "text", "missed_no_answer"),
        (sid(22), "skip", "answered"),  # RFC 2822 times, a national-format caller
        (sid(23), "skip", "anonymous_caller"),
        (sid(24), "text", "missed_busy"),  # no dial leg, the call itself was busy
        (sid(25), "skip", "cooldown"),
    ]


def test_forward_mode_counts_every_undialled_call_as_missed(tmp_path: Path) -> None:
    b = business(mode="forward")
    path = write_config(tmp_path / "fwd.yaml", config_dict("sqlite:///unused.db", businesses=[b]))
    cfg = config_mod.load(str(path))
    start = datetime(2024, 5, 1, 15, tzinfo=UTC)
    short = CallRecord(
        sid(30), None, "+13125550160", "+13125550100", "inbound", "completed", start, None, 1, None
    )
    result = replay.replay([short], cfg)
    assert [(c.outcome, c.reason) for c in result.calls] == [("text", "missed_forwarded")]


def test_business_option_claims_every_call(tmp_path: Path) -> None:
    result = replay.replay(replay.read(BULK), make_config(tmp_path), business_id="bright-spark")
    call9 = next(c for c in result.calls if c.call_sid == sid(9))
    # No dial leg: the caller hung up after 30 s before anyone was rung.
    assert (call9.business, call9.outcome, call9.reason) == ("bright-spark", "text", "missed_hangup")


def _write_gz(path: Path, lines: list[str]) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    return path


GOOD_LINE = json.dumps(
    {
        "sid": sid(40),
        "parent_call_sid": None,
        "from": "+13125550170",
        "to": "+13125550100",
        "direction": "inbound",
        "status": "no-answer",
        "start_time": "2024-05-01T15:00:00Z",
        "duration": "0",
    }
)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        (
            "bad.jsonl.gz",
            [GOOD_LINE, GOOD_LINE.replace(sid(40), sid(41)), '{"sid": "CA1", "from": '],
            "bad.jsonl.gz: line 3: not valid JSON",
        ),
        (
            "when.jsonl.gz",
            [GOOD_LINE, GOOD_LINE.replace("2024-05-01T15:00:00Z", "yesterday")],
            "when.jsonl.gz: line 2: start_time 'yesterday' is not a date and time",
        ),
        (
            "nosid.jsonl.gz",
            [GOOD_LINE.replace('"sid"', '"id"')],
            "nosid.jsonl.gz: line 1: the record has no 'sid'",
        ),
        ("array.jsonl.gz", ["[" + GOOD_LINE + "]"], "array.jsonl.gz: line 1: a JSON array"),
    ],
)
def test_malformed_json_lines_name_the_line(
    tmp_path: Path, name: str, content: list[str], message: str
) -> None:
    path = _write_gz(tmp_path / name, content)
    with pytest.raises(ReplayFileError) as info:
        replay.read(path)
    assert str(info.value).startswith(message), str(info.value)


def test_malformed_csv_names_the_line(tmp_path: Path) -> None:
    header = CONSOLE_CSV.read_text().splitlines()[0]
    row = CONSOLE_CSV.read_text().splitlines()[1]
    missing = tmp_path / "missing.csv"
    missing.write_text("Call Sid,From,To,Status\n" + "CA1,+1,+1,completed\n")
    with pytest.raises(
        ReplayFileError, match=r"missing.csv: line 1: the CSV header has no column for direction"
    ):
        replay.read(missing)
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join([header, row, row.replace(",40,", ",forty,")]) + "\n")
    with pytest.raises(ReplayFileError, match=r"bad.csv: line 3: duration 'forty' is not whole seconds"):
        replay.read(bad)
    gz = tmp_path / "broken.jsonl.gz"
    gz.write_bytes(gzip.compress(GOOD_LINE.encode())[:-12])
    with pytest.raises(ReplayFileError, match=r"broken.jsonl.gz: not a valid gzip file"):
        replay.read(gz)


def test_cli_sends_and_writes_nothing(stack: Stack) -> None:
    before = table_counts(stack)
    runner = CliRunner()
    result = runner.invoke(
        main,
        ["replay-calls", str(BULK), str(CONSOLE_CSV), "--config", str(stack.config_path), "--format", "json"],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    # The test stack's config has no blocklist: call 14 is texted here.
    assert (data["inbound_calls"], data["texted"], data["ignored"]) == (19, 8, 1)
    assert data["estimate"] == {
        "texted_callers": 7,
        "never_call_back": 0.85,
        "reply_rate": 0.3,
        "would_be_lost": 6.0,
        "leads_recovered": 1.8,
    }
    table = runner.invoke(
        main,
        ["replay-calls", str(BULK), "--config", str(stack.config_path), "--reply-rate", "1"],
        env={"COLUMNS": "160"},
    )
    assert table.exit_code == 0, table.output
    assert "missed_no_answer" in table.stdout and mask("+13125550143") in table.stdout
    assert "+13125550143" not in table.stdout  # callers are masked in the table
    assert "recovered ~4.2 leads" in " ".join(table.stdout.split())
    csv_out = runner.invoke(
        main, ["replay-calls", str(CONSOLE_CSV), "--config", str(stack.config_path), "--format", "csv"]
    )
    assert csv_out.exit_code == 0 and csv_out.stdout.splitlines()[0].startswith("call_sid,business,from")
    assert table_counts(stack) == before
    assert emulator_requests(stack, "/2010-04-01/") == []
    assert stack.sent() == []


def test_cli_reports_a_malformed_file_without_a_traceback(stack: Stack, tmp_path: Path) -> None:
    path = _write_gz(tmp_path / "calls.jsonl.gz", [GOOD_LINE, "not json"])
    result = CliRunner().invoke(main, ["replay-calls", str(path), "--config", str(stack.config_path)])
    assert result.exit_code == 1
    assert "error: calls.jsonl.gz: line 2: not valid JSON" in result.output
    assert "Traceback" not in result.output
