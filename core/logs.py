"""Structured JSON log lines with phone numbers masked and no message bodies.

Callers pass facts as ``extra=``; a final filter masks anything that still looks like a full
phone number, so a mistake in one log call cannot leak a number.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from typing import Any

from core.phones import DIGIT_RUN as _PHONE_LIKE
from core.phones import redact_numbers

_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}
_SECRET_KEYS = ("token", "secret", "password", "authorization", "body", "text")

# Ids are not phone numbers even when they hold a run of digits (a UUID, a Twilio SID, a hex id
# with a letter in it); masking those would make the lines useless for following a lead.
_ID = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[A-Z]{2}[0-9a-fA-F]{32}"
    r"|(?=[0-9a-f]*[a-f])[0-9a-f]{8,64}"
)


# What a field's name says about its value, worked out once per name (log calls reuse a few).
_SECRET, _ID_FIELD, _PLAIN = 0, 1, 2
_kinds: dict[str, int] = {}


def _kind(key: str) -> int:
    kind = _kinds.get(key)
    if kind is None:
        lowered = key.lower()
        if any(s in lowered for s in _SECRET_KEYS):
            kind = _SECRET
        elif key.endswith(("_id", "_sid")):
            kind = _ID_FIELD
        else:
            kind = _PLAIN
        if len(_kinds) < 4096:  # names come from the code's log calls; never grow without bound
            _kinds[key] = kind
    return kind


def _mask_text(value: str) -> str:
    # redact_numbers' own pattern, searched first: most values (ids, routes, reason codes) hold no
    # candidate, and a search costs far less than a substitution with a callback.
    if _PHONE_LIKE.search(value) is None:
        return value
    return redact_numbers(value)


def _clean(key: str, value: Any) -> Any:
    kind = _kind(key)
    if kind == _SECRET:
        return "***"
    if isinstance(value, str):
        if kind == _ID_FIELD and _ID.fullmatch(value):
            return value
        return _mask_text(value)
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    return _mask_text(str(value))


# Facts every line logged in this context carries (request_id in a webhook, job_id and lead_id in
# a job), added by ContextFilter unless the log call passes them itself.
_context: ContextVar[dict[str, Any]] = ContextVar("textback_log_context", default={})  # noqa: B039


def bind(**fields: Any) -> Token[dict[str, Any]]:
    """Add ``fields`` to every line logged in this context until :func:`unbind`."""
    return _context.set({**_context.get(), **fields})


def unbind(token: Token[dict[str, Any]]) -> None:
    _context.reset(token)


@contextmanager
def context(**fields: Any) -> Iterator[None]:
    token = bind(**fields)
    try:
        yield
    finally:
        unbind(token)


class ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _context.get().items():
            if key not in record.__dict__:
                setattr(record, key, value)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat().replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "event": _mask_text(record.getMessage()),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                payload[key] = _clean(key, value)
        if record.exc_info and record.exc_info[0] is not None:
            payload["error"] = record.exc_info[0].__name__
        return _dumps(payload)


_dumps = json.JSONEncoder(default=str).encode


def setup(level: str = "INFO", stream: Any = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("werkzeug", "urllib3", "twilio.http_client", "gunicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
