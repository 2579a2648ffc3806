"""Pure mapping for the Pipedrive connector: textback's data to Pipedrive JSON and back.

No I/O here. Persons, deals and activities are API v2 shapes (strict: ints are ints, phones are
arrays of objects, dates are ``YYYY-MM-DD`` / ``HH:MM`` UTC); notes, leads and call logs are v1
shapes (call-log times are ``YYYY-MM-DD HH:MM:SS`` UTC). Records textback creates without a
natural key carry the engine's marker (``tb-`` + 12 hex) so an interrupted create is found again:
deal and lead titles end with ``[marker]``; activity notes, call-log notes and notes end with a
``Ref: marker`` line.
"""

from __future__ import annotations

import html
import ipaddress
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from core.crm import ActivityData, ContactData, DealData, TaskData
from core.errors import ConnectorConfigError, Rejected
from core.phones import national, to_e164

VENDOR = "Pipedrive"
LOOPBACK_HOSTS = frozenset({"localhost"})
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_CALL_LOG_ID = re.compile(r"^[0-9a-f]{32}$")
_DIGITS = re.compile(r"^[0-9]+$")
_COMPANY = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


# -- configuration ----------------------------------------------------------------------------------
def is_loopback(host: str) -> bool:
    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_base_url(url: str, allowed_hosts: Iterable[str], what: str) -> str:
    """``url`` without a trailing slash, if it is https on an allowed host or http(s) on loopback."""
    parts = urlsplit(url.strip())
    host = (parts.hostname or "").lower()
    allowed = {h.lower() for h in allowed_hosts}
    if parts.scheme not in ("http", "https") or not host:
        raise ConnectorConfigError(f"{what} must be an http(s) URL, e.g. https://api.pipedrive.com")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConnectorConfigError(f"{what} must be a plain base URL (no query, fragment or credentials)")
    if is_loopback(host):
        return url.strip().rstrip("/")
    if host not in allowed and "*" not in allowed:
        raise ConnectorConfigError(
            f"{what} points at {host}, which is not a Pipedrive host (allowed: {', '.join(sorted(allowed))} "
            "or a loopback emulator)"
        )
    if parts.scheme != "https":
        raise ConnectorConfigError(f"{what} must use https for {host}")
    return url.strip().rstrip("/")


def company_host(company_domain: str | None) -> str | None:
    if not company_domain:
        return None
    value = str(company_domain).strip().lower()
    if value.endswith(".pipedrive.com"):
        value = value[: -len(".pipedrive.com")]
    if not _COMPANY.match(value):
        raise ConnectorConfigError("company_domain must be the part before .pipedrive.com, e.g. acme")
    return value


def as_id(value: Any, what: str) -> int | None:
    """A Pipedrive numeric id from config or sync settings (which hold strings), or None."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ConnectorConfigError(f"{what} must be a Pipedrive id (a number), not {value!r}")
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if _DIGITS.match(text):
        return int(text)
    raise ConnectorConfigError(f"{what} must be a Pipedrive id (a number), not {text[:40]!r}")


def numeric(value: Any) -> int | None:
    """``value`` as an int when it is all digits (a stage id), else None (a stage name)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = str(value or "").strip()
    return int(text) if _DIGITS.match(text) else None


def person_id(ref: Any) -> int:
    pid = numeric(getattr(ref, "id", ref))
    if pid is None:
        raise Rejected(f"{VENDOR}: {getattr(ref, 'id', ref)!r} is not a person id")
    return pid


def is_lead_id(value: str | None) -> bool:
    """Leads have UUID ids; deals have integers."""
    return bool(value) and bool(_UUID.match(str(value)))


def is_call_log_id(value: str | None) -> bool:
    """Call logs have 32-hex ids; notes have integers."""
    return bool(value) and bool(_CALL_LOG_ID.match(str(value)))


def deal_link(deal: Any) -> dict[str, Any]:
    """``{"deal_id": n}`` or ``{"lead_id": uuid}`` for a deal/lead Remote, or ``{}``."""
    if deal is None or not getattr(deal, "id", None):
        return {}
    if is_lead_id(deal.id):
        return {"lead_id": deal.id}
    did = numeric(deal.id)
    return {"deal_id": did} if did is not None else {}


def record_url(company: str | None, kind: str, record_id: Any) -> str | None:
    if not company:
        return None
    path = {"person": "person", "deal": "deal", "lead": "leads/inbox"}.get(kind)
    return f"https://{company}.pipedrive.com/{path}/{record_id}" if path else None


# -- persons -------------------------------------------------------------------------------------------
def e164(phone: str) -> str:
    number = to_e164(phone)
    if number is None:
        raise Rejected(f"{VENDOR}: the lead's phone is not a valid number")
    return number


def placeholder_name(phone: str) -> str:
    """Pipedrive requires a name; an unknown caller is named by their number, as phones show it."""
    return national(phone) if phone.startswith("+1") else phone


def contact_name(contact: ContactData) -> str | None:
    name = " ".join(p.strip() for p in (contact.first_name, contact.last_name) if p and p.strip())
    return name or None


def is_placeholder(name: str | None, phone: str) -> bool:
    """A name that only repeats the number (ours or a CRM user's), or no name at all."""
    if not name or not name.strip():
        return True
    return to_e164(name) == phone or name.strip() in (phone, placeholder_name(phone))


def phone_values(values: Iterable[Any]) -> list[str]:
    """Phone strings from a v2 person (objects) or a search item (strings)."""
    out = []
    for value in values or []:
        text = value.get("value") if isinstance(value, Mapping) else value
        if isinstance(text, str):
            out.append(text)
    return out


def has_phone(values: Iterable[Any], phone: str) -> bool:
    return any(v == phone or to_e164(v) == phone for v in phone_values(values))


def person_create(contact: ContactData, phone: str, owner_id: int | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": contact_name(contact) or placeholder_name(phone),
        "phones": [{"value": phone, "primary": True, "label": "mobile"}],
    }
    if contact.email:
        body["emails"] = [{"value": contact.email, "primary": True, "label": "work"}]
    if owner_id is not None:
        body["owner_id"] = owner_id
    return body


def _contacts(values: Iterable[Any]) -> list[dict[str, Any]]:
    """v2 contact objects as PATCH accepts them (value, primary, label)."""
    out = []
    for value in values or []:
        if isinstance(value, Mapping) and isinstance(value.get("value"), str):
            item: dict[str, Any] = {"value": value["value"], "primary": bool(value.get("primary", False))}
            if isinstance(value.get("label"), str):
                item["label"] = value["label"]
            out.append(item)
    return out


def person_patch(person: Mapping[str, Any], contact: ContactData, phone: str) -> dict[str, Any]:
    """The smallest PATCH that makes ``person`` complete for ``contact``; ``{}`` when nothing is missing.

    textback never overwrites what a person in the CRM typed: a name is set only over a placeholder,
    an email and the phone are added, never replaced.
    """
    patch: dict[str, Any] = {}
    name = contact_name(contact)
    if name and is_placeholder(person.get("name"), phone) and person.get("name") != name:
        patch["name"] = name
    phones = person.get("phones") or []
    if not has_phone(phones, phone):
        current = _contacts(phones)
        patch["phones"] = [*current, {"value": phone, "primary": not current, "label": "mobile"}]
    emails = person.get("emails") or []
    if contact.email and contact.email.casefold() not in {
        str(e.get("value", "")).casefold() for e in emails if isinstance(e, Mapping)
    }:
        current = _contacts(emails)
        patch["emails"] = [*current, {"value": contact.email, "primary": not current, "label": "work"}]
    return patch


def pick_person(items: Iterable[Mapping[str, Any]], phone: str) -> dict[str, Any] | None:
    """The oldest person among search hits whose phones really hold ``phone``."""
    matches = []
    for hit in items or []:
        item = hit.get("item") if isinstance(hit, Mapping) else None
        if not isinstance(item, Mapping) or item.get("type", "person") != "person":
            continue
        if has_phone(item.get("phones") or [], phone) and numeric(item.get("id")) is not None:
            matches.append(dict(item))
    return min(matches, key=lambda i: int(i["id"])) if matches else None


# -- deals and leads -------------------------------------------------------------------------------------
def titled(name: str, marker: str) -> str:
    """Deal and lead titles carry the marker, the only free text a v2 deal has that search can find."""
    return f"{name.strip()[:200]} [{marker}]"


def deal_create(
    deal: DealData,
    marker: str,
    person: int,
    pipeline_id: int | None,
    stage_id: int | None,
    owner_id: int | None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"title": titled(deal.name, marker), "person_id": person}
    if pipeline_id is not None:
        body["pipeline_id"] = pipeline_id
    if stage_id is not None:
        body["stage_id"] = stage_id
    if owner_id is not None:
        body["owner_id"] = owner_id
    if deal.amount is not None:
        body["value"] = float(deal.amount)
    return body


def lead_create(deal: DealData, marker: str, person: int, owner_id: int | None) -> dict[str, Any]:
    body: dict[str, Any] = {"title": titled(deal.name, marker), "person_id": person}
    if owner_id is not None:
        body["owner_id"] = owner_id
    return body


def should_move(deal: Mapping[str, Any], target: int, stages: Mapping[int, Mapping[str, Any]]) -> bool:
    """Move an open deal forward (or into another pipeline); never reopen or move it backwards."""
    if deal.get("status", "open") != "open" or deal.get("is_deleted"):
        return False
    current = numeric(deal.get("stage_id"))
    if current == target:
        return False
    here, there = stages.get(current or -1), stages.get(target)
    if here is None or there is None or here.get("pipeline_id") != there.get("pipeline_id"):
        return True
    return int(there.get("order_nr") or 0) > int(here.get("order_nr") or 0)


def stage_by_name(stages: Iterable[Mapping[str, Any]], name: str, pipeline_id: int | None) -> int | None:
    wanted = name.strip().casefold()
    for stage in sorted(stages, key=lambda s: (s.get("pipeline_id") or 0, s.get("order_nr") or 0)):
        if pipeline_id is not None and stage.get("pipeline_id") != pipeline_id:
            continue
        if str(stage.get("name", "")).strip().casefold() == wanted and not stage.get("is_deleted"):
            return int(stage["id"])
    return None


# -- activities, call logs and notes ----------------------------------------------------------------------
def utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def v1_time(moment: datetime) -> str:
    return utc(moment).strftime("%Y-%m-%d %H:%M:%S")


def ref_line(marker: str) -> str:
    return f"Ref: {marker}"


def has_marker(text: Any, marker: str) -> bool:
    return isinstance(text, str) and ref_line(marker) in text


def title_has_marker(title: Any, marker: str) -> bool:
    return isinstance(title, str) and f"[{marker}]" in title


def to_html(text: str) -> str:
    """Plain text as the HTML Pipedrive notes render: escaped, line breaks kept."""
    lines = [html.escape(line) for line in text.strip().splitlines()]
    return "<br>".join(lines)


def with_ref(text: str, marker: str) -> str:
    return f"{to_html(text)}<br><br>{ref_line(marker)}"


def task_body(
    marker: str, task: TaskData, person: int | None, deal: Any, owner_id: int | None
) -> dict[str, Any]:
    due = utc(task.due_at)
    body: dict[str, Any] = {
        "subject": task.subject[:255],
        "type": "call",
        "due_date": due.strftime("%Y-%m-%d"),
        "due_time": due.strftime("%H:%M"),
        "done": False,
        "note": with_ref(task.body, marker),
        **deal_link(deal),
    }
    if person is not None:
        # v2 made person_id read-only: the person is the primary participant.
        body["participants"] = [{"person_id": person, "primary": True}]
    if owner_id is not None:
        body["owner_id"] = owner_id
    return body


def call_outcome(activity: ActivityData) -> str:
    status = (activity.status or "").lower()
    if activity.recording_url:
        return "left_voicemail"
    if status == "busy":
        return "busy"
    if status in ("answered", "completed", "connected"):
        return "connected"
    return "no_answer"


def call_subject(activity: ActivityData) -> str:
    who = activity.from_number if activity.direction == "inbound" else activity.to_number
    shown = placeholder_name(who) if who else "unknown number"
    verb = "Missed call from" if call_outcome(activity) != "connected" else "Call with"
    return f"{verb} {shown}"


def call_log_body(
    marker: str,
    activity: ActivityData,
    person: int | None,
    deal: Any,
    user_id: int | None,
    business_number: str | None,
) -> dict[str, Any]:
    """A v1 call log. ``to_phone_number`` is required: the number called (the business, for a
    missed inbound call), falling back to the caller's own number when textback does not know it."""
    start = utc(activity.at)
    end = start + timedelta(seconds=max(int(activity.duration_seconds or 0), 0))
    inbound = activity.direction == "inbound"
    caller = activity.from_number or (None if inbound else business_number)
    called = activity.to_number or (business_number if inbound else None) or activity.from_number
    if not called:
        raise Rejected(f"{VENDOR}: a call log needs the number that was called")
    body: dict[str, Any] = {
        "outcome": call_outcome(activity),
        "to_phone_number": called,
        "start_time": v1_time(start),
        "end_time": v1_time(end),
        "subject": call_subject(activity),
        "note": with_ref(activity.body, marker),
        **deal_link(deal),
    }
    if caller:
        body["from_phone_number"] = caller
    if activity.duration_seconds:
        body["duration"] = str(int(activity.duration_seconds))
    if person is not None:
        body["person_id"] = person
    if user_id is not None:
        body["user_id"] = user_id
    return body


def note_heading(activity: ActivityData) -> str:
    when = v1_time(activity.at) + " UTC"
    if activity.kind == "sms":
        if activity.direction == "outbound":
            return f"Text message sent to {activity.to_number or 'the caller'} ({when})"
        return f"Text message from {activity.from_number or 'the caller'} ({when})"
    if activity.kind == "call":
        return f"{call_subject(activity)} ({when}), update"
    return f"Note ({when})"


def note_content(marker: str, activity: ActivityData) -> str:
    return f"<b>{html.escape(note_heading(activity))}</b><br>{with_ref(activity.body, marker)}"


def note_body(marker: str, activity: ActivityData, person: int | None, deal: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"content": note_content(marker, activity), **deal_link(deal)}
    if person is not None:
        body["person_id"] = person
    if len(body) == 1:
        raise Rejected(f"{VENDOR}: a note must be attached to a person, deal or lead")
    return body


OPT_OUT_MARKER = "tb-opted-out"


def opt_out_note(person: int) -> dict[str, Any]:
    text = "This person opted out of text messages (replied STOP). Do not text them."
    return {"content": with_ref(text, OPT_OUT_MARKER), "person_id": person}


# -- answers ---------------------------------------------------------------------------------------------
def error_text(body: Any) -> str | None:
    """Pipedrive's own words from an error body (v1 ``error``/``error_info``, v2 ``error``/``code``)."""
    if not isinstance(body, Mapping):
        return None
    error = body.get("error") or body.get("message")
    if not isinstance(error, str) or not error.strip():
        return None
    code = body.get("code") or body.get("errorCode")
    return f"{error.strip()} ({code})" if code else error.strip()


def seconds_to_utc_midnight(now: datetime | None = None) -> float:
    now = utc(now or datetime.now(UTC))
    midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), UTC)
    return max((midnight - now).total_seconds(), 1.0)
