"""The SOQL subset the bridge needs, evaluated against the emulator's store (SOSL reuses the parser).

``SELECT f, ... | COUNT() FROM T [WHERE cond] [ORDER BY f [ASC|DESC] [NULLS FIRST|LAST], ...]
[LIMIT n] [OFFSET n]`` where ``cond`` combines ``f op value``, ``f [NOT] IN (...)`` and ``f LIKE 'x%'``
with AND, OR, NOT and parentheses.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from connectors.salesforce.emulator_schema import FieldDef, ObjectDef, normalize_id
from connectors.salesforce.emulator_store import (
    SfError,
    Store,
    error,
    parse_datetime,
    record_url,
)

_TOKEN = re.compile(r"""\s*(?:
    (?P<str>'(?:\\.|[^'\\])*')
   |(?P<dt>\d{4}-\d{2}-\d{2}(?:T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2}))?)
   |(?P<num>-?\d+(?:\.\d+)?)
   |(?P<op><=|>=|!=|<>|=|<|>)
   |(?P<punct>[(),])
   |(?P<ident>[A-Za-z_][A-Za-z0-9_.]*)
   |(?P<bad>\S)
)""", re.VERBOSE)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f"}


def malformed(message: str) -> SfError:
    return SfError(400, [error("MALFORMED_QUERY", message)])


@dataclass
class Token:
    kind: str  # str dt num op punct ident end
    text: str
    value: Any = None

    def is_kw(self, *words: str) -> bool:
        return self.kind == "ident" and self.text.upper() in words


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            break
        pos = match.end()
        kind = match.lastgroup
        if kind is None:
            break
        raw = match.group(kind)
        if kind == "bad":
            raise malformed(f"unexpected token: '{raw}'")
        value: Any = raw
        if kind == "str":
            value = re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), raw[1:-1])
        elif kind == "num":
            value = float(raw) if "." in raw else int(raw)
        tokens.append(Token(kind, raw, value))
    tokens.append(Token("end", "<EOF>"))
    return tokens


@dataclass
class Select:
    obj: ObjectDef
    fields: list[FieldDef] | None  # None: COUNT()
    where: Any = None
    order: list[tuple[FieldDef, bool, bool]] = field(default_factory=list)  # field, descending, nulls_last
    limit: int | None = None
    offset: int = 0


class Parser:
    def __init__(self, store: Store, tokens: list[Token]) -> None:
        self.store = store
        self.tokens = tokens
        self.pos = 0

    # -- cursor -------------------------------------------------------------------------------
    @property
    def peek(self) -> Token:
        return self.tokens[self.pos]

    def take(self) -> Token:
        token = self.tokens[self.pos]
        self.pos = min(self.pos + 1, len(self.tokens) - 1)
        return token

    def expect_kw(self, *words: str) -> Token:
        token = self.take()
        if not token.is_kw(*words):
            raise malformed(f"unexpected token: '{token.text}'")
        return token

    def expect(self, text: str) -> None:
        token = self.take()
        if token.text != text:
            raise malformed(f"unexpected token: '{token.text}'")

    # -- grammar ------------------------------------------------------------------------------
    def object_def(self, name: str) -> ObjectDef:
        obj = self.store.objects.get(name) or next(
            (o for o in self.store.objects.values() if o.name.lower() == name.lower()), None)
        if obj is None:
            raise SfError(400, [error("INVALID_TYPE", f"sObject type '{name}' is not supported. If you are "
                                      "attempting to use a custom object, be sure to append the '__c' after "
                                      "the entity name.")])
        return obj

    def field_of(self, obj: ObjectDef, name: str) -> FieldDef:
        found = obj.lookup(name)
        if found is None:
            raise SfError(400, [error("INVALID_FIELD", f"No such column '{name}' on entity '{obj.name}'. "
                                      "If you are attempting to use a custom field, be sure to append the "
                                      "'__c' after the custom field name.")])
        return found

    def field_names(self, stop: tuple[str, ...]) -> list[str]:
        names = []
        while True:
            token = self.take()
            if token.kind != "ident" or token.is_kw("FROM", "WHERE"):
                raise malformed(f"unexpected token: '{token.text}'")
            names.append(token.text)
            if self.peek.text != ",":
                break
            self.take()
        if not (self.peek.is_kw(*stop) or self.peek.text in stop or self.peek.kind == "end"):
            raise malformed(f"unexpected token: '{self.peek.text}'")
        return names

    def resolve_fields(self, obj: ObjectDef, names: list[str]) -> list[FieldDef]:
        resolved: list[FieldDef] = []
        for name in names:
            found = self.field_of(obj, name)
            if found in resolved:
                raise malformed(f"duplicate field selected: {found.name}")
            resolved.append(found)
        return resolved

    def select(self) -> Select:
        self.expect_kw("SELECT")
        names: list[str] | None
        if self.peek.is_kw("COUNT") and self.tokens[self.pos + 1].text == "(":
            self.take(), self.take()
            self.expect(")")
            names = None
        else:
            names = self.field_names(("FROM",))
        self.expect_kw("FROM")
        obj_token = self.take()
        if obj_token.kind != "ident":
            raise malformed(f"unexpected token: '{obj_token.text}'")
        obj = self.object_def(obj_token.text)
        query = Select(obj, None if names is None else self.resolve_fields(obj, names))
        self.clauses(query, end=("end",))
        return query

    def clauses(self, query: Select, end: tuple[str, ...]) -> None:
        if self.peek.is_kw("WHERE"):
            self.take()
            query.where = self.or_expr(query.obj)
        if self.peek.is_kw("ORDER"):
            self.take()
            self.expect_kw("BY")
            while True:
                target = self.field_of(query.obj, self.take().text)
                descending = False
                if self.peek.is_kw("ASC", "DESC"):
                    descending = self.take().text.upper() == "DESC"
                nulls_last = descending
                if self.peek.is_kw("NULLS"):
                    self.take()
                    nulls_last = self.expect_kw("FIRST", "LAST").text.upper() == "LAST"
                query.order.append((target, descending, nulls_last))
                if self.peek.text != ",":
                    break
                self.take()
        for word in ("LIMIT", "OFFSET"):
            if self.peek.is_kw(word):
                self.take()
                number = self.take()
                if number.kind != "num" or not isinstance(number.value, int) or number.value < 0:
                    raise malformed(f"unexpected token: '{number.text}'")
                if word == "LIMIT":
                    query.limit = number.value
                else:
                    query.offset = number.value
        if self.peek.kind not in end and self.peek.text not in end:
            raise malformed(f"unexpected token: '{self.peek.text}'")

    def or_expr(self, obj: ObjectDef) -> Any:
        parts = [self.and_expr(obj)]
        while self.peek.is_kw("OR"):
            self.take()
            parts.append(self.and_expr(obj))
        return parts[0] if len(parts) == 1 else ("or", parts)

    def and_expr(self, obj: ObjectDef) -> Any:
        parts = [self.unary(obj)]
        while self.peek.is_kw("AND"):
            self.take()
            parts.append(self.unary(obj))
        return parts[0] if len(parts) == 1 else ("and", parts)

    def unary(self, obj: ObjectDef) -> Any:
        if self.peek.is_kw("NOT"):
            self.take()
            return ("not", self.unary(obj))
        if self.peek.text == "(":
            self.take()
            inner = self.or_expr(obj)
            self.expect(")")
            return inner
        token = self.take()
        if token.kind != "ident":
            raise malformed(f"unexpected token: '{token.text}'")
        target = self.field_of(obj, token.text)
        if self.peek.is_kw("IN", "NOT"):
            negate = self.take().is_kw("NOT")
            if negate:
                self.expect_kw("IN")
            self.expect("(")
            values = [self.literal(target)]
            while self.peek.text == ",":
                self.take()
                values.append(self.literal(target))
            self.expect(")")
            return ("in", target, values, negate)
        if self.peek.is_kw("LIKE"):
            self.take()
            pattern = self.take()
            if pattern.kind != "str":
                raise malformed(f"unexpected token: '{pattern.text}'")
            regex = "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern.value)
            return ("like", target, re.compile(f"^{regex}$", re.IGNORECASE | re.DOTALL))
        op = self.take()
        if op.kind != "op":
            raise malformed(f"unexpected token: '{op.text}'")
        return ("cmp", target, "!=" if op.text == "<>" else op.text, self.literal(target))

    def literal(self, target: FieldDef) -> Any:
        token = self.take()
        if token.is_kw("NULL"):
            return None
        kind = target.type
        numeric = kind in ("int", "double", "currency", "percent")
        expected = ("boolean" if kind == "boolean" else "number" if numeric
                    else "date" if kind == "date" else "datetime" if kind == "datetime" else "string")
        ok = {"boolean": token.is_kw("TRUE", "FALSE"), "number": token.kind == "num",
              "date": token.kind == "dt" and "T" not in token.text,
              "datetime": token.kind == "dt" and "T" in token.text, "string": token.kind == "str"}[expected]
        if not ok:
            if token.kind in ("end", "punct", "op"):
                raise malformed(f"unexpected token: '{token.text}'")
            quoting = "should" if expected == "string" else "should not"
            raise SfError(400, [error("INVALID_QUERY_FILTER_OPERATOR", f"value of filter criterion for field "
                                      f"'{target.name}' must be of type {expected} and {quoting} be enclosed "
                                      "in quotes")])
        if expected == "boolean":
            return token.text.upper() == "TRUE"
        if expected == "datetime":
            return parse_datetime(token.text)
        if kind in ("id", "reference") and isinstance(token.value, str):
            return normalize_id(token.value) or token.value
        return token.value


# -- evaluation -----------------------------------------------------------------------------------
def _comparable(f: FieldDef, value: Any) -> Any:
    if value is None:
        return None
    if f.type == "datetime" and isinstance(value, str):
        return parse_datetime(value)
    if isinstance(value, str):
        return value.casefold()  # SOQL compares text case-insensitively
    return value


def matches(node: Any, record: dict[str, Any]) -> bool:
    if node is None:
        return True
    kind = node[0]
    if kind == "and":
        return all(matches(n, record) for n in node[1])
    if kind == "or":
        return any(matches(n, record) for n in node[1])
    if kind == "not":
        return not matches(node[1], record)
    target: FieldDef = node[1]
    have = _comparable(target, record.get(target.name))
    if kind == "in":
        found = have in [_comparable(target, v) for v in node[2]]
        return found != node[3]
    if kind == "like":
        return have is not None and bool(node[2].match(str(record.get(target.name))))
    op, want = node[2], _comparable(target, node[3])
    if op == "=":
        return bool(have == want)
    if op == "!=":
        return bool(have != want)
    if have is None or want is None:
        return False
    try:
        return bool({"<": have < want, ">": have > want, "<=": have <= want, ">=": have >= want}[op])
    except TypeError:
        return False


def _sort_key(target: FieldDef) -> Callable[[dict[str, Any]], Any]:
    return lambda record: _comparable(target, record.get(target.name))


def _sorted(records: list[dict[str, Any]], order: list[tuple[FieldDef, bool, bool]]) -> list[dict[str, Any]]:
    for target, descending, nulls_last in reversed(order):
        present = [r for r in records if r.get(target.name) is not None]
        absent = [r for r in records if r.get(target.name) is None]
        present.sort(key=_sort_key(target), reverse=descending)
        records = present + absent if nulls_last else absent + present
    return records


def render(obj: ObjectDef, record: dict[str, Any], version: str, fields: list[FieldDef] | None = None
           ) -> dict[str, Any]:
    url = record_url(version, obj.name, record["Id"])
    out: dict[str, Any] = {"attributes": {"type": obj.name, "url": url}}
    for f in fields if fields is not None else list(obj.fields.values()):
        out[f.name] = record.get(f.name)
    return out


def apply(store: Store, query: Select, candidates: list[dict[str, Any]]) -> list[dict[str, Any]]:
    hits = [r for r in candidates if matches(query.where, r)]
    hits = _sorted(hits, query.order)[query.offset:]
    return hits if query.limit is None else hits[:query.limit]


def run_soql(store: Store, text: str, version: str) -> dict[str, Any]:
    if not text or not text.strip():
        raise malformed("unexpected token: <EOF>")
    query = Parser(store, tokenize(text)).select()
    hits = apply(store, query, list(store.records[query.obj.name].values()))
    if query.fields is None:
        return {"totalSize": len(hits), "done": True, "records": []}
    return {"totalSize": len(hits), "done": True,
            "records": [render(query.obj, r, version, query.fields) for r in hits]}
