"""The Google Calendar emulator, driven by the real google-api-python-client and google-auth."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth.credentials import AnonymousCredentials
from google.auth.exceptions import RefreshError
from google.oauth2 import credentials as user_credentials
from google.oauth2 import service_account
from googleapiclient.discovery import build
from googleapiclient.errors import HttpError

from connectors.emulator.base import ServerThread, serve_in_thread
from connectors.google_calendar.emulator import (
    SANDBOX_OAUTH,
    GoogleCalendarEmulator,
    service_account_info,
)

SCOPES = ["https://www.googleapis.com/auth/calendar.events", "https://www.googleapis.com/auth/calendar.freebusy"]
OWNER = "owner@example.com"
DAY_MIN, DAY_MAX = "2030-03-04T00:00:00-06:00", "2030-03-05T00:00:00-06:00"


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    emulator = GoogleCalendarEmulator(calendars=("primary", "front-desk"))
    running = serve_in_thread(emulator.app)
    yield running
    running.stop()


@pytest.fixture
def url(server: ServerThread) -> str:
    requests.post(f"{server.url}/_emulator/reset", timeout=5).raise_for_status()
    return server.url


def calendar(url: str, creds: Any) -> Any:
    return build("calendar", "v3", credentials=creds, static_discovery=True,
                 client_options={"api_endpoint": f"{url}/calendar/v3/"})


def sa_creds(url: str, subject: str | None = OWNER, scopes: list[str] = SCOPES) -> Any:
    creds = service_account.Credentials.from_service_account_info(service_account_info(url + "/token"),
                                                                   scopes=scopes)
    return creds.with_subject(subject) if subject else creds


def user_creds(url: str) -> user_credentials.Credentials:
    return user_credentials.Credentials(token=None, refresh_token=SANDBOX_OAUTH["refresh_token"],
                                        client_id=SANDBOX_OAUTH["client_id"],
                                        client_secret=SANDBOX_OAUTH["client_secret"],
                                        token_uri=url + "/token")


def state(url: str) -> dict[str, Any]:
    return dict(requests.get(f"{url}/_emulator/state", timeout=5).json())


def config(url: str, **values: Any) -> None:
    requests.post(f"{url}/_emulator/config", json=values, timeout=5).raise_for_status()


def busy(svc: Any, calendar_id: str = "primary", **extra: Any) -> list[dict[str, str]]:
    body = {"timeMin": DAY_MIN, "timeMax": DAY_MAX, "items": [{"id": calendar_id}], **extra}
    return list(svc.freebusy().query(body=body).execute(num_retries=0)["calendars"][calendar_id]["busy"])


def booking(start: str = "10:00", end: str = "10:30", **extra: Any) -> dict[str, Any]:
    return {"summary": "Callback: +15550109999", "description": "Missed call",
            "start": {"dateTime": f"2030-03-04T{start}:00", "timeZone": "America/Chicago"},
            "end": {"dateTime": f"2030-03-04T{end}:00", "timeZone": "America/Chicago"}, **extra}


def event_id(call_sid: str) -> str:
    """The connector's recipe: base32hex of a digest is a valid, deterministic Calendar event id."""
    digest = hashlib.sha1(f"acme:{call_sid}".encode(), usedforsecurity=False).digest()
    return base64.b32hexencode(digest).decode().lower().rstrip("=")


def insert(svc: Any, body: dict[str, Any], calendar_id: str = "primary") -> dict[str, Any]:
    request = svc.events().insert(calendarId=calendar_id, body=body, sendUpdates="none")
    return dict(request.execute(num_retries=0))


def failure(caught: pytest.ExceptionInfo[HttpError]) -> tuple[int, str]:
    return caught.value.status_code, caught.value.error_details[0]["reason"]


def test_inserted_event_blocks_free_busy(url: str) -> None:
    svc = calendar(url, sa_creds(url))
    assert busy(svc) == []
    event = insert(svc, booking())
    assert event["kind"] == "calendar#event" and event["status"] == "confirmed" and event["sequence"] == 0
    assert event["start"] == {"dateTime": "2030-03-04T10:00:00-06:00", "timeZone": "America/Chicago"}
    assert event["iCalUID"] == f"{event['id']}@google.com" and event["htmlLink"].startswith("https://")
    assert event["creator"]["email"] == OWNER and event["etag"].startswith('"')
    assert busy(svc) == [{"start": "2030-03-04T16:00:00Z", "end": "2030-03-04T16:30:00Z"}]
    assert busy(svc, timeZone="America/Chicago") == [{"start": "2030-03-04T10:00:00-06:00",
                                                       "end": "2030-03-04T10:30:00-06:00"}]
    seen = state(url)
    assert seen["tokens_issued"] == {"jwt": 1, "refresh": 0} and seen["subjects"] == [OWNER]
    assert [e["id"] for e in seen["events"]["primary"]] == [event["id"]]
    assert seen["events"]["front-desk"] == []


def test_busy_seeds_merge_and_unknown_calendar(url: str) -> None:
    config(url, busy={"primary": [{"start": "2030-03-04T15:30:00Z", "end": "2030-03-04T16:10:00Z"},
                                  {"start": "2030-03-03T20:00:00Z", "end": "2030-03-04T07:00:00Z"}]})
    svc = calendar(url, sa_creds(url))
    insert(svc, booking("10:00", "11:00"))
    insert(svc, booking("12:00", "13:00", transparency="transparent"))  # "show as free" never blocks
    items = [{"id": "primary"}, {"id": "nobody@example.com"}]
    body = {"timeMin": DAY_MIN, "timeMax": DAY_MAX, "items": items}
    result = svc.freebusy().query(body=body).execute(num_retries=0)
    assert result["kind"] == "calendar#freeBusy" and result["timeMin"] == "2030-03-04T06:00:00.000Z"
    assert result["calendars"]["primary"]["busy"] == [
        {"start": "2030-03-04T06:00:00Z", "end": "2030-03-04T07:00:00Z"},  # clipped to timeMin
        {"start": "2030-03-04T15:30:00Z", "end": "2030-03-04T17:00:00Z"},  # seed and event merged
    ]
    unknown = {"errors": [{"domain": "global", "reason": "notFound"}], "busy": []}
    assert result["calendars"]["nobody@example.com"] == unknown
    with pytest.raises(HttpError) as caught:
        svc.freebusy().query(body={**body, "timeMax": DAY_MIN}).execute(num_retries=0)
    assert failure(caught) == (400, "timeRangeEmpty")


def test_deterministic_id_is_idempotent_even_after_delete(url: str) -> None:
    svc = calendar(url, sa_creds(url))
    eid = event_id("CA0123456789abcdef0123456789abcdef")
    assert insert(svc, booking(id=eid))["id"] == eid
    with pytest.raises(HttpError) as caught:
        insert(svc, booking(id=eid))
    error = caught.value
    assert error.status_code == 409 and error.reason == "The requested identifier already exists."
    assert error.error_details == [{"message": "The requested identifier already exists.", "domain": "global",
                                    "reason": "duplicate"}]
    assert svc.events().get(calendarId="primary", eventId=eid).execute(num_retries=0)["id"] == eid

    assert svc.events().delete(calendarId="primary", eventId=eid).execute(num_retries=0) == ""
    assert busy(svc) == []
    assert svc.events().get(calendarId="primary", eventId=eid).execute(num_retries=0)["status"] == "cancelled"
    with pytest.raises(HttpError) as caught:
        svc.events().delete(calendarId="primary", eventId=eid).execute(num_retries=0)
    assert failure(caught) == (410, "deleted")
    with pytest.raises(HttpError) as caught:
        insert(svc, booking(id=eid))
    assert caught.value.status_code == 409
    for bad in ("ABCDEF", "abc", "wxyz12345"):
        with pytest.raises(HttpError) as caught:
            insert(svc, booking(id=bad))
        assert failure(caught) == (400, "invalid")
    with pytest.raises(HttpError) as caught:
        svc.events().get(calendarId="primary", eventId="nosuchevent").execute(num_retries=0)
    assert failure(caught) == (404, "notFound")


def test_patch_moves_the_event_and_bumps_sequence(url: str) -> None:
    svc = calendar(url, sa_creds(url))
    event = insert(svc, booking(extendedProperties={"private": {"callSid": "CA1"}}))
    patched = svc.events().patch(calendarId="primary", eventId=event["id"], body={
        "start": {"dateTime": "2030-03-04T14:00:00-06:00"}, "end": {"dateTime": "2030-03-04T14:30:00-06:00"},
        "extendedProperties": {"private": {"bookingState": "moved"}},
    }).execute(num_retries=0)
    assert patched["sequence"] == 1 and patched["summary"] == event["summary"]
    assert patched["extendedProperties"]["private"] == {"callSid": "CA1", "bookingState": "moved"}
    assert patched["etag"] != event["etag"] and patched["updated"] >= event["updated"]
    assert busy(svc) == [{"start": "2030-03-04T20:00:00Z", "end": "2030-03-04T20:30:00Z"}]
    with pytest.raises(HttpError) as caught:
        svc.events().patch(calendarId="primary", eventId=event["id"],
                           body={"end": {"dateTime": "2030-03-04T13:00:00-06:00"}}).execute(num_retries=0)
    assert caught.value.error_details[0]["reason"] == "timeRangeEmpty"


def test_list_filters_orders_and_pages(url: str) -> None:
    svc = calendar(url, user_creds(url))
    late = insert(svc, booking("15:00", "15:30", extendedProperties={"private": {"callSid": "CA2"}}))
    early = insert(svc, booking("09:00", "09:30", summary="Plumbing estimate",
                                extendedProperties={"private": {"callSid": "CA1"}}))
    gone = insert(svc, booking("11:00", "11:30", extendedProperties={"private": {"callSid": "CA3"}}))
    svc.events().delete(calendarId="primary", eventId=gone["id"]).execute(num_retries=0)
    insert(svc, {**booking(), "start": {"date": "2030-03-06"}, "end": {"date": "2030-03-07"}})  # other day

    def ids(**params: Any) -> list[str]:
        result = svc.events().list(calendarId="primary", **params).execute(num_retries=0)
        assert result["kind"] == "calendar#events" and result["timeZone"] == "America/Chicago"
        return [e["id"] for e in result["items"]]

    window = {"timeMin": DAY_MIN, "timeMax": DAY_MAX}
    assert ids(singleEvents=True, orderBy="startTime", **window) == [early["id"], late["id"]]
    assert ids(privateExtendedProperty="callSid=CA1") == [early["id"]]
    assert ids(privateExtendedProperty=["callSid=CA2", "other=x"]) == []
    assert ids(privateExtendedProperty="callSid=CA3") == []
    assert ids(privateExtendedProperty="callSid=CA3", showDeleted=True) == [gone["id"]]
    assert ids(q="plumbing") == [early["id"]]

    first = svc.events().list(calendarId="primary", maxResults=1, singleEvents=True, orderBy="startTime",
                              **window).execute(num_retries=0)
    second = svc.events().list(calendarId="primary", maxResults=1, singleEvents=True, orderBy="startTime",
                               pageToken=first["nextPageToken"], **window).execute(num_retries=0)
    assert [e["id"] for e in first["items"] + second["items"]] == [early["id"], late["id"]]
    assert "nextPageToken" not in second
    with pytest.raises(HttpError) as caught:
        ids(orderBy="startTime")  # Google requires singleEvents for this ordering
    assert caught.value.status_code == 400
    assert state(url)["tokens_issued"] == {"jwt": 0, "refresh": 1}


def test_service_account_cannot_invite_without_delegation(url: str) -> None:
    guests: dict[str, Any] = {"attendees": [{"email": "caller@example.com"}]}
    plain = calendar(url, sa_creds(url, subject=None))
    insert(plain, booking())  # no attendees: fine
    with pytest.raises(HttpError) as caught:
        insert(plain, booking(**guests))
    assert failure(caught) == (403, "forbiddenForServiceAccounts")
    delegated = insert(calendar(url, sa_creds(url)), booking(**guests))
    assert delegated["attendees"] == [{"email": "caller@example.com", "responseStatus": "needsAction"}]
    config(url, service_account_can_invite=True)
    insert(plain, booking(**guests))
    assert state(url)["subjects"] == [OWNER]


def test_quota_faults_parse_like_google(url: str) -> None:
    svc = calendar(url, sa_creds(url))
    limited = [{"domain": "usageLimits", "reason": "rateLimitExceeded", "message": "Rate Limit Exceeded"}]
    body = {"error": {"errors": limited, "code": 403, "message": "Rate Limit Exceeded"}}
    fault = {"path": "/calendar/v3/freeBusy", "status": 403, "body": body, "count": 1}
    requests.post(f"{url}/_emulator/faults", json=fault, timeout=5).raise_for_status()
    with pytest.raises(HttpError) as caught:
        busy(svc)
    assert caught.value.status_code == 403 and caught.value.reason == "Rate Limit Exceeded"
    assert caught.value.error_details[0]["reason"] == "rateLimitExceeded"

    too_many = {"error": {"errors": limited, "code": 429, "message": "Rate Limit Exceeded",
                          "status": "RESOURCE_EXHAUSTED"}}
    fault = {"path": "/calendar/v3/calendars/primary/events", "method": "POST", "status": 429,
             "body": too_many, "headers": {"Retry-After": "2"}, "count": 1}
    requests.post(f"{url}/_emulator/faults", json=fault, timeout=5).raise_for_status()
    with pytest.raises(HttpError) as caught:
        insert(svc, booking())
    assert caught.value.status_code == 429 and caught.value.resp["retry-after"] == "2"
    assert caught.value.error_details[0]["reason"] == "rateLimitExceeded"
    assert insert(svc, booking())["status"] == "confirmed"  # the fault was used up
    calls = requests.get(f"{url}/_emulator/requests", timeout=5).json()["requests"]
    # num_retries=0: the SDK made no hidden retries
    assert sum(1 for r in calls if r["path"].startswith("/calendar/")) == 3


def test_expired_token_is_refreshed_once(url: str) -> None:
    svc = calendar(url, user_creds(url))
    assert busy(svc) == []
    config(url, expire_tokens=True)
    assert busy(svc) == []  # 401, google-auth-httplib2 refreshes and replays
    assert state(url)["tokens_issued"] == {"jwt": 0, "refresh": 2}
    calls = requests.get(f"{url}/_emulator/requests", timeout=5).json()["requests"]
    api = "/calendar/v3/freeBusy"
    assert [r["path"] for r in calls] == ["/token", api, api, "/token", api]


@pytest.mark.parametrize("kind", ["user", "service-account"])
def test_revoked_grant_raises_refresh_error(url: str, kind: str) -> None:
    svc = calendar(url, user_creds(url) if kind == "user" else sa_creds(url))
    busy(svc)
    config(url, revoke=True)
    with pytest.raises(RefreshError, match=r"invalid_grant: Token has been expired or revoked\."):
        busy(svc)


def test_auth_failures_use_google_bodies(url: str) -> None:
    raw = requests.post(f"{url}/calendar/v3/freeBusy", json={}, timeout=5)
    assert raw.status_code == 401
    error = raw.json()["error"]
    assert error["status"] == "UNAUTHENTICATED" and error["code"] == 401
    assert error["errors"] == [{"message": "Invalid Credentials", "domain": "global", "reason": "authError",
                                "location": "Authorization", "locationType": "header"}]

    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    forged = service_account.Credentials.from_service_account_info(
        {**service_account_info(url + "/token"), "private_key": stranger}, scopes=SCOPES)
    with pytest.raises(RefreshError, match="Invalid JWT Signature"):
        busy(calendar(url, forged))

    read_only = calendar(url, sa_creds(url, scopes=["https://www.googleapis.com/auth/calendar.freebusy"]))
    assert busy(read_only) == []
    with pytest.raises(HttpError) as caught:
        insert(read_only, booking())
    assert failure(caught) == (403, "insufficientPermissions")

    config(url, require_auth=False)
    assert insert(calendar(url, AnonymousCredentials()), booking())["status"] == "confirmed"


def test_reset_clears_events_seeds_counters_and_config(url: str) -> None:
    svc = calendar(url, sa_creds(url))
    config(url, busy={"primary": [{"start": "2030-03-04T15:00:00Z", "end": "2030-03-04T16:00:00Z"}]},
           require_auth=False)
    insert(svc, booking())
    assert busy(svc) != []
    requests.post(f"{url}/_emulator/reset", timeout=5).raise_for_status()
    seen = state(url)
    assert seen["events"] == {"primary": [], "front-desk": []} and seen["busy"] == {}
    assert seen["tokens_issued"] == {"jwt": 0, "refresh": 0} and seen["subjects"] == []
    assert seen["config"]["require_auth"] is True
    assert busy(svc) == []  # the already-issued token still works after a reset


def test_service_account_endpoint_and_bad_config(url: str) -> None:
    info = requests.get(f"{url}/_emulator/service-account", timeout=5).json()
    assert info["token_uri"] == url + "/token" and info["type"] == "service_account"
    creds = service_account.Credentials.from_service_account_info(info, scopes=SCOPES)
    assert busy(calendar(url, creds), calendar_id="front-desk") == []
    assert requests.post(f"{url}/_emulator/config", json={"requireAuth": False}, timeout=5).status_code == 400
    bad_seed = {"busy": {"nowhere": [{"start": DAY_MIN, "end": DAY_MAX}]}}
    assert requests.post(f"{url}/_emulator/config", json=bad_seed, timeout=5).status_code == 400
