"""One table from an HTTP answer to textback's error taxonomy, shared by every connector.

=========================  ===================  ======================================
status                     error                the outbox then
=========================  ===================  ======================================
401                        AuthError            pauses the connector, alerts an admin
403                        AuthError            (connectors refine: quota, scopes, ...)
408, 425, 5xx              TransientError       retries with backoff
429                        RateLimited          pauses until Retry-After, every worker
400, 404, 409, 410, 422    Rejected             dead job, vendor message kept
other 4xx                  Rejected
=========================  ===================  ======================================

A body that is not JSON (an HTML error page from a proxy or load balancer) is classified by its
status like any other and described as such; it is never taken for success.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from core.errors import AuthError, JobError, RateLimited, Rejected, TransientError
from core.phones import redact_numbers

DEFAULT_RETRY_AFTER = 10.0


def retry_after(headers: Mapping[str, str] | None, default: float = DEFAULT_RETRY_AFTER) -> float:
    if not headers:
        return default
    lowered = {k.lower(): v for k, v in headers.items()}
    for key in ("retry-after", "x-ratelimit-reset"):
        value = lowered.get(key)
        if value is None:
            continue
        try:
            return max(float(value), 0.0)
        except ValueError:
            from email.utils import parsedate_to_datetime

            try:
                from datetime import UTC, datetime

                return max((parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds(), 0.0)
            except (TypeError, ValueError):
                continue
    return default


def looks_like_html(body: str | bytes | None) -> bool:
    if not body:
        return False
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    head = text.lstrip()[:200].lower()
    return head.startswith("<!doctype html") or head.startswith("<html") or "<body" in head


def describe(body: str | bytes | None, limit: int = 300) -> str:
    if not body:
        return "(empty body)"
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    if looks_like_html(text):
        title = re.search(r"<title>(.*?)</title>", text, re.I | re.S)
        return f"an HTML page ({title.group(1).strip()[:80] if title else 'no title'}), not the API's JSON"
    return redact_numbers(" ".join(text.split()))[:limit]


def classify(
    vendor: str, status: int, headers: Mapping[str, str] | None, body: str | bytes | None
) -> JobError:
    detail = describe(body)
    message = f"{vendor} answered HTTP {status}: {detail}"
    if status == 429:
        return RateLimited(message, retry_after=retry_after(headers), code=status)
    if status in (401, 403):
        return AuthError(message, code=status)
    if status in (408, 425) or status >= 500:
        return TransientError(message, code=status, retry_after=None)
    return Rejected(message, code=status)


def network_error(vendor: str, exc: BaseException) -> TransientError:
    return TransientError(f"{vendor} could not be reached ({type(exc).__name__})")
