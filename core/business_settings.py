"""Per-business settings for the reply conversation, booking and escalation (parsed config)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from core.errors import ConfigError
from core.phones import to_e164

_E164 = {"type": "string", "pattern": r"^\+[1-9][0-9]{6,14}$"}
_EMAIL = {"type": "string", "pattern": r"^[^@\s]+@[^@\s]+\.[^@\s]+$"}

CONVERSATION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "enabled": {"type": "boolean"},
        "qualifying_question": {"type": ["string", "null"], "maxLength": 320},
        "pricing_link": {"type": "string"},
        "info": {
            "type": "object",
            "additionalProperties": False,
            "properties": {k: {"type": "string"} for k in ("hours", "address", "service_area", "phone")},
        },
        "classifier": {"type": ["string", "null"], "pattern": r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$"},
        "rules": {
            "type": "object",
            "additionalProperties": {
                "type": "array",
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["weight"],
                    "properties": {
                        "phrase": {"type": "string"},
                        "regex": {"type": "string"},
                        "weight": {"type": "number"},
                    },
                },
            },
        },
        "replace_default_rules": {"type": "boolean"},
        "max_automated_per_day": {"type": "integer", "minimum": 1, "maximum": 20},
    },
}

BOOKING_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "calendar": {"type": ["string", "null"]},
        "slot_minutes": {"type": "integer", "minimum": 10, "maximum": 480},
        "buffer_minutes": {"type": "integer", "minimum": 0, "maximum": 240},
        "lead_minutes": {"type": "integer", "minimum": 0, "maximum": 10080},
        "horizon_days": {"type": "integer", "minimum": 1, "maximum": 60},
    },
}

ESCALATION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "sms": {"type": "array", "items": _E164},
        "email": {"type": "array", "items": _EMAIL},
        "webhook_url": {"type": ["string", "null"], "pattern": "^https?://"},
        "backup_sms": {"type": "array", "items": _E164},
        "backup_email": {"type": "array", "items": _EMAIL},
        "repeat_calls": {"type": "integer", "minimum": 2, "maximum": 10},
        "repeat_window_hours": {"type": "number", "minimum": 1, "maximum": 168},
        "business_hours_handoff": {"type": "boolean"},
        "sla_minutes": {"type": "integer", "minimum": 1, "maximum": 1440},
    },
}

SMTP_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["host", "from"],
    "properties": {
        "host": {"type": "string"},
        "port": {"type": "integer", "minimum": 1, "maximum": 65535},
        "username": {"type": "string"},
        "password": {"type": "string", "writeOnly": True},
        "from": _EMAIL,
        "starttls": {"type": "boolean"},
        "timeout_seconds": {"type": "number", "exclusiveMinimum": 0},
    },
}

DEFAULT_QUESTION = "Thanks! So we can help fastest: is this to book a visit, get a quote, or is it urgent?"


@dataclass(frozen=True)
class ConversationSettings:
    enabled: bool = True
    qualifying_question: str | None = DEFAULT_QUESTION
    pricing_link: str | None = None
    info: dict[str, str] = field(default_factory=dict)
    classifier: str | None = None
    rules: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    replace_default_rules: bool = False
    max_automated_per_day: int = 3


@dataclass(frozen=True)
class BookingSettings:
    calendar: str | None = None
    slot_minutes: int = 60
    buffer_minutes: int = 15
    lead_minutes: int = 120
    horizon_days: int = 7


@dataclass(frozen=True)
class EscalationSettings:
    sms: tuple[str, ...] = ()
    email: tuple[str, ...] = ()
    webhook_url: str | None = None
    backup_sms: tuple[str, ...] = ()
    backup_email: tuple[str, ...] = ()
    repeat_calls: int = 2
    repeat_window_hours: float = 24.0
    business_hours_handoff: bool = True
    sla_minutes: int = 10


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    sender: str
    port: int = 25
    username: str | None = None
    password: str | None = None
    starttls: bool = False
    timeout_seconds: float = 10.0

    def __repr__(self) -> str:
        return f"SmtpSettings(host={self.host!r}, port={self.port}, sender={self.sender!r}, password=***)"


def build_conversation(raw: dict[str, Any]) -> ConversationSettings:
    return ConversationSettings(**raw)


def build_booking(raw: dict[str, Any]) -> BookingSettings:
    return BookingSettings(**raw)


def build_escalation(
    raw: dict[str, Any], staff_phones: tuple[str, ...], source: str, at: str
) -> EscalationSettings:
    data = dict(raw)
    for key in ("sms", "backup_sms"):
        for i, number in enumerate(data.get(key, [])):
            if to_e164(number) != number:
                raise ConfigError(
                    f"{number!r} is not a possible phone number", source=source, path=f"{at}.{key}.{i}"
                )
    for key in ("sms", "email", "backup_sms", "backup_email"):
        data[key] = tuple(data.get(key, ()))
    if "sms" not in raw:
        data["sms"] = staff_phones  # staff phones are rung for calls, so they hear about replies too
    return EscalationSettings(**data)


def build_smtp(raw: dict[str, Any] | None) -> SmtpSettings | None:
    if not raw:
        return None
    return SmtpSettings(
        host=raw["host"],
        sender=raw["from"],
        port=int(raw.get("port", 25)),
        username=raw.get("username"),
        password=raw.get("password"),
        starttls=bool(raw.get("starttls", False)),
        timeout_seconds=float(raw.get("timeout_seconds", 10.0)),
    )
