"""CPU the test rig's emulators spend per operation, measured on the emulator process alone.

- ``twilio``: one SMS create (the twilio SDK, as the outbox workers send it) and the two signed status
  callbacks it causes (``sent``, ``delivered``), received by a small keep-alive HTTP/1.1 server here
  (gunicorn's gthread workers keep connections alive too) that checks every signature;
- ``hubspot``: one typical lead as the connector syncs it (batch upsert of the contact, a batch
  create of the deal and one of the call, associated inline), behind the benchmark's 100 ms
  ``delay_ms`` fault on ``/crm/``.

Each emulator runs as ``textback emulator NAME`` in its own process; its utime+stime
(``/proc/<pid>/stat``) is read before and after ``--count`` operations sent at ``--rate`` per second,
after a warm-up. Usage: ``python -m bench.emulator_cpu twilio|hubspot [--count N] [--rate R]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import requests
from twilio.request_validator import RequestValidator

from bench.stack import free_port

ACCOUNT_SID = "AC" + "ab" * 16
AUTH_TOKEN = "emulator-cpu-token"
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(utime, stime) of one process (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICKS, int(fields[12]) / TICKS


def per_op(before: tuple[float, float], after: tuple[float, float], count: int) -> dict[str, float]:
    user, system = ((a - b) * 1000 / count for a, b in zip(after, before, strict=True))
    return {
        "cpu_ms_per_op": round(user + system, 3),
        "user_ms": round(user, 3),
        "system_ms": round(system, 3),
    }


class Callbacks:
    """Counts signed status callbacks; a signature that Twilio's validator rejects is an error."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.valid = 0
        self.invalid = 0
        self.statuses: dict[str, list[str]] = {}
        self.connections = 0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/twilio/status"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        outer = self
        validator = RequestValidator(AUTH_TOKEN)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with outer.lock:
                    outer.connections += 1

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                params = dict(parse_qsl(body.decode()))
                ok = validator.validate(outer.url, params, self.headers.get("X-Twilio-Signature", ""))
                with outer.lock:
                    if ok:
                        outer.valid += 1
                        outer.statuses.setdefault(params["MessageSid"], []).append(params["MessageStatus"])
                    else:
                        outer.invalid += 1
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    def total(self) -> int:
        with self.lock:
            return self.valid + self.invalid


def start(argv: list[str], url: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge.cli", "emulator", *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/_emulator/health", timeout=1).status_code == 200:
                return proc
        except requests.RequestException:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"emulator {argv} did not start")


def paced(count: int, rate: float, work: Any, threads: int = 8) -> None:
    """Run ``work(i)`` for i < count, started at ``rate`` per second on a small pool."""
    start_at = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        futures = []
        for i in range(count):
            delay = start_at + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            futures.append(pool.submit(work, i))
        for f in futures:
            f.result()


def measure_twilio(count: int, rate: float) -> dict[str, Any]:
    from connectors.twilio.client import make_client

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    callbacks = Callbacks()
    proc = start(
        ["twilio", "--port", str(port), "--account-sid", ACCOUNT_SID, "--auth-token", AUTH_TOKEN], url
    )
    try:
        local = threading.local()

        def send(i: int) -> None:
            client = getattr(local, "client", None)
            if client is None:
                client = local.client = make_client(ACCOUNT_SID, AUTH_TOKEN, base_url=url)
            client.messages.create(
                to=f"+1312555{1000 + i % 9000:04d}",
                from_="+13125550100",
                body="Sorry we missed your call! Reply here or book: https://book.example.com/bench",
                status_callback=callbacks.url,
            )

        def wait_callbacks(expected: int) -> None:
            deadline = time.monotonic() + 60
            while callbacks.total() < expected and time.monotonic() < deadline:
                time.sleep(0.05)

        warm = 50
        paced(warm, rate, send)
        wait_callbacks(2 * warm)
        time.sleep(0.5)
        before = cpu_seconds(proc.pid)
        paced(count, rate, lambda i: send(warm + i))
        wait_callbacks(2 * (warm + count))
        after = cpu_seconds(proc.pid)
        orders = {tuple(s) for s in callbacks.statuses.values()}
        return {
            "emulator": "twilio",
            "operations": count,
            **per_op(before, after, count),
            "callbacks_valid": callbacks.valid,
            "callbacks_invalid": callbacks.invalid,
            "callback_orders": sorted(orders),
            "callback_connections": callbacks.connections,
        }
    finally:
        proc.terminate()
        proc.wait(10)
        callbacks.server.shutdown()


def measure_hubspot(count: int, rate: float) -> dict[str, Any]:
    from connectors.base import ConnectorContext
    from connectors.hubspot.connector import HubSpotConnector
    from connectors.hubspot.emulator import SANDBOX_TOKEN
    from core.crm import ActivityData, ContactData, DealData, NewRecord
    from core.models import utcnow

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start(["hubspot", "--port", str(port)], url)
    try:
        requests.post(f"{url}/_emulator/config", json={"rate_limit": [100_000, 10.0]}, timeout=5)
        requests.post(f"{url}/_emulator/faults", json={"path": "/crm/", "delay_ms": 100}, timeout=5)
        local = threading.local()

        def lead(i: int) -> None:
            c = getattr(local, "connector", None)
            if c is None:
                c = local.connector = HubSpotConnector(
                    {"access_token": SANDBOX_TOKEN, "api_base_url": url}, ConnectorContext("b", "hubspot")
                )
            phone = f"+1773555{1000 + i % 9000:04d}"
            [contact] = c.upsert_contacts([(ContactData(phone), None)])
            [deal] = c.create_records(
                [
                    NewRecord(
                        "deal",
                        f"tb-{i:010d}d",
                        DealData(f"Missed call {phone}", "appointmentscheduled"),
                        contact,
                    )
                ]
            )
            activity = ActivityData("call", utcnow(), "Missed call", from_number=phone, status="missed")
            c.create_records([NewRecord("call", f"tb-{i:010d}c", activity, contact, deal)])  # type: ignore[arg-type]

        warm = 20
        paced(warm, rate, lead)
        time.sleep(0.5)
        before = cpu_seconds(proc.pid)
        paced(count, rate, lambda i: lead(warm + i))
        after = cpu_seconds(proc.pid)
        state = requests.get(f"{url}/_emulator/state", timeout=30).json()
        return {
            "emulator": "hubspot",
            "operations": count,
            **per_op(before, after, count),
            "contacts": len(state["contacts"]),
            "deals": len(state["deals"]),
            "calls": len(state["calls"]),
            "associations": len(state["associations"]),
        }
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("emulator", choices=["twilio", "hubspot"])
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--rate", type=float, default=25.0)
    args = parser.parse_args()
    if not 0 < args.count <= 20_000 or not 0 < args.rate <= 500:
        parser.error("count must be 1..20000 and rate 0..500")
    measure = measure_twilio if args.emulator == "twilio" else measure_hubspot
    print(json.dumps(measure(args.count, args.rate), indent=2))


if __name__ == "__main__":
    main()
