"""The admin console in a real headless Chromium (Playwright driving Debian's /usr/bin/chromium).

Logs in, walks every page, replies to a conversation (the text reaches the Twilio emulator after a
worker drain), retries a dead job and screenshots the dashboard. Skipped on a laptop without
Chromium; under CI (``$CI``) a missing browser fails the run, since .ci/run installs it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from core.models import Alert, OutboxJob
from tests.conftest import AUTH_TOKEN
from tests.stack import Stack, configure_emulator
from tests.test_console import PASSWORD, PASSWORD_HASH, report_json

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
CALLER = "+13125550142"
REJECTED = "+13125550177"
REPLY = "Hi, Sam from Bright Spark here. Does 3pm work?"


def _browser_problem() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} is missing (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[test]')"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    problem = _browser_problem()
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"the browser tests must run under CI: {problem}")
        pytest.skip(problem)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    # SQLite: the browser adds nothing database-specific; test_console.py covers both databases.
    s = Stack(tmp_path, f"sqlite:///{tmp_path / 'textback.db'}", console={"password_hash": PASSWORD_HASH})
    try:
        yield s
    finally:
        s.close()


def test_console_in_a_real_browser(browser: Any, stack: Stack, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    # A conversation to answer, a dead job to retry, and an alert to resolve.
    stack.call(CALLER, "no-answer")
    configure_emulator(stack, numbers={REJECTED: {"reject_code": 21408}})
    stack.call(REJECTED, "no-answer")
    stack.drain()
    with stack.factory() as s, s.begin():
        dead = s.scalars(select(OutboxJob).where(OutboxJob.status == "dead")).one()
        s.add(Alert(business_id="bright-spark", connector_id="hubspot", kind="auth", message="token revoked"))

    context = browser.new_context(viewport={"width": 1200, "height": 900})
    context.set_default_timeout(10_000)
    page = context.new_page()
    base = f"{stack.bridge_url}/console"
    try:
        # Logging in; a wrong password first.
        page.goto(f"{base}/")
        expect(page).to_have_url(re.compile(r"/console/login"))
        page.fill("#password", "not-the-password")
        page.click("button[type=submit]")
        expect(page.locator(".flash.error")).to_contain_text("Wrong password")
        page.fill("#password", PASSWORD)
        page.click("button[type=submit]")
        expect(page.locator("h1")).to_have_text("Dashboard")

        # The dashboard: the numbers of `textback report` (14 days by default), charts, a screenshot.
        expect(page.locator(".cards")).to_contain_text("missed calls")
        expect(page.locator(".cards")).to_contain_text("median missed call")
        want = report_json(stack, "--since", "14d")["total"]
        assert (want["missed_calls"], want["texted"]) == (2, 1)  # the rejected text was never sent
        for key in ("missed_calls", "texted", "replied", "recovered"):
            expect(page.locator(f'.cards [data-key="{key}"] .n')).to_have_text(str(want[key]))
        expect(page.locator('.cards [data-key="recovered_pct"] .n')).to_have_text(f"{want['recovered_pct']}%")
        assert page.locator("svg.chart").count() >= 4
        shot = tmp_path / "dashboard.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 5000

        # Leads: search by the phone in another format, open the lead, reply.
        page.click("nav >> text=Leads")
        page.fill("input[name=q]", "(312) 555-0142")
        page.click("form.filters button")
        page.click(f"a:has-text('{CALLER}')")
        expect(page.locator(".timeline")).to_contain_text("missed_no_answer")
        expect(page.locator(".timeline")).to_contain_text("first_text")
        page.fill("#body", REPLY)
        page.click("form.reply button")
        expect(page.locator(".flash.ok")).to_contain_text("The conversation is now yours")
        expect(page.locator(".timeline")).to_contain_text(REPLY)
        expect(page.locator(".facts")).to_contain_text("human takeover")
        stack.drain()
        assert any(m["body"] == REPLY for m in stack.sent(to=CALLER))
        page.reload()
        expect(page.locator(".timeline li", has_text=REPLY)).to_contain_text("delivered")

        # The outbox: the dead job with Twilio's error, retried.
        page.click("nav >> text=Outbox")
        row = page.locator(f"#job-{dead.id}")
        expect(row).to_contain_text("21408")
        row.locator("button", has_text="Retry").click()
        expect(page.locator(".flash.ok")).to_contain_text(f"Job {dead.id} queued to run again")
        expect(page.locator(f"#job-{dead.id}")).to_have_count(0)
        expect(page.locator("body")).to_contain_text("No dead jobs")

        # The other pages.
        page.click("nav >> text=Connectors")
        expect(page.locator("h1")).to_have_text("Connector health")
        expect(page.locator("main")).to_contain_text("No connectors installed")
        page.click("nav >> text=Suppressions")
        expect(page.locator("h1")).to_have_text("Suppression list")
        page.click("nav >> text=Alerts")
        expect(page.locator("main")).to_contain_text("token revoked")
        page.locator("tr", has_text="token revoked").locator("button", has_text="Resolve").click()
        expect(page.locator("main")).to_contain_text("No open alerts")
        page.click("nav >> text=Config")
        expect(page.locator("pre.config")).to_contain_text("***")
        assert AUTH_TOKEN not in page.content()

        # Logging out ends the session.
        page.click("header .logout button")
        expect(page).to_have_url(re.compile(r"/console/login"))
        page.goto(f"{base}/outbox")
        expect(page).to_have_url(re.compile(r"/console/login"))
    finally:
        context.close()
