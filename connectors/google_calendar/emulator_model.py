"""Calendar v3 data for the emulator: Google's error envelope, RFC 3339 times, events and busy time.

Everything here is plain data in and out (no Flask request, no lock), so the emulator module is only
routing, auth and locking. Field names follow the bundled discovery document (calendar.v3.json).
"""

from __future__ import annotations

import base64
import copy
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

EVENT_ID = re.compile(r"^[a-v0-9]{5,1024}$")
Interval = tuple[datetime, datetime]


class ApiError(Exception):
    """A Calendar API error, rendered as ``{"error":{"errors":[...],"code","message"}}``."""

    def __init__(self, code: int, reason: str, message: str, domain: str = "global",
                 status: str | None = None, detail_message: str | None = None, **extra: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.domain = domain
        self.status = status
        self.detail_message = detail_message or message  # 401/403 auth errors word the two differently
        self.extra = extra

    def body(self) -> dict[str, Any]:
        detail: dict[str, Any] = {"message": self.detail_message, "domain": self.domain,
                                  "reason": self.reason, **self.extra}
        error: dict[str, Any] = {"errors": [detail], "code": self.code, "message": self.message}
        if self.status:
            error["status"] = self.status
        return {"error": error}


def not_found() -> ApiError:
    return ApiError(404, "notFound", "Not Found")


def time_range_empty(location: str | None = None) -> ApiError:
    where = {"locationType": "parameter", "location": location} if location else {}
    return ApiError(400, "timeRangeEmpty", "The specified time range is empty.", domain="calendar", **where)


# -- time -----------------------------------------------------------------------------------------
def zone(name: str) -> tzinfo:
    return UTC if name in ("UTC", "Etc/UTC", "GMT") else ZoneInfo(name)


def parse_rfc3339(value: Any, name: str) -> datetime:
    """An RFC 3339 timestamp with an offset; Google rejects naive ones with 400 badRequest."""
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise ApiError(400, "badRequest", "Bad Request", locationType="parameter", location=name)
    return parsed


def rfc3339(moment: datetime, tz: tzinfo = UTC, millis: bool = False) -> str:
    local = moment.astimezone(tz)
    if local.utcoffset() == timedelta(0):
        text = local.strftime("%Y-%m-%dT%H:%M:%S")
        return text + (f".{local.microsecond // 1000:03d}Z" if millis else "Z")
    return local.isoformat(timespec="milliseconds" if millis else "seconds")


def now_rfc3339() -> str:
    return rfc3339(datetime.now(UTC), millis=True)


def event_instant(when: dict[str, Any], calendar_tz: tzinfo) -> datetime:
    """Start or end of an event as an aware datetime; all-day dates begin at midnight calendar time."""
    if "dateTime" in when:
        moment = datetime.fromisoformat(when["dateTime"])
        return moment if moment.tzinfo else moment.replace(tzinfo=zone(when["timeZone"]))
    return datetime.combine(date.fromisoformat(when["date"]), time(0), calendar_tz)


def normalize_when(when: Any, which: str, calendar_tz: tzinfo) -> dict[str, Any]:
    """Validate an EventDateTime and render it the way Google echoes it (in the event's zone)."""
    if not isinstance(when, dict) or not (when.get("dateTime") or when.get("date")):
        raise ApiError(400, "required", f"Missing {which} time.")
    if when.get("date") and not when.get("dateTime"):
        try:
            date.fromisoformat(str(when["date"]))
        except ValueError as exc:
            raise ApiError(400, "invalid", f"Invalid {which} time.") from exc
        return {"date": str(when["date"])}
    try:
        moment = datetime.fromisoformat(str(when["dateTime"]))
    except ValueError as exc:
        raise ApiError(400, "invalid", f"Invalid {which} time.") from exc
    tz_name = when.get("timeZone")
    try:
        tz = zone(str(tz_name)) if tz_name else None
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ApiError(400, "invalid", f"Invalid time zone definition for {which} time.") from exc
    if moment.tzinfo is None:
        if tz is None:
            raise ApiError(400, "required", f"Missing time zone definition for {which} time.")
        moment = moment.replace(tzinfo=tz)
    rendered: dict[str, Any] = {"dateTime": rfc3339(moment, tz or calendar_tz)}
    if tz_name:
        rendered["timeZone"] = tz_name
    return rendered


def merge_intervals(intervals: list[Interval]) -> list[Interval]:
    merged: list[Interval] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


# -- events ---------------------------------------------------------------------------------------
def new_event_id() -> str:
    # Google's own ids are 26 base32hex characters, the same length as a UUID encoded this way.
    return base64.b32hexencode(uuid.uuid4().bytes).decode().lower().rstrip("=")


def _etag(updated: datetime) -> str:
    return f'"{int(updated.timestamp() * 1_000_000)}"'


def _html_link(event_id: str, calendar_email: str) -> str:
    eid = base64.urlsafe_b64encode(f"{event_id} {calendar_email}".encode()).decode().rstrip("=")
    return f"https://www.google.com/calendar/event?eid={eid}"


def deep_merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
    """Patch semantics: objects merge key by key, arrays and scalars replace, null clears."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            deep_merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


_READ_ONLY = {"kind", "etag", "htmlLink", "created", "updated", "creator", "iCalUID", "sequence", "organizer"}


@dataclass
class Calendar:
    """One calendar: events in insertion order (cancelled ones kept, as Google keeps their ids)."""

    id: str
    time_zone: str
    owner: str

    def __post_init__(self) -> None:
        self.events: dict[str, dict[str, Any]] = {}
        self.busy_seeds: list[Interval] = []

    @property
    def tz(self) -> tzinfo:
        return zone(self.time_zone)

    @property
    def email(self) -> str:
        return self.id if "@" in self.id else self.owner

    def interval(self, event: dict[str, Any]) -> Interval:
        return event_instant(event["start"], self.tz), event_instant(event["end"], self.tz)

    def _normalize_times(self, event: dict[str, Any]) -> None:
        event["start"] = normalize_when(event.get("start"), "start", self.tz)
        event["end"] = normalize_when(event.get("end"), "end", self.tz)
        start, end = self.interval(event)
        if end < start:
            raise time_range_empty()

    def insert(self, body: dict[str, Any], creator: str) -> dict[str, Any]:
        event_id = body.get("id")
        if event_id is None:
            event_id = new_event_id()
        elif not isinstance(event_id, str) or not EVENT_ID.match(event_id):
            raise ApiError(400, "invalid", "Invalid resource id value.")
        event = {k: copy.deepcopy(v) for k, v in body.items() if k not in _READ_ONLY}
        self._normalize_times(event)
        if event_id in self.events:
            raise ApiError(409, "duplicate", "The requested identifier already exists.")
        stamp = datetime.now(UTC)
        event.update({
            "kind": "calendar#event",
            "etag": _etag(stamp),
            "id": event_id,
            "status": event.get("status") or "confirmed",
            "htmlLink": _html_link(event_id, self.email),
            "created": rfc3339(stamp, millis=True),
            "updated": rfc3339(stamp, millis=True),
            "creator": {"email": creator, **({"self": True} if creator == self.email else {})},
            "organizer": {"email": self.email, "self": True},
            "iCalUID": f"{event_id}@google.com",
            "sequence": 0,
            "reminders": event.get("reminders") or {"useDefault": True},
            "eventType": event.get("eventType") or "default",
        })
        for attendee in event.get("attendees") or []:
            if isinstance(attendee, dict):
                attendee.setdefault("responseStatus", "needsAction")
        self.events[event_id] = event
        return event

    def get(self, event_id: str) -> dict[str, Any]:
        event = self.events.get(event_id)
        if event is None:
            raise not_found()
        return event

    def patch(self, event_id: str, body: dict[str, Any]) -> dict[str, Any]:
        event = self.get(event_id)
        if "id" in body and body["id"] != event_id:
            raise ApiError(400, "invalid", "Invalid resource id value.")
        updated = copy.deepcopy(event)
        deep_merge(updated, {k: v for k, v in body.items() if k not in _READ_ONLY | {"id"}})
        self._normalize_times(updated)
        stamp = datetime.now(UTC)
        updated.update({"sequence": int(event.get("sequence", 0)) + 1, "updated": rfc3339(stamp, millis=True),
                        "etag": _etag(stamp)})
        self.events[event_id] = updated
        return updated

    def delete(self, event_id: str) -> None:
        event = self.get(event_id)
        if event["status"] == "cancelled":
            raise ApiError(410, "deleted", "Resource has been deleted")
        stamp = datetime.now(UTC)
        event.update({"status": "cancelled", "updated": rfc3339(stamp, millis=True), "etag": _etag(stamp)})

    def busy(self, time_min: datetime, time_max: datetime) -> list[Interval]:
        intervals = list(self.busy_seeds)
        for event in self.events.values():
            if event["status"] != "cancelled" and event.get("transparency", "opaque") == "opaque":
                intervals.append(self.interval(event))
        clipped = [(max(s, time_min), min(e, time_max)) for s, e in intervals]
        return merge_intervals([(s, e) for s, e in clipped if s < e])

    def matching(self, args: dict[str, list[str]]) -> list[dict[str, Any]]:
        """``events.list`` filtering and ordering (paging is the caller's)."""
        def flag(name: str) -> bool:
            return (args.get(name) or ["false"])[-1].lower() == "true"

        def one(name: str) -> str | None:
            values = args.get(name)
            return values[-1] if values else None

        time_min = parse_rfc3339(one("timeMin"), "timeMin") if one("timeMin") else None
        time_max = parse_rfc3339(one("timeMax"), "timeMax") if one("timeMax") else None
        updated_min = parse_rfc3339(one("updatedMin"), "updatedMin") if one("updatedMin") else None
        if time_min and time_max and time_min >= time_max:
            raise time_range_empty("timeMax")
        order_by = one("orderBy")
        if order_by not in (None, "startTime", "updated"):
            raise ApiError(400, "invalidParameter", f"Invalid value for orderBy: {order_by}")
        if order_by == "startTime" and not flag("singleEvents"):
            raise ApiError(400, "badRequest",
                           "The requested ordering is not available for the particular query.")
        wanted = [(kind, p.partition("=")) for kind in ("private", "shared")
                  for p in args.get(f"{kind}ExtendedProperty", [])]
        terms = (one("q") or "").lower().split()
        ical_uid = one("iCalUID")
        items = []
        for event in self.events.values():
            if event["status"] == "cancelled" and not flag("showDeleted"):
                continue
            start, end = self.interval(event)
            if (time_min and end <= time_min) or (time_max and start >= time_max):
                continue
            if updated_min and datetime.fromisoformat(event["updated"]) < updated_min:
                continue
            if ical_uid and event.get("iCalUID") != ical_uid:
                continue
            props = event.get("extendedProperties") or {}
            if any((props.get(kind) or {}).get(key) != value for kind, (key, _, value) in wanted):
                continue
            if terms and not all(t in _haystack(event) for t in terms):
                continue
            items.append(event)
        if order_by == "startTime":
            items.sort(key=lambda e: self.interval(e)[0])
        elif order_by == "updated":
            items.sort(key=lambda e: e["updated"])
        return items


def _haystack(event: dict[str, Any]) -> str:
    parts = [str(event.get(k) or "") for k in ("summary", "description", "location")]
    for person in [*(event.get("attendees") or []), event.get("organizer") or {}]:
        if isinstance(person, dict):
            parts += [str(person.get("email") or ""), str(person.get("displayName") or "")]
    return " ".join(parts).lower()
