"""Who may use the console: the checks that run before every console request.

1. No password hash configured: the console is off (404 with a note). It is never open.
2. Not from a loopback address (or relayed by a proxy) while ``allow_remote`` is false: 403.
3. No valid session: redirect to the login page (only the login page and the stylesheet are public).
4. Any POST without the session's CSRF token (or from another origin): 400.

Failed logins are counted per client address in the shared ``rate_windows`` table, so the limit
holds across every gunicorn worker: after :data:`LOGIN_LIMIT` failures the login answers 429.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import secrets
import time
from urllib.parse import urlsplit

from flask import Response, redirect, request, session, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy.orm import Session

from bridge.console import PUBLIC_ENDPOINTS, blueprint
from bridge.console.common import config, open_alerts, reading
from core import connector_state
from core.models import RateWindow

log = logging.getLogger("textback.console")

LOGIN_LIMIT = connector_state.Limit(requests=5, per_seconds=60)
FORWARDING_HEADERS = ("X-Forwarded-For", "X-Forwarded-Host", "Forwarded", "X-Real-Ip")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")

DISABLED_NOTE = (
    "The textback console is disabled: no admin password is configured.\n"
    "Make a hash with `textback console hash-password` and set console.password_hash in the config\n"
    "(or TEXTBACK_CONSOLE_PASSWORD_HASH), then restart the bridge.\n"
)
REMOTE_NOTE = (
    "The textback console only answers requests from this machine (127.0.0.1 or ::1), and this one\n"
    "came from {addr}{via}. Use an SSH tunnel, or set console.allow_remote: true to allow it.\n"
)
CSRF_NOTE = (
    "Bad request: the form's security token is missing or out of date (CSRF protection).\n"
    "Go back, reload the page and try again.\n"
)


def plain(status: int, text: str) -> Response:
    return Response(text, status=status, mimetype="text/plain")


def is_loopback(addr: str | None) -> bool:
    try:
        ip = ipaddress.ip_address((addr or "").split("%")[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return bool(ip.is_loopback or (mapped is not None and mapped.is_loopback))


def proxied() -> bool:
    """A reverse proxy on this machine would make every client look local: count it as remote."""
    return any(request.headers.get(h) for h in FORWARDING_HEADERS)


def fingerprint(password_hash: str) -> str:
    return hmac.new(b"textback-console-login", password_hash.encode(), hashlib.sha256).hexdigest()[:32]


def logged_in() -> bool:
    settings = config().console
    if not settings.password_hash or session.get("admin") is not True:
        return False
    # A changed password ends every session made with the old one.
    return hmac.compare_digest(str(session.get("pw", "")), fingerprint(settings.password_hash))


def csrf_token() -> str:
    token = session.get("csrf")
    if not isinstance(token, str) or len(token) < 32:
        token = secrets.token_urlsafe(32)
        session["csrf"] = token
    return token


def csrf_ok() -> bool:
    expected = session.get("csrf")
    sent = request.form.get("csrf_token") or request.headers.get("X-CSRF-Token") or ""
    if not isinstance(expected, str) or not expected or not sent:
        return False
    if not hmac.compare_digest(expected.encode(), sent.encode()):
        return False
    # Browsers say where a POST came from; a form on another site is refused even with a token.
    if request.headers.get("Sec-Fetch-Site") == "cross-site":
        return False
    origin = request.headers.get("Origin")
    return origin in (None, "null") or urlsplit(origin).netloc == request.host


def start_session() -> None:
    """A fresh session after a successful login (nothing carried over from before it)."""
    settings = config().console
    assert settings.password_hash
    session.clear()
    session.permanent = True
    session["admin"] = True
    session["pw"] = fingerprint(settings.password_hash)
    session["csrf"] = secrets.token_urlsafe(32)


# -- login throttling -------------------------------------------------------------------------------


def _limiter(addr: str) -> str:
    return f"console-login:{addr}"[:160]


def _window() -> int:
    return int(time.time() // LOGIN_LIMIT.per_seconds)


def login_blocked(session_: Session, addr: str) -> bool:
    row = session_.get(RateWindow, (_limiter(addr), _window()))
    return row is not None and row.count >= LOGIN_LIMIT.requests


def note_failed_login(addr: str) -> None:
    from bridge.app import state

    connector_state.acquire(state().factory, _limiter(addr), LOGIN_LIMIT)
    log.warning("console login failed", extra={"remote_addr": addr})


# -- the hooks --------------------------------------------------------------------------------------


@blueprint.before_request
def guard() -> ResponseReturnValue | None:
    settings = config().console
    if not settings.enabled:
        return plain(404, DISABLED_NOTE)
    if not settings.allow_remote and (not is_loopback(request.remote_addr) or proxied()):
        via = " through a proxy" if proxied() else ""
        return plain(403, REMOTE_NOTE.format(addr=request.remote_addr or "an unknown address", via=via))
    if request.endpoint not in PUBLIC_ENDPOINTS and not logged_in():
        target = request.full_path.rstrip("?") if request.method == "GET" else None
        return redirect(url_for("console.login", next=target))
    if request.method not in SAFE_METHODS and not csrf_ok():
        return plain(400, CSRF_NOTE)
    return None


@blueprint.after_request
def headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    )
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    # Same-origin requests keep their Origin header (checked on POST); other sites learn nothing.
    response.headers["Referrer-Policy"] = "same-origin"
    if request.endpoint != "console.static":
        response.headers["Cache-Control"] = "no-store"
    return response


@blueprint.app_template_global("csrf_token")
def _csrf_token_global() -> str:
    return csrf_token()


@blueprint.context_processor
def _nav() -> dict[str, object]:
    if request.blueprint != "console" or not logged_in():
        return {"signed_in": False, "alert_count": 0}
    with reading() as s:
        return {"signed_in": True, "alert_count": open_alerts(s)}
