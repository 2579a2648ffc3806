"""Pipedrive API v1 (``/v1``): what v2 lacks (notes, leads, call logs, users/me) plus 410s.

v1 is lenient like the real one: JSON or form bodies, numeric strings accepted for ids. The v1
persons/deals/activities/search family is out of support since 2026-08-01, so those paths answer
410 and nothing in textback can come to depend on them.
"""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, request

from connectors.pipedrive.emulator_store import (
    BOOL,
    COMPANY,
    DATE,
    INT,
    NUMBER,
    STR,
    USERS,
    UUID,
    V1_DATETIME,
    ApiError,
    Store,
    bad_request,
    iso_ms,
    list_of,
    now_utc,
    nullable,
    obj,
    one_of,
    v1_time,
    validate,
)
from connectors.pipedrive.emulator_v2 import ok

DEPRECATED = ("persons", "deals", "activities", "itemSearch", "organizations", "pipelines", "stages",
              "products")
DEPRECATED_MESSAGE = "This endpoint is deprecated; use /api/v2"
OUTCOMES = ("connected", "no_answer", "left_message", "left_voicemail", "wrong_number", "busy")
LEAD_FIELDS = {
    "title": STR, "owner_id": INT, "label_ids": list_of(UUID), "person_id": nullable(INT),
    "organization_id": nullable(INT), "value": nullable(obj({"amount": NUMBER, "currency": STR},
                                                             required=("amount", "currency"))),
    "expected_close_date": nullable(DATE), "visible_to": one_of("1", "3", "5", "7"), "was_seen": BOOL,
    "is_archived": BOOL, "origin_id": nullable(STR), "channel": nullable(INT), "channel_id": nullable(STR),
}
_NOTE_LINKS = ("person_id", "deal_id", "org_id", "project_id")


def v1_body() -> dict[str, Any]:
    if request.is_json:
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise bad_request("The request body must be a JSON object")
        return body
    return request.form.to_dict()


def v1_int(body: dict[str, Any], key: str) -> int | None:
    """v1 coerces numeric strings (form posts send nothing else)."""
    value = body.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and re.fullmatch(r"\d+", value.strip()):
        return int(value)
    raise bad_request(f"Parameter '{key}' must be an integer")


def v1_flag(body: dict[str, Any], key: str) -> bool | None:
    value = body.get(key)
    if value is None or value == "":
        return None
    if value in (True, False, 0, 1, "0", "1", "true", "false"):
        return value in (True, 1, "1", "true")
    raise bad_request(f"Parameter '{key}' must be 0 or 1")


class V1Api:
    def __init__(self, store: Store, lock: threading.RLock) -> None:
        self.store = store
        self.lock = lock

    def install(self, app: Flask) -> None:
        rules: list[tuple[str, Callable[..., Any], list[str]]] = [
            ("/notes", self.create_note, ["POST"]),
            ("/notes", self.list_notes, ["GET"]),
            ("/notes/<int:note_id>", self.get_note, ["GET"]),
            ("/notes/<int:note_id>", self.update_note, ["PUT"]),
            ("/notes/<int:note_id>", self.delete_note, ["DELETE"]),
            ("/leads", self.create_lead, ["POST"]),
            ("/leads", self.list_leads, ["GET"]),
            ("/leads/<lead_id>", self.get_lead, ["GET"]),
            ("/leads/<lead_id>", self.update_lead, ["PATCH"]),
            ("/leads/<lead_id>", self.delete_lead, ["DELETE"]),
            ("/leads/search", self.deprecated, ["GET"]),
            ("/callLogs", self.create_call_log, ["POST"]),
            ("/callLogs", self.list_call_logs, ["GET"]),
            ("/callLogs/<log_id>", self.get_call_log, ["GET"]),
            ("/callLogs/<log_id>", self.delete_call_log, ["DELETE"]),
            ("/users/me", self.users_me, ["GET"]),
        ]
        for res in DEPRECATED:
            rules.append((f"/{res}", self.deprecated, ["GET", "POST", "PUT", "PATCH", "DELETE"]))
            rules.append((f"/{res}/<path:_rest>", self.deprecated, ["GET", "POST", "PUT", "PATCH", "DELETE"]))
        for i, (path, view, methods) in enumerate(rules):
            app.add_url_rule("/v1" + path, endpoint=f"pd_v1_{i}_{view.__name__}", view_func=view,
                             methods=methods)

    @staticmethod
    def deprecated(**_: Any) -> tuple[Response, int]:
        raise ApiError(410, DEPRECATED_MESSAGE, "ERR_GONE")

    # -- notes -------------------------------------------------------------------------------------
    def _note_links(self, body: dict[str, Any]) -> dict[str, Any]:
        links: dict[str, Any] = {key: v1_int(body, key) for key in _NOTE_LINKS if key in body}
        if "lead_id" in body:
            links["lead_id"] = body["lead_id"] or None
        self.store.require("person", links.get("person_id"))
        self.store.require("deal", links.get("deal_id"))
        self.store.require("lead", links.get("lead_id"))
        return links

    def _note_refs(self, note: dict[str, Any]) -> None:
        person = self.store.persons.get(note["person_id"]) if note["person_id"] else None
        deal = self.store.deals.get(note["deal_id"]) if note["deal_id"] else None
        note["person"] = {"name": person["name"]} if person else None
        note["deal"] = {"title": deal["title"]} if deal else None

    def create_note(self) -> tuple[Response, int]:
        body = v1_body()
        content = body.get("content")
        if not isinstance(content, str) or not content.strip():
            raise bad_request("Note content is required")
        with self.lock:
            links = self._note_links(body)
            if not any(links.get(k) for k in (*_NOTE_LINKS, "lead_id")):
                raise bad_request("Note must be attached to a deal, person, organization, lead or project")
            now = v1_time(now_utc())
            user = USERS[1]
            note: dict[str, Any] = {
                "id": self.store.next_id("note"), "user_id": 1, "deal_id": None, "person_id": None,
                "org_id": None, "lead_id": None, "project_id": None, "content": content, "add_time": now,
                "update_time": now, "active_flag": True, "last_update_user_id": None, "organization": None,
                "person": None, "deal": None,
                "user": {"email": user["email"], "name": user["name"], "icon_url": None, "is_you": True},
            }
            note.update(links)
            for target in ("deal", "person", "organization", "lead", "project"):
                note[f"pinned_to_{target}_flag"] = bool(v1_flag(body, f"pinned_to_{target}_flag"))
            self._note_refs(note)
            self.store.notes[note["id"]] = note
            return ok(note)

    def _note(self, note_id: int) -> dict[str, Any]:
        note = self.store.notes.get(note_id)
        if note is None or not note["active_flag"]:
            raise ApiError(404, "Note not found", "ERR_NOT_FOUND")
        return note

    def get_note(self, note_id: int) -> tuple[Response, int]:
        with self.lock:
            return ok(self._note(note_id))

    def update_note(self, note_id: int) -> tuple[Response, int]:
        body = v1_body()
        with self.lock:
            note = self._note(note_id)
            if "content" in body:
                if not isinstance(body["content"], str) or not body["content"].strip():
                    raise bad_request("Note content is required")
                note["content"] = body["content"]
            note.update(self._note_links(body))
            for target in ("deal", "person", "organization", "lead", "project"):
                flag = v1_flag(body, f"pinned_to_{target}_flag")
                if flag is not None:
                    note[f"pinned_to_{target}_flag"] = flag
            self._note_refs(note)
            note["update_time"] = v1_time(now_utc())
            note["last_update_user_id"] = 1
            return ok(note)

    def delete_note(self, note_id: int) -> tuple[Response, int]:
        with self.lock:
            self._note(note_id)["active_flag"] = False
            return ok(note_id)

    def list_notes(self) -> tuple[Response, int]:
        args = request.args.to_dict()
        filters = {key: v1_int(args, key) for key in ("person_id", "deal_id", "org_id", "user_id")}
        lead_id = args.get("lead_id") or None
        start, limit = v1_int(args, "start") or 0, v1_int(args, "limit") or 100
        with self.lock:
            notes = [n for n in self.store.notes.values() if n["active_flag"]
                     and all(v is None or n[k] == v for k, v in filters.items())
                     and (lead_id is None or n["lead_id"] == lead_id)]
            return self._v1_page(notes, start, min(limit, 500))

    @staticmethod
    def _v1_page(items: list[Any], start: int, limit: int) -> tuple[Response, int]:
        page = items[start:start + limit]
        more = start + limit < len(items)
        pagination: dict[str, Any] = {"start": start, "limit": limit, "more_items_in_collection": more}
        if more:
            pagination["next_start"] = start + limit
        return ok(page, {"pagination": pagination})

    # -- leads ---------------------------------------------------------------------------------------
    def create_lead(self) -> tuple[Response, int]:
        body = validate(v1_body(), LEAD_FIELDS, required=("title",), allow_unknown=True)
        if body.get("person_id") is None and body.get("organization_id") is None:
            raise bad_request("A lead must be linked to a person or an organization (person_id or "
                              "organization_id)")
        with self.lock:
            self.store.require("person", body.get("person_id"))
            self.store.require_user(body.get("owner_id"))
            now = iso_ms(now_utc())
            lead_id = str(uuid.uuid4())
            lead: dict[str, Any] = {
                "id": lead_id, "title": "", "owner_id": 1, "creator_id": 1, "label_ids": [],
                "person_id": None, "organization_id": None, "source_name": "API", "origin": "API",
                "origin_id": None, "channel": None, "channel_id": None, "source_deal_id": None,
                "is_archived": False, "was_seen": False, "value": None, "expected_close_date": None,
                "next_activity_id": None, "add_time": now, "update_time": now, "visible_to": "3",
                "cc_email": f"{COMPANY['domain']}+lead{lead_id[:8]}@pipedrivemail.com",
            }
            lead.update({k: v for k, v in body.items() if k in LEAD_FIELDS})
            self.store.leads[lead_id] = lead
            return ok(lead, status=201)

    def get_lead(self, lead_id: str) -> tuple[Response, int]:
        with self.lock:
            return ok(self.store.lead(lead_id))

    def update_lead(self, lead_id: str) -> tuple[Response, int]:
        body = validate(v1_body(), LEAD_FIELDS, allow_unknown=True)
        with self.lock:
            lead = self.store.lead(lead_id)
            self.store.require("person", body.get("person_id"))
            self.store.require_user(body.get("owner_id"))
            lead.update({k: v for k, v in body.items() if k in LEAD_FIELDS})
            lead["update_time"] = iso_ms(now_utc())
            return ok(lead)

    def delete_lead(self, lead_id: str) -> tuple[Response, int]:
        with self.lock:
            self.store.lead(lead_id)
            del self.store.leads[lead_id]
            return ok({"id": lead_id})

    def list_leads(self) -> tuple[Response, int]:
        args = request.args.to_dict()
        person_id, owner_id = v1_int(args, "person_id"), v1_int(args, "owner_id")
        archived = args.get("archived_status", "not_archived")
        start, limit = v1_int(args, "start") or 0, v1_int(args, "limit") or 100
        with self.lock:
            leads = [ld for ld in self.store.leads.values()
                     if (person_id is None or ld["person_id"] == person_id)
                     and (owner_id is None or ld["owner_id"] == owner_id)
                     and (archived == "all" or ld["is_archived"] == (archived == "archived"))]
            return self._v1_page(leads, start, min(limit, 500))

    # -- call logs -------------------------------------------------------------------------------------
    def create_call_log(self) -> tuple[Response, int]:
        body = v1_body()
        for key in ("outcome", "to_phone_number", "start_time", "end_time"):
            if body.get(key) in (None, ""):
                raise bad_request(f"Parameter '{key}' is required")
        if body["outcome"] not in OUTCOMES:
            raise bad_request(f"Parameter 'outcome' must be one of {', '.join(OUTCOMES)}")
        for key in ("start_time", "end_time"):
            if V1_DATETIME(body[key]):
                raise bad_request(f"Parameter '{key}' must be a UTC date-time (YYYY-MM-DD HH:MM:SS)")
        if body["end_time"] < body["start_time"]:
            raise bad_request("Parameter 'end_time' must not be before 'start_time'")
        for key in ("to_phone_number", "from_phone_number", "subject", "note"):
            if body.get(key) is not None and not isinstance(body[key], str):
                raise bad_request(f"Parameter '{key}' must be a string")
        duration = body.get("duration")
        if duration is not None and not re.fullmatch(r"\d+", str(duration)):
            raise bad_request("Parameter 'duration' must be a number of seconds")
        ids = {key: v1_int(body, key) for key in ("person_id", "org_id", "deal_id", "user_id", "activity_id")}
        lead_id = body.get("lead_id") or None
        if ids["deal_id"] is not None and lead_id is not None:
            raise bad_request("A call log can be associated with either a deal or a lead, but not both at "
                              "once")
        with self.lock:
            self.store.require("person", ids["person_id"])
            self.store.require("deal", ids["deal_id"])
            self.store.require("lead", lead_id)
            self.store.require_user(ids["user_id"])
            log = {
                "id": uuid.uuid4().hex, "activity_id": ids["activity_id"], "person_id": ids["person_id"],
                "org_id": ids["org_id"], "deal_id": ids["deal_id"], "lead_id": lead_id,
                "user_id": ids["user_id"] or 1, "subject": body.get("subject"),
                "duration": None if duration is None else str(duration), "outcome": body["outcome"],
                "from_phone_number": body.get("from_phone_number"),
                "to_phone_number": body["to_phone_number"],
                "start_time": body["start_time"], "end_time": body["end_time"], "note": body.get("note"),
                "has_recording": False, "company_id": COMPANY["id"],
            }
            self.store.call_logs[log["id"]] = log
            return ok(log)

    def _call_log(self, log_id: str) -> dict[str, Any]:
        log = self.store.call_logs.get(log_id)
        if log is None:
            raise ApiError(404, "Call log not found", "ERR_NOT_FOUND")
        return log

    def get_call_log(self, log_id: str) -> tuple[Response, int]:
        with self.lock:
            return ok(self._call_log(log_id))

    def delete_call_log(self, log_id: str) -> tuple[Response, int]:
        with self.lock:
            self._call_log(log_id)
            del self.store.call_logs[log_id]
            return ok(None)

    def list_call_logs(self) -> tuple[Response, int]:
        args = request.args.to_dict()
        start, limit = v1_int(args, "start") or 0, v1_int(args, "limit") or 50
        with self.lock:
            return self._v1_page(list(self.store.call_logs.values()), start, min(limit, 50))

    # -- users ------------------------------------------------------------------------------------------
    @staticmethod
    def users_me() -> tuple[Response, int]:
        user = USERS[1]
        return ok({
            "id": user["id"], "name": user["name"], "email": user["email"], "default_currency": "USD",
            "locale": "en_US", "lang": 1, "phone": None, "activated": True, "last_login": v1_time(now_utc()),
            "created": "2024-01-01 00:00:00", "modified": None, "has_created_company": True,
            "access": [{"app": "sales", "admin": True, "permission_set_id": "emulator-admin"}],
            "active_flag": True, "timezone_name": "UTC", "timezone_offset": "+00:00", "role_id": 1,
            "icon_url": None, "is_you": True, "is_deleted": False, "company_id": COMPANY["id"],
            "company_name": COMPANY["name"], "company_domain": COMPANY["domain"], "company_country": "US",
            "company_industry": None, "language": {"language_code": "en", "country_code": "US"},
        })
