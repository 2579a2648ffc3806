"""`textback secrets keygen|rotate`: rotating the key that seals connector secrets."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from sqlalchemy import text

from bridge.cli import main
from connectors.emulator import serve_in_thread
from connectors.webhook.emulator import PATH, SANDBOX_SECRET, WebhookReceiver
from tests.stack import Stack


def test_keygen_and_rotate_keep_secrets_readable(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    old = CliRunner().invoke(main, ["secrets", "keygen"]).output.strip()
    new = CliRunner().invoke(main, ["secrets", "keygen"]).output.strip()
    assert old != new and len(new) == 44
    server = serve_in_thread(WebhookReceiver(SANDBOX_SECRET).app)
    try:
        monkeypatch.setenv("TEXTBACK_SECRET_KEY", old)
        settings = Path(stack.tmp_path) / "webhook.yaml"
        settings.write_text(yaml.safe_dump({"url": server.url + PATH, "signing_secret": SANDBOX_SECRET}))
        args = ["--config", str(stack.config_path)]
        assert (
            CliRunner()
            .invoke(main, ["connectors", "install", "webhook", *args, "--config-file", str(settings)])
            .exit_code
            == 0
        )
        with stack.engine.connect() as conn:
            before = conn.execute(text("SELECT secrets FROM connector_installs")).scalar_one()
        monkeypatch.setenv("TEXTBACK_SECRET_KEY", f"{new},{old}")  # newest first, the old one kept
        rotated = CliRunner().invoke(main, ["secrets", "rotate", *args])
        assert rotated.exit_code == 0 and "re-encrypted 1 secret" in rotated.output
        with stack.engine.connect() as conn:
            after = conn.execute(text("SELECT secrets FROM connector_installs")).scalar_one()
        assert after != before and SANDBOX_SECRET not in after
        monkeypatch.setenv("TEXTBACK_SECRET_KEY", new)  # the old key is gone: still readable
        check = CliRunner().invoke(main, ["connectors", "check", "webhook", *args])
        assert check.exit_code == 0, check.output
    finally:
        server.stop()
