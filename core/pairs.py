"""Matching rows on pairs of columns, as both databases search by index.

SQLite plans a row-value ``(a, b) IN (VALUES ...)`` as a scan of the whole table (textback never
gives it statistics); one ``(a = ? AND b = ?)`` term per pair is an index search on SQLite and on
PostgreSQL. The statement depends on the number of pairs: build it once per count.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import and_, bindparam, or_


def any_pair(a: Any, b: Any, n: int) -> Any:
    """``(a = :a0 AND b = :b0) OR ...`` for ``n`` pairs, bound with :func:`pair_params`."""
    return or_(*(and_(a == bindparam(f"a{i}"), b == bindparam(f"b{i}")) for i in range(n)))


def pair_params(pairs: Iterable[tuple[Any, Any]]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for i, (x, y) in enumerate(pairs):
        params[f"a{i}"], params[f"b{i}"] = x, y
    return params
