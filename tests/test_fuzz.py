"""hypothesis fuzzes the form fields of every ``/twilio/*`` route: never a 5xx, never a stray row.

The requests go through Flask's test client (fast) to a bridge built without ``public_url``, so
the signature is checked against the URL the client used: ``http://localhost/twilio/...``.
"""

from __future__ import annotations

import dataclasses
import re
import string
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any
from urllib.parse import quote

import pytest
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from twilio.request_validator import RequestValidator

from bridge.app import create_app
from core.models import Call, Lead
from core.phones import to_e164
from tests.conftest import ACCOUNT_SID, AUTH_TOKEN, BUSINESS_NUMBER, STAFF_PHONE
from tests.stack import Stack, table_counts

BASE = "http://localhost"
CALLER = "+13125550142"
KNOWN_CALL = "CA" + "0123456789abcdef" * 2
SID = re.compile(r"[A-Z]{2}[0-9a-fA-F]{32}")

ROUTES: dict[str, tuple[str, ...]] = {
    "/twilio/voice": ("CallSid", "AccountSid", "From", "To", "Caller", "Called", "CallStatus", "Direction"),
    "/twilio/screen": ("CallSid", "ParentCallSid", "From", "To"),
    "/twilio/screen-accept": ("CallSid", "ParentCallSid", "Digits"),
    "/twilio/dial-result": ("CallSid", "DialCallStatus", "DialBridged", "DialCallSid", "From", "To"),
    "/twilio/call-status": ("CallSid", "CallStatus", "From", "To", "Direction", "CallDuration", "Timestamp"),
    "/twilio/recording": ("CallSid", "RecordingSid", "RecordingUrl", "RecordingDuration"),
    "/twilio/transcription": (
        "CallSid",
        "RecordingSid",
        "TranscriptionSid",
        "TranscriptionText",
        "TranscriptionStatus",
    ),
    "/twilio/sms": ("MessageSid", "From", "To", "Body", "OptOutType"),
    "/twilio/message-status": ("MessageSid", "MessageStatus", "ErrorCode"),
}

ALL_FIELDS = sorted({f for fs in ROUTES.values() for f in fs})

# Tables a 2xx answer on each route may add rows to; everything else must stay as it was.
MAY_WRITE: dict[str, set[str]] = {
    "/twilio/voice": {"calls", "webhook_events"},
    "/twilio/screen": set(),
    "/twilio/screen-accept": set(),
    "/twilio/dial-result": {"webhook_events", "leads", "timeline", "messages", "outbox_jobs"},
    "/twilio/call-status": {"webhook_events", "calls", "leads", "timeline", "messages", "outbox_jobs"},
    "/twilio/recording": {"webhook_events", "timeline", "outbox_jobs"},
    "/twilio/transcription": {"webhook_events", "timeline", "outbox_jobs"},
    "/twilio/sms": {"webhook_events", "leads", "timeline", "messages", "outbox_jobs", "suppressions"},
    "/twilio/message-status": {"message_status_events", "suppressions"},
}

FIRST_SLICE_TABLES = {t for ts in MAY_WRITE.values() for t in ts} | {"line_types"}
FOLLOW_UP = {
    "/twilio/dial-result",
    "/twilio/call-status",
    "/twilio/sms",
    "/twilio/recording",
    "/twilio/transcription",
}

FUZZ = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)

# -- strategies ----------------------------------------------------------------------------------

text = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)
controls = st.text(st.sampled_from("\x00\x01\x1b\r\n\t\u2028\ufeff"), min_size=1, max_size=5)
huge = st.builds(lambda ch, n: ch * n, st.sampled_from(["9", "x", "é", "İ", "😀"]), st.integers(30, 70_000))


def sids(prefix: str) -> st.SearchStrategy[str]:
    good = st.binary(min_size=16, max_size=16).map(lambda b: prefix + b.hex())
    return st.one_of(
        good,
        st.just(KNOWN_CALL if prefix == "CA" else prefix + "ab" * 16),
        good.map(str.upper),
        good.map(lambda s: s.lower()),
        good.map(lambda s: s[:-1]),
        good.map(lambda s: s + "0"),
        good.map(lambda s: s + "\n"),
    )


FULLWIDTH_NUMBER = "".join(chr(0xFF10 + int(d)) for d in BUSINESS_NUMBER[1:])
PHONES = [
    BUSINESS_NUMBER,
    CALLER,
    STAFF_PHONE,
    "Anonymous",
    "+266696687",
    "12",
    "(312) 555-0100",
    "+44 20 7946 0000",
    "+13125559999",
    "+1 312 555 0100 ext. 9",
    FULLWIDTH_NUMBER,
]
STATUSES = [
    "queued",
    "initiated",
    "ringing",
    "in-progress",
    "completed",
    "answered",
    "busy",
    "no-answer",
    "failed",
    "canceled",
    "accepted",
    "sending",
    "sent",
    "delivered",
    "undelivered",
    "read",
    "COMPLETED",
    "No-Answer",
    "receiving",
]
rfc2822 = st.datetimes(
    min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31), timezones=st.just(UTC)
).map(format_datetime)
numbers = st.one_of(
    st.integers(0, 10**12).map(str), st.sampled_from(["²", "٣", "-1", "1.5", " 7", "0x1f", "30006"])
)


def plausible(name: str) -> st.SearchStrategy[str]:
    if name.endswith("Sid"):
        prefix = {"Message": "SM", "Recording": "RE", "Transcription": "TR", "Account": "AC"}
        return sids(next((p for k, p in prefix.items() if name.startswith(k)), "CA"))
    if name in ("From", "To", "Caller", "Called"):
        return st.sampled_from(PHONES)
    if name.endswith("Status"):
        return st.sampled_from(STATUSES)
    if name == "Timestamp":
        return rfc2822
    if name in ("CallDuration", "RecordingDuration", "ErrorCode"):
        return numbers
    if name == "Digits":
        return st.sampled_from(["1", "2", "", "11", " 1 ", "#"])
    if name == "DialBridged":
        return st.sampled_from(["true", "false", "TRUE", "yes"])
    if name == "Direction":
        return st.sampled_from(["inbound", "outbound-api", "outbound-dial", "INBOUND"])
    if name == "OptOutType":
        return st.sampled_from(["STOP", "START", "HELP", "stop", "UNSUBSCRIBE"])
    if name == "Body":
        return st.sampled_from(["STOP", "START", "HELP", "hi there", "Stop.", "ΣΤΟΠ"])
    if name == "RecordingUrl":
        return st.just(f"https://api.twilio.com/2010-04-01/Accounts/{ACCOUNT_SID}/Recordings/RE{'1' * 32}")
    return text


def value(name: str) -> st.SearchStrategy[str]:
    return st.one_of(plausible(name), text, controls, huge, st.just(""))


def good_sid(prefix: str) -> st.SearchStrategy[str]:
    return st.binary(min_size=16, max_size=16).map(lambda b: prefix + b.hex())


NOW = datetime.now(UTC).replace(microsecond=0)
VALID: dict[str, st.SearchStrategy[str]] = {
    "CallSid": st.one_of(st.just(KNOWN_CALL), good_sid("CA")),
    "ParentCallSid": st.one_of(st.just(KNOWN_CALL), good_sid("CA")),
    "DialCallSid": good_sid("CA"),
    "AccountSid": st.just(ACCOUNT_SID),
    "MessageSid": good_sid("SM"),
    "RecordingSid": good_sid("RE"),
    "TranscriptionSid": good_sid("TR"),
    "From": st.sampled_from([CALLER, "+13125550143", "Anonymous", STAFF_PHONE]),
    "Caller": st.just(CALLER),
    "To": st.just(BUSINESS_NUMBER),
    "Called": st.just(BUSINESS_NUMBER),
    "CallStatus": st.sampled_from(["ringing", "in-progress", "completed", "busy", "no-answer", "canceled"]),
    "DialCallStatus": st.sampled_from(["completed", "answered", "busy", "no-answer", "failed", "canceled"]),
    "MessageStatus": st.sampled_from(["queued", "sent", "delivered", "undelivered", "failed", "read"]),
    "Timestamp": st.integers(-60, 600).map(lambda n: format_datetime(NOW + timedelta(seconds=n))),
    "CallDuration": st.integers(0, 600).map(str),
    "RecordingDuration": st.integers(0, 120).map(str),
    "ErrorCode": st.sampled_from(["30003", "30006", "21610", "21211"]),
    "Digits": st.sampled_from(["1", "2"]),
    "DialBridged": st.sampled_from(["true", "false"]),
    "Direction": st.just("inbound"),
    "OptOutType": st.sampled_from(["STOP", "START", "HELP"]),
    "Body": st.sampled_from(["STOP", "START", "HELP", "Can you come today?"]),
    "RecordingUrl": plausible("RecordingUrl"),
    "TranscriptionText": text,
    "TranscriptionStatus": st.sampled_from(["completed", "failed"]),
}


@st.composite
def webhook(draw: st.DrawFn) -> tuple[str, dict[str, str]]:
    """A well-formed webhook for a random route, then up to three fields dropped or replaced."""
    route = draw(st.sampled_from(sorted(ROUTES)))
    fields = ROUTES[route]
    form = {n: draw(VALID[n]) for n in fields if n != "OptOutType" or draw(st.booleans())}
    for name in draw(st.lists(st.sampled_from(fields), max_size=3)):
        replacement = draw(st.one_of(st.none(), value(name)))
        if replacement is None:
            form.pop(name, None)
        else:
            form[name] = replacement
    extra = draw(st.dictionaries(st.text(string.ascii_letters, min_size=1, max_size=12), text, max_size=2))
    form = {**extra, **form}
    if route == "/twilio/message-status" and draw(st.booleans()):
        m = draw(st.one_of(st.uuids().map(str), text, controls))
        route += "?m=" + quote(m, safe="")
    return route, form


# -- the bridge under test ---------------------------------------------------------------------------


@pytest.fixture
def fuzz(stack: Stack) -> Iterator[tuple[Stack, FlaskClient]]:
    app = create_app(dataclasses.replace(stack.config, public_url=None), engine=stack.engine)
    client = app.test_client()
    # A call the bridge has seen, so fuzzed dial results, recordings and statuses can find one.
    seed = {"CallSid": KNOWN_CALL, "From": CALLER, "To": BUSINESS_NUMBER, "Direction": "inbound"}
    response = client.post(
        "/twilio/voice", data=seed, headers={"X-Twilio-Signature": sign("/twilio/voice", seed)}
    )
    assert response.status_code == 200
    yield stack, client


def sign(path: str, form: dict[str, str], token: str = AUTH_TOKEN) -> str:
    return str(RequestValidator(token).compute_signature(BASE + path, form))


def post(client: FlaskClient, path: str, form: dict[str, str], signature: str | None) -> Any:
    headers = {"X-Twilio-Signature": signature} if signature is not None else {}
    return client.post(path, data=form, headers=headers)


def body_size(form: dict[str, str]) -> int:
    return sum(len(quote(k)) + len(quote(v)) + 2 for k, v in form.items())


# -- properties ----------------------------------------------------------------------------------


@FUZZ
@given(
    hook=webhook(),
    variant=st.sampled_from(["missing", "garbage", "wrong_token", "other_route", "tampered"]),
    garbage=st.text(string.printable.strip() + " ", max_size=40),
)
def test_unsigned_or_mis_signed_never_writes(
    fuzz: tuple[Stack, FlaskClient], hook: tuple[str, dict[str, str]], variant: str, garbage: str
) -> None:
    stack, client = fuzz
    path, form = hook
    signature: str | None
    if variant == "missing":
        signature = None
    elif variant == "garbage":
        signature = garbage
    elif variant == "wrong_token":
        signature = sign(path, form, token="not-" + AUTH_TOKEN)
    elif variant == "other_route":
        signature = sign("/twilio/elsewhere", form)
    else:
        signature = sign(path, {**form, "Tampered": "1"})
    before = table_counts(stack)
    response = post(client, path, form, signature)
    assert response.status_code < 500, response.get_data(as_text=True)
    if body_size(form) > 64 * 1024 and signature:
        assert response.status_code in (403, 413)
    else:
        assert response.status_code == 403
    assert table_counts(stack) == before


@FUZZ
@given(hook=webhook())
def test_signed_garbage_never_fails_and_leaves_no_stray_rows(
    fuzz: tuple[Stack, FlaskClient], hook: tuple[str, dict[str, str]]
) -> None:
    stack, client = fuzz
    path, form = hook
    before = table_counts(stack)
    response = post(client, path, form, sign(path, form))
    after = table_counts(stack)
    status = response.status_code
    assert status < 500, (status, response.get_data(as_text=True)[:300])
    assert status != 403, "a correctly signed request was refused"
    if body_size(form) > 64 * 1024:
        assert status == 413
    changed = {t for t in after if after[t] != before[t]}
    if status >= 400:
        assert not changed, (status, changed)
        return
    route = path.split("?")[0]
    if route in FOLLOW_UP:
        # A decided call or an inbound text may start later features' work (staff alerts, CRM sync).
        changed &= FIRST_SLICE_TABLES
    assert changed <= MAY_WRITE[route], (route, changed)
    # Whatever was accepted had the shape Twilio sends.
    sid_name = "MessageSid" if route.startswith(("/twilio/sms", "/twilio/message-status")) else "CallSid"
    if route != "/twilio/screen-accept":
        assert SID.fullmatch(form.get(sid_name, "")), (route, form.get(sid_name))
    if route == "/twilio/voice":
        assert to_e164(form["To"]) == BUSINESS_NUMBER
    if route == "/twilio/sms":
        assert to_e164(form["To"]) == BUSINESS_NUMBER and to_e164(form["From"]) is not None
    if route == "/twilio/message-status":
        assert form["MessageStatus"].lower() in STATUSES
    if {"calls", "leads"} & changed:
        with stack.factory() as s:
            assert all(SID.fullmatch(c) for c in s.scalars(select(Call.call_sid)))
            assert all(to_e164(p) == p for p in s.scalars(select(Lead.phone)))


@FUZZ
@given(
    route=st.sampled_from(sorted(ROUTES)),
    form=st.dictionaries(st.sampled_from(ALL_FIELDS), value("x"), max_size=8),
)
def test_any_field_on_any_route_is_never_a_5xx(
    fuzz: tuple[Stack, FlaskClient], route: str, form: dict[str, str]
) -> None:
    stack, client = fuzz
    before = table_counts(stack)
    response = post(client, route, form, sign(route, form))
    assert response.status_code < 500, response.get_data(as_text=True)[:300]
    if response.status_code >= 400:
        assert table_counts(stack) == before
