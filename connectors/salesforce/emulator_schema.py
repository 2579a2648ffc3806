"""The emulated org's data model: sObjects, their fields, record ids and describe output.

Only the objects and fields the bridge can plausibly touch are modelled. Field names, types, key
prefixes and required-ness follow the Salesforce object reference; anything else is "No such column".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

# Developer Edition's daily allocation, the default for the emulated org.
DEFAULT_DAILY_LIMIT = 15000
LATEST_VERSION = "66.0"
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_SUFFIX = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
_ID_RE = re.compile(r"^[a-zA-Z0-9]{15}(?:[a-zA-Z0-9]{3})?$")
_POD = "8b0"  # the instance/pod characters of every id minted here
_SYSTEM_DEFAULTED = ("Id", "OwnerId", "CreatedDate", "CreatedById", "LastModifiedDate", "LastModifiedById",
                     "SystemModstamp")


@dataclass(frozen=True)
class FieldDef:
    name: str
    # id string textarea phone email url picklist boolean int double currency percent date datetime reference
    type: str
    label: str
    createable: bool = True
    updateable: bool = True
    required: bool = False  # REQUIRED_FIELD_MISSING when absent on create or cleared on update
    default: Any = None
    reference_to: tuple[str, ...] = ()
    picklist: tuple[str, ...] = ()
    restricted: bool = False
    length: int = 255
    custom: bool = False

    @property
    def writable(self) -> bool:
        return self.createable or self.updateable


@dataclass
class ObjectDef:
    name: str
    label: str
    key_prefix: str
    fields: dict[str, FieldDef] = field(default_factory=dict)

    def lookup(self, name: str) -> FieldDef | None:
        """Field names are case-insensitive on the wire (both in JSON bodies and SOQL)."""
        hit = self.fields.get(name)
        if hit is not None:
            return hit
        lowered = name.lower()
        for candidate in self.fields.values():
            if candidate.name.lower() == lowered:
                return candidate
        return None


def _label(name: str) -> str:
    base = name[:-3] if name.endswith("__c") else name
    base = base.replace("_", " ")
    return re.sub(r"(?<=[a-z])(?=[A-Z])", " ", base).replace(" Id", " ID")


def _f(name: str, type_: str, **kw: Any) -> FieldDef:
    return FieldDef(name=name, type=type_, label=kw.pop("label", None) or _label(name), **kw)


def _system(owner: bool = True) -> list[FieldDef]:
    ro: dict[str, Any] = {"createable": False, "updateable": False}
    fields = [_f("Id", "id", label="Record ID", length=18, **ro),
              _f("IsDeleted", "boolean", label="Deleted", default=False, **ro)]
    if owner:
        fields.append(_f("OwnerId", "reference", label="Owner ID", reference_to=("User",), length=18))
    fields += [_f("CreatedDate", "datetime", **ro),
               _f("CreatedById", "reference", reference_to=("User",), **ro),
               _f("LastModifiedDate", "datetime", **ro),
               _f("LastModifiedById", "reference", reference_to=("User",), **ro),
               _f("SystemModstamp", "datetime", label="System Modstamp", **ro)]
    return fields


_LEAD_SOURCES = ("Web", "Phone Inquiry", "Partner Referral", "Purchased List", "Other")
_COMPUTED: dict[str, Any] = {"createable": False, "updateable": False}
_PHONE_E164 = _f("Phone_E164__c", "string", label="Phone (E.164)", length=16, custom=True)
_WHO = _f("WhoId", "reference", label="Name ID", reference_to=("Lead", "Contact"), length=18)
_WHAT = _f("WhatId", "reference", label="Related To ID", reference_to=("Account", "Opportunity"), length=18)


def _object(name: str, label: str, prefix: str, fields: list[FieldDef], owner: bool = True) -> ObjectDef:
    system = _system(owner)
    ordered = system[:1] + fields + system[1:]
    return ObjectDef(name=name, label=label, key_prefix=prefix, fields={f.name: f for f in ordered})


def build_objects() -> dict[str, ObjectDef]:
    """A fresh copy: custom fields can be added per emulator (external id configuration)."""
    objects = [
        _object("Lead", "Lead", "00Q", [
            _f("FirstName", "string", length=40), _f("LastName", "string", length=80, required=True),
            _f("Name", "string", label="Full Name", length=121, **_COMPUTED),
            _f("Title", "string", length=128), _f("Company", "string", length=255, required=True),
            _f("Phone", "phone", length=40), _f("MobilePhone", "phone", label="Mobile Phone", length=40),
            _f("Email", "email", length=80), _f("City", "string", length=40),
            _f("LeadSource", "picklist", label="Lead Source", picklist=_LEAD_SOURCES, length=255),
            _f("Status", "picklist", default="Open - Not Contacted", required=True, length=255,
               picklist=("Open - Not Contacted", "Working - Contacted", "Closed - Converted",
                         "Closed - Not Converted")),
            _f("Description", "textarea", length=32000),
            _f("IsConverted", "boolean", label="Converted", default=False, **_COMPUTED),
            _PHONE_E164,
        ]),
        _object("Contact", "Contact", "003", [
            _f("AccountId", "reference", label="Account ID", reference_to=("Account",), length=18),
            _f("FirstName", "string", length=40), _f("LastName", "string", length=80, required=True),
            _f("Name", "string", label="Full Name", length=121, **_COMPUTED),
            _f("Title", "string", length=128),
            _f("Phone", "phone", label="Business Phone", length=40),
            _f("MobilePhone", "phone", label="Mobile Phone", length=40),
            _f("HomePhone", "phone", label="Home Phone", length=40),
            _f("Email", "email", length=80),
            _f("LeadSource", "picklist", label="Lead Source", picklist=_LEAD_SOURCES),
            _f("Description", "textarea", length=32000), _PHONE_E164,
        ]),
        _object("Account", "Account", "001", [
            _f("Name", "string", label="Account Name", length=255, required=True),
            _f("Type", "picklist", label="Account Type", picklist=("Prospect", "Customer - Direct", "Other")),
            _f("Phone", "phone", label="Account Phone", length=40), _f("Website", "url", length=255),
            _f("Industry", "picklist", picklist=("Construction", "Energy", "Retail", "Other")),
            _f("BillingCity", "string", label="Billing City", length=40),
            _f("Description", "textarea", label="Account Description", length=32000),
        ]),
        _object("Opportunity", "Opportunity", "006", [
            _f("AccountId", "reference", label="Account ID", reference_to=("Account",), length=18),
            _f("Name", "string", label="Name", length=120, required=True),
            _f("StageName", "picklist", label="Stage", required=True, picklist=(
                "Prospecting", "Qualification", "Needs Analysis", "Value Proposition", "Id. Decision Makers",
                "Perception Analysis", "Proposal/Price Quote", "Negotiation/Review", "Closed Won",
                "Closed Lost")),
            _f("CloseDate", "date", label="Close Date", required=True),
            _f("Amount", "currency"), _f("Probability", "percent", label="Probability (%)"),
            _f("Type", "picklist", label="Opportunity Type", picklist=("New Customer", "Existing Customer")),
            _f("LeadSource", "picklist", label="Lead Source", picklist=_LEAD_SOURCES),
            _f("Description", "textarea", length=32000),
            _f("IsClosed", "boolean", label="Closed", default=False, **_COMPUTED),
            _f("IsWon", "boolean", label="Won", default=False, **_COMPUTED),
        ]),
        _object("OpportunityContactRole", "Opportunity Contact Role", "00K", [
            _f("OpportunityId", "reference", label="Opportunity ID", reference_to=("Opportunity",),
               required=True, updateable=False),
            _f("ContactId", "reference", label="Contact ID", reference_to=("Contact",), required=True),
            _f("Role", "picklist", picklist=("Business User", "Decision Maker", "Economic Buyer", "Other")),
            _f("IsPrimary", "boolean", label="Primary", default=False),
        ], owner=False),
        _object("Task", "Task", "00T", [
            _WHO, _WHAT, _f("Subject", "string", length=255),
            _f("ActivityDate", "date", label="Due Date Only"),
            _f("Status", "picklist", required=True, default="Not Started", picklist=(
                "Not Started", "In Progress", "Completed", "Waiting on someone else", "Deferred")),
            _f("Priority", "picklist", required=True, default="Normal", picklist=("High", "Normal", "Low")),
            _f("Description", "textarea", length=32000),
            _f("Type", "picklist", picklist=("Call", "Email", "Meeting", "Other")),
            _f("TaskSubtype", "picklist", label="Task Subtype", updateable=False, restricted=True,
               picklist=("Task", "Email", "ListEmail", "Cadence", "Call", "LinkedIn")),
            _f("CallType", "picklist", label="Call Type", restricted=True,
               picklist=("Internal", "Inbound", "Outbound")),
            _f("CallDurationInSeconds", "int", label="Call Duration"),
            _f("CallDisposition", "string", label="Call Result"),
            _f("CallObject", "string", label="Call Object Identifier"),
            _f("IsClosed", "boolean", label="Closed", default=False, **_COMPUTED),
            _f("AccountId", "reference", label="Account ID", reference_to=("Account",), **_COMPUTED),
        ]),
        _object("Event", "Event", "00U", [
            _WHO, _WHAT, _f("Subject", "string", length=255), _f("Location", "string", length=255),
            _f("StartDateTime", "datetime", label="Start Date Time"),
            _f("EndDateTime", "datetime", label="End Date Time"),
            _f("ActivityDateTime", "datetime", label="Due Date Time"),
            _f("ActivityDate", "date", label="Due Date Only"),
            _f("DurationInMinutes", "int", label="Duration"),
            _f("IsAllDayEvent", "boolean", label="All-Day Event", default=False),
            _f("ShowAs", "picklist", label="Show Time As", picklist=("Busy", "OutOfOffice", "Free")),
            _f("Type", "picklist", picklist=("Call", "Email", "Meeting", "Other")),
            _f("Description", "textarea", length=32000),
            _f("AccountId", "reference", label="Account ID", reference_to=("Account",), **_COMPUTED),
        ]),
    ]
    return {o.name: o for o in objects}


def add_text_field(obj: ObjectDef, name: str) -> FieldDef:
    """An external id configured on a field the object lacks gets a Text(255) custom field, as in Setup."""
    existing = obj.lookup(name)
    if existing is not None:
        return existing
    new = _f(name, "string", length=255, custom=name.endswith("__c"))
    obj.fields[new.name] = new
    return new


# -- ids ------------------------------------------------------------------------------------------
def _checksum(id15: str) -> str:
    out = ""
    for chunk in range(3):
        bits = 0
        for pos, char in enumerate(id15[chunk * 5:chunk * 5 + 5]):
            if "A" <= char <= "Z":
                bits |= 1 << pos
        out += _SUFFIX[bits]
    return out


def make_id(prefix: str, serial: int) -> str:
    """An 18-character id: key prefix, pod, base-62 serial and the case-safe checksum suffix."""
    digits = ""
    while serial:
        serial, rest = divmod(serial, 62)
        digits = _BASE62[rest] + digits
    id15 = prefix + _POD + digits.rjust(9, "0")
    return id15 + _checksum(id15)


def normalize_id(value: str) -> str | None:
    """The 18-character form of a 15- or 18-character id, or None if it is not id-shaped."""
    if not isinstance(value, str) or not _ID_RE.match(value):
        return None
    return value[:15] + _checksum(value[:15])


# -- describe -------------------------------------------------------------------------------------
def describe_field(f: FieldDef, external_id: bool, unique: bool) -> dict[str, Any]:
    soap = {"id": "tns:ID", "reference": "tns:ID", "boolean": "xsd:boolean", "int": "xsd:int",
            "double": "xsd:double", "currency": "xsd:double", "percent": "xsd:double", "date": "xsd:date",
            "datetime": "xsd:dateTime"}.get(f.type, "xsd:string")
    return {
        "name": f.name, "label": f.label, "type": f.type, "soapType": soap,
        "length": f.length if soap == "xsd:string" or f.type in ("id", "reference") else 0,
        "custom": f.custom, "createable": f.createable, "updateable": f.updateable,
        "nillable": not f.required and f.type != "boolean" and f.type != "id",
        "defaultedOnCreate": f.default is not None or f.name in _SYSTEM_DEFAULTED,
        "externalId": external_id, "unique": unique, "idLookup": f.type == "id" or external_id,
        "filterable": f.type != "textarea", "sortable": f.type != "textarea",
        "calculated": False, "caseSensitive": False,
        "referenceTo": list(f.reference_to), "relationshipName": (
            f.name[:-2] if f.type == "reference" and f.name.endswith("Id") and f.name != "Id" else None),
        "picklistValues": [{"active": True, "defaultValue": v == f.default, "label": v, "validFor": None,
                            "value": v} for v in f.picklist],
        "restrictedPicklist": f.restricted,
        "defaultValue": f.default if f.type == "boolean" else None,
    }


def object_urls(name: str, version: str) -> dict[str, str]:
    base = f"/services/data/v{version}/sobjects/{name}"
    return {"sobject": base, "describe": f"{base}/describe", "rowTemplate": f"{base}/{{ID}}"}


def describe_summary(obj: ObjectDef, version: str) -> dict[str, Any]:
    return {"name": obj.name, "label": obj.label, "labelPlural": obj.label + "s", "keyPrefix": obj.key_prefix,
            "custom": False, "createable": True, "updateable": True, "deletable": True, "queryable": True,
            "searchable": obj.name != "OpportunityContactRole", "retrieveable": True,
            "urls": object_urls(obj.name, version)}
