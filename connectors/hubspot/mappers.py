"""Pure mapping between textback's vendor-neutral records and HubSpot's wire format (no I/O)."""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from core.crm import ActivityData, ContactData, DealData, TaskData
from core.phones import national, redact_numbers

PHONE_PROPERTY = "textback_phone_e164"  # default; the business may choose another name
OPTED_OUT_PROPERTY = "textback_opted_out"
DEAL_KEY_PROPERTY = "textback_key"
LEAD_SOURCE_PROPERTY = "leadsource"  # used only when the account has it (not every portal does)

LEAD_STATUS_NEW = "NEW"
# HubSpot's built-in hs_lead_status has no "opted out" option; UNQUALIFIED is the closest standard
# value, and the textback_opted_out checkbox carries the exact fact.
LEAD_STATUS_OPTED_OUT = "UNQUALIFIED"

CONTACT_TYPE_ID = "0-1"
DEAL_TYPE_ID = "0-3"

# HUBSPOT_DEFINED association type ids (hubspot/crm/association_type.py in the SDK).
DEAL_TO_CONTACT = 3
CALL_TO_CONTACT = 194
CALL_TO_DEAL = 206
NOTE_TO_CONTACT = 202
NOTE_TO_DEAL = 214
TASK_TO_CONTACT = 204
TASK_TO_DEAL = 216

# textback's activity kinds -> the HubSpot object that holds them, and the property the marker is in.
ACTIVITY_OBJECT = {"call": "calls", "sms": "notes", "note": "notes"}
MARKER_PROPERTY = {
    "tasks": "hs_task_body",
    "calls": "hs_call_body",
    "notes": "hs_note_body",
}
KIND_OBJECT = {"task": "tasks", "deal": "deals", **ACTIVITY_OBJECT}

CALL_STATUS = {
    "missed": "NO_ANSWER",
    "no-answer": "NO_ANSWER",
    "no_answer": "NO_ANSWER",
    "busy": "BUSY",
    "failed": "FAILED",
    "canceled": "CANCELED",
    "cancelled": "CANCELED",
    "answered": "COMPLETED",
    "completed": "COMPLETED",
}
TASK_PRIORITIES = ("HIGH", "MEDIUM", "LOW", "NONE")

_EXISTING_ID = re.compile(r"Existing ID:\s*(\d+)", re.I)


# -- property definitions created at check time ---------------------------------------------------
def phone_property_definition(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": "Phone (E.164, textback)",
        "type": "string",
        "fieldType": "text",
        "groupName": "contactinformation",
        "hasUniqueValue": True,
        "description": "The caller's phone number in E.164 form. textback upserts contacts by it, so a "
        "caller is one contact however the number was typed. Do not edit.",
    }


def opted_out_property_definition() -> dict[str, Any]:
    return {
        "name": OPTED_OUT_PROPERTY,
        "label": "Opted out of texts (textback)",
        "type": "bool",
        "fieldType": "booleancheckbox",
        "groupName": "contactinformation",
        "options": [
            {"label": "Yes", "value": "true", "displayOrder": 0},
            {"label": "No", "value": "false", "displayOrder": 1},
        ],
        "description": "Set by textback when the contact texted STOP; textback never texts them again.",
    }


def deal_key_property_definition() -> dict[str, Any]:
    return {
        "name": DEAL_KEY_PROPERTY,
        "label": "textback key",
        "type": "string",
        "fieldType": "text",
        "groupName": "dealinformation",
        "hasUniqueValue": True,
        "description": "textback's reference for the lead behind this deal; keeps it from being created "
        "twice. Do not edit.",
    }


# -- small helpers --------------------------------------------------------------------------------
def hs_timestamp(moment: datetime) -> str:
    """ISO 8601 in UTC with milliseconds, as HubSpot stores it."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def html_text(text: str) -> str:
    """Plain text as the HTML HubSpot renders in notes, calls and tasks (line breaks kept)."""
    return "<br>".join(html.escape(line) for line in text.splitlines())


def with_ref(text: str, marker: str) -> str:
    """The body with textback's reference appended: find_record() searches for it."""
    body = html_text(text.strip())
    return f"{body}<br><br>Ref: {marker}" if body else f"Ref: {marker}"


def associations(*links: tuple[str | None, int]) -> list[dict[str, Any]]:
    """Inline ``associations`` for a create: (target id or None, HUBSPOT_DEFINED type id) pairs."""
    return [
        {
            "to": {"id": str(to_id)},
            "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": tid}],
        }
        for to_id, tid in links
        if to_id
    ]


def record_url(portal_id: str | None, type_id: str, object_id: str) -> str | None:
    if not portal_id:
        return None
    return f"https://app.hubspot.com/contacts/{portal_id}/record/{type_id}/{object_id}"


def existing_id(message: str) -> str | None:
    """The id in HubSpot's 409 "... already exists. Existing ID: 123"."""
    found = _EXISTING_ID.search(message or "")
    return found.group(1) if found else None


# -- records --------------------------------------------------------------------------------------
def contact_properties(
    contact: ContactData, phone_property: str, *, first_sync: bool, lead_source: bool
) -> dict[str, str]:
    """What an upsert writes. Status and source are written on the lead's first sync only, so a
    later event never resets what the business's team set in HubSpot."""
    props: dict[str, str] = {phone_property: contact.phone, "phone": contact.phone}
    if contact.first_name:
        props["firstname"] = contact.first_name
    if contact.last_name:
        props["lastname"] = contact.last_name
    if contact.email:
        props["email"] = contact.email
    if contact.opted_out:
        props.update(opted_out_properties())
    elif first_sync:
        props["hs_lead_status"] = LEAD_STATUS_NEW
    if first_sync and lead_source and contact.lead_source:
        props[LEAD_SOURCE_PROPERTY] = contact.lead_source
    return props


def opted_out_properties() -> dict[str, str]:
    return {"hs_lead_status": LEAD_STATUS_OPTED_OUT, OPTED_OUT_PROPERTY: "true"}


def deal_properties(
    deal: DealData, marker: str, pipeline: str, owner: str | None, *, create: bool
) -> dict[str, str]:
    props: dict[str, str] = {"dealname": deal.name[:250], "pipeline": pipeline, "dealstage": deal.stage}
    if create:
        props[DEAL_KEY_PROPERTY] = marker
        if owner:
            props["hubspot_owner_id"] = str(owner)
        if deal.amount is not None:
            props["amount"] = f"{deal.amount:.2f}"
    return props


def task_properties(marker: str, task: TaskData, owner: str | None) -> dict[str, str]:
    priority = (task.priority or "HIGH").upper()
    props = {
        "hs_timestamp": hs_timestamp(task.due_at),
        "hs_task_subject": task.subject[:250],
        "hs_task_body": with_ref(task.body, marker),
        "hs_task_status": "NOT_STARTED",
        "hs_task_priority": priority if priority in TASK_PRIORITIES else "HIGH",
        "hs_task_type": "CALL",
    }
    if owner:
        props["hubspot_owner_id"] = str(owner)
    return props


def call_properties(marker: str, activity: ActivityData) -> dict[str, str]:
    status = CALL_STATUS.get((activity.status or "missed").lower(), "NO_ANSWER")
    caller = activity.from_number or ""
    who = national(caller) if caller else "an unknown number"
    title = f"Missed call from {who}" if status != "COMPLETED" else f"Call from {who}"
    props = {
        "hs_timestamp": hs_timestamp(activity.at),
        "hs_call_title": title,
        "hs_call_body": with_ref(activity.body, marker),
        "hs_call_direction": "OUTBOUND" if activity.direction == "outbound" else "INBOUND",
        "hs_call_status": status,
    }
    if activity.from_number:
        props["hs_call_from_number"] = activity.from_number
    if activity.to_number:
        props["hs_call_to_number"] = activity.to_number
    if activity.recording_url:
        props["hs_call_recording_url"] = activity.recording_url
    if activity.duration_seconds is not None:
        props["hs_call_duration"] = str(int(activity.duration_seconds) * 1000)
    return props


def note_properties(marker: str, activity: ActivityData) -> dict[str, str]:
    text = activity.body
    if activity.kind == "sms":
        if activity.direction == "outbound":
            head = f"Text sent to {activity.to_number}:" if activity.to_number else "Text sent:"
        else:
            head = f"Text received from {activity.from_number}:" if activity.from_number else "Text received:"
        text = f"{head}\n{activity.body}"
    return {"hs_timestamp": hs_timestamp(activity.at), "hs_note_body": with_ref(text, marker)}


def activity_associations(kind: str, contact_id: str | None, deal_id: str | None) -> list[dict[str, Any]]:
    if ACTIVITY_OBJECT[kind] == "calls":
        return associations((contact_id, CALL_TO_CONTACT), (deal_id, CALL_TO_DEAL))
    return associations((contact_id, NOTE_TO_CONTACT), (deal_id, NOTE_TO_DEAL))


def marker_search(object_type: str, marker: str) -> dict[str, Any]:
    prop = MARKER_PROPERTY[object_type]
    return {
        "filterGroups": [
            {"filters": [{"propertyName": prop, "operator": "CONTAINS_TOKEN", "value": marker}]}
        ],
        "properties": [prop],
        "limit": 5,
    }


# -- errors ---------------------------------------------------------------------------------------
def parse_json(body: str | bytes | None) -> Any:
    if not body:
        return None
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None


def error_fields(body: Any) -> tuple[str, str, str]:
    """(category, message, policyName) of a HubSpot error body; empty strings when absent.

    The OAuth endpoint puts its code (BAD_REFRESH_TOKEN, ...) in ``status`` instead of ``category``.
    """
    if not isinstance(body, Mapping):
        return "", "", ""
    category = str(body.get("category") or "")
    status = str(body.get("status") or "")
    if not category and status and status != "error":
        category = status
    return category, str(body.get("message") or ""), str(body.get("policyName") or "")


def required_scopes(body: Any) -> list[str]:
    """The scopes a 403 MISSING_SCOPES answer names."""
    found: list[str] = []
    errors = body.get("errors") if isinstance(body, Mapping) else None
    for err in errors if isinstance(errors, list) else []:
        context = err.get("context") if isinstance(err, Mapping) else None
        if not isinstance(context, Mapping):
            continue
        for key in ("requiredGranularScopes", "requiredScopes", "requiredAllScopes", "requiredAnyScopes"):
            values = context.get(key)
            if isinstance(values, list):
                found += [str(v) for v in values if str(v) not in found]
    return found


def clean_message(message: str, limit: int = 300) -> str:
    """A vendor message fit for our logs and errors: numbers masked, whitespace folded, shortened."""
    return redact_numbers(" ".join(message.split()))[:limit]


def seconds_until_daily_reset(now: datetime | None = None, cap: float = 12 * 3600) -> float:
    """How long to pause after HubSpot's DAILY limit: until just past the next UTC midnight.

    HubSpot resets the daily count at midnight in the account's time zone, which we do not know; a
    cap keeps a wrong guess cheap (one more 429 and another pause), and the floor keeps a pause taken
    a minute before UTC midnight from hammering an account whose day ends hours later.
    """
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    midnight = (moment + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    wait = (midnight - moment).total_seconds() + 60
    return float(min(max(wait, 15 * 60), cap))


def interval_seconds(headers: Mapping[str, str] | None) -> float | None:
    """``X-HubSpot-RateLimit-Interval-Milliseconds`` as seconds (the rolling window to wait out)."""
    if not headers:
        return None
    for key, value in headers.items():
        if key.lower() == "x-hubspot-ratelimit-interval-milliseconds":
            try:
                return max(math.ceil(float(value)) / 1000.0, 0.0)
            except ValueError:
                return None
    return None


def names(values: Iterable[str]) -> str:
    return ", ".join(sorted(values))
