"""Twilio webhooks under ``/twilio/``: verify, parse, one transaction, answer with TwiML.

No vendor call ever happens here; texts and CRM work go through the outbox.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

from flask import Blueprint, Response, g, request
from sqlalchemy.exc import IntegrityError, OperationalError
from twilio.twiml.voice_response import Dial, Gather, VoiceResponse

from bridge import signature
from bridge.app import state
from core import call_intake, calls, inbound, texting
from core.config import Business
from core.db import transaction
from core.models import utcnow
from core.phones import mask, to_e164
from core.policy import classify_dial
from core.templates import render

log = logging.getLogger("textback.bridge.twilio")
blueprint = Blueprint("twilio", __name__, url_prefix="/twilio")

F = TypeVar("F", bound=Callable[..., Any])
_SID = re.compile(r"[A-Z]{2}[0-9a-fA-F]{32}")
_MESSAGE_ID = re.compile(r"[0-9a-fA-F-]{1,36}")
CALL_STATUSES = frozenset(
    {"queued", "initiated", "ringing", "in-progress", "completed", "busy", "no-answer", "failed", "canceled"}
)
DIAL_STATUSES = frozenset({"completed", "answered", "busy", "no-answer", "failed", "canceled"})


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def twiml(response: VoiceResponse | None = None, status: int = 200) -> Response:
    return Response(str(response or VoiceResponse()), status=status, mimetype="application/xml")


def signed(view: F) -> F:
    """Reject (403, nothing stored) any request whose Twilio signature does not verify."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Response:
        st = state()
        if not st.insecure_dev and not signature.is_valid(request, st.tokens, st.config.public_url):
            log.warning(
                "signature rejected", extra={"request_id": g.get("request_id"), "route": request.path}
            )
            return Response("invalid Twilio signature\n", status=403, mimetype="text/plain")
        try:
            return view(*args, **kwargs)
        except BadRequest as exc:
            log.warning(
                "bad webhook",
                extra={"request_id": g.get("request_id"), "route": request.path, "problem": str(exc)},
            )
            return Response(f"{exc}\n", status=exc.status, mimetype="text/plain")
        except (IntegrityError, OperationalError):
            # A concurrent delivery of the same webhook won the race, or the DB is briefly busy:
            # answer 503 so Twilio (or the operator) can retry; nothing half-written was kept.
            log.warning("webhook conflict", extra={"request_id": g.get("request_id"), "route": request.path})
            return Response("busy, retry\n", status=503, mimetype="text/plain")

    return wrapper  # type: ignore[return-value]


def field(name: str, required: bool = True, max_len: int = 256) -> str:
    value = request.form.get(name)
    if value is None or value == "":
        if required:
            raise BadRequest(f"missing form field {name}")
        return ""
    if len(value) > max_len:
        raise BadRequest(f"form field {name} is too long")
    if "\x00" in value:
        # PostgreSQL cannot store NUL in text, and no Twilio field ever carries one.
        raise BadRequest(f"form field {name} contains a NUL character")
    return value


def number_field(name: str, max_digits: int = 9) -> int | None:
    """An optional non-negative integer field (ASCII digits only: int() rejects '²')."""
    value = field(name, required=False, max_len=max_digits)
    if not value:
        return None
    if not (value.isascii() and value.isdigit()):
        raise BadRequest(f"form field {name} is not a number")
    return int(value)


def status_field(name: str, allowed: frozenset[str]) -> str:
    value = field(name, max_len=20).lower()
    if value not in allowed:
        raise BadRequest(f"form field {name} is not a known Twilio status")
    return value


def sid_field(name: str, required: bool = True) -> str:
    value = field(name, required, 64)
    if value and not _SID.fullmatch(value):
        raise BadRequest(f"form field {name} is not a Twilio SID")
    return value


def business_for(number: str) -> Business:
    business = state().business_for_number(number)
    if business is None:
        raise BadRequest(f"no business is configured for the number {mask(to_e164(number) or number)}", 404)
    return business


def with_retry(fn: Callable[[], Response]) -> Response:
    """Run a webhook transaction, once more if a concurrent delivery made it conflict."""
    try:
        return fn()
    except IntegrityError:
        g.pop("decision", None)  # that attempt rolled back: bridge.metrics must not count it
        g.pop("sms_status", None)
        return fn()


# -- voice ---------------------------------------------------------------------------------------


def voicemail_twiml(business: Business) -> VoiceResponse:
    vr = VoiceResponse()
    prompt = render(
        business.templates["voicemail_prompt"], business=business.name, first_name=None, booking_link=None
    )
    vr.say(prompt)
    if business.policy.voicemail:
        vr.record(
            action="/twilio/recording",
            method="POST",
            max_length=120,
            play_beep=True,
            transcribe=True,
            transcribe_callback="/twilio/transcription",
        )
    vr.hangup()
    return vr


# Business configs are immutable: each one's voicemail TwiML is rendered once, keyed by identity
# (the object is kept alongside so a reloaded config never reuses another's answer).
_VOICEMAIL: dict[int, tuple[Business, bytes]] = {}


def voicemail_response(business: Business) -> Response:
    cached = _VOICEMAIL.get(id(business))
    if cached is None or cached[0] is not business:
        cached = (business, str(voicemail_twiml(business)).encode())
        _VOICEMAIL[id(business)] = cached
    return Response(cached[1], status=200, mimetype="application/xml")


def _log_decision(business: Business, call_sid: str, concluded: calls.Concluded) -> None:
    if concluded.new:
        g.decision = concluded.decision  # counted by bridge.metrics once the response is sent
        log.info(
            "call decided",
            extra={
                "request_id": g.get("request_id"),
                "business": business.id,
                "call_sid": call_sid,
                "lead_id": concluded.lead_id,
                "outcome": concluded.decision.outcome,
                "reason": concluded.decision.reason,
            },
        )


@blueprint.post("/voice")
@signed
def voice() -> Response:
    call_sid = sid_field("CallSid")
    caller = field("From", required=False, max_len=64)
    called = field("To")
    direction = field("Direction", required=False, max_len=20) or "inbound"
    business = business_for(called)
    st = state()
    # Worked out before the transaction, which on SQLite holds the write lock for everyone.
    forward = business.mode == "forward"
    pre = call_intake.prelude(business, caller, called) if forward else None

    def run() -> Response:
        with transaction(st.factory) as session:
            first = calls.first_delivery(session, "voice.incoming", call_sid)
            if forward:
                # The carrier only forwards calls nobody answered: every call here is a miss.
                concluded = calls.conclude_forwarded(
                    session, business, call_sid, caller, called, direction, redelivered=not first, pre=pre
                )
            else:
                calls.record_incoming(session, business, call_sid, caller, called, direction)
        if forward:
            # Logged once committed: not for an attempt that rolled back, and not while the
            # transaction holds SQLite's write lock.
            _log_decision(business, call_sid, concluded)
            return voicemail_response(business)
        vr = VoiceResponse()
        dial = Dial(
            action="/twilio/dial-result", method="POST", timeout=business.ring_timeout, answer_on_bridge=True
        )
        for staff in business.staff_phones:
            dial.number(staff, url="/twilio/screen", method="POST")
        vr.append(dial)
        return twiml(vr)

    return with_retry(run)


@blueprint.post("/screen")
@signed
def screen() -> Response:
    sid_field("CallSid")
    parent = sid_field("ParentCallSid", required=False)
    called = field("To", required=False)
    st = state()
    business = None
    if parent:
        with st.factory() as session:
            call = calls.find_call(session, parent)
            business = st.config.business(call.business_id) if call else None
    business = business or (st.config.business_for_number(called) if called else None)
    name = business.name if business else "the business"
    prompt = render(
        business.templates["screen_prompt"]
        if business
        else "Call for {business}. Press 1 to take this call.",
        business=name,
        first_name=None,
        booking_link=None,
    )
    vr = VoiceResponse()
    gather = Gather(num_digits=1, timeout=5, action="/twilio/screen-accept", method="POST")
    gather.say(prompt)
    vr.append(gather)
    vr.hangup()
    return twiml(vr)


@blueprint.post("/screen-accept")
@signed
def screen_accept() -> Response:
    parent = sid_field("ParentCallSid", required=False)
    digits = field("Digits", required=False, max_len=10)
    if digits.strip() != "1":
        vr = VoiceResponse()
        vr.hangup()
        return twiml(vr)
    if parent:
        with transaction(state().factory) as session:
            calls.record_screen_accept(session, parent)
    return twiml()


@blueprint.post("/dial-result")
@signed
def dial_result() -> Response:
    call_sid = sid_field("CallSid")
    dial_status = status_field("DialCallStatus", DIAL_STATUSES)
    bridged_param = field("DialBridged", required=False, max_len=10).lower()
    st = state()

    def run() -> Response:
        with transaction(st.factory) as session:
            call = calls.find_call(session, call_sid)
            if call is None:
                raise BadRequest("dial result for a call this bridge never saw", 404)
            business = st.config.business(call.business_id)
            if business is None:
                raise BadRequest("the call's business is no longer configured", 404)
            bridged = bridged_param == "true" if bridged_param else call.screen_accepted
            answered, reason = classify_dial(dial_status, bridged, call.screen_accepted)
            calls.first_delivery(session, "voice.dial_result", call_sid)
            concluded = calls.conclude(
                session, business, call, answered=answered, miss_reason=reason, dial_status=dial_status
            )
            _log_decision(business, call_sid, concluded)
            if concluded.decision.reason == "answered":
                vr = VoiceResponse()
                vr.hangup()
                return twiml(vr)
            return voicemail_response(business)

    return with_retry(run)


def _timestamp(value: str) -> datetime | None:
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        raise BadRequest("form field Timestamp is not an RFC 2822 date") from None
    return parsed if parsed.tzinfo else None


@blueprint.post("/call-status")
@signed
def call_status() -> Response:
    call_sid = sid_field("CallSid")
    status = status_field("CallStatus", CALL_STATUSES)
    caller = field("From", required=False, max_len=64)
    called = field("To", required=False)
    direction = field("Direction", required=False, max_len=20) or "inbound"
    number_field("CallDuration")
    at = _timestamp(field("Timestamp", required=False, max_len=64))
    st = state()

    def run() -> Response:
        with transaction(st.factory) as session:
            if not calls.first_delivery(session, "voice.status", f"{call_sid}:{status}"):
                return Response(status=204)
            call = calls.find_call(session, call_sid)
            if call is None:
                owner = business_for(called)
                call = calls.record_incoming(session, owner, call_sid, caller, called, direction)
            business = st.config.business(call.business_id)
            if business is None:
                raise BadRequest("the call's business is no longer configured", 404)
            call.status = status
            if call.decision_outcome is None and status in (
                "completed",
                "no-answer",
                "busy",
                "failed",
                "canceled",
            ):
                # The caller hung up before <Dial> ended, so no dial result will come.
                # Twilio's Timestamp has whole-second resolution: compare it with the start time at
                # the same resolution, or a ring of exactly the minimum measures as a bit shorter.
                started = call.started_at.replace(microsecond=0) if at else call.started_at
                ring = ((at or utcnow()) - started).total_seconds()
                concluded = calls.conclude(
                    session,
                    business,
                    call,
                    answered=False,
                    miss_reason="missed_hangup",
                    hung_up_ringing=True,
                    ring_seconds=max(ring, 0.0),
                    dial_status=status,
                )
                _log_decision(business, call_sid, concluded)
        return Response(status=204)

    return with_retry(run)


@blueprint.post("/recording")
@signed
def recording() -> Response:
    call_sid = sid_field("CallSid")
    recording_sid = sid_field("RecordingSid")
    url = field("RecordingUrl", required=False, max_len=512)
    duration = number_field("RecordingDuration")
    with transaction(state().factory) as session:
        if calls.first_delivery(session, "voice.recording", recording_sid):
            calls.attach_voicemail(
                session,
                call_sid,
                recording_sid=recording_sid,
                recording_url=url or None,
                duration=duration,
            )
    vr = VoiceResponse()
    vr.say("Thanks, we got your message. Goodbye.")
    vr.hangup()
    return twiml(vr)


@blueprint.post("/transcription")
@signed
def transcription() -> Response:
    call_sid = sid_field("CallSid")
    recording_sid = sid_field("RecordingSid", required=False)
    field("TranscriptionSid", required=False, max_len=64)
    # Keyed on the (required) CallSid: one voicemail, one transcription per call. An optional field
    # could go missing from a replay that still verifies (Twilio's signature has no separators).
    key = call_sid
    text = field("TranscriptionText", required=False, max_len=8000)
    status = field("TranscriptionStatus", required=False, max_len=20)
    with transaction(state().factory) as session:
        if calls.first_delivery(session, "voice.transcription", key) and status != "failed" and text:
            calls.attach_transcript(session, call_sid, recording_sid=recording_sid or None, text=text)
    return Response(status=204)


# -- messaging -----------------------------------------------------------------------------------


@blueprint.post("/sms")
@signed
def sms() -> Response:
    message_sid = sid_field("MessageSid")
    caller_raw = field("From", max_len=64)
    called = field("To")
    body = field("Body", required=False, max_len=1600)
    opt_out_type = field("OptOutType", required=False, max_len=10) or None
    caller = to_e164(caller_raw)
    if caller is None:
        raise BadRequest("form field From is not a phone number")
    business = business_for(called)
    st = state()

    def run() -> Response:
        with transaction(st.factory) as session:
            if not calls.first_delivery(session, "sms.inbound", message_sid):
                return twiml_messaging()
            result = inbound.record(
                session,
                business,
                message_sid=message_sid,
                caller=caller,
                to_number=to_e164(called) or called,
                body=body,
                opt_out_type=opt_out_type,
            )
        log.info(
            "sms received",
            extra={
                "request_id": g.get("request_id"),
                "business": business.id,
                "lead_id": result.lead_id,
                "keyword": result.keyword,
            },
        )
        return twiml_messaging()

    return with_retry(run)


def twiml_messaging() -> Response:
    return Response('<?xml version="1.0" encoding="UTF-8"?><Response />', mimetype="application/xml")


@blueprint.post("/message-status")
@signed
def message_status() -> Response:
    sid = sid_field("MessageSid")
    status = field("MessageStatus", max_len=20).lower()
    if status not in texting.STATUS_RANK:
        raise BadRequest(f"unknown MessageStatus {status!r}")
    error_code = number_field("ErrorCode")
    message_id = request.args.get("m") or None
    if message_id and not _MESSAGE_ID.fullmatch(message_id):
        raise BadRequest("query parameter m is not a message id")

    def run() -> Response:
        # A Connection, not a Session: the usual callback is two Core statements (core.texting).
        with state().engine.begin() as conn:
            if texting.apply_status(
                conn,
                message_id=message_id,
                sid=sid,
                status=status,
                error_code=error_code,
            ):
                g.sms_status = (status, error_code)  # counted by bridge.metrics
        return Response(status=204)

    return with_retry(run)
