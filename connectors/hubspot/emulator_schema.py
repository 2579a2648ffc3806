"""What the emulated HubSpot account holds before anyone writes: object types, their built-in properties,
the default deal pipeline, two owners and the HUBSPOT_DEFINED association types."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from connectors.hubspot.emulator_common import iso, parse_timestamp

_EPOCH = iso(parse_timestamp("2024-01-01T00:00:00Z"))  # type: ignore[arg-type]


@dataclass(frozen=True)
class ObjectType:
    name: str  # plural, as in /crm/v3/objects/{name}
    singular: str
    type_id: str  # "0-1" and friends: HubSpot accepts these in paths and reports them in v4 answers
    label: str  # upper-case name used in error contexts ("CONTACT=42 is not valid")
    created_prop: str
    modified_prop: str
    default_props: tuple[str, ...]  # what GET and search return when no ?properties= is given
    searchable: tuple[str, ...]  # what the free-text ``query`` of a search looks at
    scope: str  # crm.objects.{scope}.read|write and crm.schemas.{scope}.read|write
    required: tuple[str, ...] = ()


_ENGAGEMENT = ("hs_createdate", "hs_lastmodifieddate", "hs_object_id")
OBJECT_TYPES: dict[str, ObjectType] = {t.name: t for t in (
    ObjectType("contacts", "contact", "0-1", "CONTACT", "createdate", "lastmodifieddate",
               ("createdate", "email", "firstname", "hs_object_id", "lastmodifieddate", "lastname"),
               ("firstname", "lastname", "email", "phone", "mobilephone", "company",
                "hs_searchable_calculated_phone_number", "hs_searchable_calculated_mobile_number"),
               "contacts"),
    ObjectType("deals", "deal", "0-3", "DEAL", "createdate", "hs_lastmodifieddate",
               ("amount", "closedate", "createdate", "dealname", "dealstage", "hs_lastmodifieddate",
                "hs_object_id", "pipeline"),
               ("dealname", "description"), "deals"),
    ObjectType("tasks", "task", "0-27", "TASK", "hs_createdate", "hs_lastmodifieddate", _ENGAGEMENT,
               ("hs_task_subject", "hs_task_body"), "contacts", required=("hs_timestamp",)),
    ObjectType("notes", "note", "0-46", "NOTE", "hs_createdate", "hs_lastmodifieddate", _ENGAGEMENT,
               ("hs_note_body",), "contacts", required=("hs_timestamp",)),
    ObjectType("calls", "call", "0-48", "CALL", "hs_createdate", "hs_lastmodifieddate", _ENGAGEMENT,
               ("hs_call_title", "hs_call_body", "hs_call_from_number", "hs_call_to_number"), "contacts",
               required=("hs_timestamp",)),
)}
_ALIASES = {**{t.singular: t.name for t in OBJECT_TYPES.values()},
            **{t.type_id: t.name for t in OBJECT_TYPES.values()}, **{t: t for t in OBJECT_TYPES}}


def resolve_type(raw: str) -> ObjectType | None:
    name = _ALIASES.get(raw.lower())
    return OBJECT_TYPES[name] if name else None


@dataclass(frozen=True)
class PropertyDef:
    name: str
    label: str
    type: str  # string | number | date | datetime | enumeration | bool | phone_number
    field_type: str
    group: str
    options: tuple[str, ...] = ()
    unique: bool = False
    read_only: bool = False
    hubspot_defined: bool = True
    created_at: str = _EPOCH
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "label": self.label, "type": self.type, "fieldType": self.field_type,
            "description": self.extra.get("description", ""), "groupName": self.group,
            "options": [{"label": o.replace("_", " ").title(), "value": o, "displayOrder": i, "hidden": False}
                        for i, o in enumerate(self.options)],
            "displayOrder": self.extra.get("displayOrder", -1), "calculated": self.read_only,
            "externalOptions": False, "hasUniqueValue": self.unique, "hidden": False,
            **({"hubspotDefined": True} if self.hubspot_defined else {}),
            "modificationMetadata": {"archivable": not self.hubspot_defined,
                                     "readOnlyDefinition": self.hubspot_defined,
                                     "readOnlyValue": self.read_only},
            "formField": bool(self.extra.get("formField", False)),
            "createdAt": self.created_at, "updatedAt": self.created_at, "archived": False,
        }


LIFECYCLE = ("subscriber", "lead", "marketingqualifiedlead", "salesqualifiedlead", "opportunity", "customer",
             "evangelist", "other")
LEAD_STATUS = ("NEW", "OPEN", "IN_PROGRESS", "OPEN_DEAL", "UNQUALIFIED", "ATTEMPTED_TO_CONTACT", "CONNECTED",
               "BAD_TIMING")
TASK_STATUS = ("NOT_STARTED", "IN_PROGRESS", "WAITING", "COMPLETED", "DEFERRED")
TASK_PRIORITY = ("NONE", "LOW", "MEDIUM", "HIGH")
TASK_TYPE = ("EMAIL", "CALL", "TODO", "LINKED_IN", "LINKED_IN_CONNECT", "LINKED_IN_MESSAGE")
CALL_DIRECTION = ("INBOUND", "OUTBOUND")
CALL_STATUS = ("BUSY", "CALLING_CRM_USER", "CANCELED", "COMPLETED", "CONNECTING", "FAILED", "IN_PROGRESS",
               "MISSED", "NO_ANSWER", "QUEUED", "RINGING")

_S, _N, _DT, _E = "string", "number", "datetime", "enumeration"
# (name, type, fieldType, options); a "!" prefix marks a calculated (read-only) property.
_SPECS: dict[str, tuple[tuple[str, str, str, tuple[str, ...]], ...]] = {
    "contacts": (
        ("email", _S, "text", ()), ("firstname", _S, "text", ()), ("lastname", _S, "text", ()),
        ("phone", _S, "phonenumber", ()), ("mobilephone", _S, "phonenumber", ()), ("company", _S, "text", ()),
        ("website", _S, "text", ()), ("city", _S, "text", ()), ("state", _S, "text", ()),
        ("zip", _S, "text", ()),
        ("address", _S, "text", ()), ("jobtitle", _S, "text", ()), ("message", _S, "textarea", ()),
        ("hs_lead_status", _E, "radio", LEAD_STATUS), ("lifecyclestage", _E, "radio", LIFECYCLE),
        ("hubspot_owner_id", _E, "select", ()), ("leadsource", _S, "text", ()),
        ("hs_additional_emails", _S, "textarea", ()), ("createdate", _DT, "date", ()),
        ("!lastmodifieddate", _DT, "date", ()), ("!hs_object_id", _N, "number", ()),
        ("!hs_email_domain", _S, "text", ()), ("!hs_searchable_calculated_phone_number", _S, "text", ()),
        ("!hs_searchable_calculated_mobile_number", _S, "text", ()),
    ),
    "deals": (
        ("dealname", _S, "text", ()), ("pipeline", _E, "select", ()), ("dealstage", _E, "radio", ()),
        ("amount", _N, "number", ()), ("closedate", _DT, "date", ()), ("hubspot_owner_id", _E, "select", ()),
        ("dealtype", _E, "radio", ("newbusiness", "existingbusiness")), ("description", _S, "textarea", ()),
        ("createdate", _DT, "date", ()), ("!hs_lastmodifieddate", _DT, "date", ()),
        ("!hs_object_id", _N, "number", ()),
    ),
    "tasks": (
        ("hs_timestamp", _DT, "date", ()), ("hs_task_subject", _S, "text", ()),
        ("hs_task_body", _S, "html", ()), ("hs_task_status", _E, "select", TASK_STATUS),
        ("hs_task_priority", _E, "select", TASK_PRIORITY), ("hs_task_type", _E, "select", TASK_TYPE),
        ("hs_task_reminders", _S, "text", ()), ("hubspot_owner_id", _E, "select", ()),
    ),
    "notes": (
        ("hs_timestamp", _DT, "date", ()), ("hs_note_body", _S, "html", ()),
        ("hubspot_owner_id", _E, "select", ()),
    ),
    "calls": (
        ("hs_timestamp", _DT, "date", ()), ("hs_call_title", _S, "text", ()),
        ("hs_call_body", _S, "html", ()),
        ("hs_call_direction", _E, "select", CALL_DIRECTION), ("hs_call_status", _E, "select", CALL_STATUS),
        ("hs_call_duration", _N, "number", ()), ("hs_call_from_number", _S, "text", ()),
        ("hs_call_to_number", _S, "text", ()), ("hs_call_recording_url", _S, "text", ()),
        ("hs_call_disposition", _S, "select", ()), ("hubspot_owner_id", _E, "select", ()),
    ),
}
_ENGAGEMENT_META = (("!hs_createdate", _DT, "date", ()), ("!hs_lastmodifieddate", _DT, "date", ()),
                    ("!hs_object_id", _N, "number", ()))


def _builtins(type_name: str) -> dict[str, PropertyDef]:
    specs = _SPECS[type_name] + (_ENGAGEMENT_META if type_name in ("tasks", "notes", "calls") else ())
    group = {"contacts": "contactinformation", "deals": "dealinformation"}.get(type_name, type_name[:-1])
    out: dict[str, PropertyDef] = {}
    for raw, type_, field_type, options in specs:
        name = raw.lstrip("!")
        label = name.removeprefix("hs_").replace("_", " ").capitalize()
        out[name] = PropertyDef(name, label, type_, field_type, group, options, read_only=raw.startswith("!"))
    return out


BUILTIN_PROPERTIES: dict[str, dict[str, PropertyDef]] = {name: _builtins(name) for name in OBJECT_TYPES}
PROPERTY_TYPES = {"string", "number", "date", "datetime", "enumeration", "bool", "phone_number"}
FIELD_TYPES = {"text", "textarea", "number", "select", "radio", "checkbox", "booleancheckbox", "date", "file",
               "html", "calculation_equation", "phonenumber"}
MAX_UNIQUE_PROPERTIES = 10  # per object type, HubSpot's documented cap


def _stage(stage_id: str, label: str, order: int, probability: str, closed: bool) -> dict[str, Any]:
    return {"id": stage_id, "label": label, "displayOrder": order,
            "metadata": {"isClosed": "true" if closed else "false", "probability": probability},
            "createdAt": _EPOCH, "updatedAt": _EPOCH, "archived": False, "writePermissions": "CRUD_ALL"}


DEAL_PIPELINES: list[dict[str, Any]] = [{
    "id": "default", "label": "Sales Pipeline", "displayOrder": 0,
    "stages": [
        _stage("appointmentscheduled", "Appointment Scheduled", 0, "0.2", False),
        _stage("qualifiedtobuy", "Qualified To Buy", 1, "0.4", False),
        _stage("presentationscheduled", "Presentation Scheduled", 2, "0.6", False),
        _stage("decisionmakerboughtin", "Decision Maker Bought-In", 3, "0.8", False),
        _stage("contractsent", "Contract Sent", 4, "0.9", False),
        _stage("closedwon", "Closed Won", 5, "1.0", True),
        _stage("closedlost", "Closed Lost", 6, "0.0", True),
    ],
    "createdAt": _EPOCH, "updatedAt": _EPOCH, "archived": False,
}]


def pipeline(pipeline_id: str) -> dict[str, Any] | None:
    return next((p for p in DEAL_PIPELINES if p["id"] == pipeline_id), None)


OWNERS: list[dict[str, Any]] = [
    {"id": "71000001", "email": "dana.owner@example.com", "type": "PERSON", "firstName": "Dana",
     "lastName": "Owner", "userId": 9100001, "userIdIncludingInactive": 9100001, "createdAt": _EPOCH,
     "updatedAt": _EPOCH, "archived": False, "teams": []},
    {"id": "71000002", "email": "sam.tech@example.com", "type": "PERSON", "firstName": "Sam",
     "lastName": "Tech", "userId": 9100002, "userIdIncludingInactive": 9100002, "createdAt": _EPOCH,
     "updatedAt": _EPOCH, "archived": False, "teams": []},
]
OWNER_IDS = {o["id"] for o in OWNERS}

# HUBSPOT_DEFINED association type id -> (from type, to type), from the SDK's AssociationType enum.
ASSOCIATION_TYPES: dict[int, tuple[str, str]] = {
    3: ("deals", "contacts"), 4: ("contacts", "deals"),
    193: ("contacts", "calls"), 194: ("calls", "contacts"),
    201: ("contacts", "notes"), 202: ("notes", "contacts"),
    203: ("contacts", "tasks"), 204: ("tasks", "contacts"),
    205: ("deals", "calls"), 206: ("calls", "deals"),
    213: ("deals", "notes"), 214: ("notes", "deals"),
    215: ("deals", "tasks"), 216: ("tasks", "deals"),
}
DEFAULT_ASSOCIATION: dict[tuple[str, str], int] = {pair: tid for tid, pair in ASSOCIATION_TYPES.items()}


def inverse_type(type_id: int) -> int | None:
    pair = ASSOCIATION_TYPES.get(type_id)
    return DEFAULT_ASSOCIATION.get((pair[1], pair[0])) if pair else None


ALL_SCOPES = sorted({f"crm.{kind}.{s}.{rw}" for kind in ("objects", "schemas") for s in ("contacts", "deals")
                    for rw in ("read", "write")} | {"crm.objects.owners.read", "oauth"})
