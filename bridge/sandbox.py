"""`textback sandbox`: every emulator, the bridge and a worker on 127.0.0.1, wired together."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import requests
import yaml

from connectors import emulators, registry
from connectors.emulator.base import ServerThread, serve_in_thread
from connectors.twilio.emulator import TwilioEmulator
from core import config as config_mod
from core.errors import ConfigError
from core.secrets import generate_key

ACCOUNT_SID = "AC" + "5a" * 16
AUTH_TOKEN = "sandbox-auth-token-0123456789abcdef"  # noqa: S105 - the emulator's, public by design

BUSINESS = {
    "id": "bright-spark",
    "name": "Bright Spark Electric",
    "timezone": "America/Chicago",
    "numbers": ["+13125550100"],
    "staff_phones": ["+13125550111"],
    "mode": "ring_through",
    "ring_timeout": 20,
    "hours": {
        "mon": ["08:00-17:00"],
        "tue": ["08:00-17:00"],
        "wed": ["08:00-17:00"],
        "thu": ["08:00-17:00"],
        "fri": ["08:00-17:00"],
        "sat": ["09:00-13:00"],
    },
    "holidays": ["2026-12-25", "2027-01-01"],
    "booking_link": "https://book.example.com/bright-spark",
    "policy": {
        "min_ring_seconds": 4,
        "cooldown_hours": 12,
        "sending_window": {"start": "08:00", "end": "21:00"},
        "follow_up_after_hours": 4,
    },
    "booking": {"calendar": "google_calendar"},
    "conversation": {
        "pricing_link": "https://brightspark.example.com/pricing",
        "info": {"hours": "Mon-Fri 8am-5pm, Sat 9am-1pm", "service_area": "Chicago and the near suburbs"},
    },
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def default_config(directory: Path) -> dict[str, Any]:
    bridge_port, twilio_port = free_port(), free_port()
    return {
        "database_url": f"sqlite:///{(directory / 'textback.db').resolve()}",
        "public_url": f"http://127.0.0.1:{bridge_port}",
        "twilio": {
            "account_sid": ACCOUNT_SID,
            "auth_token": AUTH_TOKEN,
            "api_base_url": f"http://127.0.0.1:{twilio_port}",
            "timeout_seconds": 5,
        },
        "secret_key_file": str((directory / "secret.key").resolve()),
        "worker": {"poll_interval": 0.05, "lease_seconds": 30, "threads": 4},
        "logging": {"level": "INFO"},
        "businesses": [BUSINESS],
    }


def _port(url: str | None, what: str, source: str) -> int:
    if not url or url.count(":") < 2:
        raise ConfigError(f"the sandbox needs {what} as http://127.0.0.1:PORT", source=source)
    return int(url.rsplit(":", 1)[1].split("/")[0])


class Sandbox:
    """Starts and stops the sandbox's processes. Use as a context manager."""

    def __init__(self, directory: str | Path, config_path: str | None = None, quiet: bool = False) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.dir / "textback.yaml"
        if config_path:
            raw = yaml.safe_load(Path(config_path).read_text(encoding="utf-8"))
            if Path(config_path).resolve() != self.config_path.resolve():
                self.config_path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
        else:
            self.config_path.write_text(
                yaml.safe_dump(default_config(self.dir), sort_keys=False), encoding="utf-8"
            )
        key_file = self.dir / "secret.key"
        if not key_file.exists():
            key_file.write_text(generate_key() + "\n", encoding="utf-8")
            key_file.chmod(0o600)
        self.config = config_mod.load(str(self.config_path))
        self.quiet = quiet
        self.procs: list[subprocess.Popen[bytes]] = []
        self.log_dir = self.dir / "logs"
        self.log_dir.mkdir(exist_ok=True)
        self.bridge_url = self.config.public_url or ""
        self.emulators = {"twilio": self.config.twilio.api_base_url or ""}
        self.connectors: list[str] = []
        self.servers: list[ServerThread] = []

    def _spawn(self, name: str, *args: str) -> None:
        log = open(self.log_dir / f"{name}.log", "ab")
        env = dict(os.environ)
        env.pop("TEXTBACK_CONFIG", None)
        proc = subprocess.Popen(
            [sys.executable, "-m", "bridge.cli", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=str(self.dir),
        )
        self.procs.append(proc)

    def start(self, timeout: float = 60.0) -> None:
        """Migrate, then start everything; up within ``timeout`` seconds in all, or RuntimeError.

        The bridge and the worker start before the connectors are installed: their imports (seconds
        on a small or busy machine) overlap the installs, which only the first call needs.
        """
        deadline = time.monotonic() + timeout
        cfg = self.config
        src = str(self.config_path)
        bridge_port = _port(cfg.public_url, "public_url", src)
        twilio_port = _port(cfg.twilio.api_base_url, "twilio.api_base_url", src)
        self._migrate()
        self._start_emulators(twilio_port)
        self._spawn(
            "bridge",
            "serve",
            "--config",
            src,
            "--host",
            "127.0.0.1",
            "--port",
            str(bridge_port),
            "--workers",
            "1",
            "--threads",
            "8",
        )
        self._spawn("worker", "worker", "--config", src)
        self._install_connectors()
        self._wait_until_up(deadline, timeout)
        self.write_manifest()

    def _migrate(self) -> None:
        from core.db import make_engine, upgrade

        engine = make_engine(self.config.database_url)
        try:
            upgrade(engine)
        finally:
            engine.dispose()

    def _start_emulators(self, twilio_port: int) -> None:
        """Every emulator runs in this process, each on its own port (fewer processes start faster)."""
        import logging

        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        cfg = self.config
        twilio = TwilioEmulator(
            cfg.twilio.account_sid or ACCOUNT_SID,
            cfg.twilio.auth_token or AUTH_TOKEN,
            bridge_url=self.bridge_url,
        )
        self.servers.append(serve_in_thread(twilio.app, port=twilio_port))
        for name in emulators.available():
            if name == "twilio" or name not in emulators.CLASSES:
                continue
            server = serve_in_thread(emulators.make_app(name))
            self.servers.append(server)
            self.emulators[name] = server.url

    def _install_connectors(self) -> None:
        """Install every connector that has an emulator here, pointed at that emulator, and check it."""
        from bridge.installer import install
        from bridge.runtime import Connectors
        from core.db import make_engine, session_factory

        engine = make_engine(self.config.database_url)
        try:
            factory = session_factory(engine)
            business = self.config.businesses[0].id
            for connector_id in registry.available():
                url = self.emulators.get(connector_id)
                settings = emulators.sandbox_settings(connector_id, url) if url else None
                if settings is None:
                    continue
                install(self.config, factory, connector_id, business, settings, f"sandbox:{connector_id}")
                result = Connectors(self.config, factory).build(business, connector_id).check()
                if not result.ok:
                    raise RuntimeError(f"the {connector_id} connector failed its check: {result.summary}")
                self.connectors.append(connector_id)
        finally:
            engine.dispose()

    def _wait_until_up(self, deadline: float, timeout: float) -> None:
        checks = [f"{self.bridge_url}/healthz", *(f"{u}/_emulator/health" for u in self.emulators.values())]
        pending = list(checks)
        while pending and time.monotonic() < deadline:
            for proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"a sandbox process exited early; see the logs in {self.log_dir}")
            url = pending[0]
            try:
                if requests.get(url, timeout=1).status_code == 200:
                    pending.pop(0)
                    continue
            except requests.RequestException:
                pass
            time.sleep(0.1)
        if pending:
            raise RuntimeError(
                f"the sandbox did not come up in {timeout:.0f}s ({pending[0]}); logs in {self.log_dir}"
            )

    def manifest(self) -> dict[str, Any]:
        return {
            "bridge_url": self.bridge_url,
            "emulators": dict(self.emulators),
            "connectors": list(self.connectors),
            "twilio": {
                "account_sid": self.config.twilio.account_sid,
                "auth_token": self.config.twilio.auth_token,
            },
            "businesses": [
                {"id": b.id, "name": b.name, "numbers": list(b.numbers), "staff_phones": list(b.staff_phones)}
                for b in self.config.businesses
            ],
        }

    def write_manifest(self) -> None:
        (self.dir / "sandbox.json").write_text(json.dumps(self.manifest(), indent=2), encoding="utf-8")

    def guide(self) -> str:
        b = self.config.businesses[0]
        twilio = self.emulators["twilio"]
        return "\n".join(
            [
                "textback sandbox is running (Ctrl-C stops everything).",
                f"  bridge:           {self.bridge_url}   (health: {self.bridge_url}/healthz)",
                f"  Twilio emulator:  {twilio}",
                f"  config:           {self.config_path}",
                f"  details:          {self.dir / 'sandbox.json'}",
                "",
                f"Try a missed call to {b.name}:",
                f"  curl -s -X POST {twilio}/_emulator/calls -H 'Content-Type: application/json' \\",
                f'       -d \'{{"from": "+13125550142", "to": "{b.numbers[0]}", "outcome": "no-answer"}}\'',
                f"  curl -s {twilio}/_emulator/state            # the text the caller got",
                f"  textback leads list --config {self.config_path}",
            ]
        )

    def wait(self) -> None:
        while all(p.poll() is None for p in self.procs):
            time.sleep(0.5)
        raise RuntimeError(f"a sandbox process stopped; see the logs in {self.log_dir}")

    def stop(self, grace: float = 10.0) -> None:
        """Ask every process to stop, give them ``grace`` seconds together, then kill what is left."""
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + grace
        for proc in self.procs:
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()
        for server in self.servers:
            server.stop()
        self.servers.clear()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
