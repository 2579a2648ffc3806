"""The bridge's Flask app factory."""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass

from flask import Flask, Response, g, jsonify, request
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from core import outbox
from core.config import Config
from core.db import make_engine, require_migrated, session_factory

log = logging.getLogger("textback.bridge")

MAX_BODY_BYTES = 64 * 1024


@dataclass
class BridgeState:
    config: Config
    engine: Engine
    factory: sessionmaker[Session]
    insecure_dev: bool

    @property
    def tokens(self) -> list[str]:
        t = self.config.twilio
        return [tok for tok in (t.auth_token, t.secondary_auth_token) if tok]


def state() -> BridgeState:
    from flask import current_app

    return current_app.extensions["textback"]


def create_app(config: Config, insecure_dev: bool = False, engine: Engine | None = None) -> Flask:
    """Build the bridge. Refuses to build without an auth token unless ``insecure_dev``."""
    if not config.twilio.auth_token and not insecure_dev:
        raise RuntimeError(
            "no Twilio auth token configured (twilio.auth_token or TEXTBACK_TWILIO_AUTH_TOKEN): "
            "the bridge cannot check webhook signatures. Use --insecure-dev only on a laptop."
        )
    engine = engine or make_engine(config.database_url)
    require_migrated(engine, config.source)
    app = Flask("textback.bridge")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.extensions["textback"] = BridgeState(config, engine, session_factory(engine), insecure_dev)
    if insecure_dev:
        log.warning("INSECURE DEV MODE: Twilio signatures are NOT checked; never expose this server")

    from bridge.twilio_routes import blueprint as twilio_blueprint

    app.register_blueprint(twilio_blueprint)

    from bridge.console import register as register_console

    register_console(app, config)

    @app.before_request
    def _start() -> None:
        g.request_id = request.headers.get("X-Request-Id") or uuid.uuid4().hex[:16]
        g.started = time.perf_counter()

    @app.after_request
    def _finish(response: Response) -> Response:
        elapsed = (time.perf_counter() - g.get("started", time.perf_counter())) * 1000
        log.info(
            "request",
            extra={
                "request_id": g.get("request_id"),
                "route": request.url_rule.rule if request.url_rule else request.path,
                "status": response.status_code,
                "ms": round(elapsed, 2),
            },
        )
        response.headers["X-Request-Id"] = g.get("request_id", "")
        return response

    from bridge import metrics

    metrics.init_app(app)

    @app.errorhandler(413)
    def _too_large(_exc: Exception) -> tuple[Response, int]:
        return jsonify({"error": f"request body over {MAX_BODY_BYTES} bytes"}), 413

    @app.get("/healthz")
    def healthz() -> tuple[Response, int]:
        st = state()
        try:
            with st.factory() as session:
                session.execute(text("SELECT 1"))
                backlog = outbox.backlog(session)
        except Exception as exc:
            return jsonify({"ok": False, "database": f"unreachable ({type(exc).__name__})"}), 503
        return jsonify({"ok": True, "database": "ok", "outbox": backlog}), 200

    return app
