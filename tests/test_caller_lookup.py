"""Which CRMs a text asks about its caller follows the installs as they are at that text."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from bridge import runtime
from core.crm import Capability, Remote
from core.models import ConnectorInstall
from tests.stack import Stack, all_day_business

CALLER = "+13125550142"


@pytest.fixture
def stack(tmp_path: Path, db_url: str) -> Iterator[Stack]:
    s = Stack(tmp_path, db_url, businesses=[all_day_business()])
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def asked(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """(connector, the install's "owner" setting) per lookup, with every connector a finder."""
    calls: list[tuple[str, str]] = []

    def load(connector_id: str) -> Any:
        class Finder:
            def __init__(self, config: dict[str, Any], _context: Any) -> None:
                self.owner = config["owner"]

            def find_contact(self, phone: str) -> Remote | None:
                calls.append((connector_id, self.owner))
                return None

            def find_contacts(self, phones: list[str]) -> dict[str, Remote]:
                calls.append((connector_id, self.owner))
                return {}

        finds = [Capability.FIND_CONTACT, Capability.FIND_CONTACTS]
        return SimpleNamespace(manifest=SimpleNamespace(capabilities=finds, rate_limits=[]), cls=Finder)

    monkeypatch.setattr(runtime.registry, "load", load)
    return calls


def install(stack: Stack, connector_id: str, owner: str, enabled: bool = True) -> None:
    business = stack.config.businesses[0].id
    with stack.factory() as session, session.begin():
        row = session.get(ConnectorInstall, (business, connector_id))
        if row is None:
            row = ConnectorInstall(business_id=business, connector_id=connector_id, version="1", sync={})
            session.add(row)
        row.config, row.enabled = {"owner": owner}, enabled


def uninstall(stack: Stack, connector_id: str) -> None:
    with stack.factory() as session, session.begin():
        row = session.get(ConnectorInstall, (stack.config.businesses[0].id, connector_id))
        assert row is not None
        session.delete(row)


def finding_with(cls: type, stack: Stack, monkeypatch: pytest.MonkeyPatch) -> tuple[runtime.Connectors, str]:
    """Connectors (four lookup threads) whose every connector is ``cls``, a finder of one contact at
    a time, installed as "hubspot" for the business (with the setting owner "ann")."""
    finds = [Capability.FIND_CONTACT]
    manifest = SimpleNamespace(capabilities=finds, rate_limits=[])
    monkeypatch.setattr(runtime.registry, "load", lambda _id: SimpleNamespace(manifest=manifest, cls=cls))
    connectors = runtime.Connectors(stack.config, stack.factory, lookup_threads=4)
    connectors._box = SimpleNamespace(open=lambda _sealed: {})  # type: ignore[assignment]
    install(stack, "hubspot", "ann")
    return connectors, stack.config.businesses[0].id


@pytest.mark.parametrize("many", [False, True], ids=["one", "many"])
def test_each_text_asks_the_crms_installed_and_enabled_at_that_text(
    stack: Stack, asked: list[tuple[str, str]], many: bool
) -> None:
    connectors = runtime.Connectors(stack.config, stack.factory)
    connectors._box = SimpleNamespace(open=lambda _sealed: {})  # type: ignore[assignment]
    business = stack.config.businesses[0].id

    def text() -> list[tuple[str, str]]:
        asked.clear()
        if many:
            assert connectors.find_contacts(business, [CALLER], budget=5) == {CALLER: None}
        else:
            assert connectors.find_contact(business, CALLER, budget=5) is None
        return sorted(asked)

    assert text() == []
    install(stack, "hubspot", "ann")
    install(stack, "pipedrive", "bob")
    assert text() == [("hubspot", "ann"), ("pipedrive", "bob")]
    install(stack, "pipedrive", "bob", enabled=False)
    assert text() == [("hubspot", "ann")]
    uninstall(stack, "hubspot")
    assert text() == []
    install(stack, "salesforce", "cy")
    install(stack, "pipedrive", "dee")  # enabled again, with new settings
    assert text() == [("pipedrive", "dee"), ("salesforce", "cy")]
    install(stack, "hubspot", "eve")  # reinstalled after its removal: built anew
    assert text() == [("hubspot", "eve"), ("pipedrive", "dee"), ("salesforce", "cy")]


def test_a_text_does_not_queue_behind_lookups_a_slow_crm_still_holds(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lookups past their budget keep their threads; once all are held, the next text skips the CRM."""
    release = threading.Event()
    calls: list[str] = []

    class Slow:
        def __init__(self, _config: dict[str, Any], _context: Any) -> None:
            pass

        def find_contact(self, phone: str) -> Remote | None:
            calls.append(phone)
            release.wait(30)
            return Remote("c1", None, "contact", name="Dana")

    connectors, business = finding_with(Slow, stack, monkeypatch)
    try:
        for i in range(4):  # each gives up at once; its lookup keeps a thread while the CRM hangs
            assert connectors.find_contact(business, f"+1312555010{i}", budget=0.01) is None
        # Every thread is held: this text gets no answer, and its lookup never reaches the CRM.
        assert connectors.find_contact(business, CALLER, budget=30) is None
    finally:
        release.set()
        connectors._pool.shutdown(wait=True)
    assert CALLER not in calls and len(calls) == 4
    # The threads are free again: the next text asks the CRM and gets its answer.
    connectors, _ = finding_with(Slow, stack, monkeypatch)
    found = connectors.find_contact(business, CALLER, budget=30)
    assert found is not None and found[1].name == "Dana"


def test_lookups_and_pushes_asking_at_once_build_the_connector_once(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker's first moments: every text thread's lookup and every job thread want the connector."""
    built: list[str] = []
    answered = threading.Barrier(8, timeout=30)

    class Finder:
        def __init__(self, config: dict[str, Any], _context: Any) -> None:
            built.append(config["owner"])
            time.sleep(0.2)  # a build takes a while: the others ask meanwhile

        def find_contact(self, phone: str) -> Remote | None:
            answered.wait()  # every lookup is under way before any ends
            return None

    connectors, business = finding_with(Finder, stack, monkeypatch)
    start = threading.Barrier(8, timeout=30)
    got: list[Any] = []

    def text(i: int) -> None:
        start.wait()
        got.append(connectors.find_contact(business, f"+1312555011{i}", budget=30))

    def push() -> None:
        start.wait()
        got.append(connectors.resolve(business, "hubspot"))
        answered.wait()

    threads = [threading.Thread(target=text, args=(i,)) for i in range(4)]
    threads += [threading.Thread(target=push) for _ in range(4)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    finally:
        connectors._pool.shutdown(wait=True)
    assert built == ["ann"]
    assert got.count(None) == 4 and len({id(c) for c in got if c is not None}) == 1
