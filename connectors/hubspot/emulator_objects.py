"""CRM object and property routes, under both the v3 and the date-versioned 2026-03 paths."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from flask import Response, request

from connectors.hubspot.emulator_common import ApiError, iso, json_response, not_found, now, validation
from connectors.hubspot.emulator_schema import (
    FIELD_TYPES,
    MAX_UNIQUE_PROPERTIES,
    PROPERTY_TYPES,
    ObjectType,
    PropertyDef,
)
from connectors.hubspot.emulator_store import CrmObject

if TYPE_CHECKING:
    from connectors.hubspot.emulator import HubSpotEmulator

OBJECT_PREFIXES = ("/crm/v3/objects", "/crm/objects/2026-03")
PROPERTY_PREFIXES = ("/crm/v3/properties", "/crm/properties/2026-03")
_PROPERTY_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_Link = tuple[ObjectType, str, list[tuple[str, int]]]


def install_object_routes(emu: HubSpotEmulator) -> None:
    routes = ObjectRoutes(emu)
    add = emu.app.add_url_rule
    for n, prefix in enumerate(OBJECT_PREFIXES):
        add(f"{prefix}/<otype>", f"hs_list_{n}", routes.list_objects, methods=["GET"])
        add(f"{prefix}/<otype>", f"hs_create_{n}", routes.create, methods=["POST"])
        add(f"{prefix}/<otype>/search", f"hs_search_{n}", routes.search, methods=["POST"])
        add(f"{prefix}/<otype>/batch/<op>", f"hs_batch_{n}", routes.batch, methods=["POST"])
        add(f"{prefix}/<otype>/<oid>", f"hs_get_{n}", routes.get, methods=["GET"])
        add(f"{prefix}/<otype>/<oid>", f"hs_update_{n}", routes.update, methods=["PATCH"])
        add(f"{prefix}/<otype>/<oid>", f"hs_archive_{n}", routes.archive, methods=["DELETE"])
    for n, prefix in enumerate(PROPERTY_PREFIXES):
        add(f"{prefix}/<otype>", f"hs_props_{n}", routes.list_properties, methods=["GET"])
        add(f"{prefix}/<otype>", f"hs_prop_create_{n}", routes.create_property, methods=["POST"])
        add(f"{prefix}/<otype>/<name>", f"hs_prop_get_{n}", routes.get_property, methods=["GET"])


def _csv_args(name: str) -> list[str] | None:
    """``?properties=a,b`` and the SDK's ``?properties=a&properties=b`` alike; None when absent."""
    raw = request.args.getlist(name)
    if not raw:
        return None
    return [part.strip() for item in raw for part in item.split(",") if part.strip()]


def _batch_answer(results: list[dict[str, Any]], errors: list[dict[str, Any]], started: str,
                  status: int = 200) -> Response:
    body: dict[str, Any] = {"status": "COMPLETE", "results": results}
    if errors:
        body.update({"numErrors": len(errors), "errors": errors})
    body.update({"startedAt": started, "completedAt": iso(now())})
    return json_response(body, 207 if errors else status)


class ObjectRoutes:
    def __init__(self, emu: HubSpotEmulator) -> None:
        self.emu = emu
        self.store = emu.store

    # -- single objects --------------------------------------------------------------------------
    def create(self, otype: str) -> Response:
        body = self.emu.object_body()
        with self.emu.lock:
            kind = self.emu.object_type(otype, write=True)
            values, links = self._plan_create(kind, body)
            obj = self._commit_create(kind, values, links)
            payload = obj.to_json()
        location = f"{request.host_url.rstrip('/')}{request.path}/{payload['id']}"
        return json_response(payload, 201, {"Location": location})

    def _plan_create(self, kind: ObjectType, body: Any) -> tuple[dict[str, str | None], list[_Link]]:
        if not isinstance(body, dict) or "properties" not in body:
            raise validation("Invalid input JSON: some of required attributes are not set [properties]")
        values = self.store.clean(kind, body["properties"])
        self.store.check_unique(kind, values, None)
        assocs = body.get("associations") or []
        if not isinstance(assocs, list):
            raise validation("Invalid input JSON: associations must be a list")
        links: list[_Link] = []
        for assoc in assocs:
            target = assoc.get("to") if isinstance(assoc, dict) else None
            to_id = str(target.get("id", "")) if isinstance(target, dict) else ""
            to_type, specs = self.store.check_links(kind, None, to_id, assoc.get("types"))
            links.append((to_type, to_id, specs))
        return values, links

    def _commit_create(self, kind: ObjectType, values: dict[str, str | None],
                       links: list[_Link]) -> CrmObject:
        obj = self.store.create(kind, values)
        for to_type, to_id, specs in links:
            self.store.link(kind, obj.id, to_type, to_id, specs)
        return obj

    def get(self, otype: str, oid: str) -> Response:
        with self.emu.lock:
            kind = self.emu.object_type(otype, write=False)
            obj = self.store.get(kind, oid, request.args.get("idProperty"))
            payload = obj.to_json(self.store.wanted(kind, _csv_args("properties")))
            embedded: dict[str, Any] = {}
            for name in _csv_args("associations") or []:
                to_type = self.store.otype(name)
                rows = [{"id": to_id, "type": f"{kind.singular}_to_{to_type.singular}"}
                        for to_id, _specs in self.store.linked(kind, obj.id, to_type)]
                if rows:
                    embedded[to_type.name] = {"results": rows}
            if embedded:
                payload["associations"] = embedded
        return json_response(payload)

    def update(self, otype: str, oid: str) -> Response:
        body = self.emu.object_body()
        with self.emu.lock:
            kind = self.emu.object_type(otype, write=True)
            obj = self.store.get(kind, oid, request.args.get("idProperty"))
            if "properties" not in body:
                raise validation("Invalid input JSON: some of required attributes are not set [properties]")
            values = self.store.clean(kind, body["properties"], obj)
            self.store.check_unique(kind, values, obj.id)
            payload = self.store.update(obj, values).to_json()
        return json_response(payload)

    def archive(self, otype: str, oid: str) -> Response:
        with self.emu.lock:
            kind = self.emu.object_type(otype, write=True)
            obj = self.store.objects[kind.name].get(oid)
            if obj is not None and not obj.archived:  # deleting twice is still a 204 at HubSpot
                self.store.archive(obj)
        return Response(status=204)

    def list_objects(self, otype: str) -> Response:
        try:
            limit = int(request.args.get("limit", 10))
            after = int(request.args.get("after") or 0)
        except ValueError as exc:
            raise validation("limit and after must be integers") from exc
        if not 1 <= limit <= 100:
            raise validation(f"limit must be between 1 and 100 (got {limit})")
        archived = request.args.get("archived", "false").lower() == "true"
        with self.emu.lock:
            kind = self.emu.object_type(otype, write=False)
            pool = sorted((o for o in self.store.objects[kind.name].values()
                           if o.archived == archived and int(o.id) >= after), key=lambda o: int(o.id))
            wanted = self.store.wanted(kind, _csv_args("properties"))
            body: dict[str, Any] = {"results": [o.to_json(wanted) for o in pool[:limit]]}
        if len(pool) > limit:
            nxt = pool[limit].id
            body["paging"] = {"next": {"after": nxt, "link": f"{request.host_url.rstrip('/')}{request.path}"
                                                             f"?after={nxt}"}}
        return json_response(body)

    def search(self, otype: str) -> Response:
        body = self.emu.body()
        with self.emu.lock:
            kind = self.emu.object_type(otype, write=False)
            return json_response(self.store.search(kind, body))

    # -- batches ----------------------------------------------------------------------------------
    def batch(self, otype: str, op: str) -> Response:
        handlers = {"upsert": self._upsert, "create": self._batch_create, "read": self._batch_read,
                    "update": self._batch_update, "archive": self._batch_archive}
        handler = handlers.get(op)
        if handler is None:
            raise not_found()
        body = self.emu.object_body()
        started = iso(now())
        with self.emu.lock:
            kind = self.emu.object_type(otype, write=op != "read")
            return handler(kind, body, started)

    @staticmethod
    def _inputs(body: dict[str, Any]) -> list[Any]:
        inputs = body.get("inputs")
        if not isinstance(inputs, list) or not inputs:
            raise validation("Invalid input JSON: some of required attributes are not set [inputs]")
        if len(inputs) > 100:
            raise validation(f"Batch size of {len(inputs)} exceeds the limit of 100")
        return inputs

    def _upsert(self, kind: ObjectType, body: dict[str, Any], started: str) -> Response:
        done = self.store.upsert(kind, body.get("inputs"))
        return _batch_answer([{**obj.to_json(), "new": new} for obj, new in done], [], started)

    def _batch_create(self, kind: ObjectType, body: dict[str, Any], started: str) -> Response:
        plans = [self._plan_create(kind, item) for item in self._inputs(body)]
        for name in {n for values, _ in plans for n in values if self.store.is_unique(kind, n)}:
            seen = [str(values[name]).lower() for values, _ in plans if values.get(name) is not None]
            if len(seen) != len(set(seen)):
                raise ApiError(409, f"Duplicate values for unique property {name} in batch input", "CONFLICT")
        created = [self._commit_create(kind, values, links) for values, links in plans]
        # HubSpot echoes each input's objectWriteTraceId in its result; results have no promised order.
        traces = [item.get("objectWriteTraceId") if isinstance(item, dict) else None
                  for item in body["inputs"]]
        results = [{**o.to_json(), **({"objectWriteTraceId": str(t)} if t else {})}
                   for o, t in zip(created, traces, strict=True)]
        return _batch_answer(results, [], started, 201)

    def _lookup(self, kind: ObjectType, inputs: list[Any], id_property: str | None
                ) -> tuple[list[tuple[Any, CrmObject]], list[str]]:
        found: list[tuple[Any, CrmObject]] = []
        missing: list[str] = []
        for item in inputs:
            key = str(item.get("id", "")) if isinstance(item, dict) else ""
            prop = (item.get("idProperty") if isinstance(item, dict) else None) or id_property
            try:
                found.append((item, self.store.get(kind, key, prop)))
            except ApiError as exc:
                if exc.status != 404:
                    raise
                missing.append(key)
        return found, missing

    @staticmethod
    def _not_found_error(kind: ObjectType, missing: list[str]) -> list[dict[str, Any]]:
        if not missing:
            return []
        return [{"status": "error", "category": "OBJECT_NOT_FOUND",
                 "message": f"Could not get some {kind.label} objects, they may be deleted or not exist. "
                            "Check that ids are valid.",
                 "context": {"ids": missing}}]

    def _batch_read(self, kind: ObjectType, body: dict[str, Any], started: str) -> Response:
        found, missing = self._lookup(kind, self._inputs(body), body.get("idProperty"))
        props = body.get("properties")
        asked = [str(p) for p in props] if isinstance(props, list) and props else None
        wanted = self.store.wanted(kind, asked)
        errors = self._not_found_error(kind, missing)
        return _batch_answer([o.to_json(wanted) for _, o in found], errors, started)

    def _batch_update(self, kind: ObjectType, body: dict[str, Any], started: str) -> Response:
        found, missing = self._lookup(kind, self._inputs(body), None)
        planned = []
        for item, obj in found:
            values = self.store.clean(kind, item.get("properties"), obj)
            self.store.check_unique(kind, values, obj.id)
            planned.append((obj, values))
        results = [self.store.update(obj, values).to_json() for obj, values in planned]
        return _batch_answer(results, self._not_found_error(kind, missing), started)

    def _batch_archive(self, kind: ObjectType, body: dict[str, Any], started: str) -> Response:
        for item in self._inputs(body):
            obj = self.store.objects[kind.name].get(str(item.get("id", "")) if isinstance(item, dict) else "")
            if obj is not None and not obj.archived:
                self.store.archive(obj)
        return Response(status=204)

    # -- properties -------------------------------------------------------------------------------
    def list_properties(self, otype: str) -> Response:
        with self.emu.lock:
            kind = self.emu.object_type(otype, write=False, schema=True)
            return json_response({"results": [d.to_json() for d in self.store.defs(kind).values()]})

    def get_property(self, otype: str, name: str) -> Response:
        with self.emu.lock:
            kind = self.emu.object_type(otype, write=False, schema=True)
            definition = self.store.defs(kind).get(name)
            if definition is None:
                raise ApiError(404, f"Unable to find property {name} for object type {kind.type_id}",
                               "OBJECT_NOT_FOUND")
            return json_response(definition.to_json())

    def create_property(self, otype: str) -> Response:
        body = self.emu.object_body()
        with self.emu.lock:
            kind = self.emu.object_type(otype, write=True, schema=True)
            definition = self._check_property(kind, body)
            self.store.custom[kind.name][definition.name] = definition
            return json_response(definition.to_json(), 201)

    def _check_property(self, kind: ObjectType, body: dict[str, Any]) -> PropertyDef:
        absent = [k for k in ("name", "label", "type", "fieldType", "groupName") if not body.get(k)]
        if absent:
            raise validation("Invalid input JSON: some of required attributes are not set "
                             f"[{', '.join(absent)}]")
        name = str(body["name"])
        if not _PROPERTY_NAME.match(name):
            raise validation(f"Property name {name!r} is invalid: use lower-case letters, digits and "
                             "underscores, starting with a letter")
        if body["type"] not in PROPERTY_TYPES or body["fieldType"] not in FIELD_TYPES:
            raise validation(f"Invalid type/fieldType {body['type']!r}/{body['fieldType']!r}; types are "
                             f"{sorted(PROPERTY_TYPES)}, fieldTypes {sorted(FIELD_TYPES)}")
        if name in self.store.defs(kind):
            raise ApiError(409, f"Property named '{name}' already exists.", "OBJECT_ALREADY_EXISTS")
        unique = bool(body.get("hasUniqueValue"))
        if unique and sum(d.unique for d in self.store.custom[kind.name].values()) >= MAX_UNIQUE_PROPERTIES:
            raise validation(f"An object type can have at most {MAX_UNIQUE_PROPERTIES} unique properties")
        options = tuple(str(o.get("value")) for o in body.get("options") or [] if isinstance(o, dict))
        keep = ("description", "displayOrder", "formField")
        extra: dict[str, Any] = {k: body[k] for k in keep if k in body}
        return PropertyDef(name, str(body["label"]), str(body["type"]), str(body["fieldType"]),
                           str(body["groupName"]), options, unique=unique, hubspot_defined=False,
                           created_at=iso(now()), extra=extra)
