"""Fixtures of the fault suite (``pytest -m faults``): the session's log capture and zygote, worlds.

Every test here takes ``db_url`` (tests/conftest.py), so it runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults.harness import FaultSession, World, Zygote


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    # Under pytest-xdist (`-n 2 --dist loadgroup`) the fault suite runs on one worker, in file
    # order, beside the rest of the tests: test_zz_leaks then still reads the logs of the whole suite.
    grouped = config.pluginmanager.hasplugin("xdist")
    for item in items:
        if Path(str(item.fspath)).parent == here:
            assert item.get_closest_marker("faults"), f"{item.nodeid} is not marked faults"
            if grouped:
                item.add_marker(pytest.mark.xdist_group("faults"))


@pytest.fixture(scope="session")
def fault_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultSession]:
    root = Path(os.environ.get("TEXTBACK_FAULTS_DIR") or tmp_path_factory.mktemp("faults"))
    session = FaultSession.create(root)
    session.capture_in_process_logs()
    # Workers, emulators and the bridge share this process's GIL in many tests: a short switch
    # interval keeps a thread waiting on the database from queueing 5 ms behind a busy one.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)
    try:
        yield session
    finally:
        sys.setswitchinterval(interval)
        session.close()


@pytest.fixture(scope="session")
def zygote(fault_session: FaultSession) -> Iterator[Zygote]:
    z = Zygote(fault_session.logs / "zygote.log")
    try:
        yield z
    finally:
        z.close()


@pytest.fixture
def make_world(
    fault_session: FaultSession, tmp_path: Path, db_url: str, request: pytest.FixtureRequest
) -> Iterator[Callable[..., World]]:
    made: list[World] = []

    def make(**kwargs: Any) -> World:
        name = kwargs.pop("name", f"w{len(made)}")
        w = World(fault_session, tmp_path, db_url, name=name, **kwargs)
        made.append(w)
        return w

    try:
        yield make
    finally:
        test = request.node.name.replace("/", "_").replace("[", "-").replace("]", "")
        for i, w in enumerate(made):
            w.close(dump_name=f"{test}-{i}")


@pytest.fixture
def world(make_world: Callable[..., World]) -> World:
    return make_world()
