"""The admin console: a server-rendered Flask blueprint at ``/console`` on the bridge.

Access control lives in :mod:`bridge.console.security` and runs before every console request:
the console is off (404) without a password hash, refuses non-loopback clients unless
``console.allow_remote``, sends everybody without a session to the login page, and checks the
CSRF token of every POST. Pages are split by topic: ``auth`` (login/logout), ``dashboard``,
``leads``, ``outbox``, ``health`` (connectors) and ``admin`` (suppressions, alerts, config).
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import timedelta

from flask import Blueprint, Flask

from core.config import Config

blueprint = Blueprint(
    "console",
    __name__,
    url_prefix="/console",
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)

#: Endpoints reachable without a session (still subject to the "disabled" and loopback checks).
PUBLIC_ENDPOINTS = frozenset({"console.login", "console.static"})


def session_key(config: Config) -> str | None:
    """The key that signs the console's session cookie.

    ``console.secret_key`` when set; otherwise one derived from the password hash, so every
    gunicorn worker agrees on it without more configuration and changing the password ends every
    session. None when the console is disabled.
    """
    settings = config.console
    if settings.secret_key:
        return settings.secret_key
    if not settings.password_hash:
        return None
    return hmac.new(b"textback-console-session", settings.password_hash.encode(), hashlib.sha256).hexdigest()


def register(app: Flask, config: Config) -> None:
    """Attach the console to the bridge and configure its session cookie."""
    settings = config.console
    key = session_key(config)
    if key:
        app.secret_key = key
    app.config.update(
        SESSION_COOKIE_NAME="textback_console",
        SESSION_COOKIE_PATH="/console",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=(config.public_url or "").startswith("https://"),
        PERMANENT_SESSION_LIFETIME=timedelta(minutes=settings.session_minutes),
    )
    app.register_blueprint(blueprint)


# The views attach their routes to ``blueprint`` when imported.
from bridge.console import admin, auth, dashboard, filters, health, leads, outbox, security  # noqa: E402

__all__ = ["PUBLIC_ENDPOINTS", "admin", "auth", "blueprint", "dashboard", "filters", "health", "leads",
           "outbox", "register", "security"]
