"""The Twilio emulator's call driver: plays one inbound call against the bridge's voice webhooks.

It follows the TwiML the bridge returns the way Twilio would, on a virtual clock (nothing sleeps):
``<Say>``/``<Play>``/``<Pause>``, ``<Gather>``, ``<Redirect>``, ``<Hangup>``, ``<Reject>``,
``<Dial>`` with ``<Number url=...>`` screening legs, and ``<Record>`` with transcription.
Every request is form-encoded and carries a valid ``X-Twilio-Signature``.

Also home to the helpers the REST side shares (sids, RFC 2822 dates, signed POSTs).
"""

from __future__ import annotations

import math
import secrets
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any, NoReturn
from urllib.parse import urljoin

from connectors.twilio.emulator_webhooks import WebhookError, signed_post

API_VERSION = "2010-04-01"
OUTCOMES = ("no-answer", "busy", "failed", "canceled", "completed", "voicemail")
TALK_SECONDS = 30  # a bridged call lasts this long
SCREEN_SECONDS = 5  # a child leg that answers but is not bridged (voicemail, declined screen)
MAX_REQUESTS = 50  # per call; stops Redirect/Record loops
_GSM = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿"
    "abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM_EXT = set("^{}\\[~]|€\f")


def new_sid(prefix: str) -> str:
    """A Twilio-style sid: two letters and 32 hex digits."""
    return prefix + secrets.token_hex(16)


def rfc2822(moment: datetime | float) -> str:
    """Twilio's date format: ``Fri, 27 Nov 2026 05:38:13 +0000``."""
    if not isinstance(moment, datetime):
        moment = datetime.fromtimestamp(moment, UTC)
    return format_datetime(moment.astimezone(UTC).replace(microsecond=0))


def num_segments(body: str) -> int:
    """SMS segments: GSM-7 (160, or 153 per part) or UCS-2 (70, or 67 per part)."""
    if all(ch in _GSM or ch in _GSM_EXT for ch in body):
        units = sum(2 if ch in _GSM_EXT else 1 for ch in body)
        return 1 if units <= 160 else math.ceil(units / 153)
    units = len(body.encode("utf-16-le")) // 2
    return 1 if units <= 70 else math.ceil(units / 67)


@dataclass
class CallSpec:
    """What the caller (and the staff phone) will do."""

    from_: str
    to: str
    outcome: str
    ring_seconds: float = 5.0
    voicemail_text: str | None = None
    call_sid: str | None = None


def parse_call(spec: Any) -> CallSpec | str:
    """The ``/_emulator/calls`` body as a :class:`CallSpec`, or why it is not one."""
    if not isinstance(spec, dict):
        return "send a JSON object: {from, to, outcome, ring_seconds?, voicemail_text?, call_sid?}"
    problem = _check_strings(spec, ("from", "to", "outcome"), ("voicemail_text", "call_sid"))
    if problem:
        return problem
    if spec["outcome"] not in OUTCOMES:
        return f"unknown outcome {spec['outcome']!r}; use one of {', '.join(OUTCOMES)}"
    ring = spec.get("ring_seconds", 5)
    if isinstance(ring, bool) or not isinstance(ring, (int, float)) or ring < 0:
        return "ring_seconds must be a non-negative number"
    return CallSpec(from_=spec["from"], to=spec["to"], outcome=spec["outcome"], ring_seconds=float(ring),
                    voicemail_text=spec.get("voicemail_text"), call_sid=spec.get("call_sid"))


@dataclass
class InboundSms:
    from_: str
    to: str
    body: str
    message_sid: str | None = None
    opt_out_type: str | None = None

    def params(self, account_sid: str, sid: str) -> dict[str, str]:
        """What Twilio posts to the number's messaging webhook."""
        params = {"MessageSid": sid, "SmsSid": sid, "SmsMessageSid": sid, "AccountSid": account_sid,
                  "From": self.from_, "To": self.to, "Body": self.body, "NumMedia": "0",
                  "NumSegments": str(num_segments(self.body)), "SmsStatus": "received",
                  "ApiVersion": API_VERSION}
        if self.opt_out_type:
            params["OptOutType"] = self.opt_out_type
        return params


def parse_inbound_sms(spec: Any) -> InboundSms | str:
    """The ``/_emulator/inbound-sms`` body, or why it is not one."""
    if not isinstance(spec, dict):
        return "send a JSON object: {from, to, body, message_sid?, opt_out_type?}"
    problem = _check_strings(spec, ("from", "to"), ("body", "message_sid", "opt_out_type"))
    if problem:
        return problem
    if spec.get("opt_out_type") not in (None, "STOP", "START", "HELP"):
        return "opt_out_type must be STOP, START or HELP"
    return InboundSms(from_=spec["from"], to=spec["to"], body=spec.get("body") or "",
                      message_sid=spec.get("message_sid"), opt_out_type=spec.get("opt_out_type"))


def _check_strings(spec: dict[str, Any], required: tuple[str, ...], optional: tuple[str, ...]) -> str | None:
    for key in required:
        if not isinstance(spec.get(key), str) or not spec[key]:
            return f"'{key}' is required and must be a non-empty string"
    for key in optional:
        if spec.get(key) is not None and not isinstance(spec[key], str):
            return f"'{key}' must be a string"
    return None


class _CallEnded(Exception):
    """The caller or Twilio hung up."""


class _FlowError(Exception):
    """A webhook failed (non-2xx, unreachable, unparseable); the flow stops."""


class CallDriver:
    """Runs one call synchronously. Use :meth:`run`; it returns the report for ``/_emulator/calls``."""

    def __init__(self, spec: CallSpec, *, account_sid: str, auth_token: str, bridge_url: str,
                 emulator_url: str) -> None:
        self.spec = spec
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.bridge_url = bridge_url.rstrip("/")
        self.emulator_url = emulator_url.rstrip("/")
        self.sid = spec.call_sid or new_sid("CA")
        self.t0 = time.time()
        self.elapsed = 0.0  # simulated seconds since t0
        self.answered_at: float | None = None  # simulated second the inbound leg was answered
        self.bridged = False
        self.canceled = False
        self.reject_status: str | None = None
        self.last_dial_status: str | None = None
        self.steps: list[dict[str, Any]] = []
        self.error: str | None = None
        self._requests = 0

    # -- public ---------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        url = f"{self.bridge_url}/twilio/voice"
        try:
            self._execute(self._fetch(url, self._parent_params(), "parent"), url)
        except _CallEnded:
            pass
        except _FlowError:
            # Twilio reads "an application error has occurred" to the caller and hangs up.
            self._answer()
        status, duration = self._final_status()
        params = self._parent_params() | {
            "CallStatus": status,
            "CallDuration": str(duration),
            "Timestamp": rfc2822(self.t0 + self.elapsed),
            "CallbackSource": "call-progress-events",
            "SequenceNumber": "0",
        }
        try:
            self._post(f"{self.bridge_url}/twilio/call-status", params, "parent")
        except _FlowError:
            pass
        report: dict[str, Any] = {
            "call_sid": self.sid,
            "status": status,
            "duration": duration,
            "started_at": rfc2822(self.t0),
            "elapsed_seconds": self.elapsed,
            "steps": self.steps,
        }
        if self.error:
            report["error"] = self.error
        return report

    # -- state -------------------------------------------------------------------------------------
    def _answer(self) -> None:
        if self.answered_at is None:
            self.answered_at = self.elapsed

    def _final_status(self) -> tuple[str, int]:
        if self.answered_at is not None:
            return "completed", round(self.elapsed - self.answered_at)
        if self.reject_status:
            return self.reject_status, 0
        if not self.canceled and self.last_dial_status in ("busy", "failed"):
            return self.last_dial_status, 0
        return "no-answer", 0

    def _parent_params(self) -> dict[str, str]:
        return {
            "CallSid": self.sid,
            "AccountSid": self.account_sid,
            "From": self.spec.from_,
            "To": self.spec.to,
            "Caller": self.spec.from_,
            "Called": self.spec.to,
            "CallStatus": "in-progress" if self.answered_at is not None else "ringing",
            "Direction": "inbound",
            "ApiVersion": API_VERSION,
        }

    def _note(self, leg: str, verb: ET.Element, **extra: Any) -> None:
        text = (verb.text or "").strip()
        self.steps.append({"leg": leg, "verb": verb.tag, "text": text, "attrs": dict(verb.attrib),
                           "at": self.elapsed, **extra})

    # -- HTTP ------------------------------------------------------------------------------------
    def _post(self, url: str, params: dict[str, str], leg: str) -> str:
        self._requests += 1
        step: dict[str, Any] = {"leg": leg, "url": url, "params": params, "status": None, "twiml": "",
                                "at": self.elapsed}
        self.steps.append(step)
        if self._requests > MAX_REQUESTS:
            step["error"] = f"more than {MAX_REQUESTS} requests in one call (a Redirect loop?)"
            return self._fail(step["error"])
        try:
            response = signed_post(url, params, self.auth_token)
        except WebhookError as exc:
            step["error"] = str(exc)
            return self._fail(f"POST {url} failed: {step['error']}")
        step["status"] = response.status_code
        step["twiml"] = response.text
        if not 200 <= response.status_code < 300:
            return self._fail(f"POST {url} returned HTTP {response.status_code}")
        return response.text

    def _fail(self, message: str) -> NoReturn:
        if self.error is None:
            self.error = message
        raise _FlowError(message)

    def _fetch(self, url: str, params: dict[str, str], leg: str) -> ET.Element:
        text = self._post(url, params, leg)
        if not text.strip():
            return ET.Element("Response")
        try:
            root = ET.fromstring(text)  # noqa: S314 - the bridge under test is trusted
        except ET.ParseError as exc:
            self.steps[-1]["error"] = f"not TwiML: {exc}"
            self._fail(f"POST {url} returned a body that is not TwiML (Twilio error 12100): {exc}")
        if root.tag != "Response":
            self._fail(f"POST {url} returned <{root.tag}>, not <Response> (Twilio error 12100)")
        return root

    # -- parent leg ------------------------------------------------------------------------------
    def _execute(self, doc: ET.Element, doc_url: str) -> None:
        """Run ``doc``'s verbs; returns when the document ends or control moved to another document."""
        for verb in doc:
            tag = verb.tag
            if tag in ("Say", "Play"):
                self._answer()
                self._note("parent", verb)
            elif tag == "Pause":
                self._answer()
                self._note("parent", verb)
                self.elapsed += _number(verb.get("length"), 1)
            elif tag == "Hangup":
                self._answer()
                self._note("parent", verb)
                raise _CallEnded
            elif tag == "Reject":
                self._note("parent", verb)
                if self.answered_at is None:
                    self.reject_status = "busy" if verb.get("reason") == "busy" else "no-answer"
                raise _CallEnded
            elif tag == "Redirect":
                url = urljoin(doc_url, (verb.text or "").strip() or doc_url)
                self._note("parent", verb)
                self._execute(self._fetch(url, self._parent_params(), "parent"), url)
                return
            elif tag == "Gather":
                self._answer()
                self._note("parent", verb, note="the caller presses nothing")
                self.elapsed += _number(verb.get("timeout"), 5)
            elif tag == "Record":
                if self._record(verb, doc_url):
                    return
            elif tag == "Dial":
                if self._dial(verb, doc_url):
                    return
            else:
                self._note("parent", verb, note="not emulated; skipped")

    def _record(self, verb: ET.Element, doc_url: str) -> bool:
        self._answer()
        self._note("parent", verb)
        text = (self.spec.voicemail_text or "").strip()
        if not text:
            raise _CallEnded  # the caller hangs up at the beep
        duration = max(1, len(text.split()))
        max_length = verb.get("maxLength")
        if max_length:
            duration = min(duration, max(1, int(_number(max_length, 3600))))
        self.elapsed += duration
        rec_sid = new_sid("RE")
        rec_url = f"{self.emulator_url}/{API_VERSION}/Accounts/{self.account_sid}/Recordings/{rec_sid}"
        action = urljoin(doc_url, verb.get("action") or doc_url)
        params = self._parent_params() | {
            "RecordingUrl": rec_url,
            "RecordingSid": rec_sid,
            "RecordingDuration": str(duration),
        }
        doc = self._fetch(action, params, "parent")
        callback = verb.get("transcribeCallback")
        if callback:
            self._post(urljoin(doc_url, callback), {
                "TranscriptionSid": new_sid("TR"),
                "TranscriptionText": text,
                "TranscriptionStatus": "completed",
                "RecordingSid": rec_sid,
                "RecordingUrl": rec_url,
                "CallSid": self.sid,
                "AccountSid": self.account_sid,
                "From": self.spec.from_,
                "To": self.spec.to,
            }, "parent")
        self._execute(doc, action)
        return True

    def _dial(self, verb: ET.Element, doc_url: str) -> bool:
        """Returns True when the Dial had an action (control moved to its response)."""
        if (verb.get("answerOnBridge") or "").lower() != "true":
            self._answer()  # without answerOnBridge Twilio answers the caller before dialling
        timeout = _number(verb.get("timeout"), 30)
        targets = [((n.text or "").strip(), n.get("url")) for n in verb]
        if not targets and (verb.text or "").strip():
            targets = [((verb.text or "").strip(), None)]
        self._note("parent", verb, numbers=[t[0] for t in targets], outcome=self.spec.outcome)
        outcome = self.spec.outcome
        child_sid = new_sid("CA")
        bridged = False
        duration = 0
        if outcome == "canceled":
            self.elapsed += self.spec.ring_seconds
            self.canceled = True
            raise _CallEnded
        if outcome == "no-answer":
            self.elapsed += timeout
        elif outcome in ("completed", "voicemail"):
            self.elapsed += min(self.spec.ring_seconds, timeout)
            screened = next((t for t in targets if t[1]), None)
            if screened is None:
                bridged = True
            else:
                child = {
                    "CallSid": child_sid,
                    "ParentCallSid": self.sid,
                    "AccountSid": self.account_sid,
                    "From": self.spec.from_,
                    "To": screened[0],
                    "Caller": self.spec.from_,
                    "Called": screened[0],
                    "Direction": "outbound-dial",
                    "CallStatus": "in-progress",
                    "ApiVersion": API_VERSION,
                }
                url = urljoin(doc_url, screened[1] or "")
                bridged = self._child(self._fetch(url, child, "child"), url, child, outcome == "completed")
            if bridged:
                self._answer()
                duration = TALK_SECONDS
            else:
                duration = SCREEN_SECONDS
            self.elapsed += duration
        status = "completed" if outcome in ("completed", "voicemail") else outcome
        self.last_dial_status = status
        self.bridged = self.bridged or bridged
        action = verb.get("action")
        if not action:
            return False
        url = urljoin(doc_url, action)
        params = self._parent_params() | {
            "DialCallStatus": status,
            "DialCallSid": child_sid,
            "DialCallDuration": str(duration),
            "DialBridged": "true" if bridged else "false",
        }
        self._execute(self._fetch(url, params, "parent"), url)
        return True

    # -- child (staff) leg -------------------------------------------------------------------------
    def _child(self, doc: ET.Element, doc_url: str, params: dict[str, str], human: bool) -> bool:
        """Run the screening TwiML on the staff leg; True when it ends without hanging up (bridges)."""
        for verb in doc:
            if verb.tag in ("Hangup", "Reject"):
                self._note("child", verb)
                return False
            if verb.tag == "Gather" and human:
                self._note("child", verb, note="the person presses 1")
                url = urljoin(doc_url, verb.get("action") or doc_url)
                pressed = params | {"Digits": "1"}
                return self._child(self._fetch(url, pressed, "child"), url, params, human)
            if verb.tag == "Redirect":
                self._note("child", verb)
                url = urljoin(doc_url, (verb.text or "").strip() or doc_url)
                return self._child(self._fetch(url, params, "child"), url, params, human)
            note = "a machine presses nothing; the Gather times out" if verb.tag == "Gather" else ""
            self._note("child", verb, note=note)
        return True


def _number(raw: str | None, default: float) -> float:
    try:
        return float(raw) if raw not in (None, "") else default
    except ValueError:
        return default
