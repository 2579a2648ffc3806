"""The sObject resources under ``/services/data/vNN.N/sobjects``: describe, CRUD and external ids.

Callers hold the emulator lock and turn a raised :class:`SfError` into the HTTP answer.
"""

from __future__ import annotations

from typing import Any

from connectors.salesforce.emulator_query import render
from connectors.salesforce.emulator_schema import (
    FieldDef,
    ObjectDef,
    describe_field,
    describe_summary,
    object_urls,
)
from connectors.salesforce.emulator_store import (
    SfError,
    Store,
    bad_request,
    error,
    not_found,
    record_url,
)

MISSING: Any = object()  # the request had no body at all (as opposed to JSON null)
Result = tuple[int, Any, dict[str, str]]


def allow(method: str, *allowed: str) -> None:
    if method not in allowed:
        raise SfError(405, [error("METHOD_NOT_ALLOWED",
                                  f"HTTP Method '{method}' not allowed. Allowed are {','.join(allowed)}")])


def object_body(body: Any) -> dict[str, Any]:
    if body is MISSING:
        raise bad_request("JSON_PARSER_ERROR",
                          "The HTTP entity body is required, but this request has no entity body.", None)
    if not isinstance(body, dict):
        raise bad_request("JSON_PARSER_ERROR",
                          "Cannot deserialize instance of SObject from START_ARRAY value", None)
    return body



def sobjects(store: Store, method: str, version: str, parts: list[str], query: dict[str, str], body: Any
              ) -> Result:
    if not parts:
        allow(method, "GET")
        return 200, {"encoding": "UTF-8", "maxBatchSize": 200, "sobjects": [
            describe_summary(o, version) for o in store.objects.values()]}, {}
    obj = store.object_def(parts[0])
    if len(parts) == 1:
        allow(method, "GET", "POST")
        if method == "GET":
            return 200, {"objectDescribe": describe_summary(obj, version), "recentItems": []}, {}
        return _create(store, obj, version, object_body(body))
    if len(parts) == 2 and parts[1] == "describe":
        allow(method, "GET")
        return 200, _describe(store, obj, version), {}
    if len(parts) == 2 and method == "POST" and parts[1].lower() == "id":
        return _create(store, obj, version, object_body(body))  # POST .../sobjects/T/Id (API 37+)
    if len(parts) == 2 or (len(parts) == 3 and parts[1].lower() == "id"):
        allow(method, "GET", "PATCH", "DELETE")
        record = store.get(obj, parts[-1])
        return _record_op(store, obj, record, method, version, query, body)
    if len(parts) == 3:
        allow(method, "GET", "PATCH", "DELETE")
        return _by_external_id(store, obj, parts[1], parts[2], method, version, query, body)
    raise not_found()

def _create(store: Store, obj: ObjectDef, version: str, body: dict[str, Any]) -> Result:
    record = store.create(obj, body)
    return (201, {"id": record["Id"], "success": True, "errors": []},
            {"Location": record_url(version, obj.name, record["Id"])})

def _record_op(store: Store, obj: ObjectDef, record: dict[str, Any], method: str, version: str,
               query: dict[str, str], body: Any) -> Result:
    if method == "GET":
        fields: list[FieldDef] | None = None
        if query.get("fields"):
            fields = []
            for name in (n.strip() for n in query["fields"].split(",") if n.strip()):
                found = obj.lookup(name)
                if found is None:
                    raise bad_request("INVALID_FIELD",
                                      f"No such column '{name}' on sobject of type {obj.name}")
                fields.append(found)
        return 200, render(obj, record, version, fields), {}
    if method == "PATCH":
        store.update(obj, record, object_body(body))
        return 204, None, {}
    store.delete(obj, record["Id"])
    return 204, None, {}

def _by_external_id(store: Store, obj: ObjectDef, field_name: str, value: str, method: str, version: str,
                    query: dict[str, str], body: Any) -> Result:
    ext = store.external_field(obj, field_name)
    typed: Any = value
    if ext.type in ("int", "double"):
        try:
            typed = float(value) if ext.type == "double" else int(value)
        except ValueError:
            raise not_found() from None
    matches = store.find(obj, ext, typed)
    if len(matches) > 1:
        return 300, [record_url(version, obj.name, r["Id"]) for r in matches], {}
    if method == "GET":
        if not matches:
            raise not_found()
        return _record_op(store, obj, matches[0], "GET", version, query, body)
    if method == "DELETE":
        if not matches:
            raise not_found()
        store.delete(obj, matches[0]["Id"])
        return 204, None, {}
    payload = dict(object_body(body))
    for key in list(payload):
        if key.lower() == "id":
            raise bad_request("INVALID_FIELD_FOR_INSERT_UPDATE",
                              "Record ID: cannot specify Id in an upsert by external id", [])
        if key.lower() == ext.name.lower():
            if str(payload[key]).casefold() != str(typed).casefold():
                raise bad_request("INVALID_FIELD", f"{ext.name}: the value in the body doesn't match the "
                                  "external id in the URL", [ext.name])
            del payload[key]
    reports_created = float(version) >= 46.0
    if matches:
        store.update(obj, matches[0], payload)
        if not reports_created:
            return 204, None, {}
        return 200, {"id": matches[0]["Id"], "success": True, "errors": [], "created": False}, {}
    if query.get("updateOnly", "").lower() == "true":
        raise not_found()
    record = store.create(obj, {**payload, ext.name: typed})
    result: dict[str, Any] = {"id": record["Id"], "success": True, "errors": []}
    if reports_created:
        result["created"] = True
    return 201, result, {"Location": record_url(version, obj.name, record["Id"])}

def _describe(store: Store, obj: ObjectDef, version: str) -> dict[str, Any]:
    ext = store.external_ids.get(obj.name)
    fields = []
    for f in obj.fields.values():
        is_ext = bool(ext and ext[0] == f.name)
        fields.append(describe_field(f, external_id=is_ext, unique=bool(is_ext and ext and ext[1])))
    return {**describe_summary(obj, version), "fields": fields, "childRelationships": [],
            "recordTypeInfos": [], "urls": object_urls(obj.name, version)}

