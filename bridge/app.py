"""The bridge's Flask app factory."""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field

from flask import Flask, Response, g, jsonify, request
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from core import logs, outbox, sync
from core.config import Business, Config
from core.db import make_engine, require_migrated, session_factory

log = logging.getLogger("textback.bridge")

MAX_BODY_BYTES = 64 * 1024


@dataclass
class BridgeState:
    config: Config
    engine: Engine
    factory: sessionmaker[Session]
    insecure_dev: bool

    # The called number of each webhook -> its business. Parsing a number costs more than most of
    # a webhook's other steps, and the config (so the answer) is fixed for the state's lifetime.
    numbers: dict[str, Business | None] = field(default_factory=dict)

    @property
    def tokens(self) -> list[str]:
        t = self.config.twilio
        return [tok for tok in (t.auth_token, t.secondary_auth_token) if tok]

    def business_for_number(self, number: str) -> Business | None:
        if number in self.numbers:
            return self.numbers[number]
        business = self.config.business_for_number(number)
        if len(self.numbers) < 4096:  # a bounded cache: the To of a signed webhook is one of ours
            self.numbers[number] = business
        return business


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
    # A missed call's push waits for its first text only where the connector writes it in.
    # Imported here: bridge.runtime brings prometheus_client, which a preforked process (the fault
    # suite's zygote, gunicorn's master) must not import before its multiprocess directory is set.
    from bridge.runtime import ConnectorTraits

    traits = ConnectorTraits().warm(engine)
    sync.know_folding(traits, traits.finds)
    app = Flask("textback.bridge")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.extensions["textback"] = BridgeState(config, engine, session_factory(engine), insecure_dev)
    if insecure_dev:
        log.warning("INSECURE DEV MODE: Twilio signatures are NOT checked; never expose this server")

    from bridge.twilio_routes import blueprint as twilio_blueprint

    app.register_blueprint(twilio_blueprint)

    from bridge.console import register as register_console

    register_console(app, config)

    from bridge import metrics

    # One hook on each side of a request (request id, log context, timing, the request's log line
    # and its metrics): Flask's per-hook dispatch is a real share of a webhook's CPU.
    @app.before_request
    def _start() -> None:
        request_id = request.headers.get("X-Request-Id") or uuid.uuid4().hex[:16]
        g.request_id = request_id
        g.started = time.perf_counter()
        g.log_token = logs.bind(request_id=request_id)

    @app.after_request
    def _finish(response: Response) -> Response:
        elapsed = time.perf_counter() - g.get("started", time.perf_counter())
        rule = request.url_rule.rule if request.url_rule else None
        request_id = g.get("request_id")
        log.info(
            "request",
            extra={
                "request_id": request_id,
                "route": rule or request.path,
                "status": response.status_code,
                "ms": round(elapsed * 1000, 2),
            },
        )
        metrics.observe(rule, elapsed, response.status_code)
        response.headers["X-Request-Id"] = request_id or ""
        return response

    @app.teardown_request
    def _unbind(_exc: BaseException | None) -> None:
        token = g.pop("log_token", None)
        if token is not None:
            logs.unbind(token)

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
