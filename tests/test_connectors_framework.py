"""The connector framework: manifests, discovery, install/check/remove, the sync engine, scaffolding."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from click.testing import CliRunner
from sqlalchemy import text

from bridge.cli import main
from connectors import manifest as manifest_mod
from connectors import registry
from connectors.emulator import serve_in_thread
from connectors.webhook.emulator import PATH, SANDBOX_SECRET, WebhookReceiver
from core.errors import ConfigError
from core.secrets import generate_key
from tests.stack import Stack

GOOD = yaml.safe_load((Path(__file__).parents[1] / "manifests" / "webhook.yaml").read_text())


def _broken(**changes: Any) -> dict[str, Any]:
    data = yaml.safe_load(yaml.safe_dump(GOOD))
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return data


@pytest.mark.parametrize(
    ("changes", "path", "words"),
    [
        ({"docs_url": None}, "(top level)", "'docs_url' is a required property"),
        ({"colour": "red"}, "(top level)", "Additional properties"),
        ({"manifest_version": 2}, "manifest_version", "reads manifest_version 1"),
        ({"capabilities": ["teleport"]}, "capabilities.0", "is not one of"),
        (
            {"config_schema": {"type": "object", "properties": {"signing_secret": {"type": "string"}}}},
            "config_schema.properties.signing_secret",
            "writeOnly",
        ),
        ({"config_schema": {"type": 12}}, "config_schema", "not a valid JSON Schema"),
    ],
)
def test_broken_manifests_get_a_clear_error(changes: dict[str, Any], path: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        manifest_mod.parse(_broken(**changes), "manifests/x.yaml")
    assert info.value.path == path
    assert words in str(info.value)
    assert "manifests/x.yaml" in str(info.value)


def test_every_builtin_manifest_matches_its_class() -> None:
    ids = registry.available()
    assert "webhook" in ids
    for connector_id in ids:
        try:
            loaded = registry.load(connector_id)
        except ConfigError as exc:
            if "could not be imported" in str(exc):
                continue  # a connector whose package is not part of this build
            raise
        assert loaded.manifest.id == connector_id
        assert set(loaded.manifest.capabilities) == loaded.cls.implemented()


def test_declared_capabilities_must_equal_implemented(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pkg = tmp_path / "capmismatch"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    manifest = _broken(
        id="capmismatch", entry_point="capmismatch:Liar", capabilities=["events", "upsert_contact"]
    )
    (pkg / "manifest.yaml").write_text(yaml.safe_dump(manifest))
    (pkg / "__init__.py").write_text(
        textwrap.dedent("""
        from pathlib import Path
        from connectors.base import Connector
        class Liar(Connector):
            id = "capmismatch"
            MANIFEST = Path(__file__).with_name("manifest.yaml")
            def on_event(self, event, lead, delivery_id): pass
            def mark_opted_out(self, contact): pass
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import capmismatch  # type: ignore[import-not-found]

    with pytest.raises(ConfigError) as info:
        registry.check_class(capmismatch.Liar, "capmismatch")
    assert "declared but not implemented: upsert_contact" in str(info.value)
    assert "implemented but not declared: mark_opted_out" in str(info.value)


def _fake_dist(root: Path, dist: str, connector_id: str, target: str) -> None:
    info = root / f"{dist}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[textback.connectors]\n{connector_id} = {target}\n")


def test_duplicate_connector_ids_are_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_dist(tmp_path, "acme_one", "dupe", "acme_one.connector:A")
    _fake_dist(tmp_path, "acme_two", "dupe", "acme_two.connector:B")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "dupe" in registry.available()
    with pytest.raises(ConfigError) as info:
        registry.load("dupe")
    assert "more than one package" in str(info.value)
    assert "acme_one" in str(info.value) and "acme_two" in str(info.value)


def test_unknown_connector_lists_what_is_installed() -> None:
    with pytest.raises(ConfigError) as info:
        registry.load("nosuchcrm")
    assert "webhook" in str(info.value)


@pytest.fixture
def receiver() -> Any:
    rx = WebhookReceiver(SANDBOX_SECRET)
    server = serve_in_thread(rx.app)
    yield server.url
    server.stop()


@pytest.fixture
def secret_key(monkeypatch: pytest.MonkeyPatch) -> str:
    key = generate_key()
    monkeypatch.setenv("TEXTBACK_SECRET_KEY", key)
    return key


def _install(stack: Stack, receiver: str, **extra: Any) -> Any:
    settings = stack.tmp_path / "webhook.yaml"
    settings.write_text(yaml.safe_dump({"url": receiver + PATH, "signing_secret": SANDBOX_SECRET, **extra}))
    return CliRunner().invoke(
        main,
        [
            "connectors",
            "install",
            "webhook",
            "--config",
            str(stack.config_path),
            "--config-file",
            str(settings),
        ],
    )


def test_install_check_list_remove(stack: Stack, receiver: str, secret_key: str) -> None:
    result = _install(stack, receiver)
    assert result.exit_code == 0, result.output
    assert "ok: the receiver" in result.output
    with stack.engine.connect() as conn:
        dump = "\n".join(str(row) for row in conn.execute(text("SELECT * FROM connector_installs")))
    assert SANDBOX_SECRET not in dump  # encrypted at rest
    listed = CliRunner().invoke(main, ["connectors", "list", "--config", str(stack.config_path), "--json"])
    assert listed.exit_code == 0
    assert any(i["connector"] == "webhook" for i in yaml.safe_load(listed.output)["installed"])
    check = CliRunner().invoke(main, ["connectors", "check", "webhook", "--config", str(stack.config_path)])
    assert check.exit_code == 0 and "accepted a signed ping" in check.output
    removed = CliRunner().invoke(
        main, ["connectors", "remove", "webhook", "--config", str(stack.config_path)]
    )
    assert removed.exit_code == 0
    again = CliRunner().invoke(main, ["connectors", "remove", "webhook", "--config", str(stack.config_path)])
    assert again.exit_code == 1 and "not installed" in again.output


def test_install_rejects_bad_settings_with_the_key_path(stack: Stack, receiver: str, secret_key: str) -> None:
    result = _install(stack, receiver, timeout_seconds="soon")
    assert result.exit_code == 2
    assert "timeout_seconds" in result.output and "is not of type 'number'" in result.output
    short = stack.tmp_path / "short.yaml"
    short.write_text(yaml.safe_dump({"url": receiver + PATH, "signing_secret": "tiny"}))
    result = CliRunner().invoke(
        main,
        ["connectors", "install", "webhook", "--config", str(stack.config_path), "--config-file", str(short)],
    )
    assert result.exit_code == 2 and "signing_secret" in result.output and "tiny" not in result.output


def test_install_without_an_encryption_key_says_how_to_make_one(
    stack: Stack, receiver: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TEXTBACK_SECRET_KEY", raising=False)
    result = _install(stack, receiver)
    assert result.exit_code == 2 and "TEXTBACK_SECRET_KEY" in result.output


def _deliveries(url: str) -> list[dict[str, Any]]:
    return list(requests.get(f"{url}/_emulator/state", timeout=5).json()["deliveries"])


def test_lead_events_reach_the_webhook_once(stack: Stack, receiver: str, secret_key: str) -> None:
    assert _install(stack, receiver).exit_code == 0
    caller = "+13125550142"
    stack.call(caller, "no-answer", voicemail_text="please call me back")
    stack.drain()
    events = [d["event"] for d in _deliveries(receiver)]
    assert events.count("missed_call") == 1
    assert events.count("texted") == 1
    missed = next(d for d in _deliveries(receiver) if d["event"] == "missed_call")
    assert missed["payload"]["lead"]["phone"] == caller
    # Replaying the call's webhooks (same CallSid) ten times changes nothing downstream.
    before = len(_deliveries(receiver))
    for _ in range(10):
        stack.call(caller, "no-answer", call_sid=stack.last_call_sid)
    stack.drain()
    assert len(_deliveries(receiver)) == before
    assert len(stack.sent(caller)) == 1


def test_receiver_outage_loses_nothing(stack: Stack, receiver: str, secret_key: str) -> None:
    assert _install(stack, receiver).exit_code == 0
    requests.post(f"{receiver}/_emulator/faults", json={"path": PATH, "status": 503, "count": 3}, timeout=5)
    stack.call("+13125550143", "busy")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not any(d["event"] == "missed_call" for d in _deliveries(receiver)):
        stack.drain(timeout=2, settle=0.1)
        time.sleep(0.2)
    events = [d["event"] for d in _deliveries(receiver)]
    assert events.count("missed_call") == 1
    assert len(stack.sent("+13125550143")) == 1  # texts are unaffected by the CRM outage


@pytest.mark.slow
def test_scaffolded_connector_passes_the_kit(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["connectors", "new", "Acme CRM", "--dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    root = tmp_path / "textback-acme_crm"
    assert (root / "textback_acme_crm" / "manifest.yaml").is_file()
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "12 passed" in run.stdout
