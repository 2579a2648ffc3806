"""The Pipedrive emulator's data: records kept in API shape, seeds, field checks and paging.

v2 is strict (unknown fields, wrong JSON types and malformed dates are 400s, nothing is coerced);
v1 is lenient (numeric strings pass for ids), because that is how the two API versions behave.
Records are stored exactly as the API returns them so responses and ``/_emulator/state`` agree.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, date, datetime
from typing import Any

ERROR_INFO = "Please check developers.pipedrive.com"

# Seeded account: users (owners), one pipeline, its stages and the activity types Pipedrive ships.
USERS: dict[int, dict[str, Any]] = {
    1: {"id": 1, "name": "Emulator Owner", "email": "owner@pipedrive-emulator.test"},
    2: {"id": 2, "name": "Second User", "email": "second@pipedrive-emulator.test"},
}
COMPANY = {"id": 7001, "name": "Textback Emulator Co", "domain": "textback-emulator"}
SEED_PIPELINE: dict[str, Any] = {"id": 1, "name": "Sales"}
SEED_STAGES = [(1, "Lead In", 10), (2, "Contact Made", 20), (3, "Qualified", 40), (4, "Booked", 80),
               (5, "Won", 100)]
ACTIVITY_TYPES = ("call", "meeting", "task", "deadline", "email", "lunch")
# Distinct id ranges per kind, so a client that passes a person id where a deal id belongs gets a 400
# instead of silently hitting another record with the same small integer.
ID_START = {"person": 1001, "deal": 2001, "activity": 3001, "note": 4001}


class ApiError(Exception):
    """A Pipedrive error; rendered as a v1 or v2 body depending on the request path."""

    def __init__(self, status: int, message: str, code: str = "ERR_BAD_REQUEST") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


def bad_request(message: str) -> ApiError:
    return ApiError(400, message)


def not_found(what: str) -> ApiError:
    return ApiError(404, f"{what} not found", "ERR_NOT_FOUND")


# -- time formats ------------------------------------------------------------------------------
def now_utc() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def rfc3339(dt: datetime) -> str:
    """v2 timestamps."""
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def v1_time(dt: datetime) -> str:
    """v1 notes, call logs and users."""
    return dt.strftime("%Y-%m-%d %H:%M:%S")


def iso_ms(dt: datetime) -> str:
    """v1 leads (the newer-style v1 endpoint uses ISO 8601 with milliseconds)."""
    return dt.strftime("%Y-%m-%dT%H:%M:%S.000Z")


# -- field checks: each returns a problem ("must be an integer") or None --------------------------
# Upper-case names so the field tables read like schemas.
Check = Callable[[Any], "str | None"]

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_HHMM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")
_V1_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def INT(value: Any) -> str | None:
    return None if is_int(value) else "must be an integer"


def STR(value: Any) -> str | None:
    return None if isinstance(value, str) else "must be a string"


def BOOL(value: Any) -> str | None:
    return None if isinstance(value, bool) else "must be a boolean"


def NUMBER(value: Any) -> str | None:
    return None if is_int(value) or isinstance(value, float) else "must be a number"


def DICT(value: Any) -> str | None:
    return None if isinstance(value, dict) else "must be an object"


def _valid_date(value: str) -> bool:
    try:
        date.fromisoformat(value)
    except ValueError:
        return False
    return True


def DATE(value: Any) -> str | None:
    if isinstance(value, str) and _DATE.match(value) and _valid_date(value):
        return None
    return "must be a date in the format YYYY-MM-DD"


def HHMM(value: Any) -> str | None:
    return None if isinstance(value, str) and _HHMM.match(value) else "must be a time in the format HH:MM"


def RFC3339(value: Any) -> str | None:
    if isinstance(value, str) and _RFC3339.match(value):
        try:
            datetime.fromisoformat(value.replace("Z", "+00:00"))
            return None
        except ValueError:
            pass
    return "must be an RFC 3339 date-time (e.g. 2025-01-31T12:00:00Z)"


def V1_DATETIME(value: Any) -> str | None:
    if isinstance(value, str) and _V1_DATETIME.match(value):
        try:
            datetime.strptime(value, "%Y-%m-%d %H:%M:%S")
            return None
        except ValueError:
            pass
    return "must be a date-time in the format YYYY-MM-DD HH:MM:SS"


def UUID(value: Any) -> str | None:
    return None if isinstance(value, str) and _UUID.match(value) else "must be a UUID"


def nullable(check: Check) -> Check:
    return lambda value: None if value is None else check(value)


def one_of(*allowed: Any) -> Check:
    # Compare types too: True == 1 in Python, but Pipedrive v2 does not accept a boolean for an int.
    def check(value: Any) -> str | None:
        if any(type(value) is type(a) and value == a for a in allowed):
            return None
        return "must be one of " + ", ".join(json.dumps(a) for a in allowed)

    return check


def list_of(item: Check) -> Check:
    def check(value: Any) -> str | None:
        if not isinstance(value, list):
            return "must be an array"
        for i, element in enumerate(value):
            problem = item(element)
            if problem:
                return f"[{i}] {problem}"
        return None

    return check


def obj(fields: Mapping[str, Check], required: Iterable[str] = ()) -> Check:
    def check(value: Any) -> str | None:
        if not isinstance(value, dict):
            return "must be an object"
        for key in value:
            if key not in fields:
                return f"has an unknown field '{key}'"
        for key in required:
            if key not in value:
                return f"is missing the required field '{key}'"
        for key, sub in value.items():
            problem = fields[key](sub)
            if problem:
                return f".{key} {problem}"
        return None

    return check


def validate(body: Any, fields: Mapping[str, Check], required: Iterable[str] = (),
             allow_unknown: bool = False) -> dict[str, Any]:
    """Check a request body against a field table; raise the 400 Pipedrive would send."""
    if not isinstance(body, dict):
        raise bad_request("Validation failed: the request body must be a JSON object")
    if not allow_unknown:
        for key in body:
            if key not in fields:
                raise bad_request(f"Validation failed: '{key}' is not a valid field for this request")
    for key in required:
        if body.get(key) is None:
            raise bad_request(f"Validation failed: '{key}' is required")
    for key, value in body.items():
        if key in fields:
            problem = fields[key](value)
            if problem:
                raise bad_request(f"Validation failed: '{key}' {problem}")
    return body


# -- cursors (v2 paging) ---------------------------------------------------------------------------
def encode_cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"offset": offset}).encode()).decode().rstrip("=")


def decode_cursor(raw: str) -> int:
    try:
        padded = raw + "=" * (-len(raw) % 4)
        offset = json.loads(base64.urlsafe_b64decode(padded.encode()))["offset"]
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise bad_request("Validation failed: 'cursor' is invalid") from None
    if not is_int(offset) or offset < 0:
        raise bad_request("Validation failed: 'cursor' is invalid")
    return int(offset)


def paginate(items: list[Any], limit: int, cursor: str | None) -> tuple[list[Any], str | None]:
    start = decode_cursor(cursor) if cursor else 0
    page = items[start:start + limit]
    more = start + limit < len(items)
    return page, (encode_cursor(start + limit) if more else None)


# -- the store ---------------------------------------------------------------------------------------
class Store:
    """Everything the emulated Pipedrive account holds. Callers hold the emulator lock."""

    def __init__(self) -> None:
        self.search_lag = 0.0
        self.reset()

    def reset(self) -> None:
        self.persons: dict[int, dict[str, Any]] = {}
        self.deals: dict[int, dict[str, Any]] = {}
        self.activities: dict[int, dict[str, Any]] = {}
        self.notes: dict[int, dict[str, Any]] = {}
        self.leads: dict[str, dict[str, Any]] = {}
        self.call_logs: dict[str, dict[str, Any]] = {}
        # Pipedrive's search index lags writes; a person is findable by search only after this.
        self.searchable_at: dict[int, float] = {}
        self.search_lag = 0.0
        self._ids: dict[str, Iterator[int]] = {kind: itertools.count(start)
                                               for kind, start in ID_START.items()}
        seeded = rfc3339(datetime(2024, 1, 1, tzinfo=UTC))
        self.pipelines: dict[int, dict[str, Any]] = {SEED_PIPELINE["id"]: {
            "id": SEED_PIPELINE["id"], "name": SEED_PIPELINE["name"], "order_nr": 1, "is_deleted": False,
            "is_deal_probability_enabled": False, "add_time": seeded, "update_time": seeded,
        }}
        self.stages: dict[int, dict[str, Any]] = {
            sid: {"id": sid, "order_nr": sid, "name": name, "is_deleted": False, "deal_probability": prob,
                  "pipeline_id": SEED_PIPELINE["id"], "is_deal_rot_enabled": False, "days_to_rotten": None,
                  "add_time": seeded, "update_time": seeded}
            for sid, name, prob in SEED_STAGES
        }

    def next_id(self, kind: str) -> int:
        return next(self._ids[kind])

    def mark_searchable(self, person_id: int) -> None:
        self.searchable_at[person_id] = time.monotonic() + self.search_lag

    def is_searchable(self, person_id: int) -> bool:
        return self.searchable_at.get(person_id, 0.0) <= time.monotonic()

    # Lookups raise the 404 the API sends for the resource itself.
    def person(self, person_id: int) -> dict[str, Any]:
        person = self.persons.get(person_id)
        if person is None or person["is_deleted"]:
            raise not_found("Person")
        return person

    def deal(self, deal_id: int) -> dict[str, Any]:
        deal = self.deals.get(deal_id)
        if deal is None or deal["is_deleted"]:
            raise not_found("Deal")
        return deal

    def activity(self, activity_id: int) -> dict[str, Any]:
        activity = self.activities.get(activity_id)
        if activity is None or activity["is_deleted"]:
            raise not_found("Activity")
        return activity

    def lead(self, lead_id: str) -> dict[str, Any]:
        lead = self.leads.get(lead_id)
        if lead is None:
            raise not_found("Lead")
        return lead

    def require(self, kind: str, ref: Any) -> None:
        """A reference inside a request body: a missing target is a 400, not a 404."""
        if ref is None:
            return
        tables: dict[str, Mapping[Any, dict[str, Any]]] = {
            "person": self.persons, "deal": self.deals, "lead": self.leads, "activity": self.activities}
        table = tables[kind]
        record = table.get(ref)
        if record is None or record.get("is_deleted"):
            raise bad_request(f"Validation failed: {kind} with id {ref} does not exist")

    @staticmethod
    def require_user(user_id: Any) -> None:
        if user_id is not None and user_id not in USERS:
            raise bad_request(f"Validation failed: user with id {user_id} does not exist")

    def state(self) -> dict[str, Any]:
        return {
            "persons": list(self.persons.values()),
            "deals": list(self.deals.values()),
            "activities": list(self.activities.values()),
            "notes": list(self.notes.values()),
            "leads": list(self.leads.values()),
            "call_logs": list(self.call_logs.values()),
        }
