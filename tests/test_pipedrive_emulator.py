"""The Pipedrive emulator, driven over HTTP: plain ``requests`` for API v2 (``x-api-token`` header, as
the textback connector does) and the real pipedrive-python-lib ``Client`` for v1 and its traps."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from pipedrive.client import Client
from pipedrive.exceptions import BadRequestError, GoneError, UnauthorizedError

from connectors.emulator.base import ServerThread, serve_in_thread
from connectors.pipedrive.emulator import SANDBOX_OAUTH, SANDBOX_TOKEN, PipedriveEmulator

HEADERS = {"x-api-token": SANDBOX_TOKEN}
PHONE = "+13125550142"
RATE_HEADERS = ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset",
                "x-daily-ratelimit-token-remaining")


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[PipedriveEmulator, str]]:
    # One server for the module (stopping one costs ~0.5 s); every test starts from a reset.
    emulator = PipedriveEmulator(tokens=(SANDBOX_TOKEN, "second-token"))
    thread: ServerThread = serve_in_thread(emulator.app)
    try:
        yield emulator, thread.url
    finally:
        thread.stop()


@pytest.fixture
def url(server: tuple[PipedriveEmulator, str]) -> str:
    assert requests.post(server[1] + "/_emulator/reset", timeout=5).ok
    return server[1]


def call(method: str, url: str, path: str, headers: dict[str, str] | None = None,
         **kw: Any) -> requests.Response:
    headers = HEADERS if headers is None else headers
    return requests.request(method, url + path, headers=headers, timeout=5, **kw)


def v2(method: str, url: str, path: str, **kw: Any) -> requests.Response:
    return call(method, url, "/api/v2" + path, **kw)


def state(url: str) -> dict[str, Any]:
    return requests.get(url + "/_emulator/state", timeout=5).json()


def config(url: str, **spec: Any) -> dict[str, Any]:
    r = requests.post(url + "/_emulator/config", json=spec, timeout=5)
    assert r.status_code == 200, r.text
    return r.json()


def create_person(url: str, name: str = "Dana Reyes", phone: str = PHONE) -> dict[str, Any]:
    r = v2("POST", url, "/persons", json={"name": name, "phones": [{"value": phone, "primary": True,
                                                                     "label": "mobile"}]})
    assert r.status_code == 200, r.text
    return r.json()["data"]


def sdk(url: str) -> Client:
    client = Client(domain=url + "/")
    client.set_api_token(SANDBOX_TOKEN)
    return client


# -- persons and search ------------------------------------------------------------------------------
def test_person_create_and_exact_phone_search(url: str) -> None:
    person = create_person(url)
    assert person["id"] and person["name"] == "Dana Reyes" and person["owner_id"] == 1
    assert person["phones"] == [{"value": PHONE, "primary": True, "label": "mobile"}]
    assert person["add_time"].endswith("Z") and "T" in person["add_time"]  # RFC 3339
    r = v2("GET", url, "/persons/search", params={"term": PHONE, "fields": "phone", "exact_match": "true"})
    assert r.status_code == 200
    body = r.json()
    assert body["success"] is True and body["additional_data"] == {"next_cursor": None}
    [hit] = body["data"]["items"]
    assert hit["result_score"] > 0
    assert hit["item"]["id"] == person["id"] and hit["item"]["type"] == "person"
    assert hit["item"]["phones"] == [PHONE] and hit["item"]["emails"] == []
    assert set(RATE_HEADERS) <= set(r.headers)
    # Exact match compares the stored string: formatting the number differently finds nothing.
    other = v2("GET", url, "/persons/search", params={"term": "(312) 555-0142", "fields": "phone",
                                                       "exact_match": "true"})
    assert other.json()["data"]["items"] == []
    partial = v2("GET", url, "/persons/search", params={"term": "5550142", "fields": "phone"})
    assert [h["item"]["id"] for h in partial.json()["data"]["items"]] == [person["id"]]
    short = v2("GET", url, "/persons/search", params={"term": "5", "fields": "phone"})
    assert short.status_code == 400 and short.json()["code"] == "ERR_BAD_REQUEST"
    assert v2("GET", url, "/persons/search", params={"term": "5", "exact_match": "true"}).status_code == 200
    items = v2("GET", url, "/itemSearch", params={"term": "Dana", "item_types": "person,deal"}).json()
    assert [i["item"]["type"] for i in items["data"]["items"]] == ["person"]
    assert state(url)["query_token_uses"] == 0


def test_v2_is_strict_and_persons_crud(url: str) -> None:
    unknown = v2("POST", url, "/persons", json={"name": "X", "phone": PHONE})  # v1 field name
    assert unknown.status_code == 400
    assert unknown.json() == {"success": False, "error": unknown.json()["error"], "code": "ERR_BAD_REQUEST"}
    assert "'phone'" in unknown.json()["error"]
    assert v2("POST", url, "/persons", json={"name": "X", "owner_id": "1"}).status_code == 400  # no coercion
    v1_time = {"name": "X", "add_time": "2025-01-01 10:00:00"}  # v2 wants RFC 3339
    assert v2("POST", url, "/persons", json=v1_time).status_code == 400
    nameless = {"phones": [{"value": PHONE}]}
    assert v2("POST", url, "/persons", json=nameless).status_code == 400
    assert v2("PUT", url, "/persons/1001", json={"name": "Y"}).status_code == 405  # v2 updates are PATCH
    a, b = create_person(url, "Ann One", "+13125550001"), create_person(url, "Bob Two", "+13125550002")
    patched = v2("PATCH", url, f"/persons/{a['id']}", json={"emails": [{"value": "ann@example.com"}],
                                                            "custom_fields": {"abc": "1"}})
    assert patched.status_code == 200
    emails = patched.json()["data"]["emails"]
    assert emails == [{"value": "ann@example.com", "primary": True, "label": "work"}]
    assert v2("GET", url, f"/persons/{a['id']}").json()["data"]["custom_fields"] == {"abc": "1"}
    first = v2("GET", url, "/persons", params={"limit": 1}).json()
    assert [p["id"] for p in first["data"]] == [a["id"]] and first["additional_data"]["next_cursor"]
    cursor = first["additional_data"]["next_cursor"]
    second = v2("GET", url, "/persons", params={"limit": 1, "cursor": cursor})
    assert [p["id"] for p in second.json()["data"]] == [b["id"]]
    assert second.json()["additional_data"]["next_cursor"] is None
    assert v2("DELETE", url, f"/persons/{b['id']}").json() == {"success": True, "data": {"id": b["id"]}}
    gone = v2("GET", url, f"/persons/{b['id']}")
    assert gone.status_code == 404 and gone.json()["success"] is False


# -- deals and activities --------------------------------------------------------------------------------
def test_deals_in_pipeline_and_stage(url: str) -> None:
    pipelines = v2("GET", url, "/pipelines").json()["data"]
    assert [(p["id"], p["name"]) for p in pipelines] == [(1, "Sales")]
    stages = v2("GET", url, "/stages", params={"pipeline_id": 1}).json()["data"]
    assert [(s["id"], s["name"]) for s in stages] == [(1, "Lead In"), (2, "Contact Made"), (3, "Qualified"),
                                                      (4, "Booked"), (5, "Won")]
    person = create_person(url)
    r = v2("POST", url, "/deals", json={"title": "Missed call: Dana", "person_id": person["id"],
                                        "stage_id": 1, "value": 250, "currency": "USD"})
    assert r.status_code == 200, r.text
    deal = r.json()["data"]
    assert (deal["pipeline_id"], deal["stage_id"], deal["status"], deal["person_id"]) == (1, 1, "open",
                                                                                          person["id"])
    default = v2("POST", url, "/deals", json={"title": "No stage given"}).json()["data"]
    assert (default["pipeline_id"], default["stage_id"]) == (1, 1)
    assert v2("POST", url, "/deals", json={"title": "x", "stage_id": 99}).status_code == 400
    assert v2("POST", url, "/deals", json={"title": "x", "pipeline_id": 2}).status_code == 400
    assert v2("POST", url, "/deals", json={"title": "x", "pipeline_id": "1"}).status_code == 400
    assert v2("POST", url, "/deals", json={"person_id": person["id"]}).status_code == 400  # title required
    assert v2("POST", url, "/deals", json={"title": "x", "person_id": 2001}).status_code == 400  # a deal id
    moved = v2("PATCH", url, f"/deals/{deal['id']}", json={"stage_id": 4}).json()["data"]
    assert moved["stage_id"] == 4 and moved["stage_change_time"]
    won = v2("PATCH", url, f"/deals/{deal['id']}", json={"status": "won"}).json()["data"]
    assert won["status"] == "won" and won["won_time"] and won["close_time"]
    assert v2("PATCH", url, f"/deals/{deal['id']}", json={"stage_id": 42}).status_code == 400
    assert v2("GET", url, f"/deals/{deal['id']}").json()["data"]["stage_id"] == 4  # the 400 changed nothing
    listed = v2("GET", url, "/deals", params={"person_id": person["id"]}).json()["data"]
    assert [d["id"] for d in listed] == [deal["id"]]
    found = v2("GET", url, "/itemSearch", params={"term": "Missed call", "item_types": "deal"}).json()
    [hit] = found["data"]["items"]
    assert hit["item"]["type"] == "deal" and hit["item"]["stage"] == {"id": 4, "name": "Booked"}


def test_activity_participants_and_person_id_is_read_only(url: str) -> None:
    person = create_person(url)
    deal = v2("POST", url, "/deals", json={"title": "Callback", "person_id": person["id"]}).json()["data"]
    body = {"subject": "Missed call from +1 312-555-0142", "type": "call", "due_date": "2025-03-04",
            "due_time": "14:30", "deal_id": deal["id"], "participants": [{"person_id": person["id"],
                                                                          "primary": True}],
            "note": "Caller hung up after 3 rings", "done": True}
    r = v2("POST", url, "/activities", json=body)
    assert r.status_code == 200, r.text
    activity = r.json()["data"]
    assert activity["person_id"] == person["id"] and activity["participants"] == body["participants"]
    assert activity["done"] is True and activity["marked_as_done_time"] and activity["type"] == "call"
    read_only = v2("POST", url, "/activities", json={"subject": "x", "type": "call",
                                                     "person_id": person["id"]})
    assert read_only.status_code == 400
    assert read_only.json()["code"] == "ERR_BAD_REQUEST"
    assert read_only.json()["error"].startswith("'person_id' is a read-only field")
    patch_ro = v2("PATCH", url, f"/activities/{activity['id']}", json={"person_id": person["id"]})
    assert patch_ro.status_code == 400
    assert v2("POST", url, "/activities", json={"type": "call", "due_time": "2:30pm"}).status_code == 400
    assert v2("POST", url, "/activities", json={"type": "call", "due_date": "04/03/2025"}).status_code == 400
    assert v2("POST", url, "/activities", json={"type": "carrier-pigeon"}).status_code == 400
    bad_person = v2("POST", url, "/activities", json={"type": "call", "participants": [{"person_id": 999}]})
    assert bad_person.status_code == 400
    patched = v2("PATCH", url, f"/activities/{activity['id']}", json={"done": False}).json()["data"]
    assert patched["done"] is False and patched["marked_as_done_time"] is None
    mine = v2("GET", url, "/activities", params={"person_id": person["id"]}).json()["data"]
    assert [a["id"] for a in mine] == [activity["id"]]


# -- v1: notes (through the real SDK), leads, call logs ----------------------------------------------------
def test_v1_note_through_the_sdk(url: str) -> None:
    person = create_person(url)
    client = sdk(url)
    created = client.notes.create_note({"content": "<p>Missed call, texted back</p>",
                                        "person_id": person["id"]}, timeout=5)
    assert created["success"] is True
    note = created["data"]
    assert note["person_id"] == person["id"] and note["person"] == {"name": person["name"]}
    assert len(note["add_time"]) == 19 and " " in note["add_time"]  # v1 "YYYY-MM-DD HH:MM:SS"
    listed = client.notes.get_all_notes(params={"person_id": person["id"]}, timeout=5)
    assert [n["id"] for n in listed["data"]] == [note["id"]]
    assert listed["additional_data"]["pagination"]["more_items_in_collection"] is False
    updated = client.notes.update_note(note["id"], {"content": "edited"}, timeout=5)
    assert updated["data"]["content"] == "edited"
    orphan = requests.post(url + "/v1/notes", json={"content": "no target"}, headers=HEADERS, timeout=5)
    assert orphan.status_code == 400
    assert set(orphan.json()) == {"success", "error", "error_info", "data", "additional_data"}
    assert requests.post(url + "/v1/notes", json={"person_id": person["id"]}, headers=HEADERS,
                         timeout=5).status_code == 400
    # The SDK puts the api token in the query string; the emulator notices.
    assert state(url)["query_token_uses"] == 3
    assert [n["content"] for n in state(url)["notes"]] == ["edited"]


def test_v1_leads(url: str) -> None:
    person = create_person(url)
    body = {"title": "Dana Reyes - missed call", "person_id": person["id"], "owner_id": 1,
            "label_ids": [str(uuid.uuid4())], "value": {"amount": 300, "currency": "USD"}}
    r = call("POST", url, "/v1/leads", json=body)
    assert r.status_code == 201, r.text
    lead = r.json()["data"]
    assert uuid.UUID(lead["id"]) and lead["person_id"] == person["id"] and lead["value"] == body["value"]
    assert lead["source_name"] == "API" and lead["is_archived"] is False
    assert call("GET", url, f"/v1/leads/{lead['id']}").json()["data"]["title"] == body["title"]
    patched = call("PATCH", url, f"/v1/leads/{lead['id']}", json={"title": "Booked", "was_seen": True})
    assert patched.json()["data"]["title"] == "Booked" and patched.json()["data"]["was_seen"] is True
    assert call("POST", url, "/v1/leads", json={"title": "nobody"}).status_code == 400
    assert call("POST", url, "/v1/leads", json={"title": "x", "person_id": person["id"],
                                                "value": 300}).status_code == 400
    missing = call("GET", url, f"/v1/leads/{uuid.uuid4()}")
    assert missing.status_code == 404
    assert missing.json()["data"] is None and missing.json()["error_info"]
    activity = v2("POST", url, "/activities", json={"type": "call", "lead_id": lead["id"]})
    assert activity.status_code == 200 and activity.json()["data"]["lead_id"] == lead["id"]
    assert [x["id"] for x in state(url)["leads"]] == [lead["id"]]


def test_v1_call_logs(url: str) -> None:
    person = create_person(url)
    body = {"outcome": "no_answer", "to_phone_number": "+13125550100", "from_phone_number": PHONE,
            "start_time": "2025-03-04 14:30:00", "end_time": "2025-03-04 14:30:21", "person_id": person["id"],
            "subject": "Missed call", "duration": "21", "note": "<p>Texted back</p>"}
    r = call("POST", url, "/v1/callLogs", json=body)
    assert r.status_code == 200, r.text
    log = r.json()["data"]
    assert r.json()["success"] is True
    assert len(log["id"]) == 32 and int(log["id"], 16) >= 0
    assert log["outcome"] == "no_answer" and log["person_id"] == person["id"]
    assert log["has_recording"] is False
    assert call("GET", url, f"/v1/callLogs/{log['id']}").json()["data"]["id"] == log["id"]
    assert call("POST", url, "/v1/callLogs", json={**body, "outcome": "missed"}).status_code == 400
    iso_end = {**body, "end_time": "2025-03-04T14:30:21Z"}  # call logs want "YYYY-MM-DD HH:MM:SS"
    assert call("POST", url, "/v1/callLogs", json=iso_end).status_code == 400
    no_to = {k: v for k, v in body.items() if k != "to_phone_number"}
    assert call("POST", url, "/v1/callLogs", json=no_to).status_code == 400
    lead = call("POST", url, "/v1/leads", json={"title": "l", "person_id": person["id"]}).json()["data"]
    deal = v2("POST", url, "/deals", json={"title": "d"}).json()["data"]
    both = call("POST", url, "/v1/callLogs", json={**body, "deal_id": deal["id"], "lead_id": lead["id"]})
    assert both.status_code == 400
    assert [c["id"] for c in state(url)["call_logs"]] == [log["id"]]


def test_deprecated_v1_endpoints_are_gone_but_users_me_works(url: str) -> None:
    for method, path in [("GET", "/v1/persons/search?term=abc"), ("POST", "/v1/persons"),
                         ("GET", "/v1/deals/5"), ("PUT", "/v1/activities/3"),
                         ("GET", "/v1/itemSearch?term=ab")]:
        r = call(method, url, path, json={})
        assert r.status_code == 410, path
        assert r.json()["error"] == "This endpoint is deprecated; use /api/v2" and r.json()["data"] is None
    with pytest.raises(GoneError):
        sdk(url).persons.get_all_persons(timeout=5)
    me = sdk(url).users.get_me(timeout=5)
    assert me["success"] is True and me["data"]["is_you"] is True


# -- auth, rate limits ---------------------------------------------------------------------------------
def test_unauthorized(url: str) -> None:
    expected = {"success": False, "error": "unauthorized access", "errorCode": 401,
                "error_info": "Please check developers.pipedrive.com"}
    for headers in ({}, {"x-api-token": "wrong"}, {"Authorization": "Bearer not-issued"}):
        r = v2("GET", url, "/persons", headers=headers)
        assert r.status_code == 401 and r.json() == expected
    client = Client(domain=url + "/")
    client.set_api_token("wrong")
    with pytest.raises(UnauthorizedError):
        client.notes.get_all_notes(timeout=5)
    assert v2("GET", url, "/persons", headers={"x-api-token": "second-token"}).status_code == 200


def test_burst_limit_429_with_headers_and_recovery(url: str) -> None:
    config(url, burst_limit=[3, 1.0])
    seen = [v2("GET", url, "/pipelines") for _ in range(3)]
    assert [r.status_code for r in seen] == [200, 200, 200]
    assert [r.headers["x-ratelimit-remaining"] for r in seen] == ["2", "1", "0"]
    assert all(r.headers["x-ratelimit-limit"] == "3" for r in seen)
    over = v2("GET", url, "/pipelines")
    assert over.status_code == 429
    assert over.json() == {"success": False, "error": "Request over limit", "errorCode": 429}
    assert over.headers["x-ratelimit-remaining"] == "0" and int(over.headers["Retry-After"]) >= 1
    assert set(RATE_HEADERS) <= set(over.headers)
    # Limits are per token: another token still gets through.
    assert v2("GET", url, "/pipelines", headers={"x-api-token": "second-token"}).status_code == 200
    time.sleep(float(over.headers["Retry-After"]) + 0.05)
    again = v2("GET", url, "/pipelines")
    assert again.status_code == 200 and again.headers["x-ratelimit-remaining"] == "2"


def test_daily_token_budget(url: str) -> None:
    config(url, daily_token_budget=26, burst_limit=None)
    assert v2("GET", url, "/pipelines").headers["x-daily-ratelimit-token-remaining"] == "24"  # v2 read 2
    assert v2("POST", url, "/deals", json={"title": "t"}).headers["x-daily-ratelimit-token-remaining"] == "19"
    assert v2("GET", url, "/persons/search", params={"term": "zz"}).headers[
        "x-daily-ratelimit-token-remaining"] == "9"  # search 10
    assert call("GET", url, "/v1/users/me").headers["x-daily-ratelimit-token-remaining"] == "5"  # v1 read 4
    assert call("POST", url, "/v1/notes", json={"content": "x"}).status_code == 429  # v1 write 10 > 5
    over = v2("GET", url, "/pipelines/1")
    assert over.status_code == 200 and over.headers["x-daily-ratelimit-token-remaining"] == "3"
    v2("GET", url, "/pipelines/1")
    exhausted = v2("GET", url, "/pipelines/1")
    assert exhausted.status_code == 429
    assert exhausted.headers["x-daily-ratelimit-token-remaining"] == "0"
    assert exhausted.json()["errorCode"] == 429 and int(exhausted.headers["Retry-After"]) > 0
    assert "x-ratelimit-limit" not in exhausted.headers  # burst limit disabled via config
    assert v2("GET", url, "/pipelines", headers={"x-api-token": "second-token"}).status_code == 200


# -- OAuth -------------------------------------------------------------------------------------------------
def test_oauth_refresh_expire_and_revoke(url: str) -> None:
    client = Client(client_id=SANDBOX_OAUTH["client_id"], client_secret=SANDBOX_OAUTH["client_secret"],
                    domain=url + "/")
    client.OAUTH_BASE_URL = url + "/oauth/"
    token = client.refresh_token(SANDBOX_OAUTH["refresh_token"])
    assert token["token_type"] == "Bearer" and token["expires_in"] == 3599 and token["api_domain"] == url
    assert token["refresh_token"] == SANDBOX_OAUTH["refresh_token"] and token["scope"]
    bearer = {"Authorization": f"Bearer {token['access_token']}"}
    assert v2("GET", url, "/persons", headers=bearer).status_code == 200
    client.set_access_token(token["access_token"])
    assert client.users.get_me(timeout=5)["success"] is True
    bad = requests.post(url + "/oauth/token", data={"grant_type": "refresh_token", "refresh_token": "nope"},
                        auth=(SANDBOX_OAUTH["client_id"], SANDBOX_OAUTH["client_secret"]), timeout=5)
    assert bad.status_code == 400
    assert bad.json() == {"error": "invalid_grant", "message": "Invalid grant: refresh token is invalid"}
    wrong_client = requests.post(url + "/oauth/token", data={"grant_type": "refresh_token",
                                                             "refresh_token": SANDBOX_OAUTH["refresh_token"]},
                                 auth=("someone", "else"), timeout=5)
    assert wrong_client.status_code == 401 and wrong_client.json()["error"] == "invalid_client"

    config(url, expire_tokens=True)
    assert v2("GET", url, "/persons", headers=bearer).status_code == 401
    fresh = client.refresh_token(SANDBOX_OAUTH["refresh_token"])
    assert v2("GET", url, "/persons", headers={"Authorization": f"Bearer {fresh['access_token']}"}).ok
    assert state(url)["oauth"]["refreshes"] == 2

    config(url, revoke_refresh_tokens=True)
    revoked = requests.post(url + "/oauth/token", data={"grant_type": "refresh_token",
                                                        "refresh_token": SANDBOX_OAUTH["refresh_token"]},
                            auth=(SANDBOX_OAUTH["client_id"], SANDBOX_OAUTH["client_secret"]), timeout=5)
    assert revoked.status_code == 400 and revoked.json()["error"] == "invalid_grant"


def test_oauth_authorization_code(url: str) -> None:
    redirect_uri = "http://127.0.0.1:9/pipedrive/callback"
    r = requests.get(url + "/oauth/authorize", params={"client_id": SANDBOX_OAUTH["client_id"],
                                                       "redirect_uri": redirect_uri, "state": "s1"},
                     allow_redirects=False, timeout=5)
    assert r.status_code == 302 and r.headers["Location"].startswith(redirect_uri + "?code=")
    code = r.headers["Location"].split("code=")[1].split("&")[0]
    client = Client(client_id=SANDBOX_OAUTH["client_id"], client_secret=SANDBOX_OAUTH["client_secret"])
    client.OAUTH_BASE_URL = url + "/oauth/"
    token = client.exchange_code(redirect_uri, code)
    assert token["access_token"] and token["refresh_token"] != SANDBOX_OAUTH["refresh_token"]
    with pytest.raises(BadRequestError) as reused:  # codes are single-use
        client.exchange_code(redirect_uri, code)
    assert reused.value.response.json()["error"] == "invalid_grant"
    assert client.refresh_token(token["refresh_token"])["access_token"]


# -- faults, reset, concurrency ------------------------------------------------------------------------------
def test_html_502_fault_and_the_sdk_trap(url: str) -> None:
    html = "<html><head><title>502 Bad Gateway</title></head><body>Bad Gateway</body></html>"
    fault = requests.post(url + "/_emulator/faults", json={"path": "/api/v2", "status": 502, "body": html,
                                                           "headers": {"Content-Type": "text/html"},
                                                           "count": 2}, timeout=5)
    assert fault.status_code == 201
    r = v2("GET", url, "/persons")
    assert r.status_code == 502 and r.headers["Content-Type"].startswith("text/html") and r.text == html
    assert "x-ratelimit-limit" not in r.headers  # the proxy answered, not Pipedrive
    # pipedrive-python-lib only raises for JSON errors: a 502 page comes back as a plain string.
    result = sdk(url)._get(url + "/api/v2/persons", timeout=5)
    assert isinstance(result, str) and "Bad Gateway" in result
    assert v2("GET", url, "/persons").status_code == 200  # the fault was used up
    requests.post(url + "/_emulator/faults", json={"path": "/v1/notes", "method": "POST", "status": 502,
                                                   "body": html, "headers": {"Content-Type": "text/html"},
                                                   "count": 1}, timeout=5)
    person = create_person(url)
    note = sdk(url).notes.create_note({"content": "x", "person_id": person["id"]}, timeout=5)
    assert note == html and state(url)["notes"] == []
    logged = requests.get(url + "/_emulator/requests", timeout=5).json()["requests"]
    assert any(e["path"] == "/v1/notes" and e["method"] == "POST" for e in logged)


def test_reset_clears_data_counters_and_config(url: str) -> None:
    create_person(url)
    call("GET", url, "/v1/users/me?api_token=" + SANDBOX_TOKEN, headers={})
    config(url, burst_limit=[5, 1.0], daily_token_budget=100, search_lag_seconds=1)
    requests.post(url + "/oauth/token", data={"grant_type": "refresh_token",
                                              "refresh_token": SANDBOX_OAUTH["refresh_token"]},
                  auth=(SANDBOX_OAUTH["client_id"], SANDBOX_OAUTH["client_secret"]), timeout=5)
    before = state(url)
    assert before["persons"] and before["query_token_uses"] == 1 and before["oauth"]["refreshes"] == 1
    assert requests.post(url + "/_emulator/reset", timeout=5).json() == {"ok": True}
    after = state(url)
    for key in ("persons", "deals", "activities", "notes", "leads", "call_logs"):
        assert after[key] == []
    assert after["query_token_uses"] == 0 and after["oauth"]["refreshes"] == 0
    assert after["config"]["burst_limit"] == [80, 2.0] and after["config"]["daily_token_budget"] == 30000
    assert after["rate_limits"]["daily_tokens_used"] == {}
    for bad in ({"bogus": 1}, {"burst_limit": [0, 1]}, {"daily_token_budget": "9"}):
        assert requests.post(url + "/_emulator/config", json=bad, timeout=5).status_code == 400


def test_search_lag_hides_new_persons_briefly(url: str) -> None:
    config(url, search_lag_seconds=0.3)
    create_person(url)
    params = {"term": PHONE, "fields": "phone", "exact_match": "true"}
    assert v2("GET", url, "/persons/search", params=params).json()["data"]["items"] == []
    time.sleep(0.35)
    assert len(v2("GET", url, "/persons/search", params=params).json()["data"]["items"]) == 1


def test_concurrent_creates_get_unique_ids(url: str) -> None:
    config(url, burst_limit=None)
    ids: list[int] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        for i in range(8):
            person = create_person(url, f"P{n}-{i}", f"+1312555{n:02d}{i:02d}")
            with lock:
                ids.append(person["id"])

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ids) == 48 and len(set(ids)) == 48
    assert len(state(url)["persons"]) == 48
