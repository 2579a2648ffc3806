"""The conformance suite every connector passes, against its own emulator over real HTTP."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pytest
import requests
from flask import Flask

from connectors import registry
from connectors.base import Connector, ConnectorContext
from connectors.emulator import serve_in_thread
from core.crm import ActivityData, Capability, ContactData, NewRecord, Remote
from core.errors import AuthError, JobError, RateLimited, Rejected, TransientError
from core.phones import to_e164

PHONE_VARIANTS = ("(555) 010-2030", "+1 555 010 2030", "5550102030")


class ConnectorKit:
    """What the suite needs to know about one connector. Override the marked methods."""

    connector_cls: type[Connector]
    #: a path prefix of an API call that ``push`` makes (faults are injected there)
    fault_path: str = "/"
    #: seconds the connector waits for an answer in the timeout test
    timeout_seconds: float = 1.0
    #: an API answers JSON, so a 200 carrying an HTML page must fail; a plain webhook receiver
    #: may legitimately answer any 2xx body
    html_200_is_error: bool = True

    def emulator_app(self) -> Flask:  # override
        raise NotImplementedError

    def config(self, emulator_url: str) -> dict[str, Any]:  # override: secrets included
        raise NotImplementedError

    def count_records(self, emulator_url: str, phone: str) -> int:  # override
        """How many records for ``phone`` the emulator holds (contacts, persons, leads, deliveries)."""
        raise NotImplementedError

    def secrets(self, emulator_url: str) -> list[str]:
        man = registry.check_class(self.connector_cls, self.connector_cls.id).manifest
        cfg = self.config(emulator_url)
        return [str(cfg[k]) for k in man.secret_keys if cfg.get(k)]

    def build(self, emulator_url: str) -> Connector:
        context = ConnectorContext(
            business_id="kit", connector_id=self.connector_cls.id, timeout=self.timeout_seconds
        )
        return self.connector_cls(self.config(emulator_url), context)

    def push(self, connector: Connector, phone: str) -> None:
        """One idempotent push of a lead with this phone (E.164)."""
        if Capability.UPSERT_CONTACT in connector.capabilities:
            connector.upsert_contact(ContactData(phone=phone, first_name="Kit", last_name="Caller"), None)  # type: ignore[attr-defined]
        elif Capability.EVENTS in connector.capabilities:
            lead = {"id": f"lead-{phone}", "phone": phone, "timeline": []}
            connector.on_event("missed_call", lead, f"kit:{phone}")  # type: ignore[attr-defined]
        else:
            raise NotImplementedError("override push() for this connector's capabilities")


def _fault(url: str, **spec: Any) -> None:
    resp = requests.post(f"{url}/_emulator/faults", json=spec, timeout=5)
    assert resp.status_code == 201, resp.text


def conformance_suite(kit: ConnectorKit) -> type:
    """Build the test class that proves ``kit.connector_cls`` keeps the connector contract."""

    class ConformanceSuite:
        @pytest.fixture
        def emulator(self) -> Iterator[str]:
            server = serve_in_thread(kit.emulator_app())
            try:
                yield server.url
            finally:
                server.stop()

        def test_manifest_valid_and_capabilities_match(self) -> None:
            loaded = registry.check_class(kit.connector_cls, kit.connector_cls.id)
            assert loaded.manifest.id == kit.connector_cls.id
            assert set(loaded.manifest.capabilities) == kit.connector_cls.implemented()

        def test_same_lead_twice_is_one_record(self, emulator: str) -> None:
            connector = kit.build(emulator)
            phone = "+1555010" + str(uuid.uuid4().int % 10000).zfill(4)
            kit.push(connector, phone)
            kit.push(connector, phone)
            assert kit.count_records(emulator, phone) == 1

        def test_phone_variants_are_one_record(self, emulator: str) -> None:
            connector = kit.build(emulator)
            numbers = {to_e164(v) for v in PHONE_VARIANTS}
            assert numbers == {"+15550102030"}
            for variant in PHONE_VARIANTS:
                e164 = to_e164(variant)
                assert e164 is not None
                kit.push(connector, e164)
            assert kit.count_records(emulator, "+15550102030") == 1

        def test_twenty_concurrent_upserts_are_one_record(self, emulator: str) -> None:
            phone = "+15550104242"
            barrier = threading.Barrier(20)

            def one(_: int) -> None:
                connector = kit.build(emulator)
                barrier.wait(timeout=10)
                kit.push(connector, phone)

            with ThreadPoolExecutor(20) as pool:
                list(pool.map(one, range(20)))
            assert kit.count_records(emulator, phone) == 1

        @pytest.mark.parametrize(
            ("status", "headers", "body", "expected"),
            [
                (401, {}, {"message": "unauthorized"}, AuthError),
                (429, {"Retry-After": "7"}, {"message": "slow down"}, RateLimited),
                (500, {}, {"message": "boom"}, TransientError),
                (503, {}, {"message": "unavailable"}, TransientError),
                (400, {}, {"message": "bad request"}, Rejected),
            ],
        )
        def test_errors_map_to_the_taxonomy(
            self, emulator: str, status: int, headers: dict[str, str], body: Any, expected: type[JobError]
        ) -> None:
            connector = kit.build(emulator)
            _fault(emulator, path=kit.fault_path, status=status, headers=headers, body=body, count=1)
            with pytest.raises(expected) as info:
                kit.push(connector, "+15550107001")
            if status == 429:
                assert isinstance(info.value, RateLimited)
                assert info.value.retry_after == pytest.approx(7, abs=0.01)

        def test_timeout_is_transient(self, emulator: str) -> None:
            connector = kit.build(emulator)
            _fault(
                emulator,
                path=kit.fault_path,
                status=200,
                body={},
                delay_ms=int(kit.timeout_seconds * 1000) + 800,
                count=1,
            )
            with pytest.raises(TransientError):
                kit.push(connector, "+15550107002")

        def test_html_error_page_is_classified(self, emulator: str) -> None:
            connector = kit.build(emulator)
            html = "<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"
            _fault(
                emulator,
                path=kit.fault_path,
                status=502,
                body=html,
                headers={"Content-Type": "text/html"},
                count=1,
            )
            with pytest.raises(TransientError) as info:
                kit.push(connector, "+15550107003")
            assert "HTML" in str(info.value)
            if not kit.html_200_is_error:
                return
            # An HTML page with a 200 status is not success either.
            _fault(
                emulator,
                path=kit.fault_path,
                status=200,
                body=html,
                headers={"Content-Type": "text/html"},
                count=1,
            )
            with pytest.raises(JobError):
                kit.push(connector, "+15550107004")

        def test_find_contacts_finds_exactly_the_pushed_callers(self, emulator: str) -> None:
            connector: Any = kit.build(emulator)
            if Capability.FIND_CONTACTS not in connector.capabilities:
                pytest.skip("find_contacts is not declared")
            phones = ["+15550108001", "+15550108002"]
            for phone in phones:
                kit.push(connector, phone)
            found = connector.find_contacts([*phones, "+15550108009"])
            assert set(found) == set(phones)
            if Capability.FIND_CONTACT in connector.capabilities:
                for phone in phones:
                    assert found[phone].id == connector.find_contact(phone).id

        def test_batch_create_makes_each_record_once(self, emulator: str) -> None:
            connector: Any = kit.build(emulator)
            if Capability.BATCH_CREATE not in connector.capabilities:
                pytest.skip("batch_create is not declared")
            contact = None
            if Capability.UPSERT_CONTACT in connector.capabilities:
                contact = connector.upsert_contact(ContactData(phone="+15550108101", first_name="Kit"), None)
            records = [
                NewRecord(
                    "note",
                    f"tb-00000000ab{n:02d}",
                    ActivityData("note", datetime.now(UTC), f"Kit note {n}"),
                    contact,
                )
                for n in range(3)
            ]
            made = connector.create_records(records)
            assert len(made) == len(records) and all(isinstance(r, Remote) and r.id for r in made)
            assert len({r.id for r in made}) == len(records)
            if callable(getattr(connector, "find_record", None)):
                for record, remote in zip(records, made, strict=True):
                    assert connector.find_record("note", record.marker).id == remote.id

        def test_secrets_never_leak(self, emulator: str, caplog: pytest.LogCaptureFixture) -> None:
            caplog.set_level(logging.DEBUG)
            secrets = kit.secrets(emulator)
            assert secrets, "the kit's config must carry the manifest's secrets"
            connector = kit.build(emulator)
            texts = [repr(connector), str(connector)]
            for status in (401, 400, 500):
                _fault(emulator, path=kit.fault_path, status=status, body={"message": "nope"}, count=1)
                try:
                    kit.push(connector, "+15550107005")
                except JobError as exc:
                    texts.append(str(exc))
                    texts.append(repr(exc))
            texts.append(caplog.text)
            for secret in secrets:
                for text in texts:
                    assert secret not in text

    ConformanceSuite.__name__ = f"Conformance{kit.connector_cls.__name__}"
    return ConformanceSuite
