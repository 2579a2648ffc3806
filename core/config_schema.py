"""The JSON Schema (Draft 2020-12) of ``textback.yaml``. Documented key by key in docs/config.md."""

from __future__ import annotations

from typing import Any

from core.business_settings import BOOKING_SCHEMA, CONVERSATION_SCHEMA, ESCALATION_SCHEMA, SMTP_SCHEMA

_E164 = {"type": "string", "pattern": r"^\+[1-9][0-9]{6,14}$"}
_HHMM = {"type": "string", "pattern": r"^([01][0-9]|2[0-3]):[0-5][0-9]$"}
_RANGE = {"type": "string", "pattern": r"^([01][0-9]|2[0-3]):[0-5][0-9]-([01][0-9]|2[0-4]):[0-5][0-9]$"}
_DAY = {"type": "array", "items": _RANGE}

TEMPLATES: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "business_hours": {"type": "string", "minLength": 1},
        "after_hours": {"type": "string", "minLength": 1},
        "existing_customer": {"type": "string", "minLength": 1},
        "voicemail_prompt": {"type": "string", "minLength": 1},
        "screen_prompt": {"type": "string", "minLength": 1},
    },
}

POLICY: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "min_ring_seconds": {"type": "number", "minimum": 0},
        "cooldown_hours": {"type": "number", "minimum": 0},
        "send_delay_seconds": {"type": "number", "minimum": 0, "maximum": 3600},
        "sending_window": {
            "type": "object",
            "additionalProperties": False,
            "required": ["start", "end"],
            "properties": {"start": _HHMM, "end": _HHMM},
        },
        "blocklist": {"type": "array", "items": {"type": "string"}},
        "lookup_line_type": {"type": "boolean"},
        "follow_up_after_hours": {"type": "number", "minimum": 0, "maximum": 168},
        "crm_lookup_budget_ms": {"type": "integer", "minimum": 0, "maximum": 5000},
        "voicemail": {"type": "boolean"},
    },
}

BUSINESS: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["id", "name", "timezone", "numbers"],
    "properties": {
        "id": {"type": "string", "pattern": r"^[a-z0-9][a-z0-9_-]{0,62}$"},
        "name": {"type": "string", "minLength": 1, "maxLength": 60},
        "timezone": {"type": "string", "minLength": 1},
        "numbers": {"type": "array", "items": _E164, "minItems": 1},
        "mode": {"enum": ["ring_through", "forward"]},
        "staff_phones": {"type": "array", "items": _E164},
        "ring_timeout": {"type": "integer", "minimum": 5, "maximum": 60},
        "hours": {
            "type": "object",
            "additionalProperties": False,
            "properties": {d: _DAY for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")},
        },
        "holidays": {"type": "array", "items": {"type": "string", "format": "date"}},
        "booking_link": {"type": "string"},
        "templates": TEMPLATES,
        "policy": POLICY,
        "conversation": CONVERSATION_SCHEMA,
        "booking": BOOKING_SCHEMA,
        "escalation": ESCALATION_SCHEMA,
    },
}

CONFIG_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "textback configuration",
    "type": "object",
    "additionalProperties": False,
    "required": ["businesses"],
    "properties": {
        "database_url": {"type": "string", "minLength": 1},
        "public_url": {"type": "string", "pattern": r"^https?://[^/]+"},
        "secret_key_file": {"type": "string"},
        "smtp": SMTP_SCHEMA,
        "twilio": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "account_sid": {"type": "string"},
                "auth_token": {"type": "string", "writeOnly": True},
                "secondary_auth_token": {"type": "string", "writeOnly": True},
                "api_base_url": {"type": "string", "pattern": r"^https?://"},
                "timeout_seconds": {"type": "number", "exclusiveMinimum": 0, "maximum": 60},
                "lookup_cache_days": {"type": "integer", "minimum": 0},
            },
        },
        "worker": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "poll_interval": {"type": "number", "exclusiveMinimum": 0, "maximum": 60},
                "lease_seconds": {"type": "number", "minimum": 1},
                "max_attempts": {"type": "integer", "minimum": 1, "maximum": 100},
                "batch_size": {"type": "integer", "minimum": 1, "maximum": 500},
                "threads": {"type": "integer", "minimum": 1, "maximum": 32},
                "text_threads": {"type": "integer", "minimum": 0, "maximum": 64},
                "text_batch_size": {"type": "integer", "minimum": 1, "maximum": 100},
                "probe_interval": {"type": "number", "exclusiveMinimum": 0, "maximum": 60},
                "backoff_initial": {"type": "number", "exclusiveMinimum": 0},
                "backoff_max": {"type": "number", "exclusiveMinimum": 0},
            },
        },
        "logging": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"level": {"enum": ["DEBUG", "INFO", "WARNING", "ERROR"]}},
        },
        "businesses": {"type": "array", "items": BUSINESS, "minItems": 1},
        "console": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "password_hash": {"type": "string", "writeOnly": True},
                "secret_key": {"type": "string", "minLength": 16, "writeOnly": True},
                "allow_remote": {"type": "boolean"},
                "session_minutes": {"type": "integer", "minimum": 1, "maximum": 10080},
            },
        },
    },
}
