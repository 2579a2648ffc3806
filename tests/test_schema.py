"""The migrations build the schema the models declare, and the tests' quick copy of it
(tests/schema.py) is that same schema, on SQLite and on PostgreSQL."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect

from core.db import current_revision, head_revision, make_engine, require_migrated, upgrade
from core.models import Base
from tests import schema
from tests.conftest import pg_schema
from tests.schema import migrate


@pytest.fixture
def empty_database(db_url: str, tmp_path: Path) -> Iterator[Callable[[], str]]:
    """Makes more empty databases of the same kind as ``db_url``, dropped after the test."""
    with contextlib.ExitStack() as made:

        def make() -> str:
            if db_url.startswith("sqlite"):
                return f"sqlite:///{tmp_path / uuid.uuid4().hex}.db"
            return made.enter_context(pg_schema())

        yield make


def snapshot(engine: Engine) -> dict[str, Any]:
    """Every table's columns, keys, indexes and constraints, as the database reports them."""
    insp = inspect(engine)
    out: dict[str, Any] = {}
    for table in sorted(insp.get_table_names()):
        out[table] = {
            "columns": [
                (c["name"], str(c["type"]), c["nullable"], str(c.get("default")))
                for c in insp.get_columns(table)
            ],
            "primary_key": insp.get_pk_constraint(table)["constrained_columns"],
            "foreign_keys": sorted(
                (tuple(f["constrained_columns"]), f["referred_table"], tuple(f["referred_columns"]))
                for f in insp.get_foreign_keys(table)
            ),
            "indexes": sorted(
                (i["name"], tuple(str(c) for c in i["column_names"]), bool(i["unique"]))
                for i in insp.get_indexes(table)
            ),
            "unique": sorted(
                (u["name"] or "", tuple(u["column_names"])) for u in insp.get_unique_constraints(table)
            ),
        }
    return out


def test_the_migrations_build_the_schema_the_models_declare(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        upgrade(engine)  # Alembic itself, not the tests' copy
        require_migrated(engine)
        with engine.connect() as conn:
            drift = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert drift == [], f"the models and the migrations differ (add a migration): {drift}"
    finally:
        engine.dispose()


def test_the_tests_quick_schema_is_the_migrated_one(db_url: str, empty_database: Callable[[], str]) -> None:
    engines = [make_engine(db_url), make_engine(empty_database()), make_engine(empty_database())]
    alembic, first, second = engines
    try:
        upgrade(alembic)
        migrate(first)  # recorded here, if this process has not made a database of this kind yet
        migrate(second)
        assert schema.replays(alembic.dialect.name)  # so the second was made by the replay
        expected = snapshot(alembic)
        assert len(expected) == len(Base.metadata.tables) + 1  # and alembic_version
        for engine in (first, second):
            assert current_revision(engine) == head_revision()
            assert snapshot(engine) == expected
    finally:
        for engine in engines:
            engine.dispose()
