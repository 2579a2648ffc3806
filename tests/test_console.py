"""The admin console through Flask's test client, on SQLite and PostgreSQL.

Access control is tested against every console route in ``app.url_map``, so a new page or action
is covered without touching this file.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, url_for
from flask.testing import FlaskClient
from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.security import generate_password_hash

from bridge.app import create_app
from bridge.console import PUBLIC_ENDPOINTS
from bridge.console import queries as console_queries
from core import config as config_mod
from core import outbox
from core.db import make_engine, session_factory, upgrade
from core.models import Alert, Call, ConnectorInstall, Lead, Message, OutboxJob, Suppression, utcnow
from tests.conftest import AUTH_TOKEN, business, config_dict
from tests.stack import Stack, configure_emulator

PASSWORD = "console-password-0123"
# A cheap hash keeps the suite fast; production hashes come from `textback console hash-password`.
PASSWORD_HASH = generate_password_hash(PASSWORD, method="pbkdf2:sha256:1000")
CALLER = "+13125550142"
REMOTE = "203.0.113.9"
_TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


@dataclass
class Env:
    app: Flask
    factory: sessionmaker[Session]
    config: config_mod.Config

    def client(self) -> FlaskClient:
        return self.app.test_client()


def make_env(tmp_path: Path, db_url: str, console: dict[str, Any] | None = None, **extra: Any) -> Env:
    data = config_dict(db_url, **extra)
    if console is not None:
        data["console"] = console
    cfg = config_mod.from_dict(data, source=str(tmp_path / "textback.yaml"))
    engine = make_engine(cfg.database_url)
    upgrade(engine)
    return Env(create_app(cfg, engine=engine), session_factory(engine), cfg)


@pytest.fixture
def env(tmp_path: Path, db_url: str) -> Iterator[Env]:
    e = make_env(tmp_path, db_url, console={"password_hash": PASSWORD_HASH})
    yield e
    e.factory.kw["bind"].dispose()


@pytest.fixture
def console_stack(tmp_path: Path, db_url: str) -> Iterator[Stack]:
    s = Stack(tmp_path, db_url, console={"password_hash": PASSWORD_HASH})
    try:
        yield s
    finally:
        s.close()


def token_of(html: str) -> str:
    match = _TOKEN.search(html)
    assert match, "no CSRF token in the page"
    return match.group(1)


def login(client: FlaskClient, password: str = PASSWORD, **kw: Any) -> Any:
    page = client.get("/console/login", **kw)
    return client.post(
        "/console/login", data={"csrf_token": token_of(page.text), "password": password}, **kw
    )


def logged_in(app: Flask) -> tuple[FlaskClient, str]:
    client = app.test_client()
    assert login(client).status_code == 302
    return client, token_of(client.get("/console/").text)


def console_routes(app: Flask) -> list[tuple[str, str, str]]:
    """(endpoint, method, url) for every console route, with placeholder arguments."""
    out = []
    with app.test_request_context():
        for rule in app.url_map.iter_rules():
            if not rule.endpoint.startswith("console."):
                continue
            values: dict[str, Any] = {}
            for converter, arg in re.findall(r"<(?:(\w+)(?:\([^)]*\))?:)?(\w+)>", rule.rule):
                values[arg] = 1 if converter == "int" else "console.css" if arg == "filename" else "x"
            url = url_for(rule.endpoint, **values)
            for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
                out.append((rule.endpoint, method, url))
    return out


# -- access -----------------------------------------------------------------------------------------


def test_no_console_route_is_reachable_without_login(env: Env) -> None:
    routes = console_routes(env.app)
    endpoints = {e for e, _, _ in routes}
    assert {"console.dashboard", "console.leads", "console.lead", "console.reply", "console.outbox",
            "console.retry_job", "console.retry_dead", "console.connectors", "console.check_connector",
            "console.suppressions", "console.alerts", "console.resolve_alert", "console.effective_config",
            "console.logout"} <= endpoints
    client = env.client()
    for endpoint, method, url in routes:
        resp = client.open(url, method=method)
        if endpoint in PUBLIC_ENDPOINTS:
            # The login form and the stylesheet only; a POST still needs the CSRF token.
            assert resp.status_code == (400 if method == "POST" else 200), (endpoint, method)
            continue
        assert resp.status_code == 302, (endpoint, method, resp.status_code)
        assert resp.headers["Location"].startswith("/console/login"), (endpoint, method)
    # After a login, every page answers (placeholder ids give a clean 404, never a 500).
    client, _ = logged_in(env.app)
    for _endpoint, method, url in routes:
        if method == "GET":
            assert client.get(url).status_code in (200, 302, 404), url  # login: back to the dashboard


def test_remote_addresses_and_proxied_requests_are_refused(env: Env) -> None:
    client, csrf = logged_in(env.app)  # even with a valid session
    for endpoint, method, url in console_routes(env.app):
        data = {"csrf_token": csrf} if method == "POST" else None
        resp = client.open(url, method=method, data=data, environ_base={"REMOTE_ADDR": REMOTE})
        assert resp.status_code == 403, (endpoint, method)
        assert "only answers requests from this machine" in resp.text
        assert REMOTE in resp.text
        # A reverse proxy on this machine would make everybody look local.
        resp = client.open(url, method=method, data=data, headers={"X-Forwarded-For": REMOTE})
        assert resp.status_code == 403, (endpoint, method)
    assert client.get("/console/", environ_base={"REMOTE_ADDR": "::1"}).status_code == 200


def test_remote_allowed_only_when_configured(tmp_path: Path, db_url: str) -> None:
    e = make_env(tmp_path, db_url, console={"password_hash": PASSWORD_HASH, "allow_remote": True})
    client = e.client()
    assert client.get("/console/", environ_base={"REMOTE_ADDR": REMOTE}).status_code == 302
    assert login(client, environ_base={"REMOTE_ADDR": REMOTE}).status_code == 302
    assert client.get("/console/", environ_base={"REMOTE_ADDR": REMOTE}).status_code == 200


def test_without_a_password_hash_the_console_is_off(tmp_path: Path, db_url: str) -> None:
    e = make_env(tmp_path, db_url)
    assert not e.config.console.enabled
    client = e.client()
    for _endpoint, method, url in console_routes(e.app):
        resp = client.open(url, method=method)
        assert resp.status_code == 404
        assert "console is disabled" in resp.text and "hash-password" in resp.text


def test_login_is_throttled_per_address(env: Env) -> None:
    client = env.client()
    for _ in range(5):
        resp = login(client, password="wrong-password")
        assert resp.status_code == 401 and "Wrong password" in resp.text
    # The sixth try is refused even with the right password.
    resp = login(client)
    assert resp.status_code == 429 and "Too many failed logins" in resp.text
    assert client.get("/console/").status_code == 302
    # Another address is not affected (127.0.0.2 is loopback too).
    other = env.client()
    assert login(other, environ_base={"REMOTE_ADDR": "127.0.0.2"}).status_code == 302


def test_session_cookie_and_safe_redirects(tmp_path: Path, db_url: str) -> None:
    e = make_env(tmp_path, db_url, console={"password_hash": PASSWORD_HASH},
                 public_url="https://textback.example.com")
    client = e.client()
    cookie = client.get("/console/login").headers["Set-Cookie"]
    for flag in ("HttpOnly", "SameSite=Lax", "Path=/console", "Secure"):
        assert flag in cookie
    page = client.get("/console/login?next=//evil.example.com/x")
    resp = client.post("/console/login", data={"csrf_token": token_of(page.text), "password": PASSWORD,
                                               "next": "//evil.example.com/x"})
    assert resp.headers["Location"] == "/console/"
    page = client.get("/console/")
    assert page.headers["X-Frame-Options"] == "DENY"
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    assert page.headers["Cache-Control"] == "no-store"


def test_csrf_is_checked_on_every_post(env: Env) -> None:
    with env.factory() as s, s.begin():
        s.add(Alert(kind="test", message="check me"))
    with env.factory() as s:
        alert_id = s.scalars(select(Alert.id)).one()
    client, csrf = logged_in(env.app)
    url = f"/console/alerts/{alert_id}/resolve"
    for data in ({}, {"csrf_token": "wrong"}, {"csrf_token": ""}):
        resp = client.post(url, data=data)
        assert resp.status_code == 400 and "CSRF" in resp.text
    # The right token from another site's form is refused as well.
    resp = client.post(url, data={"csrf_token": csrf}, headers={"Origin": "https://evil.example.com"})
    assert resp.status_code == 400
    with env.factory() as s:
        assert s.get(Alert, alert_id).resolved_at is None  # type: ignore[union-attr]
    # Every POST route refuses a missing token, whatever it does.
    for _endpoint, method, route in console_routes(env.app):
        if method == "POST":
            assert client.post(route).status_code == 400, route
    resp = client.post(url, data={"csrf_token": csrf})
    assert resp.status_code == 302
    with env.factory() as s:
        assert s.get(Alert, alert_id).resolved_at is not None  # type: ignore[union-attr]
    assert "No open alerts" in client.get("/console/alerts").text
    # Logging out is a POST with the token too; afterwards the session is gone.
    assert client.post("/console/logout", data={"csrf_token": csrf}).status_code == 302
    assert client.get("/console/").status_code == 302


def test_config_page_masks_secrets(tmp_path: Path, db_url: str) -> None:
    hook = "https://hooks.example.com/services/T0/B0/SECRETPATHPART"
    e = make_env(
        tmp_path,
        db_url,
        console={"password_hash": PASSWORD_HASH, "secret_key": "console-session-key-0123456789"},
        businesses=[business(escalation={"webhook_url": hook})],
    )
    client, _ = logged_in(e.app)
    html = client.get("/console/config").text
    assert "***" in html and "bright-spark" in html
    for secret in (AUTH_TOKEN, PASSWORD_HASH, "console-session-key-0123456789", "SECRETPATHPART"):
        assert secret not in html


# -- leads and the reply box ------------------------------------------------------------------------


def _missed_call(stack: Stack, caller: str = CALLER) -> str:
    stack.call(caller, "no-answer")
    stack.drain()
    lead = stack.lead(caller)
    assert lead is not None and lead["status"] == "texted"
    return str(lead["id"])


def test_reply_box_takes_the_conversation_over(console_stack: Stack) -> None:
    stack = console_stack
    lead_id = _missed_call(stack)
    client, _ = logged_in(stack.app)
    found = client.get("/console/leads?q=(312) 555-0142").text  # any phone format
    assert f"/console/leads/{lead_id}" in found
    page = client.get(f"/console/leads/{lead_id}").text
    assert "missed_no_answer" in page and "first_text" in page
    ref = re.search(r'name="ref" value="([^"]+)"', page)
    assert ref
    form = {"csrf_token": token_of(page), "ref": ref.group(1), "body": "Hi, this is Sam. Can I call you?"}
    resp = client.post(f"/console/leads/{lead_id}/reply", data=form, follow_redirects=True)
    assert resp.status_code == 200 and "The conversation is now yours" in resp.text
    assert "Hi, this is Sam. Can I call you?" in resp.text
    # The same form again (a double click, a reload) sends nothing more.
    again = client.post(f"/console/leads/{lead_id}/reply", data=form, follow_redirects=True)
    assert "Already sent" in again.text
    with stack.factory() as s:
        lead = s.get(Lead, lead_id)
        assert lead is not None and lead.human_takeover and lead.status == "handed_off"
        human = list(s.scalars(select(Message).where(Message.lead_id == lead_id, Message.kind == "human")))
        assert len(human) == 1 and human[0].status == "pending"
    stack.drain()
    assert any(m["body"] == "Hi, this is Sam. Can I call you?" for m in stack.sent(to=CALLER))


def test_reply_box_refuses_an_opted_out_caller(console_stack: Stack) -> None:
    stack = console_stack
    lead_id = _missed_call(stack)
    stack.inbound_sms(CALLER, "STOP")
    stack.drain()
    client, _ = logged_in(stack.app)
    page = client.get(f"/console/leads/{lead_id}").text
    assert "opted out" in page
    resp = client.post(
        f"/console/leads/{lead_id}/reply",
        data={"csrf_token": token_of(page), "ref": uuid.uuid4().hex, "body": "Are you there?"},
        follow_redirects=True,
    )
    assert resp.status_code == 200 and "Not sent: this caller has opted out" in resp.text
    with stack.factory() as s:
        assert not s.scalars(select(Message).where(Message.kind == "human")).first()
        lead = s.get(Lead, lead_id)
        assert lead is not None and not lead.human_takeover
    assert CALLER in client.get("/console/suppressions?q=312-555-0142").text


# -- outbox -----------------------------------------------------------------------------------------


def test_dead_jobs_show_the_vendor_error_and_can_be_retried(console_stack: Stack) -> None:
    stack = console_stack
    configure_emulator(stack, numbers={CALLER: {"reject_code": 21408}})
    stack.call(CALLER, "no-answer")
    stack.drain()
    with stack.factory() as s:
        job = s.scalars(select(OutboxJob).where(OutboxJob.status == "dead")).one()
    client, csrf = logged_in(stack.app)
    page = client.get("/console/outbox").text
    assert f'id="job-{job.id}"' in page and "21408" in page and "Dead jobs (1)" in page
    resp = client.post(f"/console/outbox/{job.id}/retry", data={"csrf_token": csrf}, follow_redirects=True)
    assert f"Job {job.id} queued to run again" in resp.text and "No dead jobs" in resp.text
    with stack.factory() as s:
        row = s.get(OutboxJob, job.id)
        assert row is not None and row.status == "pending" and row.attempts == 0
    # "Retry all dead jobs" takes every dead job at once.
    stack.drain()
    with stack.factory() as s, s.begin():
        s.execute(update(OutboxJob).values(status="dead", last_error="gone"))
        dead = s.scalar(select(func.count()).select_from(OutboxJob).where(OutboxJob.status == "dead"))
    assert dead
    resp = client.post("/console/outbox/retry-dead", data={"csrf_token": csrf}, follow_redirects=True)
    assert f"{dead} dead job(s) queued" in resp.text
    with stack.factory() as s:
        assert not s.scalar(select(func.count()).select_from(OutboxJob).where(OutboxJob.status == "dead"))


# -- connectors -------------------------------------------------------------------------------------


def test_a_failing_connector_check_is_shown_not_a_500(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    from cryptography.fernet import Fernet

    from core.secrets import SecretBox

    monkeypatch.setenv("TEXTBACK_SECRET_KEY", Fernet.generate_key().decode())
    with env.factory() as s, s.begin():
        s.add(ConnectorInstall(
            business_id="bright-spark", connector_id="webhook", version="1.0.0",
            config={"url": "http://127.0.0.1:9/hook", "timeout_seconds": 2},
            secrets=SecretBox().seal({"signing_secret": "s" * 24}), sync={}, enabled=True,
        ))
    client, csrf = logged_in(env.app)
    page = client.get("/console/connectors").text
    assert "webhook" in page and "Run check" in page
    resp = client.post("/console/connectors/bright-spark/webhook/check", data={"csrf_token": csrf})
    assert resp.status_code == 200 and "check failed" in resp.text
    # No encryption key for the stored secrets: still a sentence, not a server error.
    monkeypatch.delenv("TEXTBACK_SECRET_KEY")
    resp = client.post("/console/connectors/bright-spark/webhook/check", data={"csrf_token": csrf})
    assert resp.status_code == 200 and "check failed" in resp.text and "ConfigError" in resp.text
    resp = client.post("/console/connectors/bright-spark/nothing/check", data={"csrf_token": csrf})
    assert resp.status_code == 200 and "not installed" in resp.text


# -- dashboard and volume -----------------------------------------------------------------------------


def test_dashboard_counts_the_funnel(env: Env) -> None:
    now = utcnow()
    with env.factory() as s, s.begin():
        decisions = [("missed_no_answer", "text"), ("missed_busy", "text"), ("cooldown", "skip"),
                     ("answered", "skip")]
        for i, (reason, outcome) in enumerate(decisions):
            s.add(Call(call_sid=f"CA{i}", business_id="bright-spark", decision_outcome=outcome,
                       decision_reason=reason, started_at=now, decided_at=now))
        a = Lead(id=str(uuid.uuid4()), business_id="bright-spark", phone="+13125550001", status="booked",
                 source="missed_call", intent="booking", created_at=now - timedelta(minutes=10),
                 first_human_response_at=now - timedelta(minutes=4))
        b = Lead(id=str(uuid.uuid4()), business_id="bright-spark", phone="+13125550002", status="texted",
                 source="missed_call", created_at=now - timedelta(minutes=10))
        s.add_all([a, b])
        s.flush()
        for lead, secs in ((a, 2.0), (b, 4.0)):
            s.add(Message(id=str(uuid.uuid4()), lead_id=lead.id, business_id="bright-spark",
                          direction="outbound", kind="first_text", from_number="+13125550100",
                          to_number=lead.phone, body="hi", status="delivered", created_at=now,
                          sent_at=now + timedelta(seconds=secs)))
        s.add(Message(id=str(uuid.uuid4()), lead_id=a.id, business_id="bright-spark", direction="inbound",
                      kind="reply", from_number=a.phone, to_number="+13125550100", body="yes",
                      status="received", created_at=now))
    with env.factory() as s:
        data = console_queries.dashboard(s, 7, None)
    t = data.total
    assert (t.missed, t.leads, t.texted, t.replied, t.qualified, t.booked) == (3, 2, 2, 1, 1, 1)
    assert t.recovered_pct == 50.0
    assert data.median_to_text == pytest.approx(3.0)
    assert data.median_to_human == pytest.approx(360.0)
    assert data.per_day[now.date()].missed == 3
    client, _ = logged_in(env.app)
    html = client.get("/console/?days=7").text
    assert "<svg" in html and "50.0%" in html and "3.0 s" in html and "6 min 0 s" in html


def test_pages_stay_fast_with_thousands_of_rows(env: Env) -> None:
    now = utcnow()
    n = 3000
    lead_rows: list[dict[str, Any]] = [
        {"id": str(uuid.uuid4()), "business_id": "bright-spark", "phone": f"+1312555{i:04d}",
         "name": f"Caller {i}", "status": "texted", "source": "missed_call", "human_takeover": False,
         "created_at": now - timedelta(minutes=i), "updated_at": now}
        for i in range(n)
    ]
    with env.factory() as s, s.begin():
        s.execute(insert(Lead), lead_rows)
        s.execute(insert(Message), [
            {"id": str(uuid.uuid4()), "lead_id": r["id"], "business_id": "bright-spark",
             "direction": "outbound", "kind": "first_text", "from_number": "+13125550100",
             "to_number": r["phone"], "body": "hi", "status": "delivered", "created_at": r["created_at"],
             "sent_at": r["created_at"] + timedelta(seconds=1), "updated_at": now}
            for r in lead_rows
        ])
        s.execute(insert(Call), [
            {"call_sid": f"CA{i:06d}", "business_id": "bright-spark", "decision_outcome": "text",
             "decision_reason": "missed_no_answer", "started_at": r["created_at"],
             "decided_at": r["created_at"], "bridged": False, "screen_accepted": False}
            for i, r in enumerate(lead_rows)
        ])
        s.execute(insert(Suppression), [
            {"business_id": "bright-spark", "phone": r["phone"], "reason": "opted_out", "source": "keyword",
             "created_at": now} for r in lead_rows[:1000]
        ])
        for i in range(600):
            outbox.enqueue(s, kind="sms.send", target="twilio", dedupe_key=f"dead:{i}", payload={})
        s.execute(update(OutboxJob).values(status="dead", last_error="Twilio 21408: permission denied"))
        s.execute(insert(Alert), [{"kind": "auth", "message": f"alert {i}", "at": now} for i in range(300)])
    client, _ = logged_in(env.app)
    for url in ("/console/?days=90", "/console/leads", "/console/leads?q=555-0042", "/console/leads?page=3",
                "/console/outbox", "/console/outbox?page=2", "/console/suppressions", "/console/alerts",
                f"/console/leads/{lead_rows[42]['id']}"):
        started = time.perf_counter()
        resp = client.get(url)
        elapsed = time.perf_counter() - started
        assert resp.status_code == 200, url
        assert elapsed < 2.0, f"{url} took {elapsed:.2f} s"
        assert len(resp.data) < 400_000, url  # paged: never thousands of rows in one page
    assert "+13125550042" in client.get("/console/leads?q=(312) 555-0042").text
    assert 'rel="next"' in client.get("/console/leads").text
    assert "Dead jobs (600)" in client.get("/console/outbox").text
