"""Wiring: builds the worker and its job handlers from a config (the only place that does)."""

from __future__ import annotations

import os
import socket

from sqlalchemy import Engine

from connectors.twilio.client import make_client
from connectors.twilio.sms import TwilioGateway
from core.config import Config
from core.db import make_engine, require_migrated, session_factory
from core.errors import ConfigError
from core.outbox import Outbox
from core.sending import SmsJob
from core.worker import Worker


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def twilio_gateway(config: Config) -> TwilioGateway:
    t = config.twilio
    if not t.account_sid or not t.auth_token:
        raise ConfigError(
            "twilio.account_sid and twilio.auth_token are needed to send texts", source=config.source
        )
    return TwilioGateway(
        make_client(t.account_sid, t.auth_token, base_url=t.api_base_url, timeout=t.timeout_seconds)
    )


def build_worker(config: Config, engine: Engine | None = None) -> Worker:
    engine = engine or make_engine(config.database_url)
    require_migrated(engine, config.source)
    factory = session_factory(engine)
    w = config.worker
    outbox = Outbox(factory, worker_id(), w.lease_seconds, w.backoff_initial, w.backoff_max)
    handlers = {"sms.send": SmsJob(config, factory, twilio_gateway(config))}
    return Worker(outbox, handlers, poll_interval=w.poll_interval, batch_size=w.batch_size)
