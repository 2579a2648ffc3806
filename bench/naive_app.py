"""The naive baseline: a Flask app that does everything inside the Twilio webhook.

It checks the signature, then, before answering Twilio, sends the text with the Twilio SDK and
writes the lead to HubSpot (contact upsert, deal, call, task, and a note with the text) with
blocking HTTP calls, and answers only when all of that is done. No database, no outbox, no
retries: a CRM error is logged and the lead is simply not synced. Served by gunicorn with the same
settings as ``textback serve`` (see bench/stack.py). Configured from the environment (NAIVE_*).

    gunicorn -k gthread --threads 4 -w 2 'bench.naive_app:create_app()'
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from datetime import UTC, datetime
from typing import Any

import requests
from flask import Flask, Response, request
from twilio.request_validator import RequestValidator
from twilio.twiml.voice_response import Dial, VoiceResponse

from connectors.twilio.client import make_client

log = logging.getLogger("naive")
PHONE_PROPERTY = "textback_phone_e164"
# HUBSPOT_DEFINED association type ids.
DEAL_TO_CONTACT, CALL_TO_CONTACT, TASK_TO_CONTACT, NOTE_TO_CONTACT = 3, 194, 204, 202


def _assoc(to_id: str, type_id: int) -> list[dict[str, Any]]:
    return [
        {
            "to": {"id": to_id},
            "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": type_id}],
        }
    ]


def _now_ms() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class Naive:
    def __init__(self) -> None:
        env = os.environ
        self.public_url = env["NAIVE_PUBLIC_URL"].rstrip("/")
        self.account_sid = env["NAIVE_ACCOUNT_SID"]
        self.auth_token = env["NAIVE_AUTH_TOKEN"]
        self.twilio_url = env["NAIVE_TWILIO_URL"]
        self.hubspot_url = env["NAIVE_HUBSPOT_URL"].rstrip("/")
        self.hubspot_token = env["NAIVE_HUBSPOT_TOKEN"]
        self.numbers = set(json.loads(env.get("NAIVE_NUMBERS", "[]")))
        self.mode = env.get("NAIVE_MODE", "forward")
        self.validator = RequestValidator(self.auth_token)
        self.local = threading.local()

    # Per thread: the SDK client and a requests session (neither is documented as thread-safe).
    def twilio(self) -> Any:
        if not hasattr(self.local, "twilio"):
            self.local.twilio = make_client(
                self.account_sid, self.auth_token, base_url=self.twilio_url, timeout=10
            )
        return self.local.twilio

    def http(self) -> requests.Session:
        if not hasattr(self.local, "http"):
            s = requests.Session()
            s.headers["Authorization"] = f"Bearer {self.hubspot_token}"
            self.local.http = s
        return self.local.http

    def hubspot(self, method: str, path: str, body: Any) -> dict[str, Any]:
        r = self.http().request(method, self.hubspot_url + path, json=body, timeout=10)
        if r.status_code == 409 and "properties" in path:
            return {}
        r.raise_for_status()
        return dict(r.json()) if r.content else {}

    def ensure_property(self) -> None:
        self.hubspot(
            "POST",
            "/crm/v3/properties/contacts",
            {
                "name": PHONE_PROPERTY,
                "label": "Phone (E.164)",
                "type": "string",
                "fieldType": "text",
                "groupName": "contactinformation",
                "hasUniqueValue": True,
            },
        )

    def valid(self) -> bool:
        url = self.public_url + (request.full_path if request.query_string else request.path)
        return bool(self.validator.validate(url, request.form, request.headers.get("X-Twilio-Signature", "")))

    def missed(self, caller: str, called: str) -> None:
        """Text the caller, then log the lead in HubSpot, all before Twilio gets its answer."""
        body = "Sorry we missed your call! How can we help? Reply STOP to opt out."
        self.twilio().messages.create(to=caller, from_=called, body=body)
        try:
            contact = self.hubspot(
                "POST",
                "/crm/v3/objects/contacts/batch/upsert",
                {
                    "inputs": [
                        {
                            "idProperty": PHONE_PROPERTY,
                            "id": caller,
                            "properties": {PHONE_PROPERTY: caller, "phone": caller, "hs_lead_status": "NEW"},
                        }
                    ]
                },
            )
            cid = str(contact["results"][0]["id"])
            self.hubspot(
                "POST",
                "/crm/v3/objects/deals",
                {
                    "properties": {
                        "dealname": f"Missed call: {caller}",
                        "pipeline": "default",
                        "dealstage": "appointmentscheduled",
                    },
                    "associations": _assoc(cid, DEAL_TO_CONTACT),
                },
            )
            self.hubspot(
                "POST",
                "/crm/v3/objects/calls",
                {
                    "properties": {
                        "hs_timestamp": _now_ms(),
                        "hs_call_title": f"Missed call from {caller}",
                        "hs_call_body": "Missed inbound call.",
                        "hs_call_direction": "INBOUND",
                        "hs_call_status": "NO_ANSWER",
                        "hs_call_from_number": caller,
                    },
                    "associations": _assoc(cid, CALL_TO_CONTACT),
                },
            )
            self.hubspot(
                "POST",
                "/crm/v3/objects/tasks",
                {
                    "properties": {
                        "hs_timestamp": _now_ms(),
                        "hs_task_subject": f"Call back {caller}",
                        "hs_task_body": f"Missed call from {caller}.",
                        "hs_task_status": "NOT_STARTED",
                        "hs_task_priority": "HIGH",
                        "hs_task_type": "CALL",
                    },
                    "associations": _assoc(cid, TASK_TO_CONTACT),
                },
            )
            self.hubspot(
                "POST",
                "/crm/v3/objects/notes",
                {
                    "properties": {
                        "hs_timestamp": _now_ms(),
                        "hs_note_body": f"Text sent to {caller}:\n{body}",
                    },
                    "associations": _assoc(cid, NOTE_TO_CONTACT),
                },
            )
        except (requests.RequestException, KeyError, IndexError, ValueError) as exc:
            log.warning("CRM sync failed, lead not logged: %s", type(exc).__name__)


def voicemail() -> Response:
    vr = VoiceResponse()
    vr.say("Sorry, nobody could take your call. We will text you.")
    vr.hangup()
    return Response(str(vr), mimetype="application/xml")


def create_app() -> Flask:
    naive = Naive()
    for attempt in range(20):
        try:
            naive.ensure_property()
            break
        except requests.RequestException:
            time.sleep(0.25 * (attempt + 1))
    app = Flask("naive")

    @app.get("/healthz")
    def healthz() -> Response:
        return Response("ok\n", mimetype="text/plain")

    @app.post("/twilio/voice")
    def voice() -> Response:
        if not naive.valid():
            return Response("invalid signature\n", status=403)
        if naive.mode == "forward":
            naive.missed(request.form["From"], request.form["To"])
            return voicemail()
        vr = VoiceResponse()
        dial = Dial(action="/twilio/dial-result", method="POST", timeout=20)
        dial.number("+13125559000")
        vr.append(dial)
        return Response(str(vr), mimetype="application/xml")

    @app.post("/twilio/dial-result")
    def dial_result() -> Response:
        if not naive.valid():
            return Response("invalid signature\n", status=403)
        if request.form.get("DialCallStatus") in ("no-answer", "busy", "failed", "canceled"):
            naive.missed(request.form["From"], request.form["To"])
        return voicemail()

    return app
