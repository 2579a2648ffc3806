"""Pipedrive API v2 deals and activities (``/api/v2/deals``, ``/api/v2/activities``).

Deals must land in an existing pipeline/stage; activities link people only through
``participants`` because v2 made ``person_id`` read-only (the exact 400 text is reproduced).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, request

from connectors.pipedrive.emulator_store import (
    ACTIVITY_TYPES,
    BOOL,
    DATE,
    DICT,
    HHMM,
    INT,
    NUMBER,
    STR,
    UUID,
    V1_DATETIME,
    Store,
    bad_request,
    list_of,
    now_utc,
    nullable,
    obj,
    one_of,
    rfc3339,
    validate,
)
from connectors.pipedrive.emulator_v2 import V2, VISIBLE_TO, json_body, list_page, ok, q_bool, q_int

DEAL_FIELDS = {
    "title": STR, "owner_id": INT, "person_id": nullable(INT), "org_id": nullable(INT), "pipeline_id": INT,
    "stage_id": INT, "value": NUMBER, "currency": STR, "is_deleted": BOOL, "is_archived": BOOL,
    "archive_time": V1_DATETIME, "status": one_of("open", "won", "lost"), "probability": nullable(NUMBER),
    "lost_reason": nullable(STR), "visible_to": VISIBLE_TO, "close_time": nullable(STR), "won_time": STR,
    "lost_time": STR, "expected_close_date": DATE, "label_ids": list_of(INT), "custom_fields": DICT,
}
PARTICIPANT = obj({"person_id": INT, "primary": BOOL}, required=("person_id",))
ACTIVITY_FIELDS = {
    "subject": STR, "type": STR, "owner_id": INT, "deal_id": nullable(INT), "lead_id": nullable(UUID),
    "org_id": nullable(INT), "project_id": nullable(INT), "due_date": nullable(DATE),
    "due_time": nullable(HHMM),
    "duration": nullable(HHMM), "busy": BOOL, "done": BOOL, "location": nullable(DICT),
    "participants": list_of(PARTICIPANT), "attendees": list_of(DICT), "public_description": nullable(STR),
    "priority": nullable(INT), "note": nullable(STR),
}
# Pipedrive's own wording, so connector code matching on it is tested against the real text.
PERSON_ID_READ_ONLY = ("'person_id' is a read-only field. Add a primary participant to set 'person_id' "
                       'instead. For example: "participants": [{ "person_id": 1, "primary": true }]')


class V2DealsApi:
    def __init__(self, store: Store, lock: threading.RLock) -> None:
        self.store = store
        self.lock = lock

    def install(self, app: Flask) -> None:
        rules: list[tuple[str, Callable[..., Any], str]] = [
            ("/deals", self.create_deal, "POST"),
            ("/deals", self.list_deals, "GET"),
            ("/deals/<int:deal_id>", self.get_deal, "GET"),
            ("/deals/<int:deal_id>", self.update_deal, "PATCH"),
            ("/deals/<int:deal_id>", self.delete_deal, "DELETE"),
            ("/activities", self.create_activity, "POST"),
            ("/activities", self.list_activities, "GET"),
            ("/activities/<int:activity_id>", self.get_activity, "GET"),
            ("/activities/<int:activity_id>", self.update_activity, "PATCH"),
            ("/activities/<int:activity_id>", self.delete_activity, "DELETE"),
        ]
        for path, view, method in rules:
            app.add_url_rule(V2 + path, endpoint=f"pd_v2_{view.__name__}", view_func=view, methods=[method])

    # -- deals -------------------------------------------------------------------------------------
    def _place(self, pipeline_id: int | None, stage_id: int | None,
               current: tuple[int, int] | None = None) -> tuple[int, int]:
        """Resolve (pipeline, stage) the way Pipedrive does: a stage implies its pipeline."""
        stages = self.store.stages
        if stage_id is not None:
            stage = stages.get(stage_id)
            if stage is None or stage["is_deleted"]:
                raise bad_request(f"Validation failed: stage with id {stage_id} does not exist")
            if pipeline_id is not None and pipeline_id != stage["pipeline_id"]:
                raise bad_request(f"Validation failed: stage {stage_id} does not belong to pipeline "
                                  f"{pipeline_id}")
            return stage["pipeline_id"], stage_id
        if pipeline_id is not None:
            if pipeline_id not in self.store.pipelines:
                raise bad_request(f"Validation failed: pipeline with id {pipeline_id} does not exist")
            if current is not None and current[0] == pipeline_id:
                return current
            first = min((s for s in stages.values() if s["pipeline_id"] == pipeline_id),
                        key=lambda s: s["order_nr"])
            return pipeline_id, first["id"]
        if current is not None:
            return current
        default = min(self.store.pipelines.values(), key=lambda p: p["order_nr"])["id"]
        return self._place(default, None)

    def _apply_deal(self, deal: dict[str, Any], body: dict[str, Any], creating: bool) -> None:
        self.store.require_user(body.get("owner_id"))
        self.store.require("person", body.get("person_id"))
        current = None if creating else (deal["pipeline_id"], deal["stage_id"])
        pipeline_id, stage_id = self._place(body.get("pipeline_id"), body.get("stage_id"), current)
        prev_status = deal["status"]
        status = body.get("status", prev_status)
        if body.get("lost_reason") is not None and status != "lost":
            raise bad_request("Validation failed: 'lost_reason' can only be set if the deal status is lost")
        now = rfc3339(now_utc())
        if not creating and stage_id != deal["stage_id"]:
            deal["stage_change_time"] = now
        for key, value in body.items():
            if key not in ("pipeline_id", "stage_id"):
                deal[key] = value if key != "custom_fields" else {**deal["custom_fields"], **value}
        deal["pipeline_id"], deal["stage_id"] = pipeline_id, stage_id
        if "status" in body and (creating or status != prev_status):
            if status == "won":
                deal["won_time"] = deal["close_time"] = now
            elif status == "lost":
                deal["lost_time"] = deal["close_time"] = now
            else:
                deal["close_time"] = None
        deal["update_time"] = now

    def create_deal(self) -> tuple[Response, int]:
        body = validate(json_body(), DEAL_FIELDS, required=("title",))
        if not body["title"].strip():
            raise bad_request("Validation failed: 'title' must not be empty")
        with self.lock:
            now = rfc3339(now_utc())
            deal: dict[str, Any] = {
                "id": 0, "title": "", "owner_id": 1, "person_id": None, "org_id": None, "pipeline_id": None,
                "stage_id": None, "value": 0, "currency": "USD", "add_time": now, "update_time": now,
                "stage_change_time": None, "is_deleted": False, "is_archived": False, "status": "open",
                "probability": None, "lost_reason": None, "visible_to": 3, "close_time": None,
                "won_time": None, "lost_time": None, "expected_close_date": None, "label_ids": [],
                "origin": "API", "origin_id": None, "channel": None, "channel_id": None,
                "custom_fields": {},
            }
            self._apply_deal(deal, body, creating=True)
            deal["id"] = self.store.next_id("deal")
            self.store.deals[deal["id"]] = deal
            return ok(deal)

    def get_deal(self, deal_id: int) -> tuple[Response, int]:
        with self.lock:
            return ok(self.store.deal(deal_id))

    def update_deal(self, deal_id: int) -> tuple[Response, int]:
        body = validate(json_body(), DEAL_FIELDS)
        with self.lock:
            deal = self.store.deal(deal_id)
            draft = dict(deal)
            self._apply_deal(draft, body, creating=False)  # on a copy: a 400 must leave the deal untouched
            deal.update(draft)
            return ok(deal)

    def delete_deal(self, deal_id: int) -> tuple[Response, int]:
        with self.lock:
            deal = self.store.deal(deal_id)
            deal["is_deleted"] = True
            deal["update_time"] = rfc3339(now_utc())
            return ok({"id": deal_id})

    def list_deals(self) -> tuple[Response, int]:
        filters = {key: q_int(key) for key in ("person_id", "pipeline_id", "stage_id", "owner_id", "org_id")}
        status = request.args.get("status")
        if status not in (None, "open", "won", "lost", "deleted"):
            raise bad_request("Validation failed: 'status' must be open, won, lost or deleted")
        with self.lock:
            deals = [d for d in self.store.deals.values()
                     if (d["is_deleted"] if status == "deleted" else not d["is_deleted"])
                     and (status in (None, "deleted") or d["status"] == status)
                     and all(v is None or d[k] == v for k, v in filters.items())]
            return list_page(deals)

    # -- activities ----------------------------------------------------------------------------------
    def _activity_body(self) -> dict[str, Any]:
        raw = json_body()
        if isinstance(raw, dict) and "person_id" in raw:
            raise bad_request(PERSON_ID_READ_ONLY)
        body = validate(raw, ACTIVITY_FIELDS)
        if "type" in body and body["type"] not in ACTIVITY_TYPES:
            raise bad_request(f"Validation failed: 'type' must be one of the account's activity types "
                              f"{list(ACTIVITY_TYPES)}")
        return body

    def _apply_activity(self, activity: dict[str, Any], body: dict[str, Any]) -> None:
        self.store.require_user(body.get("owner_id"))
        self.store.require("deal", body.get("deal_id"))
        self.store.require("lead", body.get("lead_id"))
        participants = body.get("participants")
        if participants is not None:
            for p in participants:
                self.store.require("person", p["person_id"])
            participants = [{"person_id": p["person_id"], "primary": bool(p.get("primary", False))}
                            for p in participants]
            if participants and not any(p["primary"] for p in participants):
                participants[0]["primary"] = True
        now = rfc3339(now_utc())
        for key, value in body.items():
            activity[key] = value
        if participants is not None:
            activity["participants"] = participants
            primary = next((p["person_id"] for p in participants if p["primary"]), None)
            activity["person_id"] = primary
        if "done" in body:
            activity["marked_as_done_time"] = now if body["done"] else None
        activity["update_time"] = now

    def create_activity(self) -> tuple[Response, int]:
        body = self._activity_body()
        with self.lock:
            now = rfc3339(now_utc())
            kind = body.get("type", "task")
            activity: dict[str, Any] = {
                "id": 0, "subject": kind.capitalize(), "type": kind, "owner_id": 1, "creator_user_id": 1,
                "is_deleted": False, "add_time": now, "update_time": now, "deal_id": None, "lead_id": None,
                "person_id": None, "org_id": None, "project_id": None, "due_date": None, "due_time": None,
                "duration": None, "busy": False, "done": False, "marked_as_done_time": None, "location": None,
                "participants": [], "attendees": [], "conference_meeting_client": None,
                "conference_meeting_url": None, "conference_meeting_id": None, "public_description": None,
                "priority": None, "note": None,
            }
            self._apply_activity(activity, body)
            activity["id"] = self.store.next_id("activity")
            self.store.activities[activity["id"]] = activity
            return ok(activity)

    def get_activity(self, activity_id: int) -> tuple[Response, int]:
        with self.lock:
            return ok(self.store.activity(activity_id))

    def update_activity(self, activity_id: int) -> tuple[Response, int]:
        body = self._activity_body()
        with self.lock:
            activity = self.store.activity(activity_id)
            draft = dict(activity)
            self._apply_activity(draft, body)
            activity.update(draft)
            return ok(activity)

    def delete_activity(self, activity_id: int) -> tuple[Response, int]:
        with self.lock:
            activity = self.store.activity(activity_id)
            activity["is_deleted"] = True
            return ok({"id": activity_id})

    def list_activities(self) -> tuple[Response, int]:
        filters: dict[str, Any] = {key: q_int(key) for key in ("deal_id", "owner_id", "org_id")}
        filters["lead_id"] = request.args.get("lead_id") or None
        filters["done"] = q_bool("done")
        person_id = q_int("person_id")
        with self.lock:
            items = [a for a in self.store.activities.values() if not a["is_deleted"]
                     and all(v is None or a[k] == v for k, v in filters.items())
                     and (person_id is None or any(p["person_id"] == person_id for p in a["participants"]))]
            return list_page(items)
