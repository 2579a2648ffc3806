"""The emulated account's data: CRM objects, custom properties and associations, with HubSpot's validation.

Nothing here locks: every public method is called with the emulator lock held, which is also what makes a
batch upsert atomic (20 concurrent upserts of one id make one object).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import phonenumbers

from connectors.hubspot.emulator_common import (
    ApiError,
    iso,
    not_found,
    now,
    parse_timestamp,
    property_errors,
    validation,
)
from connectors.hubspot.emulator_schema import (
    ASSOCIATION_TYPES,
    BUILTIN_PROPERTIES,
    OBJECT_TYPES,
    OWNER_IDS,
    ObjectType,
    PropertyDef,
    inverse_type,
    pipeline,
    resolve_type,
)
from connectors.hubspot.emulator_search import parse_search, run_search

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_CATEGORIES = {"HUBSPOT_DEFINED", "USER_DEFINED", "INTEGRATOR_DEFINED"}


@dataclass
class Version:
    """One write as the search index sees it; search serves the newest version older than the lag."""

    at: float  # time.monotonic() of the write
    properties: dict[str, str]
    archived: bool
    updated: datetime


@dataclass
class CrmObject:
    type: ObjectType
    id: str
    properties: dict[str, str]
    created: datetime
    updated: datetime
    archived: bool = False
    archived_at: datetime | None = None
    versions: list[Version] = field(default_factory=list)

    def to_json(self, wanted: Iterable[str] | None = None, version: Version | None = None) -> dict[str, Any]:
        """The API shape; ``version`` renders what the (lagging) search index holds instead of the latest."""
        props = self.properties if version is None else version.properties
        if wanted is None:
            shown: dict[str, str | None] = dict(sorted(props.items()))
        else:
            keys = set(wanted) | {"hs_object_id", self.type.created_prop, self.type.modified_prop}
            shown = {k: props.get(k) for k in sorted(keys)}
        updated = self.updated if version is None else version.updated
        archived = self.archived if version is None else version.archived
        body: dict[str, Any] = {"id": self.id, "properties": shown, "createdAt": iso(self.created),
                                "updatedAt": iso(updated), "archived": archived}
        if archived and self.archived_at is not None:
            body["archivedAt"] = iso(self.archived_at)
        return body

    def remember(self, lag_s: float) -> None:
        moment = time.monotonic()
        self.versions.append(Version(moment, dict(self.properties), self.archived, self.updated))
        visible = [i for i, v in enumerate(self.versions) if v.at <= moment - lag_s]
        if visible:
            del self.versions[:visible[-1]]

    def indexed(self, lag_s: float) -> Version | None:
        cutoff = time.monotonic() - lag_s
        return next((v for v in reversed(self.versions) if v.at <= cutoff), None)


class Store:
    def __init__(self) -> None:
        self.search_lag_s = 0.0
        self.reset()

    def reset(self) -> None:
        self.objects: dict[str, dict[str, CrmObject]] = {name: {} for name in OBJECT_TYPES}
        self.custom: dict[str, dict[str, PropertyDef]] = {name: {} for name in OBJECT_TYPES}
        # (from type, from id, to type, to id) -> [(category, type id)], stored in both directions
        self.links: dict[tuple[str, str, str, str], list[tuple[str, int]]] = {}
        self._next_id = 1001
        # (type, property) -> value as find_by compares it -> ids of the objects holding it. Built on a
        # property's first lookup, then kept up to date by every write: a scan of all objects per
        # upsert and per unique check made each new lead cost more than the one before.
        self._index: dict[tuple[str, str], dict[str, set[str]]] = {}

    # -- lookups ------------------------------------------------------------------------------------
    @staticmethod
    def otype(raw: str) -> ObjectType:
        found = resolve_type(raw)
        if found is None:
            raise ApiError(400, f"Unable to infer object type from: {raw}", "VALIDATION_ERROR")
        return found

    def defs(self, otype: ObjectType) -> dict[str, PropertyDef]:
        return {**BUILTIN_PROPERTIES[otype.name], **self.custom[otype.name]}

    def wanted(self, otype: ObjectType, requested: Iterable[str] | None) -> list[str] | None:
        """``?properties=`` keeps only names that exist; nothing asked means the type's default set."""
        if requested is None:
            return list(otype.default_props)
        defs = self.defs(otype)
        return [p for p in requested if p in defs]

    def live(self, otype: ObjectType) -> list[CrmObject]:
        return [o for o in self.objects[otype.name].values() if not o.archived]

    def is_unique(self, otype: ObjectType, prop: str) -> bool:
        definition = self.defs(otype).get(prop)
        return (otype.name == "contacts" and prop == "email") or bool(definition and definition.unique)

    def find_by(self, otype: ObjectType, prop: str, value: str) -> CrmObject | None:
        """The oldest live object whose ``prop`` is ``value`` (case-insensitive for email)."""
        ids = self._indexed(otype, prop).get(_index_key(prop, value))
        if not ids:
            return None
        objects = self.objects[otype.name]
        live = (objects[i] for i in ids if not objects[i].archived)
        return min(live, key=lambda o: int(o.id), default=None)

    def _indexed(self, otype: ObjectType, prop: str) -> dict[str, set[str]]:
        index = self._index.get((otype.name, prop))
        if index is None:
            index = {}
            for obj in self.objects[otype.name].values():
                stored = obj.properties.get(prop)
                if stored is not None:
                    index.setdefault(_index_key(prop, stored), set()).add(obj.id)
            self._index[(otype.name, prop)] = index
        return index

    def _indexed_values(self, obj: CrmObject) -> dict[str, str | None]:
        return {prop: obj.properties.get(prop) for kind, prop in self._index if kind == obj.type.name}

    def _reindex(self, obj: CrmObject, before: dict[str, str | None]) -> None:
        for prop, old in before.items():
            new = obj.properties.get(prop)
            if new == old:
                continue
            index = self._index[(obj.type.name, prop)]
            if old is not None:
                key = _index_key(prop, old)
                index[key].discard(obj.id)
                if not index[key]:
                    del index[key]
            if new is not None:
                index.setdefault(_index_key(prop, new), set()).add(obj.id)

    def get(self, otype: ObjectType, key: str, id_property: str | None = None) -> CrmObject:
        if id_property and id_property != "hs_object_id":
            if not self.is_unique(otype, id_property):
                raise _not_unique(id_property)
            found = self.find_by(otype, id_property, key)
            if found is None:
                raise not_found()
            return found
        if not key.isdigit():
            raise ApiError(404, "Object not found.  objectId are usually numeric.", "OBJECT_NOT_FOUND",
                           context={"id": [key]})
        obj = self.objects[otype.name].get(key)
        if obj is None or obj.archived:
            raise not_found()
        return obj

    # -- validation ---------------------------------------------------------------------------------
    def clean(self, otype: ObjectType, raw: Any, existing: CrmObject | None = None) -> dict[str, str | None]:
        """Validate property values; returns the normalised values, with None meaning "clear it"."""
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise validation("Invalid input JSON: properties must be an object")
        defs = self.defs(otype)
        problems: list[tuple[str, Any, str, str]] = []
        out: dict[str, str | None] = {}
        for name, value in raw.items():
            definition = defs.get(name)
            if definition is None:
                problems.append((name, value, f'Property "{name}" does not exist', "PROPERTY_DOESNT_EXIST"))
                continue
            if definition.read_only:
                problems.append((name, value, f'"{name}" is a calculated property; its value cannot be set.',
                                 "READ_ONLY_VALUE"))
                continue
            if value is None:
                continue
            text = ("true" if value else "false") if isinstance(value, bool) else str(value)
            if text == "":
                out[name] = None
                continue
            problem = self._check_value(definition, text)
            if isinstance(problem, tuple):
                problems.append((name, value, *problem))
            else:
                out[name] = problem
        merged = {**(existing.properties if existing else {}), **out}
        for name in otype.required:
            if merged.get(name) is None and not any(p[0] == name for p in problems):
                problems.append((name, None, f'Property "{name}" is required', "REQUIRED_PROPERTY"))
        if otype.name == "deals":
            problems += self._check_deal_stage(merged, out)
        if problems:
            raise property_errors(problems)
        return out

    @staticmethod
    def _check_value(definition: PropertyDef, text: str) -> str | tuple[str, str]:
        """The stored form of ``text``, or (message, code) when HubSpot would refuse it."""
        if definition.name == "email" and not _EMAIL.match(text):
            return f"Email address {text} is invalid", "INVALID_EMAIL"
        if definition.name == "hubspot_owner_id" and text not in OWNER_IDS:
            return f"{text} is not a valid owner id", "INVALID_OWNER_ID"
        if definition.type == "datetime":
            moment = parse_timestamp(text)
            return iso(moment) if moment else (f"{text} was not a valid long.", "INVALID_LONG")
        if definition.type == "number":
            try:
                float(text)
            except ValueError:
                return f"{text} was not a valid number.", "INVALID_DOUBLE"
        if definition.options:
            values = text.split(";") if definition.field_type == "checkbox" else [text]
            bad = [v for v in values if v not in definition.options]
            if bad:
                return (f"{bad[0]} was not one of the allowed options: [{', '.join(definition.options)}]",
                        "INVALID_OPTION")
        return text

    @staticmethod
    def _check_deal_stage(merged: dict[str, Any], written: dict[str, Any]) -> list[tuple[str, Any, str, str]]:
        if "pipeline" not in written and "dealstage" not in written:
            return []
        pipeline_id = merged.get("pipeline") or "default"
        found = pipeline(pipeline_id)
        if found is None:
            return [("pipeline", pipeline_id, f"{pipeline_id} was not one of the allowed options: [default]",
                     "INVALID_OPTION")]
        stage = merged.get("dealstage")
        stages = [s["id"] for s in found["stages"]]
        if stage is not None and stage not in stages:
            return [("dealstage", stage, f"{stage} was not one of the allowed options: [{', '.join(stages)}]",
                     "INVALID_OPTION")]
        return []

    def check_unique(self, otype: ObjectType, values: dict[str, str | None], self_id: str | None) -> None:
        for name, value in values.items():
            if value is None or not self.is_unique(otype, name):
                continue
            other = self.find_by(otype, name, value)
            if other is not None and other.id != self_id:
                if name == "email":
                    message = f"Contact already exists. Existing ID: {other.id}"
                else:
                    message = (f"A {otype.singular} with {name} \"{value}\" already exists; {name} must be "
                               f"unique. Existing ID: {other.id}")
                raise ApiError(409, message, "CONFLICT")

    # -- writes ---------------------------------------------------------------------------------------
    def _apply(self, obj: CrmObject, values: dict[str, str | None], moment: datetime,
               before: dict[str, str | None] | None = None) -> None:
        if before is None:
            before = self._indexed_values(obj)
        for name, value in values.items():
            if value is None:
                obj.properties.pop(name, None)
            else:
                obj.properties[name] = value
        if obj.type.name == "contacts":
            _derive_contact(obj.properties)
        obj.updated = moment
        obj.properties[obj.type.modified_prop] = iso(moment)
        self._reindex(obj, before)
        obj.remember(self.search_lag_s)

    def create(self, otype: ObjectType, values: dict[str, str | None]) -> CrmObject:
        moment = now()
        oid = str(self._next_id)
        self._next_id += 1
        obj = CrmObject(otype, oid, {}, moment, moment)
        before = self._indexed_values(obj)  # all None: nothing of it is indexed yet
        base = {"hs_object_id": oid, otype.created_prop: iso(moment)}
        if otype.name == "contacts":
            base["lifecyclestage"] = "lead"  # what HubSpot sets on API-created contacts
        if otype.name == "deals" and values.get("dealstage"):
            base["pipeline"] = "default"
        obj.properties.update(base)
        self.objects[otype.name][oid] = obj
        self._apply(obj, values, moment, before)
        return obj

    def update(self, obj: CrmObject, values: dict[str, str | None]) -> CrmObject:
        self._apply(obj, values, now())
        return obj

    def archive(self, obj: CrmObject) -> None:
        moment = now()
        obj.archived, obj.archived_at, obj.updated = True, moment, moment
        obj.remember(self.search_lag_s)

    def upsert(self, otype: ObjectType, inputs: Any) -> list[tuple[CrmObject, bool]]:
        """Validate every input first so a bad one changes nothing, then create or update each."""
        if not isinstance(inputs, list) or not inputs:
            raise validation("Invalid input JSON: some of required attributes are not set [inputs]")
        if len(inputs) > 100:
            raise validation(f"Batch size of {len(inputs)} exceeds the limit of 100")
        keys = [(str(i.get("idProperty") or ""), str(i.get("id") or ""))
                for i in inputs if isinstance(i, dict)]
        if len(keys) != len(inputs) or any(not p or not v for p, v in keys):
            raise validation("Invalid input JSON: each input needs idProperty, id and properties")
        seen = [v.lower() if p == "email" else v for p, v in keys]
        dupes = sorted({v for v in seen if seen.count(v) > 1})
        if dupes:
            raise validation(f"Duplicate IDs found in batch input: {dupes}. IDs must be unique")
        plan: list[tuple[CrmObject | None, dict[str, str | None]]] = []
        for item, (prop, value) in zip(inputs, keys, strict=True):
            if not self.is_unique(otype, prop):
                raise _not_unique(prop)
            existing = self.find_by(otype, prop, value)
            values = self.clean(otype, {**(item.get("properties") or {}), prop: value}, existing)
            self.check_unique(otype, values, existing.id if existing else None)
            plan.append((existing, values))
        return [(self.update(existing, values), False) if existing else (self.create(otype, values), True)
                for existing, values in plan]

    # -- associations -------------------------------------------------------------------------------
    def check_links(self, from_type: ObjectType, to_type: ObjectType | None, to_id: str,
                    specs: Any) -> tuple[ObjectType, list[tuple[str, int]]]:
        """Validate link specs from ``from_type`` to object ``to_id``; ``to_type`` None infers it from the
        first HUBSPOT_DEFINED type id (as inline ``associations`` on create require)."""
        if not isinstance(specs, list) or not specs:
            raise validation("Invalid input JSON: each association needs at least one type")
        out: list[tuple[str, int]] = []
        for spec in specs:
            category = str(spec.get("associationCategory", "")) if isinstance(spec, dict) else ""
            try:
                type_id = int(spec.get("associationTypeId") if isinstance(spec, dict) else None)  # type: ignore[arg-type]
            except (TypeError, ValueError) as exc:
                raise validation("Invalid input JSON. Some required fields were not set: "
                                 "[associationCategory, associationTypeId]") from exc
            if category not in _CATEGORIES:
                raise validation(f"Invalid input JSON: associationCategory {category!r} is not one of "
                                 f"{sorted(_CATEGORIES)}")
            pair = ASSOCIATION_TYPES.get(type_id) if category == "HUBSPOT_DEFINED" else None
            if pair is None:
                # Labels (USER_DEFINED/INTEGRATOR_DEFINED) must be defined first, which this emulator does
                # not support, so they are unknown definitions just like a wrong HUBSPOT_DEFINED id.
                raise validation("One or more associations are invalid", context={
                    "associationSpec": [f"{category}={type_id}"],
                    "INVALID_ASSOCIATION_TYPE_ID": [f"{category}={type_id} is not a valid association "
                                                    "definition id"]})
            if pair[0] != from_type.name:
                raise validation(f"invalid from object type {from_type.type_id} for associations to be "
                                 f"created. expected: {OBJECT_TYPES[pair[0]].type_id}")
            to_type = to_type or OBJECT_TYPES[pair[1]]
            if pair[1] != to_type.name:
                raise validation(f"invalid to object type {to_type.type_id} for associations to be created. "
                                 f"expected: {OBJECT_TYPES[pair[1]].type_id}")
            out.append((category, type_id))
        assert to_type is not None
        self.check_exists(to_type, to_id)
        return to_type, out

    def check_exists(self, otype: ObjectType, oid: str) -> None:
        """Association endpoints report a missing object as an invalid association (400), not a 404."""
        if self._missing(otype, oid):
            raise validation("One or more associations are invalid", context={
                "INVALID_OBJECT_IDS": [f"{otype.label}={oid} is not valid"], "objectId": [oid],
                "objectType": [otype.label]})

    def _missing(self, otype: ObjectType, oid: str) -> bool:
        obj = self.objects[otype.name].get(oid)
        return obj is None or obj.archived

    def link(self, from_type: ObjectType, from_id: str, to_type: ObjectType, to_id: str,
             specs: list[tuple[str, int]]) -> None:
        for category, type_id in specs:
            forward = self.links.setdefault((from_type.name, from_id, to_type.name, to_id), [])
            if (category, type_id) not in forward:
                forward.append((category, type_id))
            inverse = inverse_type(type_id)
            if inverse is not None:
                backward = self.links.setdefault((to_type.name, to_id, from_type.name, from_id), [])
                if (category, inverse) not in backward:
                    backward.append((category, inverse))

    def unlink(self, from_type: ObjectType, from_id: str, to_type: ObjectType, to_id: str) -> None:
        self.links.pop((from_type.name, from_id, to_type.name, to_id), None)
        self.links.pop((to_type.name, to_id, from_type.name, from_id), None)

    def linked(self, from_type: ObjectType, from_id: str,
               to_type: ObjectType) -> list[tuple[str, list[tuple[str, int]]]]:
        rows = [(k[3], specs) for k, specs in self.links.items()
                if k[0] == from_type.name and k[1] == from_id and k[2] == to_type.name and specs
                and not self._missing(to_type, k[3])]
        return sorted(rows, key=lambda row: int(row[0]))

    # -- search ---------------------------------------------------------------------------------------
    def search(self, otype: ObjectType, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise validation("Invalid input JSON: the search body must be an object")
        defs = self.defs(otype)
        spec = parse_search(body, defs)
        indexed: dict[str, tuple[CrmObject, Version]] = {}
        for obj in self.objects[otype.name].values():
            version = obj.indexed(self.search_lag_s)
            if version is not None and not version.archived:
                indexed[obj.id] = (obj, version)
        rows = [(oid, version.properties) for oid, (_obj, version) in indexed.items()]
        ids, total, next_after = run_search(spec, rows, otype, defs)
        wanted = self.wanted(otype, spec.properties)
        results = [indexed[oid][0].to_json(wanted, indexed[oid][1]) for oid in ids]
        answer: dict[str, Any] = {"total": total, "results": results}
        if next_after is not None:
            answer["paging"] = {"next": {"after": str(next_after)}}
        return answer


def _index_key(prop: str, value: str) -> str:
    return value.lower() if prop == "email" else value


def _not_unique(prop: str) -> ApiError:
    # The wording is ours; HubSpot's exact text for a non-unique idProperty is not documented.
    return validation(f'Property "{prop}" is not a unique identifier; idProperty must name a property with '
                      "hasUniqueValue=true")


def _derive_contact(props: dict[str, str]) -> None:
    """Calculated contact properties HubSpot keeps in step with the ones they come from."""
    email = props.get("email")
    if email:
        props["hs_email_domain"] = email.rsplit("@", 1)[-1].lower()
    else:
        props.pop("hs_email_domain", None)
    for source, target in (("phone", "hs_searchable_calculated_phone_number"),
                           ("mobilephone", "hs_searchable_calculated_mobile_number")):
        value = props.get(source)
        if value:
            props[target] = _national_digits(value)
        else:
            props.pop(target, None)


def _national_digits(number: str) -> str:
    try:
        return str(phonenumbers.parse(number, "US").national_number)
    except phonenumbers.NumberParseException:
        return re.sub(r"\D", "", number)
