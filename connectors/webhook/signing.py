"""Signing for the signed-webhook connector; receivers can copy ``verify`` as it is.

Header ``X-Textback-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>``.
A receiver recomputes the HMAC over the raw body, compares in constant time, rejects timestamps
older than its tolerance (replay), and dedupes on ``X-Textback-Delivery``.
"""

from __future__ import annotations

import hashlib
import hmac
import time

HEADER = "X-Textback-Signature"
DELIVERY_HEADER = "X-Textback-Delivery"
EVENT_HEADER = "X-Textback-Event"


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify(
    secret: str, body: bytes, header: str, tolerance_seconds: int = 300, now: float | None = None
) -> bool:
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        t = int(parts["t"])
        given = parts["v1"]
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - t) > tolerance_seconds:
        return False
    expected = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, given)
