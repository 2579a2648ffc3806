"""Pipedrive API v2 (``/api/v2``): persons, person search, item search, pipelines and stages.

Deals and activities live in :mod:`emulator_v2_deals`. v2 is strict: unknown body fields, wrong
JSON types and malformed dates are 400 ``ERR_BAD_REQUEST``; query booleans are ``true``/``false``.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask, Response, jsonify, request

from connectors.pipedrive.emulator_store import (
    BOOL,
    DICT,
    INT,
    RFC3339,
    STR,
    ApiError,
    Store,
    bad_request,
    list_of,
    not_found,
    now_utc,
    nullable,
    obj,
    one_of,
    paginate,
    rfc3339,
    validate,
)

V2 = "/api/v2"
CONTACT = obj({"value": STR, "primary": BOOL, "label": STR}, required=("value",))
VISIBLE_TO = one_of(1, 3, 5, 7)
PERSON_FIELDS = {
    "name": STR, "owner_id": INT, "org_id": nullable(INT), "emails": list_of(CONTACT),
    "phones": list_of(CONTACT), "visible_to": VISIBLE_TO, "label_ids": list_of(INT),
    "marketing_status": one_of("no_consent", "unsubscribed", "subscribed", "archived"),
    "custom_fields": DICT, "add_time": RFC3339, "update_time": RFC3339,
}
PERSON_SEARCH_FIELDS = ("custom_fields", "email", "notes", "phone", "name")
ITEM_TYPES = ("deal", "person", "organization", "product", "lead", "file", "mail_attachment", "project")
ITEM_FIELDS = ("address", "code", "custom_fields", "email", "name", "notes", "phone", "title", "description")
_TYPE_FIELDS = {"person": {"custom_fields", "email", "name", "notes", "phone"},
                "deal": {"custom_fields", "notes", "title"}, "lead": {"custom_fields", "notes", "title"}}


# -- shared response and query helpers (v1 uses them too) ----------------------------------------------
def ok(data: Any, additional_data: dict[str, Any] | None = None, status: int = 200) -> tuple[Response, int]:
    body: dict[str, Any] = {"success": True, "data": data}
    if additional_data is not None:
        body["additional_data"] = additional_data
    return jsonify(body), status


def json_body() -> Any:
    if not request.get_data():
        return {}
    body = request.get_json(silent=True)
    if body is None:
        raise bad_request("Validation failed: the request body must be valid JSON (Content-Type: "
                          "application/json)")
    return body


def q_int(name: str, default: int | None = None, low: int = 0, high: int | None = None) -> int | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    if not re.fullmatch(r"-?\d+", raw):
        raise bad_request(f"Validation failed: '{name}' must be an integer")
    value = int(raw)
    if value < low or (high is not None and value > high):
        raise bad_request(f"Validation failed: '{name}' must be between {low} and {high}")
    return value


def q_bool(name: str) -> bool | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    if raw not in ("true", "false"):
        raise bad_request(f"Validation failed: '{name}' must be a boolean (true or false)")
    return raw == "true"


def q_list(name: str, allowed: Iterable[str]) -> list[str] | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    values = [v.strip() for v in raw.split(",")]
    bad = [v for v in values if v not in allowed]
    if bad:
        raise bad_request(f"Validation failed: '{name}' has invalid values {bad}; allowed: {sorted(allowed)}")
    return values


def q_limit(high: int = 500) -> int:
    return q_int("limit", 100, 1, high) or 100


def list_page(items: list[Any], high: int = 500) -> tuple[Response, int]:
    page, next_cursor = paginate(items, q_limit(high), request.args.get("cursor"))
    return ok(page, {"next_cursor": next_cursor})


def score(term: str, value: str, exact: bool) -> float:
    """Search relevance: exact (case-insensitive, as documented) or substring; 0 for no match."""
    if not value:
        return 0.0
    t, v = term.casefold(), value.casefold()
    if exact:
        return 1.0 if t == v else 0.0
    if t not in v:
        return 0.0
    return round(min(1.0, len(t) / len(v) + (0.1 if v.startswith(t) else 0.0)), 3)


def search_term() -> tuple[str, bool]:
    term = request.args.get("term")
    exact = bool(q_bool("exact_match"))
    if term is None:
        raise bad_request("Validation failed: 'term' is required")
    if len(term) < (1 if exact else 2):
        raise bad_request("Validation failed: 'term' must be at least 2 characters long "
                          "(1 with exact_match)")
    return term, exact


def contacts(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = [{"value": c["value"], "primary": bool(c.get("primary", False)), "label": c.get("label", "work")}
           for c in items]
    if out and not any(c["primary"] for c in out):
        out[0]["primary"] = True  # Pipedrive always marks one value primary
    return out


class V2Api:
    """Persons, search, pipelines and stages. Handlers take the shared emulator lock for store access."""

    def __init__(self, store: Store, lock: threading.RLock) -> None:
        self.store = store
        self.lock = lock

    def install(self, app: Flask) -> None:
        rules: list[tuple[str, Callable[..., Any], str]] = [
            ("/persons", self.create_person, "POST"),
            ("/persons", self.list_persons, "GET"),
            ("/persons/search", self.search_persons, "GET"),
            ("/persons/<int:person_id>", self.get_person, "GET"),
            ("/persons/<int:person_id>", self.update_person, "PATCH"),
            ("/persons/<int:person_id>", self.delete_person, "DELETE"),
            ("/itemSearch", self.item_search, "GET"),
            ("/pipelines", self.list_pipelines, "GET"),
            ("/pipelines/<int:pipeline_id>", self.get_pipeline, "GET"),
            ("/stages", self.list_stages, "GET"),
            ("/stages/<int:stage_id>", self.get_stage, "GET"),
        ]
        for path, view, method in rules:
            app.add_url_rule(V2 + path, endpoint=f"pd_v2_{view.__name__}", view_func=view, methods=[method])

    # -- persons ---------------------------------------------------------------------------------
    def create_person(self) -> tuple[Response, int]:
        body = validate(json_body(), PERSON_FIELDS, required=("name",))
        if not body["name"].strip():
            raise bad_request("Validation failed: 'name' must not be empty")
        with self.lock:
            self.store.require_user(body.get("owner_id"))
            now = rfc3339(now_utc())
            pid = self.store.next_id("person")
            person: dict[str, Any] = {
                "id": pid, "name": "", "first_name": None, "last_name": None, "owner_id": 1, "org_id": None,
                "add_time": body.get("add_time", now), "update_time": now, "emails": [], "phones": [],
                "is_deleted": False, "visible_to": 3, "label_ids": [], "picture_id": None,
                "custom_fields": {},
            }
            self._apply_person(person, body)
            self.store.persons[pid] = person
            self.store.mark_searchable(pid)
            return ok(person)

    def _apply_person(self, person: dict[str, Any], body: dict[str, Any]) -> None:
        for key in ("owner_id", "org_id", "visible_to", "label_ids", "marketing_status"):
            if key in body:
                person[key] = body[key]
        if "name" in body:
            person["name"] = body["name"]
            first, _, last = body["name"].strip().partition(" ")
            person["first_name"], person["last_name"] = first, (last.strip() or None)
        for key in ("emails", "phones"):
            if key in body:
                person[key] = contacts(body[key])
        if "custom_fields" in body:
            person["custom_fields"] = {**person["custom_fields"], **body["custom_fields"]}

    def get_person(self, person_id: int) -> tuple[Response, int]:
        with self.lock:
            return ok(self.store.person(person_id))

    def update_person(self, person_id: int) -> tuple[Response, int]:
        body = validate(json_body(), PERSON_FIELDS)
        if "name" in body and not body["name"].strip():
            raise bad_request("Validation failed: 'name' must not be empty")
        with self.lock:
            person = self.store.person(person_id)
            self.store.require_user(body.get("owner_id"))
            self._apply_person(person, body)
            person["update_time"] = rfc3339(now_utc())
            return ok(person)

    def delete_person(self, person_id: int) -> tuple[Response, int]:
        with self.lock:
            person = self.store.person(person_id)
            person["is_deleted"] = True
            person["update_time"] = rfc3339(now_utc())
            return ok({"id": person_id})

    def list_persons(self) -> tuple[Response, int]:
        owner_id, org_id = q_int("owner_id"), q_int("org_id")
        ids = self._ids_param()
        sort_by = request.args.get("sort_by", "id")
        direction = request.args.get("sort_direction", "asc")
        if sort_by not in ("id", "update_time", "add_time") or direction not in ("asc", "desc"):
            raise bad_request("Validation failed: 'sort_by' must be id, update_time or add_time and "
                              "'sort_direction' asc or desc")
        with self.lock:
            items = [p for p in self.store.persons.values() if not p["is_deleted"]
                     and (owner_id is None or p["owner_id"] == owner_id)
                     and (org_id is None or p["org_id"] == org_id)
                     and (ids is None or p["id"] in ids)]
            items.sort(key=lambda p: (p[sort_by], p["id"]), reverse=direction == "desc")
            return list_page(items)

    @staticmethod
    def _ids_param() -> set[int] | None:
        raw = request.args.get("ids")
        if not raw:
            return None
        parts = [p.strip() for p in raw.split(",")]
        if not all(re.fullmatch(r"\d+", p) for p in parts):
            raise bad_request("Validation failed: 'ids' must be a comma-separated list of integers")
        return {int(p) for p in parts}

    # -- search ----------------------------------------------------------------------------------------
    def _person_hit(self, person: dict[str, Any], term: str, exact: bool, fields: set[str]) -> float:
        values: list[str] = []
        if "name" in fields:
            values.append(person["name"])
        if "email" in fields:
            values += [e["value"] for e in person["emails"]]
        if "phone" in fields:
            values += [p["value"] for p in person["phones"]]
        if "custom_fields" in fields:
            values += [str(v) for v in person["custom_fields"].values() if isinstance(v, (str, int, float))]
        return max((score(term, v, exact) for v in values), default=0.0)

    @staticmethod
    def person_item(person: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": person["id"], "type": "person", "name": person["name"],
            "phones": [p["value"] for p in person["phones"]],
            "emails": [e["value"] for e in person["emails"]],
            "visible_to": person["visible_to"], "owner": {"id": person["owner_id"]},
            "organization": None if person["org_id"] is None else {"id": person["org_id"], "name": None,
                                                                   "address": None},
            "custom_fields": [], "notes": [],
        }

    def _search_persons(self, term: str, exact: bool, fields: set[str],
                        org_id: int | None = None) -> list[tuple[float, dict[str, Any]]]:
        hits = []
        for person in self.store.persons.values():
            if person["is_deleted"] or not self.store.is_searchable(person["id"]):
                continue
            if org_id is not None and person["org_id"] != org_id:
                continue
            found = self._person_hit(person, term, exact, fields)
            if found > 0:
                hits.append((found, self.person_item(person)))
        return hits

    def search_persons(self) -> tuple[Response, int]:
        term, exact = search_term()
        fields = set(q_list("fields", PERSON_SEARCH_FIELDS) or PERSON_SEARCH_FIELDS)
        org_id = q_int("organization_id")
        limit = q_limit(500)
        with self.lock:
            hits = self._search_persons(term, exact, fields, org_id)
        hits.sort(key=lambda h: (-h[0], h[1]["id"]))
        page, next_cursor = paginate([{"result_score": s, "item": item} for s, item in hits], limit,
                                     request.args.get("cursor"))
        return ok({"items": page}, {"next_cursor": next_cursor})

    def item_search(self) -> tuple[Response, int]:
        term, exact = search_term()
        types = set(q_list("item_types", ITEM_TYPES) or ITEM_TYPES)
        fields = set(q_list("fields", ITEM_FIELDS) or ITEM_FIELDS)
        limit = q_limit(100)
        hits: list[tuple[float, dict[str, Any]]] = []
        with self.lock:
            if "person" in types:
                hits += self._search_persons(term, exact, fields & _TYPE_FIELDS["person"])
            if "deal" in types and "title" in fields:
                hits += [(s, self.deal_item(d)) for d in self.store.deals.values()
                         if not d["is_deleted"] and (s := score(term, d["title"], exact)) > 0]
            if "lead" in types and "title" in fields:
                hits += [(s, self.lead_item(ld)) for ld in self.store.leads.values()
                         if not ld["is_archived"] and (s := score(term, ld["title"], exact)) > 0]
        hits.sort(key=lambda h: (-h[0], h[1]["type"], str(h[1]["id"])))
        page, next_cursor = paginate([{"result_score": s, "item": item} for s, item in hits], limit,
                                     request.args.get("cursor"))
        return ok({"items": page, "related_items": []}, {"next_cursor": next_cursor})

    def _person_ref(self, person_id: int | None) -> dict[str, Any] | None:
        person = self.store.persons.get(person_id) if person_id is not None else None
        return None if person is None else {"id": person["id"], "name": person["name"]}

    def deal_item(self, deal: dict[str, Any]) -> dict[str, Any]:
        stage = self.store.stages[deal["stage_id"]]
        return {"id": deal["id"], "type": "deal", "title": deal["title"], "value": deal["value"],
                "currency": deal["currency"], "status": deal["status"], "visible_to": deal["visible_to"],
                "owner": {"id": deal["owner_id"]}, "stage": {"id": stage["id"], "name": stage["name"]},
                "person": self._person_ref(deal["person_id"]), "organization": None, "custom_fields": [],
                "notes": []}

    def lead_item(self, lead: dict[str, Any]) -> dict[str, Any]:
        value = lead["value"] or {}
        return {"id": lead["id"], "type": "lead", "title": lead["title"], "owner": {"id": lead["owner_id"]},
                "person": self._person_ref(lead["person_id"]), "organization": None, "phones": [],
                "emails": [], "custom_fields": [], "notes": [], "value": value.get("amount"),
                "currency": value.get("currency"), "visible_to": int(lead["visible_to"]),
                "is_archived": lead["is_archived"]}

    # -- pipelines and stages -----------------------------------------------------------------------
    def list_pipelines(self) -> tuple[Response, int]:
        with self.lock:
            return list_page(sorted(self.store.pipelines.values(), key=lambda p: p["order_nr"]))

    def get_pipeline(self, pipeline_id: int) -> tuple[Response, int]:
        with self.lock:
            pipeline = self.store.pipelines.get(pipeline_id)
            if pipeline is None:
                raise not_found("Pipeline")
            return ok(pipeline)

    def list_stages(self) -> tuple[Response, int]:
        pipeline_id = q_int("pipeline_id")
        with self.lock:
            if pipeline_id is not None and pipeline_id not in self.store.pipelines:
                raise ApiError(404, "Pipeline not found", "ERR_NOT_FOUND")
            stages = [s for s in self.store.stages.values()
                      if pipeline_id is None or s["pipeline_id"] == pipeline_id]
            return list_page(sorted(stages, key=lambda s: (s["pipeline_id"], s["order_nr"])))

    def get_stage(self, stage_id: int) -> tuple[Response, int]:
        with self.lock:
            stage = self.store.stages.get(stage_id)
            if stage is None:
                raise not_found("Stage")
            return ok(stage)
