"""The SMS gateway on the twilio SDK: sending, finding an earlier send, and Lookup v2.

Twilio's errors are mapped onto textback's taxonomy (core.errors) here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import requests
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.rest import Client

from core.errors import AuthError, JobError, Rejected
from core.phones import redact_numbers
from core.sending import AmbiguousSend, NotSent, SentMessage
from core.texting import PERMANENT_CODES

# Codes that say "this request can never succeed as sent" besides the number-marking ones.
_REJECT_CODES = {21408, 21606, 21612, 21617, 21602, 21603, 21604, 21619, 30034}


# Told every send's result: ("sent", ""), ("failed", code) or ("unknown", code) when it may exist.
SendObserver = Callable[[str, str], None]


class TwilioGateway:
    def __init__(self, client: Client, observe: SendObserver | None = None) -> None:
        self.client = client
        self.observe = observe

    def send(self, *, to: str, from_: str, body: str, status_callback: str | None) -> SentMessage:
        try:
            sent = self._send(to=to, from_=from_, body=body, status_callback=status_callback)
        except JobError as exc:
            if self.observe is not None:
                ambiguous = isinstance(exc, AmbiguousSend)
                code = str(exc.code) if exc.code is not None else ("no_response" if ambiguous else "network")
                self.observe("unknown" if ambiguous else "failed", code)
            raise
        if self.observe is not None:
            self.observe("sent", "")
        return sent

    def _send(self, *, to: str, from_: str, body: str, status_callback: str | None) -> SentMessage:
        kwargs = {"to": to, "from_": from_, "body": body}
        if status_callback:
            kwargs["status_callback"] = status_callback
        try:
            message = self.client.messages.create(**kwargs)
        except TwilioRestException as exc:
            raise _classify(exc) from None
        except requests.exceptions.ConnectTimeout:
            raise NotSent("could not connect to Twilio (timeout)") from None
        except requests.exceptions.ReadTimeout:
            raise AmbiguousSend("Twilio did not answer in time; the message may exist") from None
        except requests.exceptions.ConnectionError as exc:
            # Refused before anything was sent is safe to resend; a reset mid-response is not.
            if "refused" in str(exc).lower() or "Failed to establish" in str(exc):
                raise NotSent("could not connect to Twilio") from None
            raise AmbiguousSend("the connection to Twilio broke; the message may exist") from None
        except TwilioException:
            raise AmbiguousSend("Twilio's answer could not be read; the message may exist") from None
        return SentMessage(sid=str(message.sid), status=str(message.status or "queued"))

    def find_sent(self, *, to: str, from_: str, body: str, since: datetime) -> SentMessage | None:
        try:
            candidates = self.client.messages.list(to=to, from_=from_, limit=20)
        except TwilioRestException as exc:
            if exc.status == 401 or exc.code == 20003:
                raise _classify(exc) from None  # an AuthError, so the admin sees the real cause
            raise AmbiguousSend("could not check Twilio for an earlier send") from None
        except (TwilioException, requests.exceptions.RequestException):
            raise AmbiguousSend("could not check Twilio for an earlier send") from None
        for message in candidates:
            created = message.date_created
            if created is not None and created.tzinfo is None:
                created = created.replace(tzinfo=UTC)
            if message.body == body and (created is None or created >= since):
                return SentMessage(sid=str(message.sid), status=str(message.status or "queued"))
        return None

    def line_type(self, phone: str) -> str | None:
        try:
            result = self.client.lookups.v2.phone_numbers(phone).fetch(fields="line_type_intelligence")
        except TwilioRestException as exc:
            raise _classify(exc) from None
        except (TwilioException, requests.exceptions.RequestException):
            raise NotSent("Twilio Lookup is unreachable") from None
        info = result.line_type_intelligence or {}
        kind = info.get("type") if isinstance(info, dict) else None
        return str(kind) if kind else None


def _classify(exc: TwilioRestException) -> Exception:
    code = exc.code
    status = exc.status
    label = f"Twilio error {code}" if code else f"Twilio HTTP {status}"
    if status == 429 or code == 20429:
        return NotSent(f"{label}: too many requests", code=code)
    if status == 401 or code == 20003:
        return AuthError(f"{label}: Twilio rejected the account SID or auth token", code=code)
    if code in PERMANENT_CODES or code in _REJECT_CODES:
        return Rejected(f"{label}: {redact_numbers(str(exc.msg))}", code=code)
    if status is not None and status >= 500:
        return AmbiguousSend(f"{label}: Twilio server error; the message may exist", code=code)
    if status is not None and 400 <= status < 500:
        return Rejected(f"{label}: {redact_numbers(str(exc.msg))}", code=code)
    return AmbiguousSend(label, code=code)
