"""The Google Calendar connector against its emulator, driven through the real Google client libraries."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import requests

from connectors.base import ConnectorContext
from connectors.emulator import serve_in_thread
from connectors.emulator.base import ServerThread
from connectors.google_calendar import mappers
from connectors.google_calendar.connector import GoogleCalendarConnector
from connectors.google_calendar.emulator import SANDBOX_OAUTH, GoogleCalendarEmulator, service_account_info
from connectors.google_calendar.kit import GoogleCalendarKit
from connectors.testing import conformance_suite
from core import db, secrets
from core.connector_state import TokenStore
from core.crm import BookingData, Remote, Slot
from core.errors import AuthError, ConfigError, ConnectorConfigError, Rejected, TransientError
from core.hours import parse_range
from core.slots import bookable_slots
from tests.schema import migrate

TestGoogleCalendarConformance = conformance_suite(GoogleCalendarKit())

CHICAGO = ZoneInfo("America/Chicago")
HOURS = {d: [parse_range("09:00-17:00")] for d in range(5)}
NOW = datetime(2030, 3, 4, 8, 0, tzinfo=CHICAGO)  # Monday 08:00 in Chicago
OWNER = "owner@example.com"


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    running = serve_in_thread(GoogleCalendarEmulator(calendars=("primary", "front-desk")).app)
    yield running
    running.stop()


@pytest.fixture
def url(server: ServerThread) -> str:
    requests.post(f"{server.url}/_emulator/reset", timeout=5).raise_for_status()
    return server.url


def sa_config(url: str, **extra: Any) -> dict[str, Any]:
    return {
        "auth_kind": "service_account",
        "service_account_json": json.dumps(service_account_info(url + "/token")),
        "api_base_url": url,
        **extra,
    }


def oauth_config(url: str, **extra: Any) -> dict[str, Any]:
    return {"auth_kind": "oauth", **SANDBOX_OAUTH, "token_uri": url + "/token", "api_base_url": url, **extra}


def connector(
    config: dict[str, Any], tokens: TokenStore | None = None, **context: Any
) -> GoogleCalendarConnector:
    return GoogleCalendarConnector(
        config, ConnectorContext("acme", "google_calendar", tokens=tokens, **context)
    )


def state(url: str) -> dict[str, Any]:
    return dict(requests.get(f"{url}/_emulator/state", timeout=5).json())


def calls(url: str) -> list[tuple[str, str]]:
    log = requests.get(f"{url}/_emulator/requests", timeout=5).json()["requests"]
    return [(r["method"], r["path"]) for r in log]


def emulate(url: str, **values: Any) -> None:
    requests.post(f"{url}/_emulator/config", json=values, timeout=5).raise_for_status()


def fault(url: str, **spec: Any) -> None:
    assert requests.post(f"{url}/_emulator/faults", json=spec, timeout=5).status_code == 201


def google_error(status: int, reason: str, message: str, domain: str = "usageLimits") -> dict[str, Any]:
    return {
        "error": {
            "errors": [{"domain": domain, "reason": reason, "message": message}],
            "code": status,
            "message": message,
        }
    }


def booking(key: str = "acme:lead-1:slot", start: datetime | None = None, **extra: Any) -> BookingData:
    start = start or datetime(2030, 3, 4, 16, tzinfo=UTC)
    return BookingData(
        key=key,
        slot=Slot(start, start + timedelta(hours=1)),
        summary="Callback: Dana (+1555…)",
        description="Caller: Dana\nPhone: +15550101234\nLeaking water heater",
        time_zone="America/Chicago",
        **extra,
    )


def test_event_id_is_deterministic_base32hex() -> None:
    first = mappers.event_id("acme:lead-1:2030-03-04T16:00Z")
    assert re.fullmatch(r"[0-9a-v]{32}", first)
    assert first == mappers.event_id("acme:lead-1:2030-03-04T16:00Z") != mappers.event_id("acme:lead-2:x")


def test_free_busy_to_slots_to_booking_blocks_the_slot(url: str) -> None:
    emulate(
        url, busy={"primary": [{"start": "2030-03-04T10:00:00-06:00", "end": "2030-03-04T11:00:00-06:00"}]}
    )
    gc = connector(sa_config(url))
    window = (NOW, NOW + timedelta(days=7, hours=2))
    busy = gc.free_busy(*window)
    assert busy == [Slot(datetime(2030, 3, 4, 16, tzinfo=UTC), datetime(2030, 3, 4, 17, tzinfo=UTC))]
    offered = bookable_slots(NOW, busy, HOURS, frozenset(), CHICAGO, spread_days=False)
    # lead 2 h -> 10:00; busy 10-11 widened by 15 min -> first free start is 11:30
    assert [s.start.astimezone(CHICAGO).strftime("%H:%M") for s in offered] == ["11:30", "12:00", "12:30"]

    chosen = offered[0]
    made = gc.create_booking(booking("acme:lead-1:" + chosen.start.isoformat(), chosen.start), None)
    assert made.kind == "event" and made.created is True and made.url and made.url.startswith("https://")
    event = state(url)["events"]["primary"][0]
    assert event["id"] == made.id and event["start"]["timeZone"] == "America/Chicago"
    assert event["start"]["dateTime"] == "2030-03-04T11:30:00-06:00"
    assert "Dana" in event["description"] and "+15550101234" in event["description"]
    assert event["extendedProperties"]["private"]["textback_key"].startswith("acme:lead-1:")
    assert "attendees" not in event

    busy = gc.free_busy(*window)
    assert chosen in busy
    again = bookable_slots(NOW, busy, HOURS, frozenset(), CHICAGO, spread_days=False)
    assert chosen not in again
    assert all(
        s.end + timedelta(minutes=15) <= chosen.start or s.start >= chosen.end + timedelta(minutes=15)
        for s in again
    )
    assert gc.api_calls == 4  # three API calls and one token grant


def test_same_booking_twice_is_one_event(url: str) -> None:
    gc = connector(sa_config(url))
    first = gc.create_booking(booking(), None)
    second = connector(sa_config(url)).create_booking(booking(), None)
    assert (first.id, first.url) == (second.id, second.url)
    assert (first.created, second.created) == (True, False)
    assert len(state(url)["events"]["primary"]) == 1
    api = [c for c in calls(url) if c[1].startswith("/calendar/")]
    event_path = f"/calendar/v3/calendars/primary/events/{first.id}"
    assert api[-2:] == [("POST", "/calendar/v3/calendars/primary/events"), ("GET", event_path)]


def test_booking_again_after_cancel_restores_the_event(url: str) -> None:
    gc = connector(sa_config(url))
    made = gc.create_booking(booking(), None)
    gc.cancel_booking(made)
    again = gc.create_booking(booking(), None)
    assert again.id == made.id
    assert [e["status"] for e in state(url)["events"]["primary"]] == ["confirmed"]


def test_move_and_cancel_twice(url: str) -> None:
    gc = connector(sa_config(url))
    made = gc.create_booking(booking(), None)
    later = datetime(2030, 3, 5, 15, tzinfo=UTC)
    moved = gc.move_booking(made, booking(start=later))
    assert moved.id == made.id
    event = state(url)["events"]["primary"][0]
    assert event["start"] == {"dateTime": "2030-03-05T09:00:00-06:00", "timeZone": "America/Chicago"}
    assert event["sequence"] == 1
    assert gc.free_busy(NOW, NOW + timedelta(days=2)) == [Slot(later, later + timedelta(hours=1))]

    gc.cancel_booking(made)
    gc.cancel_booking(made)  # 410: already gone is success
    gc.cancel_booking(Remote(id="nosuchevent0", kind="event"))  # 404 as well
    assert gc.free_busy(NOW, NOW + timedelta(days=2)) == []
    with pytest.raises(Rejected, match="cancelled"):
        gc.move_booking(made, booking(start=later))
    with pytest.raises(Rejected, match="no longer exists"):
        gc.move_booking(Remote(id="nosuchevent0", kind="event"), booking(start=later))


@pytest.mark.parametrize("reason", ["rateLimitExceeded", "userRateLimitExceeded"])
def test_403_rate_limit_is_rate_limited(url: str, reason: str) -> None:
    gc = connector(sa_config(url))
    fault(
        url,
        path="/calendar/v3/freeBusy",
        status=403,
        body=google_error(403, reason, "Rate Limit Exceeded"),
        count=1,
    )
    with pytest.raises(TransientError) as caught:
        gc.free_busy(NOW, NOW + timedelta(hours=1))
    assert type(caught.value).__name__ == "RateLimited" and caught.value.retry_after == 30
    fault(
        url,
        path="/calendar/v3/freeBusy",
        status=403,
        headers={"Retry-After": "12"},
        body=google_error(403, reason, "Rate Limit Exceeded"),
        count=1,
    )
    with pytest.raises(TransientError) as caught:
        gc.free_busy(NOW, NOW + timedelta(hours=1))
    assert caught.value.retry_after == 12


def test_403_quota_exceeded_is_rejected_and_explained(url: str) -> None:
    gc = connector(sa_config(url))
    fault(
        url,
        path="/calendar/v3/calendars/primary/events",
        status=403,
        body=google_error(403, "quotaExceeded", "Calendar usage limits exceeded."),
        count=1,
    )
    with pytest.raises(Rejected, match="usage limits") as caught:
        gc.create_booking(booking(), None)
    assert caught.value.code == "quotaExceeded" and "not retried" in str(caught.value)


def test_service_account_invites_need_delegation(url: str) -> None:
    with_email = booking(attendee_email="dana@example.com")
    # Invites off (the default): the email is known but not used.
    connector(sa_config(url)).create_booking(with_email, None)
    assert "attendees" not in state(url)["events"]["primary"][0]

    inviting = connector(sa_config(url, invite_attendees=True))
    with pytest.raises(ConnectorConfigError, match="domain-wide delegation") as caught:
        inviting.create_booking(booking("acme:lead-2:slot", attendee_email="dana@example.com"), None)
    assert "invite_attendees off" in str(caught.value)

    delegated = connector(sa_config(url, invite_attendees=True, delegated_subject=OWNER))
    delegated.create_booking(booking("acme:lead-2:slot", attendee_email="dana@example.com"), None)
    events = state(url)["events"]["primary"]
    assert events[-1]["attendees"] == [{"email": "dana@example.com", "responseStatus": "needsAction"}]
    assert state(url)["subjects"] == [OWNER]


@pytest.fixture
def token_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> TokenStore:
    monkeypatch.setenv(secrets.ENV_KEY, secrets.generate_key())
    engine = db.make_engine(f"sqlite:///{tmp_path / 'textback.db'}")
    migrate(engine)
    return TokenStore(db.session_factory(engine), secrets.SecretBox(), "acme", "google_calendar")


def test_oauth_ten_workers_refresh_once(url: str, token_store: TokenStore) -> None:
    assert connector(oauth_config(url), token_store).free_busy(NOW, NOW + timedelta(hours=1)) == []
    assert state(url)["tokens_issued"]["refresh"] == 1
    stored = token_store.get()
    assert stored is not None and stored.refresh_token == SANDBOX_OAUTH["refresh_token"]

    emulate(url, expire_tokens=True)  # every issued token now answers 401
    barrier = threading.Barrier(10)

    def worker(_: int) -> list[Slot]:
        gc = connector(oauth_config(url), token_store)
        barrier.wait(timeout=10)
        return gc.free_busy(NOW, NOW + timedelta(hours=1))

    with ThreadPoolExecutor(10) as pool:
        assert list(pool.map(worker, range(10))) == [[]] * 10
    assert state(url)["tokens_issued"]["refresh"] == 2  # exactly one more refresh for ten workers
    fresh = token_store.get()
    assert fresh is not None and fresh.access_token != stored.access_token


def test_oauth_without_a_store_refreshes_in_memory(url: str) -> None:
    gc = connector(oauth_config(url))
    gc.create_booking(booking(), None)
    emulate(url, expire_tokens=True)
    gc.cancel_booking(Remote(id=mappers.event_id(booking().key)))
    assert state(url)["tokens_issued"]["refresh"] == 2
    assert [e["status"] for e in state(url)["events"]["primary"]] == ["cancelled"]


def test_revoked_refresh_token_is_an_auth_error(url: str, token_store: TokenStore) -> None:
    gc = connector(oauth_config(url), token_store)
    gc.free_busy(NOW, NOW + timedelta(hours=1))
    emulate(url, revoke=True)
    with pytest.raises(AuthError, match="refresh token was revoked or expired; reconnect") as caught:
        gc.free_busy(NOW, NOW + timedelta(hours=1))
    assert SANDBOX_OAUTH["refresh_token"] not in str(caught.value)
    assert SANDBOX_OAUTH["client_secret"] not in repr(gc)


def test_check_ok_and_failing(url: str) -> None:
    result = connector(sa_config(url)).check()
    assert result.ok, result.summary
    assert "primary" in result.summary

    missing = connector(sa_config(url, calendar_id="nobody@example.com")).check()
    assert not missing.ok and "not found or is not shared" in missing.summary

    fault(
        url,
        path="/calendar/v3/freeBusy",
        status=403,
        count=1,
        body=google_error(
            403,
            "accessNotConfigured",
            "Google Calendar API has not been used in project 1 before or it is disabled.",
            domain="usageLimits",
        ),
    )
    disabled = connector(sa_config(url)).check()
    assert not disabled.ok and "API is disabled" in disabled.summary

    wrong_key = connector(sa_config(url, service_account_json='{"type": "service_account"}')).check()
    assert not wrong_key.ok and "client_email and private_key" in wrong_key.summary

    emulate(url, revoke=True)
    revoked = connector(oauth_config(url)).check()
    assert not revoked.ok and "revoked" in revoked.summary
    sa_revoked = connector(sa_config(url)).check()
    assert not sa_revoked.ok and "service-account key" in sa_revoked.summary


def test_non_json_200_and_timeouts_are_transient(url: str) -> None:
    gc = connector(sa_config(url), timeout=0.5)
    fault(
        url,
        path="/calendar/v3/freeBusy",
        status=200,
        body="<html><body>portal</body></html>",
        headers={"Content-Type": "text/html"},
        count=1,
    )
    with pytest.raises(TransientError, match="not the API's JSON"):
        gc.free_busy(NOW, NOW + timedelta(hours=1))
    fault(url, path="/calendar/v3/freeBusy", status=200, body={"kind": "calendar#freeBusy"}, count=1)
    with pytest.raises(TransientError, match="calendars"):
        gc.free_busy(NOW, NOW + timedelta(hours=1))
    fault(url, path="/token", status=503, body="<html><title>down</title></html>", count=1)
    with pytest.raises(TransientError):
        connector(sa_config(url)).free_busy(NOW, NOW + timedelta(hours=1))


def test_throttle_runs_before_every_api_call(url: str) -> None:
    seen: list[int] = []
    gc = connector(sa_config(url), throttle=seen.append)
    gc.create_booking(booking(), None)
    gc.create_booking(booking(), None)  # insert (409) + get
    assert seen == [1, 1, 1]
    assert gc.api_calls == 4  # three API calls and one token grant


@pytest.mark.parametrize(
    "base",
    ["http://169.254.169.254", "https://evil.example.com", "http://www.googleapis.com", "file:///etc/passwd"],
)
def test_api_base_url_must_be_loopback_or_google(base: str) -> None:
    with pytest.raises(ConnectorConfigError):
        connector({"auth_kind": "oauth", **SANDBOX_OAUTH, "api_base_url": base})
    with pytest.raises(ConnectorConfigError):
        connector({"auth_kind": "oauth", **SANDBOX_OAUTH, "token_uri": base})


def test_allowed_base_urls() -> None:
    for base in ("http://127.0.0.1:9", "http://localhost:9", "http://[::1]:9", "https://www.googleapis.com"):
        assert connector({"auth_kind": "oauth", **SANDBOX_OAUTH, "api_base_url": base}) is not None


def test_bad_booking_input_is_rejected_without_a_call() -> None:
    gc = connector({"auth_kind": "oauth", **SANDBOX_OAUTH, "api_base_url": "http://127.0.0.1:9"})
    naive = BookingData(
        "k", Slot(datetime(2030, 3, 4, 10), datetime(2030, 3, 4, 11)), "s", "d", "America/Chicago"
    )
    with pytest.raises(Rejected):
        gc.create_booking(naive, None)
    with pytest.raises(Rejected, match="time zone"):
        gc.create_booking(BookingData("k", booking().slot, "s", "d", "Mars/Olympus"), None)
    assert gc.api_calls == 0
    assert date(2030, 3, 4) == booking().slot.start.date()


def test_service_account_401_is_an_auth_error_and_the_next_call_mints_afresh(url: str) -> None:
    gc = connector(sa_config(url))
    gc.free_busy(NOW, NOW + timedelta(hours=1))
    emulate(url, expire_tokens=True)
    with pytest.raises(AuthError, match="rejected the credentials"):
        gc.free_busy(NOW, NOW + timedelta(hours=1))
    assert gc.free_busy(NOW, NOW + timedelta(hours=1)) == []
    assert state(url)["tokens_issued"]["jwt"] == 2


def test_service_account_connectors_share_the_key_but_not_the_token(url: str) -> None:
    first, second = connector(sa_config(url)), connector(sa_config(url))
    for gc in (first, second, first, second):
        assert gc.free_busy(NOW, NOW + timedelta(hours=1)) == []
    assert state(url)["tokens_issued"]["jwt"] == 2  # one token per connector, each reused

    # A damaged key under the same key id is read afresh (and refused), not served from memory.
    info = service_account_info(url + "/token")
    lines = info["private_key"].splitlines()
    damaged = {**info, "private_key": "\n".join([*lines[:4], lines[-1]])}
    broken = connector(sa_config(url, service_account_json=json.dumps(damaged)))
    with pytest.raises(ConnectorConfigError, match="private key in service_account_json cannot be read"):
        broken.free_busy(NOW, NOW + timedelta(hours=1))
    assert state(url)["tokens_issued"]["jwt"] == 2


def test_manifest_config_schema_accepts_both_auth_kinds() -> None:
    from connectors import manifest, registry

    man = registry.check_class(GoogleCalendarConnector, "google_calendar").manifest
    assert man.secret_keys == {"service_account_json", "client_id", "client_secret", "refresh_token"}
    manifest.validate_config(
        man, sa_config("http://127.0.0.1:1", delegated_subject=OWNER, invite_attendees=True)
    )
    manifest.validate_config(man, oauth_config("http://127.0.0.1:1", calendar_id="front-desk"))
    with pytest.raises(ConfigError, match="service_account_json"):
        manifest.validate_config(man, {"auth_kind": "service_account"})
    with pytest.raises(ConfigError, match="refresh_token"):
        manifest.validate_config(man, {"auth_kind": "oauth", "client_id": "x", "client_secret": "y"})
