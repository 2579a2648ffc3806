"""Open-loop load generator: signed Twilio webhooks for missed calls at a fixed arrival rate.

Call ``i`` of a phase is sent at ``start + i / rate`` whatever happened to the calls before it
(asyncio, one new connection per webhook, like Twilio), so a slow bridge cannot lower the
offered rate. Each call has its own CallSid and caller. A missed call is

- forward mode (``mode: forward``): ``POST /twilio/voice``; the call is missed when it is sent;
- ring-through mode: ``POST /twilio/voice``, then as soon as it is answered
  ``POST /twilio/dial-result`` with ``DialCallStatus=no-answer``; missed when that one is sent.

Every request is signed with ``twilio.request_validator.RequestValidator`` against the config's
``public_url``; bodies and signatures are computed before the clock starts. Bounded: a phase sends
exactly ``round(rate * duration)`` calls and waits at most ``timeout`` seconds for each answer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

from twilio.request_validator import RequestValidator

# Chicago-area codes with the 555 exchange, lines 1000-9999 (the businesses' own numbers and staff
# phones are 555-0xxx, so a caller is never one of them): 90,000 distinct possible numbers.
AREA_CODES = ("312", "773", "872", "630", "708", "847", "224", "331", "779", "815")
LINES = 9_000
MAX_CALLERS = len(AREA_CODES) * LINES


def caller_number(k: int) -> str:
    k %= MAX_CALLERS
    return f"+1{AREA_CODES[k // LINES]}555{1000 + k % LINES:04d}"


@dataclass
class Request:
    path: str
    body: bytes
    signature: str


@dataclass
class Call:
    sid: str
    caller: str
    to: str
    requests: list[Request]


@dataclass
class Result:
    sid: str
    caller: str
    to: str
    scheduled: float  # wall clock (time.time) the call was due
    sent: float = 0.0  # wall clock the first webhook went out
    missed_at: float = 0.0  # wall clock the webhook that makes it a missed call went out
    latencies: list[tuple[str, float, int]] = field(default_factory=list)  # (path, seconds, status)
    error: str | None = None


class Signer:
    def __init__(self, public_url: str, auth_token: str, account_sid: str) -> None:
        self.public_url = public_url.rstrip("/")
        self.validator = RequestValidator(auth_token)
        self.account_sid = account_sid

    def request(self, path: str, params: dict[str, str]) -> Request:
        signature = self.validator.compute_signature(self.public_url + path, params)
        return Request(path, urlencode(params).encode(), signature)

    def call(self, k: int, to: str, mode: str) -> Call:
        sid = "CA" + uuid.uuid4().hex
        caller = caller_number(k)
        base = {
            "AccountSid": self.account_sid,
            "ApiVersion": "2010-04-01",
            "CallSid": sid,
            "From": caller,
            "Caller": caller,
            "To": to,
            "Called": to,
            "Direction": "inbound",
            "FromCountry": "US",
            "FromState": "IL",
            "ToCountry": "US",
        }
        voice = self.request("/twilio/voice", {**base, "CallStatus": "ringing"})
        if mode == "forward":
            return Call(sid, caller, to, [voice])
        dial = self.request(
            "/twilio/dial-result",
            {**base, "CallStatus": "in-progress", "DialCallStatus": "no-answer", "DialCallDuration": "0"},
        )
        return Call(sid, caller, to, [voice, dial])


def make_calls(signer: Signer, first: int, count: int, numbers: list[str], mode: str) -> list[Call]:
    """``count`` calls with callers ``first`` .. ``first + count - 1``, spread over the numbers."""
    return [signer.call(first + i, numbers[i % len(numbers)], mode) for i in range(count)]


async def post(host: str, port: int, req: Request, timeout: float) -> int:
    """One HTTP/1.1 POST on a fresh connection; returns the status code."""

    async def go() -> int:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            head = (
                f"POST {req.path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                "Content-Type: application/x-www-form-urlencoded\r\n"
                f"X-Twilio-Signature: {req.signature}\r\nUser-Agent: TwilioProxy/1.1\r\n"
                f"Content-Length: {len(req.body)}\r\nConnection: close\r\n\r\n"
            ).encode()
            writer.write(head + req.body)
            await writer.drain()
            status_line = await reader.readline()
            if not status_line:
                raise ConnectionError("connection closed before an answer")
            status = int(status_line.split()[1])
            length = None
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b"\n", b""):
                    break
                name, _, value = line.decode("latin-1").partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            if length is not None:
                await reader.readexactly(length)
            else:
                await reader.read()
            return status
        finally:
            writer.close()

    return await asyncio.wait_for(go(), timeout)


async def _one(host: str, port: int, call: Call, result: Result, timeout: float) -> None:
    for i, req in enumerate(call.requests):
        wall = time.time()
        if i == 0:
            result.sent = wall
        if i == len(call.requests) - 1:
            result.missed_at = wall
        started = time.perf_counter()
        try:
            status = await post(host, port, req, timeout)
        except TimeoutError:
            result.latencies.append((req.path, float("inf"), 0))
            result.error = "timeout"
            return
        except (OSError, ValueError, IndexError, asyncio.IncompleteReadError) as exc:
            result.latencies.append((req.path, time.perf_counter() - started, 0))
            result.error = type(exc).__name__
            return
        result.latencies.append((req.path, time.perf_counter() - started, status))
        if status != 200:
            result.error = f"HTTP {status}"
            return


async def run_calls(url: str, calls: list[Call], rate: float, timeout: float = 15.0) -> list[Result]:
    """Send ``calls`` at ``rate`` per second (open loop); every answer or timeout is recorded."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    loop = asyncio.get_running_loop()
    start_mono = loop.time() + 0.05
    start_wall = time.time() + 0.05
    results = [Result(c.sid, c.caller, c.to, start_wall + i / rate) for i, c in enumerate(calls)]
    tasks: list[asyncio.Task[None]] = []
    for i, call in enumerate(calls):
        due = start_mono + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(_one(host, port, call, results[i], timeout)))
    if tasks:
        await asyncio.wait(tasks, timeout=timeout * len(calls[0].requests) + 5)
    for t in tasks:
        if not t.done():
            t.cancel()
    return results


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run_phase(url: str, calls: list[Call], rate: float, timeout: float = 15.0) -> list[Result]:
    raise_fd_limit()
    return asyncio.run(run_calls(url, calls, rate, timeout))


def main() -> None:
    """Standalone use against a running bridge (e.g. `textback sandbox`): prints one JSON summary."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", required=True, help="the bridge's base URL (where requests go)")
    parser.add_argument("--public-url", default=None, help="the config's public_url (default: --url)")
    parser.add_argument("--auth-token", required=True)
    parser.add_argument("--account-sid", default="AC" + "be" * 16)
    parser.add_argument("--to", action="append", required=True, help="business number (repeatable)")
    parser.add_argument("--mode", choices=["forward", "ring_through"], default="forward")
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--first-caller", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=15.0)
    args = parser.parse_args()
    if args.rate <= 0 or args.duration <= 0 or args.rate * args.duration > 100_000:
        parser.error("rate and duration must be positive and send at most 100,000 calls")
    signer = Signer(args.public_url or args.url, args.auth_token, args.account_sid)
    calls = make_calls(signer, args.first_caller, round(args.rate * args.duration), args.to, args.mode)
    results = run_phase(args.url, calls, args.rate, args.timeout)
    from bench.analyze import webhook_summary

    print(
        json.dumps(
            {"webhooks": webhook_summary(results), "errors": sum(1 for r in results if r.error)}, indent=2
        )
    )


def to_json(results: list[Result]) -> list[dict[str, Any]]:
    return [asdict(r) for r in results]


if __name__ == "__main__":
    main()
