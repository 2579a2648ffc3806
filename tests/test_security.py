"""Webhook security: signatures, proxies, token rotation, malformed input, size limits, secrets in logs."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from bridge.app import MAX_BODY_BYTES, create_app
from bridge.cli import main as cli
from connectors.emulator import serve_in_thread
from core import logs
from core.config import from_dict
from core.models import Call
from tests.conftest import ACCOUNT_SID, AUTH_TOKEN, BUSINESS_NUMBER, config_dict, write_config
from tests.stack import Stack, call_row, stop_servers, table_counts

CALLER = "+13125550142"
PUBLIC = "https://textback.example.com"
SECONDARY_TOKEN = "rotated-auth-token-9876543210"


def sid(prefix: str = "CA") -> str:
    return prefix + secrets.token_hex(16)


def voice_params(call_sid: str | None = None, **extra: str) -> dict[str, str]:
    return {
        "CallSid": call_sid or sid(),
        "AccountSid": ACCOUNT_SID,
        "From": CALLER,
        "To": BUSINESS_NUMBER,
        "CallStatus": "ringing",
        "Direction": "inbound",
        "ApiVersion": "2010-04-01",
        **extra,
    }


def sms_params(**extra: str) -> dict[str, str]:
    message_sid = sid("SM")
    return {
        "MessageSid": message_sid,
        "SmsSid": message_sid,
        "AccountSid": ACCOUNT_SID,
        "From": CALLER,
        "To": BUSINESS_NUMBER,
        "Body": "Can you come out tomorrow?",
        "NumMedia": "0",
        **extra,
    }


def status_params(call_sid: str | None = None, **extra: str) -> dict[str, str]:
    defaults = {
        "CallStatus": "no-answer",
        "CallDuration": "0",
        "Timestamp": format_datetime(datetime.now(UTC).replace(microsecond=0)),
    }
    return voice_params(call_sid, **{**defaults, **extra})


# Routes that store something when a valid, signed request arrives.
STORING = {
    "/twilio/voice": voice_params,
    "/twilio/sms": sms_params,
    "/twilio/call-status": status_params,
}


def all_zero(stack: Stack) -> None:
    counts = table_counts(stack)
    assert counts and not any(counts.values()), counts


@pytest.fixture
def proxied(tmp_path: Path, db_url: str) -> Iterator[Stack]:
    # The bridge listens on 127.0.0.1 but Twilio signs the public https URL. Nothing here may make
    # the emulator or the worker talk to the public host, so this stack only takes direct posts.
    s = Stack(tmp_path, db_url, public_url=PUBLIC)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def rotating(tmp_path: Path, db_url: str) -> Iterator[Stack]:
    s = Stack(tmp_path, db_url, twilio={"secondary_auth_token": SECONDARY_TOKEN})
    try:
        yield s
    finally:
        s.close()


# -- signatures -----------------------------------------------------------------------------------


SIGNATURE_VARIANTS = ("forged", "other_url", "other_route", "wrong_token", "missing")


def bad_signature(stack: Stack, route: str, params: dict[str, str], variant: str) -> dict[str, str]:
    if variant == "forged":
        return {"X-Twilio-Signature": "bm90IGEgcmVhbCBzaWduYXR1cmUgYXQgYWxsIQ=="}
    if variant == "other_url":
        return {"X-Twilio-Signature": stack.sign(f"https://evil.example.com{route}", params)}
    if variant == "other_route":
        other = "/twilio/sms" if route != "/twilio/sms" else "/twilio/voice"
        return {"X-Twilio-Signature": stack.sign(f"{stack.public_url}{other}", params)}
    if variant == "wrong_token":
        return {"X-Twilio-Signature": stack.sign(f"{stack.public_url}{route}", params, token="not-the-token")}
    return {}


@pytest.mark.parametrize("route", sorted(STORING))
def test_bad_signature_is_403_and_stores_nothing(stack: Stack, route: str) -> None:
    answers = {}
    for variant in SIGNATURE_VARIANTS:
        params = STORING[route]()
        headers = bad_signature(stack, route, params, variant)
        response = requests.post(f"{stack.bridge_url}{route}", data=params, headers=headers, timeout=10)
        answers[variant] = response.status_code
    assert answers == dict.fromkeys(SIGNATURE_VARIANTS, 403)
    all_zero(stack)
    # The control: the same kind of request, signed right, is taken and stored.
    response = stack.post_signed(route, STORING[route]())
    assert 200 <= response.status_code < 300, response.text
    assert any(table_counts(stack).values())


def test_signature_must_cover_every_parameter(stack: Stack) -> None:
    params = voice_params()
    signature = stack.sign(f"{stack.public_url}/twilio/voice", params)
    tampered = {**params, "From": "+13125550199"}
    response = requests.post(
        f"{stack.bridge_url}/twilio/voice",
        data=tampered,
        headers={"X-Twilio-Signature": signature},
        timeout=10,
    )
    assert response.status_code == 403
    all_zero(stack)


def test_signature_must_cover_the_query_string(stack: Stack) -> None:
    params = {"MessageSid": sid("SM"), "MessageStatus": "delivered"}
    signature = stack.sign(f"{stack.public_url}/twilio/message-status?m=a", params)
    response = requests.post(
        f"{stack.bridge_url}/twilio/message-status?m=b",
        data=params,
        headers={"X-Twilio-Signature": signature},
        timeout=10,
    )
    assert response.status_code == 403
    all_zero(stack)


def test_json_body_with_a_signature_is_rejected_not_a_crash(stack: Stack) -> None:
    body = json.dumps(voice_params())
    response = requests.post(
        f"{stack.bridge_url}/twilio/voice",
        data=body,
        headers={
            "X-Twilio-Signature": stack.sign(f"{stack.public_url}/twilio/voice", {}),
            "Content-Type": "application/json",
        },
        timeout=10,
    )
    assert 400 <= response.status_code < 500, response.status_code
    all_zero(stack)


def test_multipart_fields_are_covered_by_the_signature(stack: Stack) -> None:
    # A signature over the bare URL must not authorise whatever fields ride in a multipart body.
    params = voice_params()
    signature = stack.sign(f"{stack.public_url}/twilio/voice", {})
    files = {k: (None, v) for k, v in params.items()}
    response = requests.post(
        f"{stack.bridge_url}/twilio/voice", files=files, headers={"X-Twilio-Signature": signature}, timeout=10
    )
    assert response.status_code == 403
    all_zero(stack)


# -- behind a proxy, and during token rotation -------------------------------------------------------


@pytest.mark.parametrize("signed_for", [PUBLIC, f"{PUBLIC}:443"])
def test_proxied_https_url_is_accepted(proxied: Stack, signed_for: str) -> None:
    params = voice_params()
    response = proxied.post_signed("/twilio/voice", params, sign_url=f"{signed_for}/twilio/voice")
    assert response.status_code == 200, response.text
    assert "<Dial" in response.text
    assert call_row(proxied, params["CallSid"]) is not None


def test_proxied_bridge_rejects_the_internal_url(proxied: Stack) -> None:
    params = voice_params()
    response = proxied.post_signed("/twilio/voice", params, sign_url=f"{proxied.bridge_url}/twilio/voice")
    assert response.status_code == 403
    all_zero(proxied)


def test_proxied_query_string_is_part_of_the_signed_url(proxied: Stack) -> None:
    params = {"MessageSid": sid("SM"), "MessageStatus": "sent"}
    response = proxied.post_signed("/twilio/message-status?m=0f8fad5b-d9cb-469f-a165-70867728950e", params)
    assert response.status_code == 204, response.text


def test_secondary_token_is_accepted_during_rotation(rotating: Stack) -> None:
    first, second = voice_params(), voice_params()
    assert rotating.post_signed("/twilio/voice", first).status_code == 200
    assert rotating.post_signed("/twilio/voice", second, token=SECONDARY_TOKEN).status_code == 200
    assert rotating.count(Call) == 2
    third = voice_params()
    assert rotating.post_signed("/twilio/voice", third, token="some-third-token").status_code == 403
    assert rotating.count(Call) == 2


def test_emulator_signing_with_the_secondary_token_completes_a_call(rotating: Stack) -> None:
    resp = requests.post(
        f"{rotating.twilio_url}/_emulator/config", json={"auth_token": SECONDARY_TOKEN}, timeout=5
    )
    assert resp.status_code == 200
    report = rotating.call(CALLER, "no-answer")
    assert "error" not in report, report.get("error")
    assert call_row(rotating, report["call_sid"]).decision_reason == "missed_no_answer"


# -- malformed input --------------------------------------------------------------------------------

KNOWN_CALL = "CA" + "0123456789abcdef" * 2


def _malformed() -> list[tuple[str, str, dict[str, str]]]:
    vp, sp = voice_params, sms_params
    dial = {"CallSid": KNOWN_CALL, "DialCallStatus": "no-answer", "DialBridged": "false"}
    hex32 = "ab" * 16
    return [
        ("voice: missing CallSid", "/twilio/voice", {k: v for k, v in vp().items() if k != "CallSid"}),
        ("voice: empty CallSid", "/twilio/voice", vp(CallSid="")),
        ("voice: short CallSid", "/twilio/voice", vp(CallSid="CA1234")),
        ("voice: CallSid not hex", "/twilio/voice", vp(CallSid="CA" + "zz" * 16)),
        ("voice: CallSid with newline", "/twilio/voice", vp(CallSid=f"CA{hex32}\n")),
        ("voice: missing To", "/twilio/voice", {k: v for k, v in vp().items() if k != "To"}),
        ("voice: over-long To", "/twilio/voice", vp(To=BUSINESS_NUMBER + "0" * 300)),
        ("voice: over-long From", "/twilio/voice", vp(From="+1" + "3" * 200)),
        ("voice: NUL in From", "/twilio/voice", vp(From="+1312555\x000142")),
        ("voice: NUL in Direction", "/twilio/voice", vp(Direction="in\x00bound")),
        ("dial-result: missing status", "/twilio/dial-result", {"CallSid": KNOWN_CALL}),
        ("dial-result: unknown status", "/twilio/dial-result", {**dial, "DialCallStatus": "exploded"}),
        (
            "dial-result: status grows when lowered",
            "/twilio/dial-result",
            {**dial, "DialCallStatus": "İ" * 20},
        ),
        ("dial-result: unknown call", "/twilio/dial-result", {**dial, "CallSid": sid()}),
        (
            "call-status: bad Timestamp",
            "/twilio/call-status",
            status_params(KNOWN_CALL, Timestamp="yesterday"),
        ),
        (
            "call-status: bad CallDuration",
            "/twilio/call-status",
            status_params(KNOWN_CALL, CallDuration="1e3"),
        ),
        ("call-status: unicode digits", "/twilio/call-status", status_params(KNOWN_CALL, CallDuration="²")),
        (
            "call-status: unknown status",
            "/twilio/call-status",
            status_params(KNOWN_CALL, CallStatus="İ" * 20),
        ),
        ("recording: missing RecordingSid", "/twilio/recording", {"CallSid": KNOWN_CALL}),
        (
            "recording: unicode duration",
            "/twilio/recording",
            {"CallSid": KNOWN_CALL, "RecordingSid": sid("RE"), "RecordingDuration": "²"},
        ),
        (
            "transcription: bad CallSid",
            "/twilio/transcription",
            {"CallSid": "nope", "TranscriptionText": "hi"},
        ),
        ("sms: missing MessageSid", "/twilio/sms", {k: v for k, v in sp().items() if k != "MessageSid"}),
        ("sms: From not a number", "/twilio/sms", sp(From="not a phone")),
        ("sms: body over 1600", "/twilio/sms", sp(Body="x" * 1601)),
        ("sms: NUL in body", "/twilio/sms", sp(Body="hello\x00there")),
        (
            "status: unknown MessageStatus",
            "/twilio/message-status",
            {"MessageSid": sid("SM"), "MessageStatus": "boom"},
        ),
        ("status: missing MessageStatus", "/twilio/message-status", {"MessageSid": sid("SM")}),
        (
            "status: ErrorCode not a number",
            "/twilio/message-status",
            {"MessageSid": sid("SM"), "MessageStatus": "failed", "ErrorCode": "x1"},
        ),
        (
            "status: ErrorCode in unicode digits",
            "/twilio/message-status",
            {"MessageSid": sid("SM"), "MessageStatus": "failed", "ErrorCode": "³⁰⁰⁰⁶"},
        ),
        (
            "status: ErrorCode too big for the column",
            "/twilio/message-status",
            {"MessageSid": sid("SM"), "MessageStatus": "failed", "ErrorCode": "9999999999"},
        ),
        (
            "status: NUL in message id",
            "/twilio/message-status?m=%00",
            {"MessageSid": sid("SM"), "MessageStatus": "sent"},
        ),
    ]


MALFORMED = _malformed()


def test_malformed_input_is_4xx_and_stores_nothing(stack: Stack) -> None:
    # A call the bridge has seen, so requests about it get past the "unknown call" check.
    assert stack.post_signed("/twilio/voice", voice_params(KNOWN_CALL)).status_code == 200
    before = table_counts(stack)
    wrong = {}
    for name, route, params in MALFORMED:
        response = stack.post_signed(route, params)
        after = table_counts(stack)
        if not (400 <= response.status_code < 500 and response.status_code != 403):
            wrong[name] = (response.status_code, response.text[:120])
        elif after != before:
            wrong[name] = (response.status_code, "stored rows")
        before = after
    assert sorted(wrong) == [], wrong
    call = call_row(stack, KNOWN_CALL)
    assert call.decision_outcome is None and call.status == "ringing"


def test_unknown_business_number_is_404_and_stores_nothing(stack: Stack) -> None:
    answers = {}
    for route in sorted(STORING):
        response = stack.post_signed(route, STORING[route](To="+13125559999"))
        answers[route] = response.status_code
    assert answers == dict.fromkeys(STORING, 404)
    all_zero(stack)


def test_body_over_64_kib_is_413(stack: Stack) -> None:
    params = voice_params(Padding="x" * (MAX_BODY_BYTES + 1))
    response = stack.post_signed("/twilio/voice", params)
    assert response.status_code == 413
    all_zero(stack)
    # Just under the limit is parsed (and then refused for the over-long field, not the size).
    small = voice_params(Padding="x" * (MAX_BODY_BYTES - 1024))
    assert stack.post_signed("/twilio/voice", small).status_code == 200


def test_odd_host_header_without_public_url_is_4xx_not_a_crash(tmp_path: Path, db_url: str) -> None:
    # Without public_url the bridge checks the signature against the Host it was sent.
    stack = Stack(tmp_path, db_url)
    server = None
    try:
        app = create_app(dataclasses.replace(stack.config, public_url=None), engine=stack.engine)
        server = serve_in_thread(app)
        answers = {}
        for host in ("localhost:99999", "localhost:http", "[::1", "localhost:-1"):
            params = voice_params()
            signature = stack.sign(f"http://{host}/twilio/voice", params)
            response = requests.post(
                f"{server.url}/twilio/voice",
                data=params,
                headers={"Host": host, "X-Twilio-Signature": signature},
                timeout=10,
            )
            answers[host] = response.status_code
        assert all(400 <= code < 500 for code in answers.values()), answers
        all_zero(stack)
    finally:
        if server is not None:
            stop_servers(server)
        stack.close()


# -- starting without a token ---------------------------------------------------------------------


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {n: logging.getLogger(n).level for n in ("werkzeug", "urllib3", "twilio.http_client")}
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        for name, lvl in levels.items():
            logging.getLogger(name).setLevel(lvl)


def test_serve_refuses_to_start_without_an_auth_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restore_logging: None
) -> None:
    monkeypatch.delenv("TEXTBACK_TWILIO_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("TEXTBACK_TWILIO_SECONDARY_AUTH_TOKEN", raising=False)
    data = config_dict(f"sqlite:///{tmp_path / 'tb.db'}")
    del data["twilio"]["auth_token"]
    path = write_config(tmp_path / "textback.yaml", data)
    result = CliRunner().invoke(cli, ["serve", "--config", str(path), "--port", "1"])
    output = result.output + (result.stderr or "")
    assert result.exit_code == 2, output
    assert "no Twilio auth token" in output and "refusing to start" in output
    assert "--insecure-dev" in output
    assert "Traceback" not in output


def test_serve_help_offers_insecure_dev() -> None:
    result = CliRunner().invoke(cli, ["serve", "--help"])
    assert result.exit_code == 0 and "--insecure-dev" in result.output


def test_create_app_without_token_needs_insecure_dev(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    raw = json.loads(json.dumps(stack.config.raw))
    del raw["twilio"]["auth_token"]
    config = from_dict(raw)
    with pytest.raises(RuntimeError, match="auth token"):
        create_app(config, engine=stack.engine)
    with caplog.at_level(logging.WARNING):
        app = create_app(config, insecure_dev=True, engine=stack.engine)
    assert any("INSECURE" in r.getMessage() for r in caplog.records)
    # In insecure dev mode an unsigned webhook is taken: that is exactly why it must be explicit.
    response = app.test_client().post("/twilio/voice", data=voice_params())
    assert response.status_code == 200
    assert stack.count(Call) == 1


# -- nothing sensitive in the logs ----------------------------------------------------------------


def test_logs_of_a_full_call_hold_no_number_body_or_secret(stack: Stack, restore_logging: None) -> None:
    buffer = io.StringIO()
    logs.setup("DEBUG", stream=buffer)
    words = "This is Dana Whitfield at 42 Elm Street, the panel is sparking"
    report = stack.call(CALLER, "voicemail", voicemail_text=words)
    assert "error" not in report
    stack.drain()
    stack.inbound_sms(CALLER, "Please come at 3pm, my cell is 312-555-0142")
    stack.post_signed("/twilio/voice", voice_params(From="+266696687"))
    stack.post_signed("/twilio/voice", voice_params(To="+13125559999"))  # a 404, logged as a warning
    stack.post_signed("/twilio/voice", voice_params(), token="wrong")  # a 403, logged as a warning
    stack.drain()
    output = buffer.getvalue()
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    events = {line.get("event") for line in lines}
    assert {"call decided", "sms received", "sms sent", "signature rejected", "bad webhook"} <= events, events

    [first_text] = [m for m in stack.sent(CALLER) if "missed" in m["body"]]
    forbidden = [
        CALLER,
        CALLER[1:],
        "3125550142",
        "312-555-0142",
        "(312) 555-0142",
        "3125559999",
        BUSINESS_NUMBER,
        BUSINESS_NUMBER[2:],
        AUTH_TOKEN,
        first_text["body"],
        first_text["body"][:40],
        words,
        "Dana Whitfield",
        "Please come at 3pm",
    ]
    leaks = [f for f in forbidden if f in output]
    assert not leaks, leaks
