"""A local Twilio emulator: the REST API the bridge calls, and the webhooks Twilio would send it.

Twilio side (the real ``twilio`` SDK talks to it through :func:`connectors.twilio.client.make_client`):

- ``POST/GET /2010-04-01/Accounts/{AC}/Messages.json`` and ``GET .../Messages/{SM}.json``;
- ``GET /v2/PhoneNumbers/{n}`` (Lookup v2, ``line_type_intelligence``);
- signed message status callbacks (``sent`` then ``delivered``/``undelivered``/``failed``).

Emulator side (besides ``/_emulator/requests|state|faults|reset`` from :class:`EmulatorApp`):

- ``POST /_emulator/config``       bridge URL, auth token, per-number behaviour;
- ``POST /_emulator/inbound-sms``  deliver an SMS to ``{bridge_url}/twilio/sms``;
- ``POST /_emulator/calls``        play a whole call against the bridge (see ``emulator_calls``).

State lives in memory and is guarded by ``emulator.lock``. Webhooks are never sent under the lock.
"""

from __future__ import annotations

import hmac
import logging
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import urlencode

import phonenumbers
from flask import Response, jsonify, request

from connectors.emulator.base import EmulatorApp, Hosted, serve_foreground
from connectors.twilio.emulator_calls import (
    API_VERSION,
    CallDriver,
    new_sid,
    num_segments,
    parse_call,
    parse_inbound_sms,
    rfc2822,
)
from connectors.twilio.emulator_pool import POOL
from connectors.twilio.emulator_webhooks import WebhookError, signed_post

log = logging.getLogger(__name__)

_API = f"/{API_VERSION}/Accounts/<account>"
_E164 = re.compile(r"^\+[1-9]\d{1,14}$")
# Twilio's magic test numbers (https://www.twilio.com/docs/iam/test-credentials).
_MAGIC_TO = {
    "+15005550001": 21211,
    "+15005550002": 21612,
    "+15005550003": 21408,
    "+15005550009": 21614,
    "+15005550004": 21610,
}
_MAGIC_FROM = {"+15005550001": 21212, "+15005550007": 21606, "+15005550008": 21611}
_UNDELIVERED_CODES = {30006}  # other fail_codes end "failed" unless the number sets fail_status
_LINE_TYPES = {
    "mobile",
    "landline",
    "fixedVoip",
    "nonFixedVoip",
    "personal",
    "tollFree",
    "premium",
    "sharedCost",
    "uan",
    "voicemail",
    "pager",
    "unknown",
}


def _error_text(code: int, to: str = "", from_: str = "") -> str:
    return {
        21211: f"The 'To' number {to} is not a valid phone number.",
        21212: f"The 'From' number {from_} is not a valid phone number, shortcode, or alphanumeric "
        "sender ID.",
        21408: "Permission to send an SMS has not been enabled for the region indicated by the 'To' "
        f"number: {to}",
        21602: "Message body is required.",
        21603: "A 'From' phone number is required.",
        21604: "A 'To' phone number is required.",
        21606: "The 'From' phone number provided is not a valid message-capable Twilio phone number "
        "for this destination/account.",
        21610: "Attempt to send to unsubscribed recipient",
        21611: "This 'From' number has exceeded the maximum number of queued messages.",
        21612: "The 'To' phone number is not currently reachable via SMS.",
        21614: "'To' number is not a valid mobile number",
        21617: "The concatenated message body exceeds the 1600 character limit.",
        30003: "Unreachable destination handset",
        30005: "Unknown destination handset",
        30006: "Landline or unreachable carrier",
        30007: "Message filtered",
        30034: "Message from an unregistered number",
    }.get(code, f"Error {code}")


def twilio_error(code: int, message: str, status: int = 400) -> tuple[Response, int]:
    body = {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }
    return jsonify(body), status


def is_e164(number: str) -> bool:
    """Possible (not necessarily assigned) E.164: fictional 555 numbers pass, like in core.phones."""
    if not _E164.match(number):
        return False
    try:
        return phonenumbers.is_possible_number(phonenumbers.parse(number))
    except phonenumbers.NumberParseException:
        return False


@dataclass
class Message:
    sid: str
    account_sid: str
    to: str
    from_: str | None
    body: str
    status: str
    direction: str
    created: datetime
    messaging_service_sid: str | None = None
    status_callback: str | None = None
    error_code: int | None = None
    error_message: str | None = None
    updated: datetime = field(default_factory=lambda: datetime.now(UTC))
    statuses: list[str] = field(default_factory=list)

    def uri(self) -> str:
        return f"/{API_VERSION}/Accounts/{self.account_sid}/Messages/{self.sid}.json"

    def to_json(self) -> dict[str, Any]:
        """Twilio's Message resource."""
        return {
            "account_sid": self.account_sid,
            "api_version": API_VERSION,
            "body": self.body,
            "date_created": rfc2822(self.created),
            "date_sent": rfc2822(self.created),
            "date_updated": rfc2822(self.updated),
            "direction": self.direction,
            "error_code": self.error_code,
            "error_message": self.error_message,
            "from": self.from_,
            "messaging_service_sid": self.messaging_service_sid,
            "num_media": "0",
            "num_segments": str(num_segments(self.body)),
            "price": None,
            "price_unit": "USD",
            "sid": self.sid,
            "status": self.status,
            "subresource_uris": {
                "media": self.uri().replace(".json", "/Media.json"),
                "feedback": self.uri().replace(".json", "/Feedback.json"),
            },
            "to": self.to,
            "uri": self.uri(),
        }

    def summary(self) -> dict[str, Any]:
        return {
            "sid": self.sid,
            "to": self.to,
            "from": self.from_,
            "body": self.body,
            "status": self.status,
            "date_created": self.created.isoformat(),
            "error_code": self.error_code,
            "direction": self.direction,
            "status_callback": self.status_callback,
            "statuses": list(self.statuses),
        }


class TwilioEmulator(Hosted):
    """Twilio on 127.0.0.1: serve ``.app`` (e.g. with ``serve_in_thread``)."""

    def __init__(
        self, account_sid: str, auth_token: str, bridge_url: str | None = None, status_delay_ms: int = 30
    ) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.bridge_url = bridge_url
        self.status_delay_ms = status_delay_ms
        self.messages: list[Message] = []  # outbound, oldest first
        self.inbound: list[Message] = []
        self.calls: list[dict[str, Any]] = []
        self.numbers: dict[str, dict[str, Any]] = {}
        self._generation = 0  # bumped by reset so pending status callbacks stop
        self._progressing = 0  # messages whose statuses (and their callbacks) are still to come
        self.emulator = EmulatorApp("twilio", state=self._state, reset=self._reset)
        self._install()

    # -- shared-surface callbacks (called under the lock) --------------------------------------
    def _state(self) -> dict[str, Any]:
        return {
            "messages": [m.summary() for m in self.messages],
            "inbound": [m.summary() for m in self.inbound],
            "calls": [dict(c) for c in self.calls],
            "config": self._config(),
            "progressing": self._progressing,
        }

    @property
    def progressing(self) -> int:
        """How many messages still have statuses to reach, each with its status callback answered."""
        with self.lock:
            return self._progressing

    def _config(self) -> dict[str, Any]:
        return {
            "bridge_url": self.bridge_url,
            "status_delay_ms": self.status_delay_ms,
            "numbers": {k: dict(v) for k, v in self.numbers.items()},
        }

    def _reset(self) -> None:
        self.messages.clear()
        self.inbound.clear()
        self.calls.clear()
        self.numbers.clear()
        self._generation += 1

    # -- routes ---------------------------------------------------------------------------------
    def _install(self) -> None:
        app = self.app
        app.before_request(self._authenticate)
        app.add_url_rule(f"{_API}/Messages.json", view_func=self._create_message, methods=["POST"])
        app.add_url_rule(f"{_API}/Messages.json", view_func=self._list_messages, methods=["GET"])
        app.add_url_rule(f"{_API}/Messages/<sid>.json", view_func=self._fetch_message, methods=["GET"])
        app.add_url_rule("/v2/PhoneNumbers/<path:number>", view_func=self._lookup, methods=["GET"])
        app.add_url_rule("/_emulator/config", view_func=self._config_route, methods=["GET", "POST"])
        app.add_url_rule("/_emulator/inbound-sms", view_func=self._inbound_sms, methods=["POST"])
        app.add_url_rule("/_emulator/calls", view_func=self._call, methods=["POST"])
        app.register_error_handler(404, lambda _exc: self._not_found())

    def _authenticate(self) -> tuple[Response, int] | None:
        if request.path.startswith("/_emulator/"):
            return None
        auth = request.authorization
        with self.lock:
            sid, token = self.account_sid, self.auth_token
        if (
            auth is not None
            and hmac.compare_digest(str(auth.username or ""), sid)
            and hmac.compare_digest(str(auth.password or ""), token)
        ):
            account = (request.view_args or {}).get("account")
            if account is not None and account != sid:
                return self._not_found()
            return None
        response, status = twilio_error(20003, "Authenticate", 401)
        response.headers["WWW-Authenticate"] = 'Basic realm="Twilio API"'
        return response, status

    @staticmethod
    def _not_found() -> tuple[Response, int]:
        return twilio_error(20404, f"The requested resource {request.path} was not found", 404)

    # -- Messages ---------------------------------------------------------------------------------
    def _create_message(self, account: str) -> tuple[Response, int]:
        form = request.form
        to = form.get("To", "").strip()
        from_ = form.get("From", "").strip() or None
        body = form.get("Body", "")
        service = form.get("MessagingServiceSid") or None
        if not to:
            return twilio_error(21604, _error_text(21604))
        if not is_e164(to) or to in _MAGIC_TO:
            code = _MAGIC_TO.get(to, 21211)
            return twilio_error(code, _error_text(code, to=to))
        if from_ is None and service is None:
            return twilio_error(21603, _error_text(21603))
        if from_ is not None and from_ in _MAGIC_FROM:
            code = _MAGIC_FROM[from_]
            return twilio_error(code, _error_text(code, from_=from_))
        if not body and not form.get("MediaUrl") and not form.get("ContentSid"):
            return twilio_error(21602, _error_text(21602))
        if len(body) > 1600:
            return twilio_error(21617, _error_text(21617))
        with self.lock:
            number = dict(self.numbers.get(to, {}))
            if number.get("reject_code"):
                code = int(number["reject_code"])
                return twilio_error(code, _error_text(code, to=to, from_=from_ or ""))
            now = datetime.now(UTC)
            message = Message(
                sid=new_sid("SM"),
                account_sid=self.account_sid,
                to=to,
                from_=from_,
                body=body,
                status="queued",
                direction="outbound-api",
                created=now,
                updated=now,
                messaging_service_sid=service,
                statuses=["queued"],
                status_callback=form.get("StatusCallback") or None,
            )
            self.messages.append(message)
            payload = message.to_json()
            generation = self._generation
        self._progress(message, _plan(number), generation)
        return jsonify(payload), 201

    def _progress(self, message: Message, plan: list[tuple[str, int | None]], generation: int) -> None:
        """Move ``message`` through the plan's statuses, each ``status_delay_ms`` after the previous
        status callback was answered, posting each status callback (on a pooled thread)."""

        def run() -> None:
            try:
                for step in plan:
                    with self.lock:
                        delay = self.status_delay_ms / 1000
                    time.sleep(delay)
                    if not self._advance(message, step, generation):
                        return
            finally:
                with self.lock:
                    self._progressing -= 1

        with self.lock:
            self._progressing += 1
        POOL.submit(run)

    def _advance(self, message: Message, step: tuple[str, int | None], generation: int) -> bool:
        """Apply one status and post its callback; False once a reset has forgotten the message."""
        status, code = step
        with self.lock:
            if generation != self._generation:
                return False
            message.status = status
            message.updated = datetime.now(UTC)
            message.statuses.append(status)
            if code is not None:
                message.error_code = code
                message.error_message = _error_text(code)
            token = self.auth_token
        if message.status_callback:
            params = {
                "MessageSid": message.sid,
                "SmsSid": message.sid,
                "MessageStatus": status,
                "SmsStatus": status,
                "AccountSid": message.account_sid,
                "From": message.from_ or "",
                "To": message.to,
                "ApiVersion": API_VERSION,
            }
            if message.messaging_service_sid:
                params["MessagingServiceSid"] = message.messaging_service_sid
            if code is not None:
                params["ErrorCode"] = str(code)
            try:
                signed_post(message.status_callback, params, token)
            except WebhookError as exc:
                log.info("status callback for %s not delivered: %s", message.sid, exc)
        return True

    def _fetch_message(self, account: str, sid: str) -> tuple[Response, int]:
        with self.lock:
            found = next((m for m in [*self.messages, *self.inbound] if m.sid == sid), None)
            if found is not None:
                return jsonify(found.to_json()), 200
        return self._not_found()

    def _list_messages(self, account: str) -> tuple[Response, int]:
        args = request.args
        filters = [(k, args[k]) for k in ("To", "From", "DateSent", "DateSent>", "DateSent<") if k in args]
        checks = []
        for key, raw in filters:
            if key.startswith("DateSent"):
                try:
                    bound, date_only = _parse_date(raw)
                except ValueError:
                    return twilio_error(20001, f"Invalid {key}: {raw!r}")
                checks.append((key[8:] or "=", bound, date_only))
        try:
            page = max(0, int(args.get("Page", 0)))
            size = min(1000, max(1, int(args.get("PageSize", 50))))
        except ValueError:
            return twilio_error(20001, "Page and PageSize must be integers")
        with self.lock:
            pool = [*self.messages, *self.inbound]
            picked = [m for m in pool if _matches(m, dict(filters), checks)]
            picked.sort(key=lambda m: m.created, reverse=True)
            rows = [m.to_json() for m in picked[page * size : (page + 1) * size]]
        base = f"/{API_VERSION}/Accounts/{account}/Messages.json"

        def page_uri(n: int) -> str:
            return f"{base}?{urlencode([*filters, ('PageSize', size), ('Page', n)])}"

        more = len(picked) > (page + 1) * size
        start = page * size
        return jsonify(
            {
                "messages": rows,
                "page": page,
                "page_size": size,
                "start": start,
                "end": start + max(len(rows) - 1, 0),
                "uri": page_uri(page),
                "first_page_uri": page_uri(0),
                "next_page_uri": page_uri(page + 1) if more else None,
                "previous_page_uri": page_uri(page - 1) if page > 0 else None,
            }
        ), 200

    # -- Lookup v2 --------------------------------------------------------------------------------
    def _lookup(self, number: str) -> tuple[Response, int]:
        fields = {f.strip() for f in request.args.get("Fields", "").split(",") if f.strip()}
        region = request.args.get("CountryCode") or "US"
        parsed: phonenumbers.PhoneNumber | None
        try:
            parsed = phonenumbers.parse(number, region)
            errors = [] if phonenumbers.is_possible_number(parsed) else ["INVALID_LENGTH"]
        except phonenumbers.NumberParseException:
            parsed, errors = None, ["NOT_A_NUMBER"]
        valid = not errors and parsed is not None
        e164 = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164) if parsed else number
        country = None
        if parsed is not None:
            country = phonenumbers.region_code_for_number(
                parsed
            ) or phonenumbers.region_code_for_country_code(parsed.country_code or 0)
        with self.lock:
            config = dict(self.numbers.get(e164, {}))
        body: dict[str, Any] = {
            "calling_country_code": str(parsed.country_code) if parsed else None,
            "country_code": country,
            "phone_number": e164,
            "national_format": (
                phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.NATIONAL)
                if parsed
                else None
            ),
            "valid": valid,
            "validation_errors": errors,
            "caller_name": None,
            "sim_swap": None,
            "call_forwarding": None,
            "line_status": None,
            "line_type_intelligence": None,
            "identity_match": None,
            "reassigned_number": None,
            "sms_pumping_risk": None,
            "phone_number_quality_score": None,
            "pre_fill": None,
            "url": f"https://lookups.twilio.com/v2/PhoneNumbers/{e164}",
        }
        if valid and "line_type_intelligence" in fields:
            line_type = str(config.get("line_type") or "mobile")
            mobile = line_type in ("mobile", "nonFixedVoip")
            body["line_type_intelligence"] = {
                "carrier_name": config.get("carrier_name") or f"Emulated {line_type} carrier",
                "mobile_country_code": "310" if mobile else None,
                "mobile_network_code": "456" if mobile else None,
                "type": line_type,
                "error_code": None,
            }
        return jsonify(body), 200

    # -- emulator-only ----------------------------------------------------------------------------
    def _config_route(self) -> tuple[Response, int]:
        if request.method == "POST":
            spec = request.get_json(silent=True)
            problem = _check_config(spec)
            if problem:
                return jsonify({"error": problem}), 400
            assert isinstance(spec, dict)
            with self.lock:
                if "bridge_url" in spec:
                    self.bridge_url = spec["bridge_url"]
                if "auth_token" in spec:
                    self.auth_token = spec["auth_token"]
                if "status_delay_ms" in spec:
                    self.status_delay_ms = int(spec["status_delay_ms"])
                for num, cfg in (spec.get("numbers") or {}).items():
                    self.numbers.setdefault(num, {}).update(cfg)
        with self.lock:
            return jsonify(self._config()), 200

    def _inbound_sms(self) -> tuple[Response, int]:
        sms = parse_inbound_sms(request.get_json(silent=True))
        if isinstance(sms, str):
            return jsonify({"error": sms}), 400
        with self.lock:
            bridge, token, account = self.bridge_url, self.auth_token, self.account_sid
            if not bridge:
                return jsonify({"error": "no bridge_url configured (POST /_emulator/config)"}), 400
            now = datetime.now(UTC)
            message = Message(
                sid=sms.message_sid or new_sid("SM"),
                account_sid=account,
                to=sms.to,
                from_=sms.from_,
                body=sms.body,
                status="received",
                direction="inbound",
                created=now,
                updated=now,
                statuses=["received"],
            )
            self.inbound.append(message)
        url = f"{bridge.rstrip('/')}/twilio/sms"
        try:
            response = signed_post(url, sms.params(account, message.sid), token)
        except WebhookError as exc:
            return jsonify({"message_sid": message.sid, "error": f"POST {url} failed: {exc}"}), 502
        return jsonify(
            {"message_sid": message.sid, "status": response.status_code, "response": response.text}
        ), 200

    def _call(self) -> tuple[Response, int]:
        spec = parse_call(request.get_json(silent=True))
        if isinstance(spec, str):
            return jsonify({"error": spec}), 400
        with self.lock:
            bridge, token, account = self.bridge_url, self.auth_token, self.account_sid
        if not bridge:
            return jsonify({"error": "no bridge_url configured (POST /_emulator/config)"}), 400
        driver = CallDriver(
            spec, account_sid=account, auth_token=token, bridge_url=bridge, emulator_url=request.host_url
        )
        report = driver.run()  # never under the lock: the bridge may call the REST API meanwhile
        with self.lock:
            self.calls.append(
                {
                    "sid": driver.sid,
                    "from": spec.from_,
                    "to": spec.to,
                    "outcome": spec.outcome,
                    "status": report["status"],
                    "duration": report["duration"],
                    "started_at": report["started_at"],
                    "error": report.get("error"),
                }
            )
        return jsonify(report), 200


def _plan(number: dict[str, Any]) -> list[tuple[str, int | None]]:
    """The statuses (and error codes) an accepted message moves through: sent, then delivered or not."""
    if not number.get("fail_code"):
        return [("sent", None), ("delivered", None)]
    fail = int(number["fail_code"])
    final = number.get("fail_status") or ("undelivered" if fail in _UNDELIVERED_CODES else "failed")
    return [("sent", None), (str(final), fail)]


def _matches(message: Message, filters: dict[str, str], checks: list[tuple[str, datetime, bool]]) -> bool:
    if "To" in filters and message.to != filters["To"]:
        return False
    if "From" in filters and message.from_ != filters["From"]:
        return False
    sent = message.created.replace(microsecond=0)
    for op, bound, date_only in checks:
        left: date | datetime = sent.date() if date_only else sent
        right: date | datetime = bound.date() if date_only else bound
        if (op == "=" and left != right) or (op == ">" and left < right) or (op == "<" and left > right):
            return False
    return True


def _parse_date(raw: str) -> tuple[datetime, bool]:
    """``YYYY-MM-DD`` (a whole GMT day) or an ISO 8601 datetime (naive means UTC)."""
    raw = raw.strip()
    if len(raw) == 10:
        day = date.fromisoformat(raw)
        return datetime(day.year, day.month, day.day, tzinfo=UTC), True
    moment = datetime.fromisoformat(raw)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC), False


def _check_config(spec: Any) -> str | None:
    if not isinstance(spec, dict):
        return "send a JSON object: {bridge_url?, auth_token?, status_delay_ms?, numbers?}"
    unknown = set(spec) - {"bridge_url", "auth_token", "status_delay_ms", "numbers"}
    if unknown:
        return f"unknown config keys: {sorted(unknown)}"
    if "bridge_url" in spec and spec["bridge_url"] is not None and not isinstance(spec["bridge_url"], str):
        return "bridge_url must be a string or null"
    if "auth_token" in spec and not (isinstance(spec["auth_token"], str) and spec["auth_token"]):
        return "auth_token must be a non-empty string"
    delay = spec.get("status_delay_ms", 0)
    if isinstance(delay, bool) or not isinstance(delay, int) or delay < 0:
        return "status_delay_ms must be a non-negative integer"
    numbers = spec.get("numbers") or {}
    if not isinstance(numbers, dict):
        return "numbers must map E.164 numbers to settings"
    for num, cfg in numbers.items():
        if not isinstance(cfg, dict):
            return f"numbers[{num!r}] must be an object"
        extra = set(cfg) - {"line_type", "carrier_name", "reject_code", "fail_code", "fail_status"}
        if extra:
            return f"numbers[{num!r}]: unknown keys {sorted(extra)}"
        if "line_type" in cfg and cfg["line_type"] not in _LINE_TYPES:
            return f"numbers[{num!r}].line_type must be one of {sorted(_LINE_TYPES)}"
        for key in ("reject_code", "fail_code"):
            if cfg.get(key) is not None and (isinstance(cfg[key], bool) or not isinstance(cfg[key], int)):
                return f"numbers[{num!r}].{key} must be an integer error code"
        if cfg.get("fail_status") not in (None, "undelivered", "failed"):
            return f"numbers[{num!r}].fail_status must be 'undelivered' or 'failed'"
    return None


def run(host: str, port: int, account_sid: str, auth_token: str, bridge_url: str | None) -> None:
    """Serve in the foreground (werkzeug threaded server) until Ctrl-C."""
    emulator = TwilioEmulator(account_sid, auth_token, bridge_url=bridge_url)
    log.info("Twilio emulator on http://%s:%s (bridge %s)", host, port, bridge_url or "-")
    serve_foreground(emulator.app, host, port)
