"""Fault suite, last (14): after everything above, no full phone number, message body or secret in
any log line of any process the suite started, and no plaintext secret in any database dump.

The file sorts last in tests/faults, so under ``pytest -m faults`` it reads the logs and dumps of
the whole suite (tests/faults/harness.py records every number, body and secret a world used). It
also runs a small scenario of its own touching every connector, so it proves something when run
alone too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import phonenumbers
import pytest

from connectors.hubspot.emulator import SANDBOX_OAUTH
from tests.faults.harness import FaultSession, World, Zygote, serve, spawn_worker, stop_process, wait_for

pytestmark = pytest.mark.faults

DIGITS = re.compile(r"\+?\d[\d\-\s().]{8,}\d")
E164 = re.compile(r"\+\d{8,15}")


def _number_forms(numbers: set[str]) -> tuple[set[str], set[str]]:
    """The national digits of every number (what a formatted number reduces to), and the E.164s."""
    national = set()
    for n in numbers:
        try:
            national.add(str(phonenumbers.parse(n).national_number))
        except phonenumbers.NumberParseException:
            continue
    return national, set(numbers)


def _leaks_in(text: str, national: set[str], e164: set[str], literals: list[str]) -> list[str]:
    found = []
    for match in DIGITS.finditer(text):
        digits = re.sub(r"\D", "", match.group())
        if (len(digits) == 10 and digits in national) or (len(digits) == 11 and digits[1:] in national):
            found.append(f"number {match.group()!r}")
    found += [f"number {n!r}" for n in set(E164.findall(text)) & e164]
    found += [f"literal {s[:12]!r}...({len(s)} chars)" for s in literals if s in text]
    return found


def _scenario(world: World, zygote: Zygote) -> None:
    """Every connector with its secrets, a voicemail, a conversation, an opt-out, in processes too."""
    world.add_crm(
        "hubspot",
        settings={
            "access_token": None,
            **{k: SANDBOX_OAUTH[k] for k in ("client_id", "client_secret", "refresh_token")},
        },
        rate_limit=None,
        search_rate_limit=None,
    )
    world.add_crm("pipedrive", burst_limit=None)
    world.add_crm("salesforce")
    world.add_crm("webhook")
    world.add_crm("google_calendar")
    arbiter = serve(zygote, world, "leaks-bridge", world.port, workers=1, threads=2)
    worker = spawn_worker(zygote, world, "leaks-worker")
    try:
        caller = "+13125550199"
        params = world.voice_params(caller)
        assert world.http_post("/twilio/voice", params).status_code == 200
        assert (
            world.http_post(
                "/twilio/sms", world.sms_params(caller, "This is Dana at 42 Elm St, my panel is sparking")
            ).status_code
            == 200
        )
        assert (
            world.http_post("/twilio/voice", world.voice_params("+13125550198"), timeout=30).status_code
            == 200
        )
        wait_for("the texts", lambda: len(world.sent()) >= 2, timeout=60)
        assert world.http_post("/twilio/sms", world.sms_params(caller, "STOP")).status_code == 200
        assert (
            world.http_post(
                "/twilio/voice", {**params, "To": "+13125559999", "CallSid": "CA" + "e" * 32}
            ).status_code
            == 404
        )  # an unknown number, logged as a warning
        wait_for(
            "the worker to finish",
            lambda: world.due(horizon=2) == 0 and not [j for j in world.jobs() if j.status == "running"],
            timeout=60,
        )
    finally:
        stop_process(worker)
        stop_process(arbiter)


@pytest.mark.slow
def test_14_no_number_body_or_secret_in_any_log_line_and_no_plain_secret_in_any_dump(
    make_world: Callable[..., World],
    zygote: Zygote,
    fault_session: FaultSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Run alone (or first), it makes its own evidence; after the suite, the suite's is plenty.
    logs = [p.name for p in fault_session.logs.iterdir()]
    if not (any("worker" in n for n in logs) and any("bridge" in n for n in logs) and len(logs) > 10):
        world = make_world(http=True, in_thread=False, callbacks=True)
        _scenario(world, zygote)
        world.close(dump_name="test_14")  # its dump joins the others
    if fault_session.handler is not None:
        fault_session.handler.flush()

    registry = fault_session.registry.load()
    national, e164 = _number_forms(registry.get("number", set()))
    bodies = sorted({b for b in registry.get("body", set()) if len(b) >= 16})
    secrets = sorted({s for s in registry.get("secret", set()) if len(s) >= 12})
    assert len(national) >= 5 and bodies and len(secrets) >= 8, (len(national), len(bodies), len(secrets))
    body_probes = sorted({b[:40] for b in bodies})

    logs = sorted(p for p in fault_session.logs.iterdir() if p.is_file())
    assert any(p.name.endswith(".jsonl") for p in logs) and any("worker" in p.name for p in logs)
    json_lines = 0
    leaks: dict[str, list[str]] = {}
    for path in logs:
        text = path.read_text(encoding="utf-8", errors="replace")
        json_lines += sum(1 for line in text.splitlines() if line.startswith("{"))
        found = _leaks_in(text, national, e164, body_probes + secrets)
        if found:
            leaks[path.name] = sorted(set(found))[:10]
    caplog_text = "\n".join(
        r.getMessage() + " " + json.dumps(r.__dict__, default=str) for r in caplog.records
    )
    if found := _leaks_in(caplog_text, national, e164, body_probes + secrets):
        leaks["caplog"] = sorted(set(found))[:10]
    assert json_lines > 100
    assert leaks == {}, leaks

    dumps = sorted(fault_session.dumps.iterdir())
    assert dumps
    in_dumps = {}
    for path in dumps:
        text = path.read_text(encoding="utf-8", errors="replace")
        found = [f"{s[:12]!r}...({len(s)} chars)" for s in secrets if s in text]
        if found:
            in_dumps[path.name] = found
    assert in_dumps == {}, in_dumps
