"""Shared pieces of the HubSpot emulator: error bodies, JSON answers and HubSpot's timestamp format."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, date, datetime
from typing import Any

from flask import Response

PORTAL_ID = 24681357
JSON_TYPE = "application/json;charset=utf-8"  # what api.hubapi.com sends, not Flask's bare application/json


def new_correlation_id() -> str:
    return str(uuid.uuid4())


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    payload = "" if body is None else json.dumps(body, separators=(",", ":"))
    return Response(payload, status=status, content_type=JSON_TYPE, headers=headers or {})


class ApiError(Exception):
    """An error answer in HubSpot's shape; raise it anywhere under a route (or before_request)."""

    def __init__(self, status: int, message: str, category: str | None = None, *,
                 errors: list[dict[str, Any]] | None = None, context: dict[str, Any] | None = None,
                 extra: dict[str, Any] | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.category = category
        self.errors = errors
        self.context = context
        self.extra = extra or {}
        self.headers = headers or {}

    def body(self, correlation_id: str) -> dict[str, Any]:
        # Key order follows HubSpot's own bodies: status, message, correlationId, errors/context, category.
        body: dict[str, Any] = {"status": "error", "message": self.message, "correlationId": correlation_id}
        if self.errors is not None:
            body["errors"] = self.errors
        if self.context is not None:
            body["context"] = self.context
        body.update(self.extra)
        if self.category:
            body["category"] = self.category
        return body


def not_found() -> ApiError:
    """HubSpot's bare 404 for a numeric id that matches nothing (no category)."""
    return ApiError(404, "resource not found")


def validation(message: str, **kwargs: Any) -> ApiError:
    return ApiError(400, message, "VALIDATION_ERROR", **kwargs)


def property_errors(problems: list[tuple[str, Any, str, str]]) -> ApiError:
    """400 for bad property values; ``problems`` are (name, value, message, code) as HubSpot reports them."""
    embedded = [{"isValid": False, "message": msg, "error": code, "name": name, "localizedErrorMessage": msg,
                 "propertyValue": value, "portalId": PORTAL_ID} for name, value, msg, code in problems]
    errors = [{"message": msg, "code": code, "context": {"propertyName": [name]}}
              for name, _value, msg, code in problems]
    text = "Property values were not valid: " + json.dumps(embedded, separators=(",", ":"))
    return ApiError(400, text, "VALIDATION_ERROR", errors=errors)


def now() -> datetime:
    """UTC now, truncated to milliseconds: HubSpot stores and returns millisecond precision."""
    moment = datetime.now(UTC)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def iso(moment: datetime) -> str:
    """Java's Instant.toString(), which HubSpot uses: no fraction when the milliseconds are zero."""
    moment = moment.astimezone(UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    millis = moment.microsecond // 1000
    return f"{text}.{millis:03d}Z" if millis else f"{text}Z"


def parse_timestamp(value: str) -> datetime | None:
    """Epoch milliseconds or ISO 8601 (a bare date is midnight UTC); None when it is neither."""
    raw = value.strip()
    if not raw:
        return None
    if raw.lstrip("-").isdigit():
        try:
            return datetime.fromtimestamp(int(raw) / 1000, UTC)
        except (OverflowError, OSError, ValueError):
            return None
    try:
        if len(raw) == 10:
            day = date.fromisoformat(raw)
            return datetime(day.year, day.month, day.day, tzinfo=UTC)
        moment = datetime.fromisoformat(raw)
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def epoch_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)
