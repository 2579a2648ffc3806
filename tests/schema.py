"""Migrated test databases, made quickly.

Most tests need a fresh database at the latest schema, on SQLite and on PostgreSQL. Alembic takes
about 0.35 s to build one on PostgreSQL (0.06 s on SQLite), mostly its own Python and one round
trip per statement; over some 1,400 tests that was minutes of every CI run.

:func:`migrate` runs the real migrations, with Alembic, the first time a test process needs a
database of each kind, and records the statements that changed the schema. Every later database
of that kind gets the same statements as one script, in one round trip (about 0.08 s on
PostgreSQL). ``tests/test_schema.py`` checks that the two give the same schema, and that it is the
schema the models declare.
"""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy import Engine, event

from core.db import upgrade

# Catalog reads Alembic makes (is there an alembic_version table? what does "leads" look like for
# a batch ALTER on SQLite?) and the transactions around them: not part of the schema.
_READS = ("SELECT", "PRAGMA", "BEGIN", "COMMIT", "ROLLBACK")

_scripts: dict[str, str | None] = {}  # dialect name -> the recorded script (None: cannot replay)
_lock = threading.Lock()


def migrate(engine: Engine) -> None:
    """Bring the empty database behind ``engine`` to the latest schema, as ``core.db.upgrade`` would."""
    dialect = engine.dialect.name
    with _lock:
        recorded = dialect in _scripts
        script = _scripts.get(dialect)
        if not recorded:
            _scripts[dialect] = _record(engine)
            return
    if script is None:
        upgrade(engine)
        return
    raw = engine.raw_connection()
    try:
        if dialect == "sqlite":
            raw.driver_connection.executescript(f"BEGIN;\n{script};\nCOMMIT;")  # type: ignore[union-attr]
        else:
            cursor = raw.cursor()
            cursor.execute(script)
            cursor.close()
            raw.commit()
    finally:
        raw.close()


def replays(dialect: str) -> bool:
    """Whether databases of this kind are now made by replaying the recorded script."""
    with _lock:
        return _scripts.get(dialect) is not None


def _record(engine: Engine) -> str | None:
    """Alembic's upgrade of this database, and the script that repeats it (None if one cannot)."""
    statements: list[tuple[str, Any]] = []

    def seen(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        statements.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", seen)
    try:
        upgrade(engine)
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    kept = [(s, p) for s, p in statements if not s.lstrip().upper().startswith(_READS)]
    if any(p for _s, p in kept):
        return None  # a migration that binds values: replay it with Alembic every time
    return ";\n".join(s.strip() for s, _p in kept)
