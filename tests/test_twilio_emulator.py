"""The Twilio emulator, driven by the real twilio SDK and checked by a signature-verifying fake bridge."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

import pytest
import requests
from flask import Flask, Response, request
from twilio.base.exceptions import TwilioRestException
from twilio.request_validator import RequestValidator

from connectors.emulator.base import ServerThread, serve_in_thread
from connectors.twilio.client import make_client
from connectors.twilio.emulator import TwilioEmulator

ACCOUNT_SID = "AC" + "a1" * 16
AUTH_TOKEN = "emulator-test-token"
BUSINESS = "+15550100001"
STAFF = "+15550100002"
CALLER = "+15550109999"

VOICE = ('<Response><Dial action="/twilio/dial-result" timeout="20" answerOnBridge="true">'
         '<Number url="/twilio/screen">+15550100002</Number></Dial></Response>')
SCREEN = ('<Response><Gather numDigits="1" action="/twilio/screen-accept"><Say>Press 1</Say></Gather>'
          "<Hangup/></Response>")
MISSED = ('<Response><Say>sorry</Say><Record action="/twilio/recording" transcribe="true" '
          'transcribeCallback="/twilio/transcription"/></Response>')


class FakeBridge:
    """Answers the voice/SMS webhooks with canned TwiML; rejects (403) anything not signed correctly."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.received: list[dict[str, Any]] = []
        self.overrides: dict[str, tuple[int, str]] = {}
        self.lock = threading.Lock()
        self.app = Flask("fake-bridge")
        self.app.add_url_rule("/twilio/<path:name>", view_func=self._hook, methods=["POST"])

    def _hook(self, name: str) -> Response:
        path = f"/twilio/{name}"
        form = request.form.to_dict()
        signed = RequestValidator(self.token).validate(request.url, form,
                                                       request.headers.get("X-Twilio-Signature", ""))
        with self.lock:
            self.received.append({"path": path, "form": form, "signed": signed, "url": request.url})
            override = self.overrides.get(path)
        if not signed:
            return Response("bad signature", 403)
        if override:
            return Response(override[1], override[0], mimetype="text/xml")
        twiml = {
            "/twilio/voice": VOICE,
            "/twilio/screen": SCREEN,
            "/twilio/screen-accept": "<Response/>",
            "/twilio/dial-result": "<Response/>" if form.get("DialBridged") == "true" else MISSED,
            "/twilio/recording": "<Response><Hangup/></Response>",
            "/twilio/sms": "<Response/>",
        }.get(path, "")
        return Response(twiml, 200, mimetype="text/xml")

    def paths(self) -> list[str]:
        with self.lock:
            return [r["path"] for r in self.received]

    def of(self, path: str) -> list[dict[str, str]]:
        with self.lock:
            return [r["form"] for r in self.received if r["path"] == path]

    def clear(self) -> None:
        with self.lock:
            self.received.clear()
            self.overrides.clear()


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[ServerThread, ServerThread, FakeBridge]]:
    bridge = FakeBridge(AUTH_TOKEN)
    bridge_server = serve_in_thread(bridge.app)
    emu_server = serve_in_thread(TwilioEmulator(ACCOUNT_SID, AUTH_TOKEN, bridge_url=bridge_server.url).app)
    yield emu_server, bridge_server, bridge
    emu_server.stop()
    bridge_server.stop()


@pytest.fixture
def emu(servers: tuple[ServerThread, ServerThread, FakeBridge]) -> str:
    emu_server, _, bridge = servers
    requests.post(f"{emu_server.url}/_emulator/reset", timeout=5).raise_for_status()
    bridge.clear()
    return emu_server.url


@pytest.fixture
def bridge(servers: tuple[ServerThread, ServerThread, FakeBridge], emu: str) -> FakeBridge:
    return servers[2]


@pytest.fixture
def bridge_url(servers: tuple[ServerThread, ServerThread, FakeBridge]) -> str:
    return servers[1].url


def client(emu: str, token: str = AUTH_TOKEN, timeout: float = 5.0) -> Any:
    return make_client(ACCOUNT_SID, token, base_url=emu, timeout=timeout)


def wait_for(check: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def state(emu: str) -> dict[str, Any]:
    return requests.get(f"{emu}/_emulator/state", timeout=5).json()


def post(emu: str, path: str, body: dict[str, Any]) -> requests.Response:
    return requests.post(f"{emu}{path}", json=body, timeout=10)


# -- Messages -----------------------------------------------------------------------------------------


def test_create_fetch_list_with_the_sdk(emu: str, bridge: FakeBridge, bridge_url: str) -> None:
    c = client(emu)
    msg = c.messages.create(to=CALLER, from_=BUSINESS, body="Sorry we missed you!",
                            status_callback=f"{bridge_url}/twilio/sms-status")
    assert msg.sid.startswith("SM") and len(msg.sid) == 34
    assert (msg.status, msg.direction, msg.to, msg.from_) == ("queued", "outbound-api", CALLER, BUSINESS)
    assert msg.num_segments == "1" and msg.price is None and msg.error_code is None
    assert msg.account_sid == ACCOUNT_SID and msg.api_version == "2010-04-01"
    assert isinstance(msg.date_created, datetime) and msg.date_created.tzinfo is not None

    fetched = c.messages(msg.sid).fetch()
    assert (fetched.sid, fetched.body) == (msg.sid, "Sorry we missed you!")

    listed = c.messages.list(to=CALLER, from_=BUSINESS, limit=20)
    assert [m.sid for m in listed] == [msg.sid]
    assert c.messages.list(to="+15550108888", limit=20) == []

    raw = requests.get(f"{emu}/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/{msg.sid}.json",
                       auth=(ACCOUNT_SID, AUTH_TOKEN), timeout=5).json()
    assert raw["uri"] == f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/{msg.sid}.json"
    assert parsedate_to_datetime(raw["date_created"]).utcoffset() == timedelta(0)
    assert raw["date_created"].endswith(" +0000") and raw["error_message"] is None

    summary = state(emu)["messages"]
    assert [(m["sid"], m["to"], m["from"], m["body"]) for m in summary] == [
        (msg.sid, CALLER, BUSINESS, "Sorry we missed you!")]


def test_list_filters_by_date_sent_and_pages(emu: str) -> None:
    c = client(emu)
    old = c.messages.create(to=CALLER, from_=BUSINESS, body="old")
    time.sleep(1.05 - (time.time() % 1))  # into the next whole second
    cutoff = datetime.now(UTC).replace(microsecond=0)
    new1 = c.messages.create(to=CALLER, from_=BUSINESS, body="new 1")
    new2 = c.messages.create(to=CALLER, from_=BUSINESS, body="new 2")

    recent = c.messages.list(to=CALLER, from_=BUSINESS, date_sent_after=cutoff, limit=20)
    assert [m.sid for m in recent] == [new2.sid, new1.sid]  # newest first
    before = c.messages.list(date_sent_before=cutoff - timedelta(seconds=1), limit=20)
    assert [m.sid for m in before] == [old.sid]
    today = c.messages.list(date_sent=cutoff.strftime("%Y-%m-%d"), limit=20)
    assert len(today) == 3 or cutoff.hour == 0  # the midnight edge is not worth a flake

    paged = c.messages.list(page_size=1, limit=3)  # the SDK follows next_page_uri
    assert [m.sid for m in paged] == [new2.sid, new1.sid, old.sid]
    page = requests.get(f"{emu}/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json?PageSize=2&To=%2B15550109999",
                        auth=(ACCOUNT_SID, AUTH_TOKEN), timeout=5).json()
    assert (page["page"], page["page_size"], page["start"], page["end"]) == (0, 2, 0, 1)
    assert "Page=1" in page["next_page_uri"] and page["previous_page_uri"] is None


@pytest.mark.parametrize(
    ("to", "body", "code"),
    [
        ("555-not-a-number", "hi", 21211),
        ("+15005550001", "hi", 21211),
        ("+15005550009", "hi", 21614),
        ("+15005550004", "hi", 21610),
        (CALLER, "", 21602),
        ("+15550107777", "hi", 21610),  # configured reject_code
    ],
)
def test_create_errors_surface_as_twilio_rest_exception(emu: str, to: str, body: str, code: int) -> None:
    post(emu, "/_emulator/config", {"numbers": {"+15550107777": {"reject_code": 21610}}}).raise_for_status()
    with pytest.raises(TwilioRestException) as info:
        client(emu).messages.create(to=to, from_=BUSINESS, body=body)
    assert (info.value.status, info.value.code) == (400, code)
    assert state(emu)["messages"] == []


def test_bad_auth_and_missing_resources(emu: str) -> None:
    with pytest.raises(TwilioRestException) as info:
        client(emu, token="wrong").messages.create(to=CALLER, from_=BUSINESS, body="hi")
    assert (info.value.status, info.value.code) == (401, 20003)
    raw = requests.get(f"{emu}/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json", timeout=5)
    assert raw.status_code == 401
    assert raw.json() == {"code": 20003, "message": "Authenticate",
                          "more_info": "https://www.twilio.com/docs/errors/20003", "status": 401}
    with pytest.raises(TwilioRestException) as info:
        client(emu).messages("SM" + "0" * 32).fetch()
    assert (info.value.status, info.value.code) == (404, 20404)


def test_status_callbacks_are_signed_and_ordered(emu: str, bridge: FakeBridge, bridge_url: str) -> None:
    msg = client(emu).messages.create(to=CALLER, from_=BUSINESS, body="hi",
                                      status_callback=f"{bridge_url}/twilio/sms-status")
    got = wait_for(lambda: [f for f in bridge.of("/twilio/sms-status") if f["MessageSid"] == msg.sid][1:] and
                   [f for f in bridge.of("/twilio/sms-status") if f["MessageSid"] == msg.sid])
    assert [f["MessageStatus"] for f in got] == ["sent", "delivered"]
    assert all(r["signed"] for r in bridge.received)
    assert got[1] == {"MessageSid": msg.sid, "SmsSid": msg.sid, "MessageStatus": "delivered",
                      "SmsStatus": "delivered", "AccountSid": ACCOUNT_SID, "From": BUSINESS, "To": CALLER,
                      "ApiVersion": "2010-04-01"}
    assert wait_for(lambda: state(emu)["messages"][0]["status"] == "delivered")


@pytest.mark.parametrize(("code", "final"), [(30003, "failed"), (30006, "undelivered")])
def test_fail_code_numbers_end_failed_or_undelivered(emu: str, bridge: FakeBridge, bridge_url: str,
                                                     code: int, final: str) -> None:
    post(emu, "/_emulator/config", {"numbers": {CALLER: {"fail_code": code}}}).raise_for_status()
    msg = client(emu).messages.create(to=CALLER, from_=BUSINESS, body="hi",
                                      status_callback=f"{bridge_url}/twilio/sms-status")
    assert msg.status == "queued"  # failures are asynchronous
    got = wait_for(lambda: bridge.of("/twilio/sms-status")[1:] and bridge.of("/twilio/sms-status"))
    assert [(f["MessageStatus"], f.get("ErrorCode")) for f in got] == [("sent", None), (final, str(code))]
    fetched = wait_for(lambda: (m := client(emu).messages(msg.sid).fetch()).status == final and m)
    assert fetched.error_code == code


class DroppingReceiver:
    """A keep-alive HTTP/1.1 status-callback target that silently closes each connection after
    ``per_connection`` requests, as a server timing out idle keep-alive connections does."""

    def __init__(self, per_connection: int) -> None:
        self.forms: list[dict[str, str]] = []
        self.signed: list[bool] = []
        self.connections = 0
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                self.served = 0
                with lock:
                    outer.connections += 1

            def do_POST(self) -> None:
                form = dict(parse_qsl(self.rfile.read(int(self.headers["Content-Length"])).decode()))
                signature = self.headers["X-Twilio-Signature"]
                ok = RequestValidator(AUTH_TOKEN).validate(outer.url, form, signature)
                with lock:
                    outer.forms.append(form)
                    outer.signed.append(ok)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()
                self.served += 1
                self.close_connection = self.served >= per_connection

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/twilio/sms-status"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.mark.parametrize("per_connection", [1000, 1])
def test_status_callbacks_keep_connections_alive_and_survive_dropped_ones(emu: str,
                                                                           per_connection: int) -> None:
    receiver = DroppingReceiver(per_connection)
    try:
        sids = []
        for n in range(6):
            sids.append(client(emu).messages.create(to=CALLER, from_=BUSINESS, body=f"hi {n}",
                                                    status_callback=receiver.url).sid)
            time.sleep(0.08)  # each message's callbacks are done before the next: one connection will do
        wait_for(lambda: len(receiver.forms) >= 12)
        assert all(receiver.signed)
        for sid in sids:
            statuses = [f["MessageStatus"] for f in receiver.forms if f["MessageSid"] == sid]
            assert statuses == ["sent", "delivered"]
        if per_connection > 12:
            assert receiver.connections < 12  # kept alive, not one connection per callback
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()


def test_status_callback_to_a_dead_bridge_is_swallowed(emu: str) -> None:
    msg = client(emu).messages.create(to=CALLER, from_=BUSINESS, body="hi",
                                      status_callback="http://127.0.0.1:9/twilio/sms-status")
    assert wait_for(lambda: client(emu).messages(msg.sid).fetch().status == "delivered")


def test_lookup_line_type(emu: str) -> None:
    landline_config = {"numbers": {"+15550103333": {"line_type": "landline"}}}
    post(emu, "/_emulator/config", landline_config).raise_for_status()
    c = client(emu)
    landline = c.lookups.v2.phone_numbers("+15550103333").fetch(fields="line_type_intelligence")
    assert landline.valid is True and landline.phone_number == "+15550103333"
    assert landline.line_type_intelligence["type"] == "landline"
    assert landline.calling_country_code == "1" and landline.country_code == "US"
    mobile = c.lookups.v2.phone_numbers(CALLER).fetch(fields="line_type_intelligence")
    assert mobile.line_type_intelligence["type"] == "mobile"
    assert mobile.national_format == "(555) 010-9999"
    assert c.lookups.v2.phone_numbers("+1555").fetch(fields="line_type_intelligence").valid is False


# -- Calls ----------------------------------------------------------------------------------------------


def call(emu: str, outcome: str, **extra: Any) -> dict[str, Any]:
    response = post(emu, "/_emulator/calls", {"from": CALLER, "to": BUSINESS, "outcome": outcome, **extra})
    assert response.status_code == 200, response.text
    return response.json()


def dial_result(bridge: FakeBridge) -> tuple[str, str, str]:
    dial = bridge.of("/twilio/dial-result")[0]
    return dial["DialCallStatus"], dial["DialBridged"], dial["DialCallDuration"]


def timestamp_offset(status: dict[str, str], report: dict[str, Any]) -> float:
    """Seconds between the call's start and the status callback's Timestamp."""
    delta = parsedate_to_datetime(status["Timestamp"]) - parsedate_to_datetime(report["started_at"])
    return delta.total_seconds()


def test_no_answer_then_voicemail_with_transcription(emu: str, bridge: FakeBridge) -> None:
    report = call(emu, "no-answer", voicemail_text="please call me back", call_sid="CA" + "1" * 32)
    sid = report["call_sid"]
    assert sid == "CA" + "1" * 32 and "error" not in report
    assert bridge.paths() == ["/twilio/voice", "/twilio/dial-result", "/twilio/recording",
                              "/twilio/transcription", "/twilio/call-status"]
    assert all(r["signed"] for r in bridge.received)
    voice = bridge.of("/twilio/voice")[0]
    assert voice == {"CallSid": sid, "AccountSid": ACCOUNT_SID, "From": CALLER, "To": BUSINESS,
                     "Caller": CALLER, "Called": BUSINESS, "CallStatus": "ringing", "Direction": "inbound",
                     "ApiVersion": "2010-04-01"}
    assert dial_result(bridge) == ("no-answer", "false", "0")
    dial = bridge.of("/twilio/dial-result")[0]
    assert dial["DialCallSid"].startswith("CA") and dial["DialCallSid"] != sid and dial["CallSid"] == sid
    rec = bridge.of("/twilio/recording")[0]
    assert rec["RecordingDuration"] == "4" and rec["RecordingSid"].startswith("RE")
    assert rec["RecordingUrl"].startswith(f"{emu}/2010-04-01/Accounts/{ACCOUNT_SID}/Recordings/RE")
    tr = bridge.of("/twilio/transcription")[0]
    assert (tr["TranscriptionText"], tr["TranscriptionStatus"]) == ("please call me back", "completed")
    assert (tr["RecordingSid"], tr["CallSid"], tr["From"]) == (rec["RecordingSid"], sid, CALLER)
    status = bridge.of("/twilio/call-status")[0]
    assert (status["CallStatus"], status["CallDuration"]) == ("completed", "4")
    assert (status["CallbackSource"], status["SequenceNumber"]) == ("call-progress-events", "0")
    started = parsedate_to_datetime(report["started_at"])
    # 20 s Dial timeout, then a 4 s message
    assert parsedate_to_datetime(status["Timestamp"]) == started + timedelta(seconds=24)
    assert [s["status"] for s in report["steps"] if "url" in s] == [200] * 5
    assert state(emu)["calls"] == [{"sid": sid, "from": CALLER, "to": BUSINESS, "outcome": "no-answer",
                                    "status": "completed", "duration": 4, "started_at": report["started_at"],
                                    "error": None}]


@pytest.mark.parametrize("outcome", ["busy", "failed"])
def test_busy_and_failed_dials_hang_up_at_the_beep(emu: str, bridge: FakeBridge, outcome: str) -> None:
    call(emu, outcome)
    assert bridge.paths() == ["/twilio/voice", "/twilio/dial-result", "/twilio/call-status"]
    assert bridge.of("/twilio/dial-result")[0]["DialCallStatus"] == outcome
    assert bridge.of("/twilio/call-status")[0]["CallStatus"] == "completed"  # <Say> answered the call


def test_completed_call_is_screened_and_bridged(emu: str, bridge: FakeBridge) -> None:
    report = call(emu, "completed", ring_seconds=3)
    sid = report["call_sid"]
    assert bridge.paths() == ["/twilio/voice", "/twilio/screen", "/twilio/screen-accept",
                              "/twilio/dial-result", "/twilio/call-status"]
    screen = bridge.of("/twilio/screen")[0]
    assert screen["ParentCallSid"] == sid and screen["CallSid"] != sid
    assert (screen["From"], screen["To"], screen["Direction"], screen["CallStatus"]) == (
        CALLER, STAFF, "outbound-dial", "in-progress")
    accept = bridge.of("/twilio/screen-accept")[0]
    assert accept["Digits"] == "1" and accept["CallSid"] == screen["CallSid"]
    assert dial_result(bridge) == ("completed", "true", "30")
    assert bridge.of("/twilio/dial-result")[0]["DialCallSid"] == screen["CallSid"]
    status = bridge.of("/twilio/call-status")[0]
    assert (status["CallStatus"], status["CallDuration"]) == ("completed", "30")
    assert timestamp_offset(status, report) == 33  # 3 s ringing + 30 s talk


def test_staff_voicemail_does_not_press_1(emu: str, bridge: FakeBridge) -> None:
    call(emu, "voicemail", voicemail_text="hi it is Sam")
    assert bridge.paths() == ["/twilio/voice", "/twilio/screen", "/twilio/dial-result", "/twilio/recording",
                              "/twilio/transcription", "/twilio/call-status"]
    assert dial_result(bridge) == ("completed", "false", "5")


def test_voicemail_on_a_number_without_screening_looks_answered(emu: str, bridge: FakeBridge) -> None:
    bridge.overrides["/twilio/voice"] = (200, '<Response><Dial action="/twilio/dial-result">'
                                              f"<Number>{STAFF}</Number></Dial></Response>")
    call(emu, "voicemail")
    assert dial_result(bridge) == ("completed", "true", "30")


def test_canceled_call_reports_no_answer_at_t0_plus_ring(emu: str, bridge: FakeBridge) -> None:
    report = call(emu, "canceled", ring_seconds=7)
    assert bridge.paths() == ["/twilio/voice", "/twilio/call-status"]
    status = bridge.of("/twilio/call-status")[0]
    assert (status["CallStatus"], status["CallDuration"]) == ("no-answer", "0")
    assert timestamp_offset(status, report) == 7
    assert state(emu)["calls"][0]["status"] == "no-answer"


def test_redirect_and_relative_urls_follow_the_requesting_document(emu: str, bridge: FakeBridge) -> None:
    bridge.overrides["/twilio/voice"] = (200, "<Response><Say>hello</Say><Redirect>next/step</Redirect>"
                                              "<Say>unreachable</Say></Response>")
    bridge.overrides["/twilio/next/step"] = (200, '<Response><Pause length="3"/><Hangup/></Response>')
    report = call(emu, "completed")
    assert bridge.paths() == ["/twilio/voice", "/twilio/next/step", "/twilio/call-status"]
    assert bridge.of("/twilio/next/step")[0]["CallStatus"] == "in-progress"
    assert bridge.of("/twilio/call-status")[0]["CallDuration"] == "3"
    assert [s["text"] for s in report["steps"] if s.get("verb") == "Say"] == ["hello"]


@pytest.mark.parametrize(
    ("twiml", "status"),
    [
        ('<Reject reason="busy"/>', "busy"),
        ("<Reject/>", "no-answer"),
        ("<Say>closed</Say><Reject/>", "completed"),
    ],
)
def test_reject_ends_the_call(emu: str, bridge: FakeBridge, twiml: str, status: str) -> None:
    bridge.overrides["/twilio/voice"] = (200, f"<Response>{twiml}</Response>")
    call(emu, "completed")
    assert bridge.paths() == ["/twilio/voice", "/twilio/call-status"]
    final = bridge.of("/twilio/call-status")[0]
    assert (final["CallStatus"], final["CallDuration"]) == (status, "0")


def test_parent_gather_gets_no_input_and_continues(emu: str, bridge: FakeBridge) -> None:
    menu = '<Gather action="/twilio/menu" timeout="4"><Say>menu</Say></Gather>'
    bridge.overrides["/twilio/voice"] = (200, f"<Response>{menu}<Say>bye</Say></Response>")
    report = call(emu, "completed")
    assert bridge.paths() == ["/twilio/voice", "/twilio/call-status"]
    assert bridge.of("/twilio/call-status")[0]["CallDuration"] == "4"
    assert [s["verb"] for s in report["steps"] if "verb" in s] == ["Gather", "Say"]


def test_bridge_error_stops_the_flow(emu: str, bridge: FakeBridge) -> None:
    bridge.overrides["/twilio/dial-result"] = (500, "boom")
    report = call(emu, "no-answer", voicemail_text="hello")
    assert "HTTP 500" in report["error"] and "/twilio/dial-result" in report["error"]
    assert bridge.paths() == ["/twilio/voice", "/twilio/dial-result", "/twilio/call-status"]
    assert [s["status"] for s in report["steps"] if "url" in s] == [200, 500, 200]
    assert state(emu)["calls"][0]["error"] == report["error"]


def test_call_input_is_validated(emu: str) -> None:
    unknown = {"from": CALLER, "to": BUSINESS, "outcome": "ghosted"}
    assert post(emu, "/_emulator/calls", unknown).status_code == 400
    assert post(emu, "/_emulator/calls", {"from": CALLER, "outcome": "busy"}).status_code == 400
    bad_ring = {"from": CALLER, "to": BUSINESS, "outcome": "busy", "ring_seconds": "5"}
    assert post(emu, "/_emulator/calls", bad_ring).status_code == 400


def test_a_wrong_token_is_rejected_by_the_bridge(emu: str, bridge: FakeBridge) -> None:
    post(emu, "/_emulator/config", {"auth_token": "rotated"}).raise_for_status()
    try:
        with pytest.raises(TwilioRestException):
            client(emu).messages.create(to=CALLER, from_=BUSINESS, body="hi")
        assert client(emu, token="rotated").messages.create(to=CALLER, from_=BUSINESS, body="hi").sid
        report = call(emu, "busy")
        assert "HTTP 403" in report["error"] and not bridge.received[0]["signed"]
    finally:
        post(emu, "/_emulator/config", {"auth_token": AUTH_TOKEN}).raise_for_status()


# -- Inbound SMS, faults, config, reset ------------------------------------------------------------------


def test_inbound_sms_is_delivered_signed(emu: str, bridge: FakeBridge) -> None:
    response = post(emu, "/_emulator/inbound-sms", {"from": CALLER, "to": BUSINESS, "body": "STOP",
                                                    "opt_out_type": "STOP", "message_sid": "SM" + "2" * 32})
    assert response.json() == {"message_sid": "SM" + "2" * 32, "status": 200, "response": "<Response/>"}
    form = bridge.of("/twilio/sms")[0]
    assert bridge.received[0]["signed"]
    sid = "SM" + "2" * 32
    assert form == {"MessageSid": sid, "SmsSid": sid, "SmsMessageSid": sid, "AccountSid": ACCOUNT_SID,
                    "From": CALLER, "To": BUSINESS, "Body": "STOP", "NumMedia": "0", "NumSegments": "1",
                    "SmsStatus": "received", "ApiVersion": "2010-04-01", "OptOutType": "STOP"}
    plain = post(emu, "/_emulator/inbound-sms", {"from": CALLER, "to": BUSINESS, "body": "hello"}).json()
    assert plain["message_sid"].startswith("SM") and "OptOutType" not in bridge.of("/twilio/sms")[1]
    assert post(emu, "/_emulator/inbound-sms", {"from": CALLER, "body": "x"}).status_code == 400
    bad = {"from": CALLER, "to": BUSINESS, "body": "x", "opt_out_type": "MAYBE"}
    assert post(emu, "/_emulator/inbound-sms", bad).status_code == 400
    assert [m["body"] for m in state(emu)["inbound"]] == ["STOP", "hello"]
    assert state(emu)["messages"] == []


def test_fault_503_once_then_success(emu: str) -> None:
    fault = {"path": f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json", "method": "POST", "status": 503,
             "count": 1, "body": {"code": 20500, "message": "Service unavailable", "status": 503}}
    assert post(emu, "/_emulator/faults", fault).status_code == 201
    c = client(emu)
    with pytest.raises(TwilioRestException) as info:
        c.messages.create(to=CALLER, from_=BUSINESS, body="hi")
    assert info.value.status == 503
    assert c.messages.create(to=CALLER, from_=BUSINESS, body="hi").status == "queued"
    assert len(state(emu)["messages"]) == 1


def test_pure_delay_fault_still_creates_the_message(emu: str) -> None:
    fault = {"path": f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json", "method": "POST", "delay_ms": 800,
             "count": 1}
    assert post(emu, "/_emulator/faults", fault).status_code == 201
    with pytest.raises(requests.RequestException):
        client(emu, timeout=0.3).messages.create(to=CALLER, from_=BUSINESS, body="hi")
    assert [m["body"] for m in state(emu)["messages"]] == ["hi"]  # the vendor did the work


def test_config_is_validated_and_reset_keeps_bridge_and_token(emu: str, bridge_url: str) -> None:
    assert post(emu, "/_emulator/config", {"numbers": {CALLER: {"line_type": "rotary"}}}).status_code == 400
    assert post(emu, "/_emulator/config", {"colour": "red"}).status_code == 400
    post(emu, "/_emulator/config", {"numbers": {CALLER: {"line_type": "landline"}}}).raise_for_status()
    merged = post(emu, "/_emulator/config", {"numbers": {CALLER: {"fail_code": 30006}}}).json()
    assert merged["numbers"][CALLER] == {"line_type": "landline", "fail_code": 30006}
    client(emu).messages.create(to=CALLER, from_=BUSINESS, body="hi")
    call(emu, "busy")
    requests.post(f"{emu}/_emulator/reset", timeout=5).raise_for_status()
    after = state(emu)
    assert (after["messages"], after["calls"], after["config"]["numbers"]) == ([], [], {})
    assert after["config"]["bridge_url"] == bridge_url
    assert client(emu).messages.create(to=CALLER, from_=BUSINESS, body="still authorised").sid
