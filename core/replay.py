"""The what-if: what textback would have done with the calls in a Twilio call export.

Pure: call records in, decisions out. Nothing is sent, stored or looked up; the decisions come
from :func:`core.policy.decide` under the given config, exactly as a live call's would, with
these differences (docs/reports.md):

- no suppressions and no Lookup: nobody in the file has opted out, no number is a landline;
- a call counts as answered when one of its ``outbound-dial`` legs completed with a duration
  above 0. A staff phone's voicemail that picked up looks answered in an export (textback's
  "press 1" screen would have caught it), so the replay undercounts those misses;
- the caller hung up while it rang when every dial leg was ``canceled``, or when a ring-through
  business's call has no dial leg at all; the ring time is then the parent call's duration;
- cooldown runs across the whole file (all files), call by call in start-time order.

Readers: BulkExport day files (gzip JSON lines of Call records, ISO 8601 UTC times), the same
as plain JSON lines, and CSV with the Call fields as headers, in snake case (``parent_call_sid``),
Twilio's title case (``Parent Call Sid``, ``Start Time``) or camel case (``ParentCallSid``).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import IO, Any, cast

from core.config import Business, Config
from core.errors import TextbackError
from core.hours import next_send_time
from core.phones import to_e164
from core.policy import MISSED_DIAL_STATUSES, TEXT, CallFacts, decide
from core.texting import caller_zones

#: Share of callers who reach nobody and never call back (the issue's figure).
NEVER_CALL_BACK = 0.85
#: Share of texted callers assumed to text back when no measured rate is given (--reply-rate).
DEFAULT_REPLY_RATE = 0.30

ANSWERED_STATUSES = ("in-progress",)  # a leg still up when the export was taken was answered


class ReplayFileError(TextbackError):
    """A call export that cannot be read, naming the file, the line and what is wrong."""

    def __init__(self, source: str, line: int | None, problem: str) -> None:
        self.source, self.line, self.problem = source, line, problem
        where = f"{source}: line {line}" if line is not None else source
        super().__init__(f"{where}: {problem}")


@dataclass(frozen=True)
class CallRecord:
    sid: str
    parent_call_sid: str | None
    from_: str
    to: str
    direction: str
    status: str
    start_time: datetime | None
    end_time: datetime | None
    duration: int | None
    date_created: datetime | None
    source: str = ""
    line: int = 0

    @property
    def started(self) -> datetime | None:
        return self.start_time or self.date_created


@dataclass(frozen=True)
class Replayed:
    call_sid: str
    business: str | None
    caller: str
    started_at: datetime
    outcome: str  # text, skip, or ignored (not a call textback would see)
    reason: str
    answered: bool
    ring_seconds: float | None
    send_at: datetime | None  # when the text would go out (later than decided: the sending window)

    @property
    def held(self) -> bool:
        return self.send_at is not None and self.send_at > self.started_at + timedelta(
            seconds=(self.ring_seconds or 0) + 1
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "call_sid": self.call_sid,
            "business": self.business,
            "from": self.caller,
            "started_at": _iso(self.started_at),
            "outcome": self.outcome,
            "reason": self.reason,
            "answered": self.answered,
            "ring_seconds": self.ring_seconds,
            "send_at": _iso(self.send_at) if self.send_at else None,
        }


@dataclass(frozen=True)
class Estimate:
    texted_callers: int
    never_call_back: float
    reply_rate: float

    @property
    def would_be_lost(self) -> float:
        return self.texted_callers * self.never_call_back

    @property
    def recovered(self) -> float:
        return self.would_be_lost * self.reply_rate

    def to_json(self) -> dict[str, Any]:
        return {
            "texted_callers": self.texted_callers,
            "never_call_back": self.never_call_back,
            "reply_rate": self.reply_rate,
            "would_be_lost": round(self.would_be_lost, 1),
            "leads_recovered": round(self.recovered, 1),
        }


@dataclass
class ReplayResult:
    calls: list[Replayed] = field(default_factory=list)
    records: int = 0
    not_replayed: Counter[str] = field(default_factory=Counter)  # records that are not inbound calls

    @property
    def summary(self) -> dict[str, dict[str, int]]:
        out: dict[str, Counter[str]] = {"text": Counter(), "skip": Counter(), "ignored": Counter()}
        for call in self.calls:
            out[call.outcome][call.reason] += 1
        return {k: dict(sorted(v.items(), key=lambda kv: (-kv[1], kv[0]))) for k, v in out.items()}

    @property
    def texted_callers(self) -> int:
        return len({(c.business, c.caller) for c in self.calls if c.outcome == TEXT})

    def estimate(
        self, reply_rate: float = DEFAULT_REPLY_RATE, never_call_back: float = NEVER_CALL_BACK
    ) -> Estimate:
        return Estimate(self.texted_callers, never_call_back, reply_rate)

    def to_json(self, estimate: Estimate | None = None) -> dict[str, Any]:
        counts = {k: sum(v.values()) for k, v in self.summary.items()}
        return {
            "records": self.records,
            "inbound_calls": len(self.calls),
            "texted": counts["text"],
            "skipped": counts["skip"],
            "ignored": counts["ignored"],
            "summary": self.summary,
            "not_replayed": dict(sorted(self.not_replayed.items())),
            "estimate": (estimate or self.estimate()).to_json(),
            "calls": [c.to_json() for c in self.calls],
        }


# -- deciding -------------------------------------------------------------------------------------


def replay(
    records: Iterable[CallRecord],
    config: Config,
    business_id: str | None = None,
    on_call: Callable[[Replayed], None] | None = None,
) -> ReplayResult:
    """Decide every inbound parent call in ``records`` as textback would under ``config``.

    ``business_id`` treats every call as that business's; otherwise the business is the one that
    owns the called number, and calls to other numbers are ``ignored`` (``unknown_number``).
    """
    fixed = None
    if business_id is not None:
        fixed = config.business(business_id)
        if fixed is None:
            known = ", ".join(b.id for b in config.businesses)
            raise TextbackError(f"no business {business_id!r} in {config.source} (known: {known})")
    result = ReplayResult()
    parents: list[CallRecord] = []
    children: dict[str, list[CallRecord]] = {}
    for record in records:
        result.records += 1
        if record.parent_call_sid:
            children.setdefault(record.parent_call_sid, []).append(record)
        elif record.direction == "inbound":
            parents.append(record)
        else:
            result.not_replayed[f"parent call {record.direction}"] += 1
    seen = {p.sid for p in parents}
    for parent_sid, legs in children.items():
        if parent_sid not in seen:
            result.not_replayed["leg of a call not in the file"] += len(legs)
        else:
            for leg in legs:
                if leg.direction != "outbound-dial":
                    result.not_replayed[f"leg {leg.direction}"] += 1
    parents.sort(key=lambda r: (r.started or datetime.min.replace(tzinfo=UTC), r.source, r.line))
    last_text: dict[tuple[str, str], datetime] = {}
    for parent in parents:
        legs = [c for c in children.get(parent.sid, []) if c.direction == "outbound-dial"]
        business = fixed or config.business_for_number(parent.to)
        replayed = _decide(parent, legs, business, last_text)
        result.calls.append(replayed)
        if on_call is not None:
            on_call(replayed)
    return result


def _decide(
    parent: CallRecord,
    legs: list[CallRecord],
    business: Business | None,
    last_text: dict[tuple[str, str], datetime],
) -> Replayed:
    started = parent.started
    assert started is not None  # the readers refuse records without a time
    caller = to_e164(parent.from_)
    if business is None:
        return Replayed(
            parent.sid, None, parent.from_, started, "ignored", "unknown_number", False, None, None
        )
    answered, miss_reason, hung_up, ring = classify(parent, legs, business)
    now = started + timedelta(seconds=ring or 0)
    key = (business.id, caller or "")
    facts = CallFacts(
        direction=parent.direction,
        caller_raw=parent.from_,
        caller=caller,
        answered=answered,
        miss_reason=miss_reason,
        hung_up_ringing=hung_up,
        ring_seconds=ring,
        suppressions=frozenset(),
        line_type=None,
        last_text_at=last_text.get(key) if caller else None,
        now=now,
    )
    decision = decide(facts, business)
    send_at = None
    if decision.texts and caller:
        last_text[key] = now
        delayed = now + timedelta(seconds=business.policy.send_delay_seconds)
        send_at = next_send_time(delayed, caller_zones(caller, business), business.policy.window)
    return Replayed(
        parent.sid,
        business.id,
        caller or parent.from_,
        started,
        decision.outcome,
        decision.reason,
        answered,
        ring,
        send_at,
    )


def classify(
    parent: CallRecord, legs: list[CallRecord], business: Business
) -> tuple[bool, str, bool, float | None]:
    """(answered, miss reason, hung up while ringing, ring seconds) from a call and its dial legs."""
    if any(
        (leg.status == "completed" and (leg.duration or 0) > 0) or leg.status in ANSWERED_STATUSES
        for leg in legs
    ):
        return True, "answered", False, _ring(parent, legs)
    statuses = {leg.status for leg in legs}
    if not legs:
        if business.mode == "forward":
            return False, "missed_forwarded", False, None
        if parent.status in MISSED_DIAL_STATUSES and parent.status != "canceled":
            return False, MISSED_DIAL_STATUSES[parent.status], False, None
        # Nobody was rung: the caller hung up before the dial began.
        return False, "missed_hangup", True, float(parent.duration or 0)
    if statuses == {"canceled"}:
        return False, "missed_hangup", True, float(parent.duration or 0)
    for status in ("no-answer", "busy", "failed"):
        if status in statuses:
            return False, MISSED_DIAL_STATUSES[status], False, _ring(parent, legs)
    return False, "missed_no_answer", False, _ring(parent, legs)


def _ring(parent: CallRecord, legs: list[CallRecord]) -> float | None:
    """How long the staff phones rang: the longest leg from its start to its end."""
    spans = [
        (leg.end_time - leg.start_time).total_seconds() for leg in legs if leg.start_time and leg.end_time
    ]
    return max(spans) if spans else None


# -- reading ----------------------------------------------------------------------------------------

_ALIASES = {
    "call_sid": "sid",
    "callsid": "sid",
    "parent_sid": "parent_call_sid",
    "parentcallsid": "parent_call_sid",
    "from_number": "from",
    "from_formatted": "",
    "to_number": "to",
    "to_formatted": "",
    "caller": "from",
    "called": "to",
    "call_status": "status",
    "date": "date_created",
    "created": "date_created",
    "started": "start_time",
    "ended": "end_time",
    "duration_seconds": "duration",
    "call_duration": "duration",
}
_DIRECTIONS = {
    "incoming": "inbound",
    "inbound": "inbound",
    "outgoing_dial": "outbound-dial",
    "outbound_dial": "outbound-dial",
    "outgoing_api": "outbound-api",
    "outbound_api": "outbound-api",
}
_REQUIRED = ("sid", "from", "to", "direction", "status")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def field_name(header: str) -> str:
    """``Parent Call Sid``, ``ParentCallSid`` and ``parent_call_sid`` all name ``parent_call_sid``."""
    snake = _CAMEL.sub("_", header.strip()).lower()
    snake = re.sub(r"[^a-z0-9]+", "_", snake).strip("_")
    return _ALIASES.get(snake, snake)


def read(path: Path, on_bytes: Callable[[int], None] | None = None) -> list[CallRecord]:
    """Every record of a gzip or plain JSON-lines file, or a CSV file, in file order."""
    source = path.name
    try:
        raw = path.open("rb")
    except OSError as exc:
        raise ReplayFileError(str(path), None, f"cannot open the file ({exc.strerror})") from None
    with raw:
        head = raw.read(2)
        raw.seek(0)
        gzipped = head == b"\x1f\x8b"
        stream = cast(IO[bytes], gzip.GzipFile(fileobj=raw)) if gzipped else raw
        text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="strict", newline="")
        try:
            first = _peek(text)
            lines = _progress(text, raw, on_bytes)
            if first == "[":
                raise ReplayFileError(
                    source, 1, "a JSON array; a call export has one Call record (a JSON object) per line"
                )
            if first in ("{", ""):
                return list(parse_jsonl(lines, source))
            return list(parse_csv(lines, source))
        except (gzip.BadGzipFile, EOFError) as exc:
            raise ReplayFileError(source, None, f"not a valid gzip file ({exc})") from None
        except UnicodeDecodeError:
            raise ReplayFileError(
                source, None, "not UTF-8 text (a call export is JSON lines or CSV)"
            ) from None


def _peek(text: io.TextIOWrapper) -> str:
    """The first non-blank character, with the stream rewound."""
    sample = text.read(4096)
    text.seek(0)
    stripped = sample.lstrip()
    return stripped[:1]


def _progress(
    text: io.TextIOWrapper, raw: IO[bytes], on_bytes: Callable[[int], None] | None
) -> Iterator[str]:
    for line in text:
        if on_bytes is not None:
            on_bytes(raw.tell())
        yield line


def parse_jsonl(lines: Iterable[str], source: str = "<calls>") -> Iterator[CallRecord]:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ReplayFileError(
                source, number, f"not valid JSON ({exc.msg} at column {exc.colno})"
            ) from None
        if not isinstance(data, dict):
            raise ReplayFileError(
                source, number, f"expected a Call record (a JSON object), got {type(data).__name__}"
            )
        yield record_from({field_name(k): v for k, v in data.items()}, source, number)


def parse_csv(lines: Iterable[str], source: str = "<calls>") -> Iterator[CallRecord]:
    reader = csv.reader(lines)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        raise ReplayFileError(source, 1, f"not valid CSV ({exc})") from None
    names = [field_name(h) for h in header]
    missing = [f for f in _REQUIRED if f not in names]
    if missing:
        raise ReplayFileError(
            source, 1, f"the CSV header has no column for {', '.join(missing)} (found: {', '.join(header)})"
        )
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise ReplayFileError(source, reader.line_num, f"not valid CSV ({exc})") from None
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(names):
            raise ReplayFileError(
                source, reader.line_num, f"{len(row)} columns where the header has {len(names)}"
            )
        yield record_from({n: v for n, v in zip(names, row, strict=True) if n}, source, reader.line_num)


def record_from(data: Mapping[str, Any], source: str, line: int) -> CallRecord:
    """One Call record from its fields (already named by :func:`field_name`), checked."""

    def text(name: str, required: bool = False) -> str:
        value = data.get(name)
        if value is None or (isinstance(value, str) and not value.strip()):
            if required:
                raise ReplayFileError(source, line, f"the record has no {name!r}")
            return ""
        if not isinstance(value, (str, int)):
            raise ReplayFileError(source, line, f"{name!r} should be text, got {type(value).__name__}")
        return str(value).strip()

    sid = text("sid", required=True)
    direction_raw = text("direction", required=True)
    direction = _DIRECTIONS.get(
        re.sub(r"[^a-z]+", "_", direction_raw.lower()).strip("_"), direction_raw.lower()
    )
    if "from" not in data:
        raise ReplayFileError(source, line, "the record has no 'from'")
    record = CallRecord(
        sid=sid,
        parent_call_sid=text("parent_call_sid") or None,
        from_=text("from"),
        to=text("to", required=not text("parent_call_sid")),
        direction=direction,
        status=re.sub(r"[\s_]+", "-", text("status", required=True).lower()),
        start_time=_time(data.get("start_time"), "start_time", source, line),
        end_time=_time(data.get("end_time"), "end_time", source, line),
        duration=_duration(data.get("duration"), source, line),
        date_created=_time(data.get("date_created"), "date_created", source, line),
        source=source,
        line=line,
    )
    if record.started is None:
        raise ReplayFileError(source, line, "the record has neither a start_time nor a date_created")
    return record


_UTC_SUFFIX = re.compile(r"\s*(UTC|GMT|Z)$", re.I)


def _time(value: Any, name: str, source: str, line: int) -> datetime | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise ReplayFileError(source, line, f"{name} should be a date and time, got {value!r}")
    text = value.strip()
    parsed: datetime | None = None
    try:
        parsed = datetime.fromisoformat(_UTC_SUFFIX.sub("+00:00", text) if " " in text else text)
    except ValueError:
        try:
            parsed = parsedate_to_datetime(text)  # RFC 2822, as the REST API writes it
        except (TypeError, ValueError, IndexError):
            parsed = None
    if parsed is None:
        raise ReplayFileError(
            source,
            line,
            f"{name} {text!r} is not a date and time (ISO 8601 or RFC 2822, e.g. 2024-05-01T14:03:22Z)",
        )
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _duration(value: Any, source: str, line: int) -> int | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise ReplayFileError(source, line, f"duration should be whole seconds, got {value!r}")
    if isinstance(value, int):
        seconds = value
    else:
        text = str(value).strip()
        parts = text.split(":")
        if not all(p.isascii() and p.isdigit() for p in parts) or len(parts) > 3:
            raise ReplayFileError(source, line, f"duration {text!r} is not whole seconds (or H:MM:SS)")
        seconds = 0
        for part in parts:
            seconds = seconds * 60 + int(part)
    if seconds < 0:
        raise ReplayFileError(source, line, f"duration {value!r} is negative")
    return seconds


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
