"""Records of the emulated org and the DML rules Salesforce enforces on them.

Every method expects the caller to hold the emulator lock; errors are raised as :class:`SfError`
carrying the exact status and JSON body Salesforce would send.
"""

from __future__ import annotations

import copy
import re
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from connectors.salesforce.emulator_schema import (
    FieldDef,
    ObjectDef,
    add_text_field,
    build_objects,
    make_id,
    normalize_id,
)

ORG_ID = "00D8b0000021TxBEAU"
USER_ID = "0058b00000IntgrAAA"
_EXTERNAL_ID_TYPES = ("string", "email", "int", "double")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_CASCADE = (("Task", "WhoId"), ("Task", "WhatId"), ("Event", "WhoId"), ("Event", "WhatId"),
            ("OpportunityContactRole", "OpportunityId"), ("OpportunityContactRole", "ContactId"),
            ("Contact", "AccountId"), ("Opportunity", "AccountId"))


class SfError(Exception):
    """An API failure: ``status`` and the JSON ``body`` (usually a list of error objects)."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"{status}: {body}")
        self.status = status
        self.body = body


def error(code: str, message: str, fields: list[str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"message": message, "errorCode": code}
    if fields is not None:
        out["fields"] = fields
    return out


def bad_request(code: str, message: str, fields: list[str] | None = None) -> SfError:
    return SfError(400, [error(code, message, fields if fields is not None else [])])


def not_found(message: str = "The requested resource does not exist") -> SfError:
    return SfError(404, [error("NOT_FOUND", message)])


def sf_datetime(moment: datetime) -> str:
    """Salesforce's wire format for datetimes: UTC with milliseconds and a +0000 offset."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}+0000"


def parse_datetime(value: str) -> datetime | None:
    if "T" not in value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def record_url(version: str, type_name: str, record_id: str) -> str:
    return f"/services/data/v{version}/sobjects/{type_name}/{record_id}"


def _parse_error(f: FieldDef, value: Any, kind: str) -> SfError:
    token = "VALUE_STRING" if isinstance(value, str) else "VALUE_NUMBER_INT" if isinstance(value, int) else (
        "VALUE_TRUE" if value is True else "VALUE_FALSE" if value is False else "START_OBJECT")
    return bad_request("JSON_PARSER_ERROR", f"Cannot deserialize instance of {kind} from {token} value "
                       f"{value} or request may be missing a required field", None)


class Store:
    """All records, keyed by object then id, in creation order."""

    def __init__(self, external_ids: Mapping[str, Any] | None) -> None:
        self.objects: dict[str, ObjectDef] = build_objects()
        self.records: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in self.objects}
        self.indexed_at: dict[str, float] = {}  # record id -> monotonic time it became searchable
        self.external_ids: dict[str, tuple[str, bool]] = {}  # object -> (field, unique)
        self._serial = 0
        self.configure_external_ids(external_ids or {})

    # -- configuration ----------------------------------------------------------------------------
    def configure_external_ids(self, spec: Mapping[str, Any]) -> None:
        """``{"Lead": "F__c" | {"field": "F__c", "unique": false} | None}``; merged into the current set."""
        staged = dict(self.external_ids)
        for type_name, value in spec.items():
            obj = self.objects.get(type_name)
            if obj is None:
                raise ValueError(f"unknown sObject {type_name!r}")
            if value is None:
                staged.pop(obj.name, None)
                continue
            if isinstance(value, str):
                name, unique = value, True
            elif isinstance(value, Mapping) and isinstance(value.get("field"), str):
                name, unique = value["field"], bool(value.get("unique", True))
            else:
                raise ValueError(f"external_id_fields[{type_name!r}] must be a field name, "
                                 "{'field': ..., 'unique': bool} or null")
            existing = obj.lookup(name)
            if existing is not None and existing.type not in _EXTERNAL_ID_TYPES:
                raise ValueError(f"{obj.name}.{existing.name} is a {existing.type} field; only text, email "
                                 "and number fields can be external ids")
            if name.lower() == "id":
                raise ValueError("Id is always an id lookup; pick a custom field")
            staged[obj.name] = (name, unique)
        for type_name, (name, unique) in staged.items():
            staged[type_name] = (add_text_field(self.objects[type_name], name).name, unique)
        self.external_ids = staged

    def external_id_config(self) -> dict[str, dict[str, Any]]:
        return {t: {"field": f, "unique": u} for t, (f, u) in self.external_ids.items()}

    # -- lookups ----------------------------------------------------------------------------------
    def object_def(self, type_name: str) -> ObjectDef:
        obj = self.objects.get(type_name) or next(
            (o for o in self.objects.values() if o.name.lower() == type_name.lower()), None)
        if obj is None:
            raise not_found()
        return obj

    def type_of(self, record_id: str) -> str | None:
        for obj in self.objects.values():
            if record_id.startswith(obj.key_prefix) and record_id in self.records[obj.name]:
                return obj.name
        return None

    def get(self, obj: ObjectDef, raw_id: str) -> dict[str, Any]:
        record_id = normalize_id(raw_id)
        if record_id is None:
            # What the REST API really says for a non-id in the record position.
            raise not_found(f"Provided external ID field does not exist or is not accessible: {raw_id}")
        record = self.records[obj.name].get(record_id)
        if record is None:
            raise not_found()
        return record

    def external_field(self, obj: ObjectDef, name: str) -> FieldDef:
        configured = self.external_ids.get(obj.name)
        field = obj.lookup(name)
        if configured is None or field is None or field.name != configured[0]:
            raise not_found(f"Provided external ID field does not exist or is not accessible: {name}")
        return field

    def find(self, obj: ObjectDef, field: FieldDef, value: Any) -> list[dict[str, Any]]:
        key = _match_key(value)
        return [r for r in self.records[obj.name].values() if _match_key(r.get(field.name)) == key]

    # -- DML --------------------------------------------------------------------------------------
    def create(self, obj: ObjectDef, body: Mapping[str, Any]) -> dict[str, Any]:
        values = self._validate(obj, body, existing=None)
        self._serial += 1
        now = sf_datetime(datetime.now(UTC))
        record: dict[str, Any] = {}
        for f in obj.fields.values():
            record[f.name] = values.get(f.name, f.default)
        record.update(Id=make_id(obj.key_prefix, self._serial), IsDeleted=False, CreatedDate=now,
                      LastModifiedDate=now, SystemModstamp=now, CreatedById=USER_ID, LastModifiedById=USER_ID)
        if "OwnerId" in obj.fields and not record.get("OwnerId"):
            record["OwnerId"] = USER_ID
        self._derive(obj, record, set(values))
        self._check_unique(obj, record)
        self.records[obj.name][record["Id"]] = record
        self.indexed_at[record["Id"]] = time.monotonic()
        return record

    def update(self, obj: ObjectDef, record: dict[str, Any], body: Mapping[str, Any]) -> None:
        values = self._validate(obj, body, existing=record)
        merged = {**record, **values}
        self._derive(obj, merged, set(values))
        self._check_unique(obj, merged)
        merged["LastModifiedDate"] = merged["SystemModstamp"] = sf_datetime(datetime.now(UTC))
        record.update(merged)

    def delete(self, obj: ObjectDef, record_id: str) -> None:
        """Deleting a parent takes its activities, contacts, opportunities and roles along, as in the org."""
        self.records[obj.name].pop(record_id, None)
        self.indexed_at.pop(record_id, None)
        for child, link in _CASCADE:
            for rec in list(self.records[child].values()):
                if rec.get(link) == record_id and rec["Id"] in self.records[child]:
                    self.delete(self.objects[child], rec["Id"])

    def snapshot(self) -> tuple[dict[str, dict[str, dict[str, Any]]], dict[str, float]]:
        return copy.deepcopy(self.records), dict(self.indexed_at)

    def restore(self, snap: tuple[dict[str, dict[str, dict[str, Any]]], dict[str, float]]) -> None:
        self.records, self.indexed_at = snap

    def clear(self) -> None:
        for records in self.records.values():
            records.clear()
        self.indexed_at.clear()

    # -- validation -------------------------------------------------------------------------------
    def _validate(self, obj: ObjectDef, body: Mapping[str, Any], existing: dict[str, Any] | None
                  ) -> dict[str, Any]:
        values: dict[str, Any] = {}
        readonly: list[str] = []
        for key, raw in body.items():
            if key == "attributes":
                continue
            field = obj.lookup(key)
            if field is None:
                raise bad_request("INVALID_FIELD", f"No such column '{key}' on sobject of type {obj.name}")
            if field.name == "Id":
                if existing is None:
                    raise bad_request("INVALID_FIELD_FOR_INSERT_UPDATE",
                                      "Record ID: cannot specify Id in an insert call")
                if normalize_id(str(raw)) != existing["Id"]:
                    raise bad_request("INVALID_FIELD_FOR_INSERT_UPDATE",
                                      f"Record ID: id value does not match the record being updated: {raw}")
                continue
            if not (field.createable if existing is None else field.updateable):
                readonly.append(field.name)
                continue
            values[field.name] = self._coerce(field, raw)
        if readonly:
            raise bad_request("INVALID_FIELD_FOR_INSERT_UPDATE",
                              f"Unable to create/update fields: {', '.join(readonly)}. Please check the "
                              "security settings of this field and verify that it is read/write for your "
                              "profile or permission set.", readonly)
        merged = {**(existing or {}), **values}
        missing = [f.name for f in obj.fields.values() if f.required and (
            values[f.name] in (None, "") if f.name in values else existing is None and f.default is None)]
        if missing:
            raise bad_request("REQUIRED_FIELD_MISSING",
                              f"Required fields are missing: [{', '.join(missing)}]", missing)
        for name, value in values.items():
            field = obj.fields[name]
            if field.type == "reference" and value is not None:
                self._check_reference(field, value)
        if obj.name in ("Task", "Event"):
            _check_activity(obj, merged, self.type_of)
        return values

    def _check_reference(self, field: FieldDef, value: str) -> None:
        if field.reference_to == ("User",):
            if not value.startswith("005"):
                raise bad_request("FIELD_INTEGRITY_EXCEPTION",
                                  f"{field.label}: id value of incorrect type: {value}", [field.name])
            return
        prefixes = {self.objects[t].key_prefix: t for t in field.reference_to}
        target = prefixes.get(value[:3])
        if target is None:
            raise bad_request("FIELD_INTEGRITY_EXCEPTION",
                              f"{field.label}: id value of incorrect type: {value}", [field.name])
        if value not in self.records[target]:
            raise bad_request("INVALID_CROSS_REFERENCE_KEY", f"{field.label}: invalid cross reference id",
                              [field.name])

    @staticmethod
    def _coerce(field: FieldDef, raw: Any) -> Any:
        if raw is None:
            return False if field.type == "boolean" else None
        kind = field.type
        if kind == "boolean":
            if not isinstance(raw, bool):
                raise _parse_error(field, raw, "boolean")
            return raw
        if kind == "int":
            if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
                raise _parse_error(field, raw, "int")
            try:
                number = float(raw)
            except ValueError:
                raise _parse_error(field, raw, "int") from None
            if number != int(number):
                raise _parse_error(field, raw, "int")
            return int(number)
        if kind in ("double", "currency", "percent"):
            if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
                raise _parse_error(field, raw, "double")
            try:
                return float(raw)
            except ValueError:
                raise _parse_error(field, raw, "double") from None
        if kind == "date":
            if not isinstance(raw, str) or not _DATE.match(raw):
                raise _parse_error(field, raw, "date")
            try:
                datetime.strptime(raw, "%Y-%m-%d")
            except ValueError:
                raise _parse_error(field, raw, "date") from None
            return raw
        if kind == "datetime":
            moment = parse_datetime(raw) if isinstance(raw, str) else None
            if moment is None:
                raise _parse_error(field, raw, "datetime")
            return sf_datetime(moment)
        if kind == "reference":
            normalized = normalize_id(raw) if isinstance(raw, str) else None
            if normalized is None:
                raise bad_request("MALFORMED_ID", f"{field.label}: id value of incorrect type: {raw}",
                                  [field.name])
            return normalized
        if isinstance(raw, (dict, list)):
            raise _parse_error(field, raw, "string")
        text = str(raw).lower() if isinstance(raw, bool) else str(raw)
        if len(text) > field.length:
            raise bad_request("STRING_TOO_LONG", f"{field.label}: data value too large: {text[:40]} "
                              f"(max length={field.length})", [field.name])
        if kind == "email" and text and not _EMAIL.match(text):
            raise bad_request("INVALID_EMAIL_ADDRESS", f"{field.label}: invalid email address: {text}",
                              [field.name])
        if kind == "picklist" and field.restricted and text and text not in field.picklist:
            raise bad_request("INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                              f"{field.label}: bad value for restricted picklist field: {text}", [field.name])
        return text

    def _check_unique(self, obj: ObjectDef, record: dict[str, Any]) -> None:
        configured = self.external_ids.get(obj.name)
        if configured is None or not configured[1] or record.get(configured[0]) in (None, ""):
            return
        field = obj.fields[configured[0]]
        for other in self.find(obj, field, record[field.name]):
            if other["Id"] != record.get("Id"):
                raise bad_request("DUPLICATE_VALUE", f"duplicate value found: {field.name} duplicates "
                                  f"value on record with id: {other['Id']}", [])

    def _derive(self, obj: ObjectDef, record: dict[str, Any], changed: set[str]) -> None:
        """Formula-like fields Salesforce computes on save."""
        if obj.name in ("Lead", "Contact"):
            record["Name"] = " ".join(p for p in (record.get("FirstName"), record.get("LastName")) if p)
        elif obj.name == "Opportunity":
            record["IsClosed"] = record.get("StageName") in ("Closed Won", "Closed Lost")
            record["IsWon"] = record.get("StageName") == "Closed Won"
        elif obj.name in ("Task", "Event"):
            if obj.name == "Task":
                record["IsClosed"] = record.get("Status") == "Completed"
            else:
                _derive_event_times(record, changed)
            record["AccountId"] = self._activity_account(record)

    def _activity_account(self, record: dict[str, Any]) -> str | None:
        what, who = record.get("WhatId"), record.get("WhoId")
        if what and what in self.records["Account"]:
            return str(what)
        if what and what in self.records["Opportunity"]:
            return self.records["Opportunity"][what].get("AccountId")
        if who and who in self.records["Contact"]:
            return self.records["Contact"][who].get("AccountId")
        return None


def _match_key(value: Any) -> Any:
    """External ids match case-insensitively unless configured otherwise (the org default)."""
    return value.casefold() if isinstance(value, str) else value


def _check_activity(obj: ObjectDef, merged: dict[str, Any], type_of: Callable[[str], str | None]) -> None:
    who, what = merged.get("WhoId"), merged.get("WhatId")
    if who and what and type_of(who) == "Lead":
        # Leads live outside the account model, so an activity on one can't also be "related to" anything.
        raise bad_request("FIELD_INTEGRITY_EXCEPTION", "Related To ID: a task or event whose Name ID is a "
                          "lead can't be related to another record", ["WhatId"])
    if obj.name != "Event":
        return
    if merged.get("IsAllDayEvent"):
        if not (merged.get("ActivityDate") or merged.get("StartDateTime") or merged.get("ActivityDateTime")):
            raise bad_request("REQUIRED_FIELD_MISSING", "Required fields are missing: [ActivityDate]",
                              ["ActivityDate"])
        return
    missing = []
    if not (merged.get("ActivityDateTime") or merged.get("StartDateTime")):
        missing.append("ActivityDateTime")
    if merged.get("DurationInMinutes") is None and not merged.get("EndDateTime"):
        missing.append("DurationInMinutes")
    if missing:
        raise bad_request("REQUIRED_FIELD_MISSING", f"Required fields are missing: [{', '.join(missing)}]",
                          missing)
    start = parse_datetime(merged["StartDateTime"]) if merged.get("StartDateTime") else None
    end = parse_datetime(merged["EndDateTime"]) if merged.get("EndDateTime") else None
    if start is not None and end is not None and end < start:
        raise bad_request("FIELD_INTEGRITY_EXCEPTION", "End Date Time: End time can't be before start time",
                          ["EndDateTime"])


def _derive_event_times(record: dict[str, Any], changed: set[str]) -> None:
    """Keep StartDateTime/EndDateTime and ActivityDateTime/DurationInMinutes consistent, like the org does."""
    use_activity = "ActivityDateTime" in changed and "StartDateTime" not in changed
    start = record.get("ActivityDateTime" if use_activity else "StartDateTime")
    start = start or record.get("ActivityDateTime")
    begin = parse_datetime(start) if start else None
    if begin is None:
        return
    finish = parse_datetime(record["EndDateTime"]) if record.get("EndDateTime") else None
    by_duration = "DurationInMinutes" in changed and "EndDateTime" not in changed
    if finish is not None and not by_duration:
        record["DurationInMinutes"] = int((finish - begin).total_seconds() // 60)
    else:
        minutes = int(record.get("DurationInMinutes") or 0)
        record["EndDateTime"] = sf_datetime(begin + timedelta(minutes=minutes))
    record["StartDateTime"] = record["ActivityDateTime"] = sf_datetime(begin)
    record["ActivityDate"] = record["StartDateTime"][:10]
