"""Prometheus metrics: the metric objects, ``/metrics`` on the bridge, and the hooks that feed them.

Core never imports prometheus_client: the bridge counts decisions in its webhooks, the worker is
handed :func:`job_outcome` (``core.worker.Worker(on_outcome=...)``) and
:func:`crm_rate_limited` (``core.sync.SyncJob(on_rate_limited=...)``), the connectors' shared
throttle (bridge.runtime) counts :func:`crm_call`, and the Twilio gateway is handed :func:`sms_result`.

Under gunicorn (``textback serve``) every worker process writes its samples to
``PROMETHEUS_MULTIPROC_DIR`` (see :mod:`bridge.metrics_multiproc`) and a scrape, whichever
worker answers it, adds them all up. The outbox gauges are read from the database at scrape time.
``textback worker --metrics-port P`` serves the worker's own counters. See docs/metrics.md.
"""

from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Iterable, Iterator
from typing import Any

from flask import Flask, Response, g, request
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Histogram
from prometheus_client import multiprocess as prom_multiprocess
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector
from sqlalchemy.orm import Session, sessionmaker

from core import outbox
from core.outbox import Job
from core.policy import Decision

log = logging.getLogger("textback.metrics")

# Routes whose latency is a webhook's (Twilio waits on these; keep them fast).
WEBHOOK_PREFIXES = ("/twilio/",)
TOKEN_ENV = "TEXTBACK_METRICS_TOKEN"  # noqa: S105 (the variable name, not a secret)

WEBHOOK_SECONDS = Histogram(
    "textback_webhook_seconds",
    "Time to answer a webhook, per route (signature check, parsing, the transaction, the TwiML).",
    ["route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0),
)
DECISIONS = Counter(
    "textback_decisions",
    "Calls decided, by outcome (text or skip) and reason code (docs/lead-record.md).",
    ["outcome", "reason"],
)
SMS = Counter(
    "textback_sms",
    "Texts by result: sent, failed or unknown (the send API), delivered or undelivered (Twilio's "
    "status callbacks); code is Twilio's error code, or network/no_response.",
    ["result", "code"],
)
JOBS = Counter(
    "textback_jobs",
    "Outbox job attempts by kind and outcome (done, retry, deferred, dead, lost).",
    ["kind", "outcome"],
)
CRM_API_CALLS = Counter(
    "textback_crm_api_calls",
    "Requests made to a connector's API (CRMs, calendars), per connector.",
    ["connector"],
)
CRM_RATE_LIMITED = Counter(
    "textback_crm_rate_limited", "HTTP 429 answers from a CRM to sync jobs, per connector.", ["connector"]
)


# -- hooks ------------------------------------------------------------------------------------------


def decision(d: Decision) -> None:
    DECISIONS.labels(d.outcome, d.reason).inc()


def sms_result(result: str, code: str) -> None:
    SMS.labels(result, code).inc()


def sms_status(status: str, error_code: int | None) -> None:
    """A status callback that Twilio reported for the first time (duplicates are not counted)."""
    if status in ("delivered", "read"):
        SMS.labels("delivered", "").inc()
    elif status in ("undelivered", "failed"):
        SMS.labels("undelivered", str(error_code) if error_code is not None else "").inc()


def job_outcome(job: Job, outcome: str) -> None:
    JOBS.labels(job.kind, outcome).inc()


def crm_call(connector: str) -> None:
    """One request to a connector's API (the runtime's throttle, which every connector calls first)."""
    CRM_API_CALLS.labels(connector).inc()


def crm_rate_limited(connector: str) -> None:
    CRM_RATE_LIMITED.labels(connector).inc()


# -- the outbox, read at scrape time ----------------------------------------------------------------


class OutboxCollector(Collector):
    """Backlog and oldest-job age per target (connector), straight from the database."""

    def __init__(self, factory: sessionmaker[Session]) -> None:
        self.factory = factory

    def collect(self) -> Iterable[Metric]:
        jobs = GaugeMetricFamily(
            "textback_outbox_jobs",
            "Outbox jobs per target and status (pending, running, dead).",
            labels=["target", "status"],
        )
        age = GaugeMetricFamily(
            "textback_outbox_oldest_age_seconds",
            "Age of the oldest pending or running job per target, in seconds (0 when none).",
            labels=["target"],
        )
        up = GaugeMetricFamily("textback_database_up", "1 when the scrape could read the outbox, else 0.")
        try:
            with self.factory() as session:
                backlog = outbox.backlog(session)
        except Exception as exc:
            log.warning("metrics could not read the outbox", extra={"error": type(exc).__name__})
            up.add_metric([], 0)
            yield up
            return
        for target, entry in sorted(backlog.items()):
            for status in ("pending", "running", "dead"):
                jobs.add_metric([target, status], int(entry.get(status, 0)))
            age.add_metric([target], float(entry.get("oldest_age_seconds", 0.0)))
        up.add_metric([], 1)
        yield from (jobs, age, up)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def registry(factory: sessionmaker[Session] | None) -> CollectorRegistry:
    """What one scrape exposes: every process's samples (or this process's), plus the outbox."""
    reg = CollectorRegistry()
    if multiprocess_dir():
        prom_multiprocess.MultiProcessCollector(reg)
    else:
        reg.register(REGISTRY)
    if factory is not None:
        reg.register(OutboxCollector(factory))
    return reg


# -- the Flask side ---------------------------------------------------------------------------------


def observe(rule: str | None, seconds: float, status_code: int) -> None:
    """A request's timing (webhook routes) and what it decided, once its response is ready.

    Called by the bridge's after-request hook (bridge.app), which also logs the request.
    """
    if rule and rule.startswith(WEBHOOK_PREFIXES):
        WEBHOOK_SECONDS.labels(rule).observe(seconds)
    if status_code < 400:
        concluded = g.get("decision")
        if concluded is not None:
            decision(concluded)
        status = g.get("sms_status")
        if status is not None:
            sms_status(*status)


def init_app(app: Flask) -> None:
    """``/metrics``; the per-request hooks are bridge.app's (see :func:`observe`)."""
    from bridge.app import state

    @app.get("/metrics")
    def metrics() -> Response:
        expected = os.environ.get(TOKEN_ENV)
        if expected:
            given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
            if not hmac.compare_digest(given.encode(), expected.encode()):
                return Response("metrics need the bearer token\n", status=401, mimetype="text/plain")
        body = generate_latest(registry(state().factory))
        return Response(body, mimetype=CONTENT_TYPE_LATEST)


# -- the worker's own endpoint ----------------------------------------------------------------------


def serve_worker_metrics(host: str, port: int) -> Any:
    """Expose this process's counters (jobs, texts, CRM calls) on ``http://host:port/metrics``."""
    from prometheus_client import start_http_server

    server, _thread = start_http_server(port, addr=host)
    log.info("worker metrics", extra={"host": host, "port": port})
    return server


def samples(text: str) -> Iterator[tuple[str, dict[str, str], float]]:
    """Parse an exposition (for tests and `textback` diagnostics): (name, labels, value)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            yield sample.name, dict(sample.labels), float(sample.value)
