"""CRM search semantics: filterGroups (OR of ANDs), operators, free-text query, sorts and offset paging."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from connectors.hubspot.emulator_common import epoch_ms, parse_timestamp, validation
from connectors.hubspot.emulator_schema import ObjectType, PropertyDef

OPERATORS = {"EQ", "NEQ", "LT", "LTE", "GT", "GTE", "BETWEEN", "IN", "NOT_IN", "HAS_PROPERTY",
             "NOT_HAS_PROPERTY", "CONTAINS_TOKEN", "NOT_CONTAINS_TOKEN"}
# Limits since the 2024-08-26 change (developer changelog "expanded filtering capabilities").
MAX_GROUPS, MAX_PER_GROUP, MAX_FILTERS = 5, 10, 25
MAX_LIMIT, MAX_RESULTS = 200, 10_000
_TOKEN = re.compile(r"[^0-9a-z]+")


@dataclass(frozen=True)
class Filter:
    prop: str
    operator: str
    value: str | None
    values: tuple[str, ...]
    high: str | None


@dataclass(frozen=True)
class SearchSpec:
    groups: tuple[tuple[Filter, ...], ...]
    query: str | None
    properties: tuple[str, ...] | None
    sorts: tuple[tuple[str, bool], ...]  # (property, descending)
    limit: int
    after: int


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def parse_search(body: dict[str, Any], defs: dict[str, PropertyDef]) -> SearchSpec:
    raw_groups = body.get("filterGroups") or []
    if body.get("filters"):
        raw_groups = [*raw_groups, {"filters": body["filters"]}]
    if not isinstance(raw_groups, list):
        raise validation("Invalid input JSON: filterGroups must be a list")
    if len(raw_groups) > MAX_GROUPS:
        raise validation(f"Invalid input JSON: too many filterGroups (count: {len(raw_groups)}, "
                         f"max allowed: {MAX_GROUPS})")
    groups: list[tuple[Filter, ...]] = []
    for group in raw_groups:
        raw_filters = group.get("filters") or [] if isinstance(group, dict) else None
        if not isinstance(raw_filters, list):
            raise validation("Invalid input JSON: each filterGroup needs a list of filters")
        if len(raw_filters) > MAX_PER_GROUP:
            raise validation("Invalid input JSON: too many filters per filterGroup "
                             f"(count: {len(raw_filters)}, max allowed: {MAX_PER_GROUP})")
        groups.append(tuple(_parse_filter(f, defs) for f in raw_filters))
    total = sum(len(g) for g in groups)
    if total > MAX_FILTERS:
        raise validation(f"Invalid input JSON: too many filters (count: {total}, max allowed: {MAX_FILTERS})")
    limit = body.get("limit")
    limit = 10 if limit is None else limit
    after = body.get("after")
    try:
        limit, after = int(limit), int(after or 0)
    except (TypeError, ValueError) as exc:
        raise validation("Invalid input JSON: limit and after must be integers") from exc
    if limit < 0 or limit > MAX_LIMIT:
        raise validation(f"Invalid input JSON: limit must be between 0 and {MAX_LIMIT} (got {limit})")
    if after + limit > MAX_RESULTS:
        raise validation(f"Invalid input JSON: paging past {MAX_RESULTS} results is not supported")
    props = body.get("properties")
    properties = tuple(str(p) for p in props) if isinstance(props, list) and props else None
    query = body.get("query")
    return SearchSpec(tuple(groups), str(query) if query else None, properties,
                      tuple(_parse_sort(s) for s in body.get("sorts") or []), limit, after)


def _parse_filter(raw: Any, defs: dict[str, PropertyDef]) -> Filter:
    if not isinstance(raw, dict) or not raw.get("propertyName") or not raw.get("operator"):
        raise validation("Invalid input JSON: a filter needs propertyName and operator")
    operator = str(raw["operator"]).upper()
    if operator not in OPERATORS:
        raise validation(f"Invalid input JSON: unknown operator {raw['operator']!r}; "
                         f"expected one of {sorted(OPERATORS)}")
    prop = str(raw["propertyName"])
    if prop not in defs:
        raise validation(f"There was a problem with the request: property {prop!r} does not exist",
                         context={"propertyName": [prop]})
    values = tuple(str(_text(v)) for v in raw.get("values") or [])
    if operator in ("IN", "NOT_IN") and not values:
        raise validation(f"Invalid input JSON: operator {operator} needs 'values'")
    value = _text(raw.get("value"))
    if value is None and operator not in ("IN", "NOT_IN", "HAS_PROPERTY", "NOT_HAS_PROPERTY"):
        raise validation(f"Invalid input JSON: operator {operator} needs 'value'")
    return Filter(prop, operator, value, values, _text(raw.get("highValue")))


def _parse_sort(raw: Any) -> tuple[str, bool]:
    if isinstance(raw, dict):
        return str(raw.get("propertyName")), str(raw.get("direction", "ASCENDING")).upper() == "DESCENDING"
    text = str(raw)
    return (text[1:], True) if text.startswith("-") else (text, False)


def typed(value: str | None, definition: PropertyDef | None) -> tuple[int, Any]:
    """A sortable/comparable key: numbers and dates compare as numbers, everything else as lower-case text."""
    if value is None:
        return (2, "")
    kind = definition.type if definition else "string"
    if kind == "number":
        try:
            return (0, float(value))
        except ValueError:
            pass
    if kind in ("datetime", "date"):
        moment = parse_timestamp(value)
        if moment is not None:
            return (0, epoch_ms(moment))
    return (1, value.lower())


def _tokens(text: str) -> set[str]:
    return {t for t in _TOKEN.split(text.lower()) if t}


def _matches(f: Filter, props: dict[str, str], defs: dict[str, PropertyDef]) -> bool:
    stored = props.get(f.prop)
    op = f.operator
    if op == "HAS_PROPERTY":
        return stored is not None
    if op == "NOT_HAS_PROPERTY":
        return stored is None
    if op in ("IN", "NOT_IN"):
        # HubSpot's search guide: IN/NOT_IN on text compare against lower-cased stored values, so the
        # caller has to send lower-case values (EQ, by contrast, is case-insensitive).
        found = stored is not None and stored.lower() in f.values
        return found if op == "IN" else not found
    if op in ("CONTAINS_TOKEN", "NOT_CONTAINS_TOKEN"):
        hit = stored is not None and _contains_token(stored, f.value or "")
        return hit if op == "CONTAINS_TOKEN" else not hit
    definition = defs.get(f.prop)
    if op == "NEQ":
        return stored is None or typed(stored, definition) != typed(f.value, definition)
    if stored is None:
        return False
    left, right = typed(stored, definition), typed(f.value, definition)
    if op == "EQ":
        return left == right
    if left[0] != right[0]:
        return False
    compare: dict[str, Callable[[Any, Any], bool]] = {
        "LT": lambda a, b: a < b, "LTE": lambda a, b: a <= b, "GT": lambda a, b: a > b,
        "GTE": lambda a, b: a >= b,
    }
    if op == "BETWEEN":
        high = typed(f.high, definition)
        return high[0] == left[0] and right <= left <= high
    return compare[op](left, right)


def _contains_token(stored: str, wanted: str) -> bool:
    wanted = wanted.lower()
    if "*" in wanted:
        return fnmatchcase(stored.lower(), wanted) or any(fnmatchcase(t, wanted) for t in _tokens(stored))
    return bool(_tokens(wanted)) and _tokens(wanted) <= _tokens(stored)


def _query_hit(query: str, props: dict[str, str], otype: ObjectType) -> bool:
    haystack = " ".join(props.get(p, "") for p in otype.searchable).lower()
    needle = query.lower().strip()
    return needle in haystack or all(part in haystack for part in needle.split())


def run_search(spec: SearchSpec, rows: list[tuple[str, dict[str, str]]], otype: ObjectType,
               defs: dict[str, PropertyDef]) -> tuple[list[str], int, int | None]:
    """Filter and order ``rows`` of (id, properties); returns (page of ids, total, next offset or None)."""
    picked = [(oid, props) for oid, props in rows
              if (not spec.groups or any(all(_matches(f, props, defs) for f in g) for g in spec.groups))
              and (spec.query is None or _query_hit(spec.query, props, otype))]
    picked.sort(key=lambda row: int(row[0]))
    for prop, descending in reversed(spec.sorts):
        definition = defs.get(prop)
        picked.sort(key=lambda row, p=prop, d=definition: typed(row[1].get(p), d),  # type: ignore[misc]
                    reverse=descending)
    page = picked[spec.after:spec.after + spec.limit]
    more = spec.after + spec.limit < len(picked)
    return [oid for oid, _ in page], len(picked), (spec.after + spec.limit) if more else None
