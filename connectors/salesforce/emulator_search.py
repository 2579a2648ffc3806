"""The SOSL subset: ``FIND {term} [IN ALL|NAME|EMAIL|PHONE FIELDS]
[RETURNING T[(f, ... [WHERE cond] [ORDER BY ...] [LIMIT n])], ...] [LIMIT n]``.

``IN PHONE FIELDS`` ignores formatting (digits only, last ten compared). New records become
searchable only after the emulator's ``search_index_delay`` (the real index is asynchronous).
"""

from __future__ import annotations

import re
import time
from typing import Any

from connectors.salesforce.emulator_query import Parser, Select, apply, malformed, render, tokenize
from connectors.salesforce.emulator_schema import ObjectDef
from connectors.salesforce.emulator_store import SfError, Store, error

_SEARCHABLE = ("Lead", "Contact", "Account", "Opportunity", "Task", "Event")
_TEXT_TYPES = ("string", "textarea", "picklist", "url")
_NAME_FIELDS = {"Name", "FirstName", "LastName", "Company", "Subject"}
_FIND = re.compile(r"^\s*FIND\s+\{((?:\\.|[^}\\])*)\}\s*(?:IN\s+(ALL|NAME|EMAIL|PHONE)\s+FIELDS\s*)?"
                   r"(?:RETURNING\s+(.*?))?\s*(?:LIMIT\s+(\d+))?\s*$", re.IGNORECASE | re.DOTALL)


def _digits(value: str) -> str:
    return "".join(c for c in value if c.isdigit())


def _phone_match(term_digits: str, value: Any) -> bool:
    """Phone search ignores formatting: compare the last ten digits (or a shorter term as a suffix)."""
    if not isinstance(value, str) or not term_digits:
        return False
    have = _digits(value)[-10:]
    want = term_digits[-10:]
    return bool(have) and (have == want if len(want) == 10 else have.endswith(want))


def _text_match(term: str, value: Any) -> bool:
    if not isinstance(value, str):
        return False
    words = [w for w in re.split(r"[\s*?]+", term.casefold()) if w]
    return bool(words) and all(w in value.casefold() for w in words)


def _record_matches(obj: ObjectDef, record: dict[str, Any], scope: str, term: str) -> bool:
    digits = _digits(term)
    for f in obj.fields.values():
        value = record.get(f.name)
        if f.type == "phone" and scope in ("ALL", "PHONE") and _phone_match(digits, value):
            return True
        if scope == "PHONE":
            continue
        if f.type == "email" and scope in ("ALL", "EMAIL") and _text_match(term, value):
            return True
        if scope == "NAME" and f.name in _NAME_FIELDS and _text_match(term, value):
            return True
        if scope == "ALL" and f.type in _TEXT_TYPES and _text_match(term, value):
            return True
    return False


def run_sosl(store: Store, text: str, version: str, index_delay: float) -> dict[str, Any]:
    found = _FIND.match(text or "")
    if found is None:
        raise malformed("unexpected token: " + (text.split()[0] if text and text.split() else "<EOF>"))
    term = re.sub(r"\\(.)", r"\1", found.group(1)).strip()
    scope = (found.group(2) or "ALL").upper()
    if len(term.replace("*", "").replace("?", "")) < 2:
        message = f"search term must be longer than one character: {term}"
        raise SfError(400, [error("INVALID_SEARCH", message)])
    specs = _returning(store, found.group(3)) if found.group(3) else [
        Select(store.objects[name], [store.objects[name].fields["Id"]]) for name in _SEARCHABLE]
    cutoff = time.monotonic() - index_delay
    out: list[dict[str, Any]] = []
    for spec in specs:
        # The search index lags behind the database: new records become findable only after a delay.
        visible = [r for r in store.records[spec.obj.name].values()
                   if store.indexed_at.get(r["Id"], 0.0) <= cutoff
                   and _record_matches(spec.obj, r, scope, term)]
        out += [render(spec.obj, r, version, spec.fields) for r in apply(store, spec, visible)]
    if found.group(4):
        out = out[:int(found.group(4))]
    return {"searchRecords": out}


def _returning(store: Store, text: str) -> list[Select]:
    parser = Parser(store, tokenize(text))
    specs: list[Select] = []
    while True:
        name = parser.take()
        if name.kind != "ident":
            raise malformed(f"unexpected token: '{name.text}'")
        obj = parser.object_def(name.text)
        if obj.name not in _SEARCHABLE:
            raise SfError(400, [error("INVALID_TYPE", f"entity type {obj.name} does not support search")])
        spec = Select(obj, [obj.fields["Id"]])
        if parser.peek.text == "(":
            parser.take()
            spec.fields = parser.resolve_fields(obj, parser.field_names(("WHERE", "ORDER", "LIMIT", ")")))
            parser.clauses(spec, end=(")",))
            parser.expect(")")
        specs.append(spec)
        if parser.peek.text != ",":
            break
        parser.take()
    if parser.peek.kind != "end":
        raise malformed(f"unexpected token: '{parser.peek.text}'")
    return specs
