"""Pure mapping for the Salesforce connector: record bodies, queries, URLs and error classification.

Nothing here talks to the network. ``api_error`` turns one Salesforce answer (a whole response or a
composite sub-response) into a :mod:`core.errors` type; the connector decides about retries.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from fnmatch import fnmatch
from typing import Any
from urllib.parse import urlsplit

import phonenumbers
from simple_salesforce.format import format_soql

from connectors import http_errors
from core.crm import ActivityData, ContactData, DealData, TaskData
from core.errors import (
    AuthError,
    ConnectorConfigError,
    JobError,
    RateLimited,
    Rejected,
    TransientError,
)
from core.phones import redact_numbers

VENDOR = "Salesforce"
#: the daily allocation refills over a rolling 24 h and Salesforce sends no Retry-After: back off long
DAILY_LIMIT_RETRY_AFTER = 15 * 60.0
#: the concurrent long-request limit clears as soon as the slow requests end
CONCURRENT_LIMIT_RETRY_AFTER = 60.0
MAX_TEXT = 32000
ID_PREFIXES = {"00Q": "Lead", "003": "Contact", "001": "Account", "006": "Opportunity", "00T": "Task",
               "00U": "Event", "005": "User"}
_USER_ID = re.compile(r"^005[A-Za-z0-9]{12}(?:[A-Za-z0-9]{3})?$")
_CONFIG_403 = {"API_DISABLED_FOR_ORG", "FUNCTIONALITY_NOT_ENABLED"}
OPT_OUT_SUBJECT = "Opted out of text messages"


class SessionExpired(AuthError):
    """401 INVALID_SESSION_ID: the access token is no longer accepted (log in again, once)."""


@dataclass(frozen=True)
class SfErrorInfo:
    code: str | None
    message: str
    fields: tuple[str, ...] = ()


# -- errors ---------------------------------------------------------------------------------------
def parse_body(raw: bytes | str | None) -> Any:
    """The JSON of an answer, or ``None`` when it is empty or not JSON (an HTML page from a proxy)."""
    if raw is None or (isinstance(raw, bytes | str) and not raw.strip()):
        return None
    if http_errors.looks_like_html(raw):
        return None
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None


def first_error(body: Any) -> SfErrorInfo | None:
    """Salesforce errors are ``[{"message","errorCode","fields"}]``; some proxies send one object."""
    item = body[0] if isinstance(body, list) and body else body
    if not isinstance(item, dict):
        return None
    code = item.get("errorCode") or item.get("error")
    message = item.get("message") or item.get("error_description") or ""
    fields = item.get("fields")
    names = tuple(str(f) for f in fields) if isinstance(fields, list) else ()
    return SfErrorInfo(str(code) if code else None, str(message), names)


def clean(text: str, limit: int = 300) -> str:
    return redact_numbers(" ".join(str(text).split()))[:limit]


def api_error(status: int, headers: Mapping[str, str] | None, body: Any, raw: bytes | str | None,
              what: str) -> JobError:
    """The error for one failed Salesforce answer. ``body`` is the parsed JSON (or None)."""
    if body is None:
        if 200 <= status < 300:
            return TransientError(f"{VENDOR} ({what}): a success status, but the body is not the API's "
                                  f"JSON: {http_errors.describe(raw)}", code=status)
        return http_errors.classify(f"{VENDOR} ({what})", status, headers, raw)
    info = first_error(body)
    code = info.code if info else None
    detail = f"{code}: {clean(info.message)}" if info and code else clean(info.message if info else
                                                                              json.dumps(body)[:300])
    if status == 300:
        count = len(body) if isinstance(body, list) else "several"
        return Rejected(f"{VENDOR} ({what}): {count} Salesforce records share this phone number in the "
                        "external-ID field; merge them in Salesforce (textback never guesses which one)",
                        code="MULTIPLE_CHOICES")
    if status == 401:
        if code == "INVALID_SESSION_ID":
            return SessionExpired(f"{VENDOR} ({what}): the session expired or is invalid", code=code)
        return AuthError(f"{VENDOR} ({what}) refused the credentials: {detail}", code=code or status)
    if status == 403:
        if code == "REQUEST_LIMIT_EXCEEDED":
            concurrent = "concurrent" in (info.message.lower() if info else "")
            wait = http_errors.retry_after(
                headers, CONCURRENT_LIMIT_RETRY_AFTER if concurrent else DAILY_LIMIT_RETRY_AFTER)
            kind = "concurrent request" if concurrent else "daily API request"
            return RateLimited(f"{VENDOR} ({what}): the org's {kind} limit is used up ({detail}); "
                               f"pausing for {int(wait)} s", retry_after=wait, code=code)
        if code in _CONFIG_403:
            return ConnectorConfigError(f"{VENDOR} ({what}): the org cannot use the API: {detail}", code=code)
        return AuthError(f"{VENDOR} ({what}) refused access: {detail} (check the integration user's "
                         "permissions)", code=code or status)
    if status == 429:
        return RateLimited(f"{VENDOR} ({what}) answered HTTP 429: {detail}",
                           retry_after=http_errors.retry_after(headers), code=status)
    if code == "UNABLE_TO_LOCK_ROW" or status in (408, 425) or status >= 500:
        return TransientError(f"{VENDOR} ({what}) answered HTTP {status}: {detail}", code=code or status)
    if 200 <= status < 300:
        return TransientError(f"{VENDOR} ({what}): unexpected answer: {detail}", code=status)
    return Rejected(f"{VENDOR} ({what}) refused the request (HTTP {status}): {detail}", code=code or status)


def is_missing_external_id(status: int, body: Any) -> bool:
    """404 "Provided external ID field does not exist or is not accessible": the org lacks the field."""
    info = first_error(body)
    return status == 404 and info is not None and "external id field" in info.message.lower()


def is_not_found(status: int, body: Any) -> bool:
    return status == 404 and not is_missing_external_id(status, body)


def has_error(body: Any, code: str) -> bool:
    return isinstance(body, list) and any(isinstance(e, dict) and e.get("errorCode") == code for e in body)


# -- URLs -----------------------------------------------------------------------------------------
def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_allowed(host: str, allowed_hosts: Iterable[str]) -> bool:
    host = host.lower()
    return any(fnmatch(host, pattern.lower()) for pattern in allowed_hosts)


def check_url(url: str, allowed_hosts: Iterable[str], name: str, loopback_ok: bool = True) -> str:
    """SSRF guard: this machine (an emulator) or a Salesforce host over https."""
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        _ = parts.port
    except ValueError:
        raise ConnectorConfigError(f"{name} is not a URL") from None
    if parts.scheme not in ("http", "https") or not host:
        raise ConnectorConfigError(f"{name} must be an http(s) URL")
    if loopback_ok and _is_loopback(host):
        return url.rstrip("/")
    allowed = tuple(allowed_hosts)
    if parts.scheme == "https" and host_allowed(host, allowed):
        return url.rstrip("/")
    raise ConnectorConfigError(
        f"{name} points at {host!r}, which is neither this machine (an emulator) nor a Salesforce host "
        f"({', '.join(allowed)} over https)")


def login_host(domain: str, allowed_hosts: Iterable[str]) -> str:
    """``login`` / ``test`` / ``acme.my`` / ``acme--dev.sandbox.my`` → the token endpoint's host."""
    domain = domain.strip().lower()
    if domain.endswith(".salesforce.com"):
        domain = domain[: -len(".salesforce.com")]
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]*", domain):
        raise ConnectorConfigError(f"domain {domain!r} is not a Salesforce domain (like 'acme.my', 'login')")
    host = f"{domain}.salesforce.com"
    if not host_allowed(host, allowed_hosts):
        raise ConnectorConfigError(
            f"domain {domain!r} gives {host}, which is not a Salesforce login host; use 'login', 'test' or "
            "your My Domain such as 'acme.my'")
    return host


def record_url(instance_url: str | None, sobject: str, record_id: str) -> str | None:
    if not instance_url:
        return None
    return f"{instance_url.rstrip('/')}/lightning/r/{sobject}/{record_id}/view"


def sobject_of(record_id: str | None) -> str | None:
    return ID_PREFIXES.get((record_id or "")[:3])


def user_id(value: str | None) -> str | None:
    """An OwnerId must be a User id (005...); anything else is ignored rather than sent."""
    return value if value and _USER_ID.match(value) else None


# -- people -----------------------------------------------------------------------------------------
def placeholder_last_name(phone: str) -> str:
    digits = re.sub(r"\D", "", phone)
    return f"Caller {digits[-4:]}"


def is_placeholder_name(last_name: str | None) -> bool:
    return bool(last_name) and re.fullmatch(r"Caller \d{4}", str(last_name)) is not None


def display_phone(e164: str) -> str:
    """``+1 555-010-2030``: unambiguous, readable and dialable from any country."""
    try:
        parsed = phonenumbers.parse(e164)
    except phonenumbers.NumberParseException:
        return e164
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.INTERNATIONAL)


def national_digits(e164: str) -> str:
    try:
        return str(phonenumbers.parse(e164).national_number)
    except phonenumbers.NumberParseException:
        return re.sub(r"\D", "", e164)


def names(contact: ContactData) -> tuple[str | None, str]:
    """(FirstName, LastName): one known name goes into LastName, which Salesforce requires."""
    first = (contact.first_name or "").strip() or None
    last = (contact.last_name or "").strip() or None
    if last:
        return first, last[:80]
    if first:
        return None, first[:80]
    return None, placeholder_last_name(contact.phone)


def person_body(contact: ContactData, sobject: str, *, company: str, lead_source: str | None,
                opt_out_field: str | None) -> dict[str, Any]:
    """A new Lead or Contact for a caller (without the external-id field: the upsert URL carries it)."""
    first, last = names(contact)
    body: dict[str, Any] = {"LastName": last, "Phone": display_phone(contact.phone)}
    if first:
        body["FirstName"] = first[:40]
    if contact.email:
        body["Email"] = contact.email
    body["LeadSource"] = lead_source or contact.lead_source
    if sobject == "Lead":
        body["Company"] = company
    if opt_out_field and contact.opted_out:
        body[opt_out_field] = True
    return body


def fill_in(record: Mapping[str, Any], contact: ContactData, opt_out_field: str | None) -> dict[str, Any]:
    """What textback may add to an existing person: empty fields and its own placeholder name only."""
    patch: dict[str, Any] = {}
    first, last = names(contact)
    knows_name = not is_placeholder_name(last)
    if knows_name and is_placeholder_name(record.get("LastName")):
        patch["LastName"] = last
        if first and not record.get("FirstName"):
            patch["FirstName"] = first[:40]
    if contact.email and not record.get("Email"):
        patch["Email"] = contact.email
    if opt_out_field and contact.opted_out and not record.get(opt_out_field):
        patch[opt_out_field] = True
    return patch


def person_fields(sobject: str, opt_out_field: str | None) -> list[str]:
    fields = ["Id", "FirstName", "LastName", "Email"]
    fields += ["IsConverted"] if sobject == "Lead" else ["AccountId"]
    if opt_out_field:
        fields.append(opt_out_field)
    return fields


def account_name(contact: ContactData) -> str:
    first, last = names(contact)
    return " ".join(p for p in (first, last) if p)[:255]


def phone_search(e164: str, mode: str, opt_out_field: str | None = None) -> str:
    """SOSL over phone fields (formatting ignored): Contacts, and in Lead mode open Leads."""
    digits = national_digits(e164)
    contact = ", ".join(person_fields("Contact", opt_out_field))
    returning = [f"Contact({contact})"]
    if mode == "lead":
        lead = ", ".join(person_fields("Lead", opt_out_field))
        returning.append(f"Lead({lead} WHERE IsConverted = false)")
    return f"FIND {{{digits}}} IN PHONE FIELDS RETURNING {', '.join(returning)}"


# -- deals, tasks, activities ------------------------------------------------------------------------
def ref_line(marker: str) -> str:
    return f"Ref: {marker}"


def _text(*parts: str | None) -> str:
    return "\n\n".join(p for p in parts if p)[:MAX_TEXT]


def opportunity_body(marker: str, deal: DealData, close_in_days: int, today: date | None = None
                     ) -> dict[str, Any]:
    close = (today or datetime.now(UTC).date()) + timedelta(days=close_in_days)
    body: dict[str, Any] = {
        "Name": deal.name[:120],
        "StageName": deal.stage,
        "CloseDate": close.isoformat(),
        "Description": _text("Created by textback for a missed call.", ref_line(marker)),
    }
    if deal.amount is not None:
        body["Amount"] = deal.amount
    owner = user_id(deal.owner)
    if owner:
        body["OwnerId"] = owner
    return body


def priority(value: str | None) -> str:
    return {"HIGH": "High", "LOW": "Low"}.get((value or "").upper(), "Normal")


def links(contact_id: str | None, deal_id: str | None) -> dict[str, str]:
    """WhoId is the person; WhatId only an Opportunity, and never beside a Lead (Salesforce forbids it)."""
    out: dict[str, str] = {}
    if contact_id:
        out["WhoId"] = contact_id
    if deal_id and sobject_of(deal_id) == "Opportunity" and sobject_of(contact_id) != "Lead":
        out["WhatId"] = deal_id
    return out


def task_body(marker: str, task: TaskData, contact_id: str | None, deal_id: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "Subject": task.subject[:255],
        "ActivityDate": task.due_at.astimezone(UTC).date().isoformat(),
        "Status": "Not Started",
        "Priority": priority(task.priority),
        "TaskSubtype": "Task",
        "Type": "Call",
        "Description": _text(task.body, ref_line(marker)),
        **links(contact_id, deal_id),
    }
    owner = user_id(task.owner)
    if owner:
        body["OwnerId"] = owner
    return body


def _call_subject(activity: ActivityData) -> str:
    direction = "Outbound" if activity.direction == "outbound" else "Inbound"
    status = (activity.status or "").replace("-", " ")
    if status == "missed" and direction == "Inbound":
        return "Missed call"
    return f"{direction} call" + (f" ({status})" if status else "")


def activity_body(marker: str, activity: ActivityData, contact_id: str | None, deal_id: str | None,
                  *, update: bool = False) -> dict[str, Any]:
    """A completed Task for a call (TaskSubtype Call), a text or a note (TaskSubtype Task)."""
    at = activity.at if activity.at.tzinfo else activity.at.replace(tzinfo=UTC)
    body: dict[str, Any] = {"Status": "Completed", "ActivityDate": at.astimezone(UTC).date().isoformat()}
    if activity.kind == "call":
        lines = [activity.body]
        if activity.recording_url and activity.recording_url not in activity.body:
            lines.append(f"Recording: {activity.recording_url}")
        body.update(Subject=_call_subject(activity), Type="Call",
                    CallType="Outbound" if activity.direction == "outbound" else "Inbound",
                    CallDurationInSeconds=int(activity.duration_seconds or 0),
                    Description=_text(*lines, ref_line(marker)))
        if activity.status:
            body["CallDisposition"] = activity.status.replace("-", " ").capitalize()[:255]
        call_sid = activity.extra.get("call_sid") or activity.extra.get("CallSid")
        if call_sid:
            body["CallObject"] = call_sid[:255]
        subtype = "Call"
    elif activity.kind == "sms":
        inbound = activity.direction == "inbound"
        header = "Text from the caller" if inbound else "Text to the caller"
        route = " → ".join(display_phone(p) for p in (activity.from_number, activity.to_number) if p)
        body.update(Subject=header, Description=_text(activity.body, route, ref_line(marker)))
        subtype = "Task"
    else:
        first_line = (activity.body.strip().splitlines() or ["Note"])[0]
        body.update(Subject=f"Note: {first_line}"[:255], Description=_text(activity.body, ref_line(marker)))
        subtype = "Task"
    if not update:  # TaskSubtype cannot be changed after insert; links stay as they were made
        body["TaskSubtype"] = subtype
        body.update(links(contact_id, deal_id))
    return body


def opt_out_task(contact_id: str, today: date | None = None) -> dict[str, Any]:
    return {"Subject": OPT_OUT_SUBJECT, "WhoId": contact_id, "Status": "Completed", "TaskSubtype": "Task",
            "ActivityDate": (today or datetime.now(UTC).date()).isoformat(), "Priority": "Normal",
            "Description": "The caller replied STOP: textback sends them no more texts. Do not text this "
                           "number from other tools either."}


def find_by_marker(sobject: str, since: datetime) -> str:
    """The newest records of ``sobject`` to scan for a marker.

    Description is a long text area, which SOQL cannot filter on, so the query is narrowed by
    creation time and newest first (an interrupted create is minutes old) and matched here.
    """
    where = format_soql("CreatedDate >= {}", since.replace(microsecond=0))
    # sobject is one of our own constants; the value went through format_soql.
    return f"SELECT Id, Description FROM {sobject} WHERE {where} ORDER BY CreatedDate DESC LIMIT 2000"  # noqa: S608


def composite_sub(version: str, ref: str, method: str, path: str, body: Any = None) -> dict[str, Any]:
    sub: dict[str, Any] = {"method": method, "url": f"/services/data/v{version}/{path}", "referenceId": ref}
    if body is not None:
        sub["body"] = body
    return sub
