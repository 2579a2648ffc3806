"""Building HubSpot batch requests for many leads at once, and reading their answers back.

``batch/create`` answers 201 with every record, or 207 with some inputs in ``errors``; results
come in no promised order, so each is matched to its input by textback's marker (the deal's
``textback_key``, or the ``Ref: <marker>`` line in a task, call or note body).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from connectors.hubspot import mappers
from core.crm import ActivityData, DealData, NewRecord, TaskData

BATCH_LIMIT = 100  # inputs per batch request, and values per IN filter


def object_type(record: NewRecord) -> str:
    if record.kind == "deal":
        return "deals"
    if record.kind == "task":
        return "tasks"
    return mappers.ACTIVITY_OBJECT.get(record.kind, "notes")


def chunks(items: list[Any], size: int = BATCH_LIMIT) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def create_input(
    record: NewRecord,
    deal_props: Callable[[NewRecord, DealData], dict[str, str]],
    owner: str | None,
) -> dict[str, Any]:
    """One ``inputs`` item: the same properties and inline associations as the single create."""
    contact_id = record.contact.id if record.contact else None
    deal_id = record.deal.id if record.deal else None
    data = record.data
    if isinstance(data, DealData):
        props = deal_props(record, data)
        links = mappers.associations((contact_id, mappers.DEAL_TO_CONTACT))
    elif isinstance(data, TaskData):
        props = mappers.task_properties(record.marker, data, data.owner or owner)
        links = mappers.associations((contact_id, mappers.TASK_TO_CONTACT), (deal_id, mappers.TASK_TO_DEAL))
    else:
        assert isinstance(data, ActivityData)
        kind = data.kind if data.kind in mappers.ACTIVITY_OBJECT else "note"
        if mappers.ACTIVITY_OBJECT[kind] == "calls":
            props = mappers.call_properties(record.marker, data)
        else:
            props = mappers.note_properties(record.marker, data)
        links = mappers.activity_associations(kind, contact_id, deal_id)
    # objectWriteTraceId is echoed in HubSpot's results and errors; the marker also works without it.
    return {"properties": props, "associations": links, "objectWriteTraceId": record.marker}


def marker_of(otype: str, result: Mapping[str, Any], markers: set[str]) -> str | None:
    """Which input a batch result (or error) belongs to."""
    trace = result.get("objectWriteTraceId")
    if isinstance(trace, str) and trace in markers:
        return trace
    props = result.get("properties") or {}
    if otype == "deals":
        key = props.get(mappers.DEAL_KEY_PROPERTY)
        return key if key in markers else None
    body = str(props.get(mappers.MARKER_PROPERTY[otype]) or "")
    ref = body.rsplit("Ref: ", 1)[-1].strip() if "Ref: " in body else ""
    return ref if ref in markers else None


def lookup_body(phone_property: str, phones: list[str]) -> dict[str, Any]:
    """One contacts search for many callers: an IN filter on textback's unique phone property."""
    return {
        # IN compares against lower-cased stored values; E.164 has no letters, but say so anyway.
        "filterGroups": [
            {
                "filters": [
                    {"propertyName": phone_property, "operator": "IN", "values": [p.lower() for p in phones]}
                ]
            }
        ],
        "properties": ["firstname", "lastname", "email", phone_property],
        "limit": 200,
    }
