"""Pure mapping for the Google Calendar connector: event ids and bodies, free/busy, errors.

No I/O here: the connector module does HTTP; these functions turn textback's data into Calendar v3
JSON and Calendar answers (or failures) into textback's data and ``core.errors`` types.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from connectors import http_errors
from core.crm import BookingData, Slot
from core.errors import AuthError, ConnectorConfigError, JobError, RateLimited, Rejected, TransientError
from core.phones import redact_numbers

VENDOR = "Google Calendar"
#: Google sends no Retry-After with its 403 usage-limit answers; its quota window slides per minute.
DEFAULT_RETRY_AFTER = 30.0
RATE_LIMIT_REASONS = frozenset({"rateLimitExceeded", "userRateLimitExceeded"})
KEY_PROPERTY = "textback_key"


# -- ids, times and bodies ----------------------------------------------------------------------
def event_id(key: str) -> str:
    """A valid, deterministic Calendar event id for a booking key.

    base32hex (characters 0-9 and a-v) of the SHA-1 digest: 160 bits make exactly 32 characters, no
    padding. A retried insert reuses the id and gets 409 ``duplicate`` instead of a second event.
    """
    digest = hashlib.sha1(key.encode("utf-8"), usedforsecurity=False).digest()
    return base64.b32hexencode(digest).decode("ascii").lower().rstrip("=")


def rfc3339_utc(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise Rejected("a booking or free/busy time has no time zone (naive datetime)")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise Rejected(f"unknown time zone {name!r} for the booking") from None


def when(moment: datetime, time_zone: str) -> dict[str, str]:
    """An EventDateTime: the instant in the booking's zone, with the zone named (Google keeps both)."""
    if moment.tzinfo is None:
        raise Rejected("a booking time has no time zone (naive datetime)")
    local = moment.astimezone(_zone(time_zone))
    return {"dateTime": local.isoformat(timespec="seconds"), "timeZone": time_zone}


def times(booking: BookingData) -> dict[str, Any]:
    if booking.slot.end <= booking.slot.start:
        raise Rejected("the booking's slot ends before it starts")
    return {
        "start": when(booking.slot.start, booking.time_zone),
        "end": when(booking.slot.end, booking.time_zone),
    }


def event_body(booking: BookingData, invite_attendees: bool) -> dict[str, Any]:
    """The events.insert body. Attendees only when the business allows invites and the email is known."""
    body: dict[str, Any] = {
        "id": event_id(booking.key),
        "summary": booking.summary,
        "description": booking.description,
        **times(booking),
        "extendedProperties": {"private": {KEY_PROPERTY: booking.key}},
        "reminders": {"useDefault": True},
    }
    if invite_attendees and booking.attendee_email:
        body["attendees"] = [{"email": booking.attendee_email}]
    return body


def freebusy_body(calendar_id: str, start: datetime, end: datetime) -> dict[str, Any]:
    if end <= start:
        raise Rejected("the free/busy window ends before it starts")
    return {
        "timeMin": rfc3339_utc(start),
        "timeMax": rfc3339_utc(end),
        "timeZone": "UTC",
        "items": [{"id": calendar_id}],
    }


def _instant(value: Any) -> datetime:
    moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError("naive")
    return moment.astimezone(UTC)


def busy_slots(answer: Any, calendar_id: str) -> list[Slot]:
    """Busy intervals of ``calendar_id`` from a freeBusy answer, or the error that explains why not."""
    if not isinstance(answer, Mapping) or not isinstance(answer.get("calendars"), Mapping):
        raise TransientError(f"{VENDOR} answered freeBusy without a 'calendars' object")
    calendars: Mapping[str, Any] = answer["calendars"]
    entry = calendars.get(calendar_id)
    if entry is None and len(calendars) == 1:  # Google may key the answer by the resolved id
        entry = next(iter(calendars.values()))
    if not isinstance(entry, Mapping):
        raise TransientError(f"{VENDOR} answered freeBusy without calendar {calendar_id!r}")
    errors = [e for e in entry.get("errors") or [] if isinstance(e, Mapping)]
    if errors:
        raise calendar_error(calendar_id, str(errors[0].get("reason") or "unknown"))
    slots: list[Slot] = []
    try:
        for block in entry.get("busy") or []:
            slots.append(Slot(_instant(block["start"]), _instant(block["end"])))
    except (KeyError, TypeError, ValueError):
        raise TransientError(
            f"{VENDOR} answered freeBusy with a busy block that is not a time range"
        ) from None
    return sorted(slots, key=lambda s: s.start)


def calendar_error(calendar_id: str, reason: str) -> JobError:
    """A per-calendar error inside a 200 freeBusy answer."""
    if reason == "notFound":
        return ConnectorConfigError(
            f"calendar {calendar_id!r} was not found or is not shared with the connected account: share it "
            'with the service account\'s email ("Make changes to events") or fix calendar_id',
            code=reason,
        )
    if reason in ("internalError", "backendError"):
        return TransientError(
            f"{VENDOR} could not read calendar {calendar_id!r} right now ({reason})", code=reason
        )
    if reason in RATE_LIMIT_REASONS:
        return RateLimited(f"{VENDOR} rate limit ({reason})", retry_after=DEFAULT_RETRY_AFTER, code=reason)
    return Rejected(
        f"{VENDOR} would not give the free/busy time of calendar {calendar_id!r} ({reason})", code=reason
    )


def remote(event: Any) -> tuple[str, str | None]:
    """(id, htmlLink) of an event answer; an answer without an id is not success."""
    if not isinstance(event, Mapping) or not isinstance(event.get("id"), str) or not event["id"]:
        raise TransientError(f"{VENDOR} answered without an event id (not a Calendar event)")
    link = event.get("htmlLink")
    return event["id"], link if isinstance(link, str) else None


# -- errors -------------------------------------------------------------------------------------
def error_details(content: bytes | str | None) -> tuple[str | None, str | None]:
    """(reason, message) of Google's ``{"error": {"errors": [{"reason"}], "message"}}``, if it is one."""
    if not content:
        return None, None
    try:
        data = json.loads(content)
    except (ValueError, UnicodeDecodeError):
        return None, None
    if not isinstance(data, Mapping):
        return None, None
    error = data.get("error")
    if isinstance(error, Mapping):
        reason = None
        items = error.get("errors")
        if isinstance(items, list) and items and isinstance(items[0], Mapping):
            reason = items[0].get("reason")
        message = error.get("message")
        return (str(reason) if reason else None), (str(message) if message else None)
    if isinstance(error, str):  # OAuth-style {"error": "...", "error_description": "..."}
        return error, str(data.get("error_description") or "") or None
    message = data.get("message")
    return None, (str(message) if message else None)


def _clean(text: str, secrets: Iterable[str] = ()) -> str:
    return scrub(redact_numbers(" ".join(text.split()))[:300], secrets)


def scrub(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def api_error(
    status: int,
    headers: Mapping[str, str] | None,
    content: bytes | str | None,
    *,
    calendar_id: str,
    operation: str,
    missing_calendar: bool = False,
    secrets: Iterable[str] = (),
) -> JobError:
    """Map a Calendar API failure onto core.errors.

    ``missing_calendar``: a 404 here means the configured calendar (not an event) does not exist.
    """
    reason, message = error_details(content)
    if reason is None and message is None:
        # Not Google's JSON (an HTML page from a proxy, an empty body): classify by status alone.
        error = http_errors.classify(VENDOR, status, headers, content)
        if isinstance(error, RateLimited):
            error.retry_after = http_errors.retry_after(headers, DEFAULT_RETRY_AFTER)
        return error
    said = _clean(f"{reason + ': ' if reason else ''}{message or ''}", secrets)
    prefix = f"{VENDOR} {operation}: HTTP {status} ({said})"
    if status == 429 or (status == 403 and reason in RATE_LIMIT_REASONS):
        return RateLimited(
            prefix, retry_after=http_errors.retry_after(headers, DEFAULT_RETRY_AFTER), code=status
        )
    if status == 401:
        return AuthError(f"{prefix}: Google rejected the credentials; reconnect the calendar", code=status)
    if status == 403:
        if reason == "quotaExceeded":
            return Rejected(
                f"{prefix}: the calendar hit Google's calendar usage limits (too many events created or "
                "invitations sent in a short time); Google lifts this after some hours, so this booking "
                "is not retried",
                code=reason,
            )
        if reason == "forbiddenForServiceAccounts":
            return ConnectorConfigError(
                f"{prefix}: a service account may not invite attendees unless it acts for a Workspace user "
                "through domain-wide delegation; set delegated_subject (and authorise the client id in the "
                "Workspace admin console) or turn invite_attendees off",
                code=reason,
            )
        if reason in ("accessNotConfigured", "SERVICE_DISABLED"):
            return ConnectorConfigError(
                f"{prefix}: the Google Calendar API is disabled in this Google Cloud project; enable it in "
                "the Cloud console (APIs & Services) and try again",
                code=reason,
            )
        if reason == "insufficientPermissions":
            return AuthError(
                f"{prefix}: the credentials lack the calendar scopes; reconnect with "
                "calendar.events and calendar.freebusy",
                code=reason,
            )
        return AuthError(
            f"{prefix}: the connected account may not do this on calendar {calendar_id!r} "
            '(it needs "Make changes to events" permission)',
            code=reason or status,
        )
    if status == 404:
        if missing_calendar:
            return ConnectorConfigError(
                f"{prefix}: calendar {calendar_id!r} was not found or is not shared with the connected "
                "account; fix calendar_id or share the calendar",
                code=status,
            )
        return Rejected(f"{prefix}: the event no longer exists", code=status)
    if status in (408, 425) or status >= 500:
        return TransientError(prefix, code=status)
    return Rejected(prefix, code=reason or status)


def grant_error(data: Any, retryable: bool, *, oauth: bool, secrets: Iterable[str] = ()) -> JobError:
    """Map a token-endpoint failure (google-auth's RefreshError args) onto core.errors."""
    if isinstance(data, Mapping):
        error = str(data.get("error") or "")
        description = str(data.get("error_description") or "")
    else:
        error, description = "", http_errors.describe(data if isinstance(data, str | bytes) else None)
    said = _clean(f"{error}: {description}" if error else description, secrets)
    if retryable:
        return TransientError(f"Google's token endpoint failed for now ({said})")
    if error == "invalid_grant":
        if oauth:
            return AuthError(
                "the Google refresh token was revoked or expired; reconnect the Google account "
                f"(Google said: {said})",
                code=error,
            )
        return AuthError(
            "Google refused the service-account key: it was deleted or disabled, the clock is off, or the "
            f"delegated user does not exist (Google said: {said})",
            code=error,
        )
    if error == "invalid_client":
        return AuthError(
            f"Google does not accept this OAuth client id/secret (Google said: {said})", code=error
        )
    if error in ("unauthorized_client", "access_denied", "invalid_scope"):
        return ConnectorConfigError(
            "Google will not issue a calendar token for these credentials: with domain-wide delegation, "
            "authorise the service account's client id for the calendar.events and calendar.freebusy scopes "
            f"in the Workspace admin console (Google said: {said})",
            code=error,
        )
    return AuthError(
        f"Google's token endpoint refused the credentials (Google said: {said})", code=error or None
    )


def check_base_url(url: str, allowed_hosts: Iterable[str], name: str) -> str:
    """SSRF guard: loopback (emulators, http or https) or an allowed Google host over https."""
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        _ = parts.port
    except ValueError:
        raise ConnectorConfigError(f"{name} is not a URL") from None
    if parts.scheme not in ("http", "https") or not host:
        raise ConnectorConfigError(f"{name} must be an http(s) URL")
    if host == "localhost" or _is_loopback(host):
        return url.rstrip("/")
    if host in {h.lower() for h in allowed_hosts} and parts.scheme == "https":
        return url.rstrip("/")
    raise ConnectorConfigError(
        f"{name} points at {host!r}, which is neither this machine (an emulator) nor one of Google's hosts "
        f"({', '.join(sorted(allowed_hosts))} over https)"
    )


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
