"""The HubSpot emulator, driven by the real hubspot-api-client (and raw HTTP where the SDK has no call)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from hubspot import HubSpot
from hubspot.crm.associations.v4 import AssociationSpec
from hubspot.crm.contacts import (
    BatchInputSimplePublicObjectBatchInputUpsert,
    PublicObjectSearchRequest,
    SimplePublicObjectBatchInputUpsert,
    SimplePublicObjectInput,
    SimplePublicObjectInputForCreate,
)
from hubspot.crm.contacts.exceptions import ApiException as ContactsError
from hubspot.crm.deals import SimplePublicObjectInputForCreate as DealInput
from hubspot.crm.deals.exceptions import ApiException as DealsError
from hubspot.crm.objects.calls import SimplePublicObjectInputForCreate as CallInput
from hubspot.crm.objects.notes import SimplePublicObjectInputForCreate as NoteInput
from hubspot.crm.objects.tasks import SimplePublicObjectInputForCreate as TaskInput
from hubspot.crm.objects.tasks.exceptions import ApiException as TasksError
from hubspot.crm.properties import PropertyCreate
from hubspot.crm.properties.exceptions import ApiException as PropertiesError
from hubspot.oauth.exceptions import ApiException as OAuthApiError
from urllib3.util.retry import Retry

from connectors.emulator.base import ServerThread, serve_in_thread
from connectors.hubspot.emulator import SANDBOX_OAUTH, SANDBOX_TOKEN, HubSpotEmulator

CALLER = "+15550123456"


@dataclass
class Hub:
    emulator: HubSpotEmulator
    server: ServerThread

    @property
    def url(self) -> str:
        return self.server.url

    def client(self, token: str = SANDBOX_TOKEN, **kwargs: Any) -> HubSpot:
        return HubSpot(access_token=token, host=self.url, **kwargs)

    def http(self, method: str, path: str, token: str | None = SANDBOX_TOKEN,
             **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        headers.update(kwargs.pop("headers", {}))
        return requests.request(method, self.url + path, headers=headers, timeout=5, **kwargs)

    def state(self) -> dict[str, Any]:
        return requests.get(f"{self.url}/_emulator/state", timeout=5).json()

    def config(self, **spec: Any) -> dict[str, Any]:
        response = requests.post(f"{self.url}/_emulator/config", json=spec, timeout=5)
        assert response.status_code == 200, response.text
        return response.json()

    def unique_phone_property(self) -> None:
        self.client().crm.properties.core_api.create("contacts", PropertyCreate(
            name="phone_e164", label="Phone (E.164)", type="string", field_type="text",
            group_name="contactinformation", has_unique_value=True))


DEFAULTS: dict[str, Any] = {"rate_limit": [190, 10], "search_rate_limit": [5, 1], "daily_limit": 1_000_000,
                            "search_lag_ms": 0, "access_token_ttl_s": 1800}


@pytest.fixture(scope="module")
def served() -> Iterator[Hub]:
    # One server for the module: stopping a werkzeug server costs its 0.5 s poll interval.
    emulator = HubSpotEmulator()
    server = serve_in_thread(emulator.app)
    try:
        yield Hub(emulator, server)
    finally:
        server.stop()


@pytest.fixture
def hub(served: Hub) -> Hub:
    """The module's emulator, reset to its sandbox defaults: what ``/_emulator/reset`` is for."""
    assert requests.post(f"{served.url}/_emulator/reset", timeout=5).status_code == 200
    served.config(**DEFAULTS)
    return served


def body_of(exc: Exception) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(getattr(exc, "body", "") or "{}")
    return data


def contact_input(**props: str) -> SimplePublicObjectInputForCreate:
    return SimplePublicObjectInputForCreate(properties=props)


def upsert(client: HubSpot, phone: str, **props: str) -> Any:
    inputs = [SimplePublicObjectBatchInputUpsert(id_property="phone_e164", id=phone, properties=props)]
    return client.crm.contacts.batch_api.upsert(BatchInputSimplePublicObjectBatchInputUpsert(inputs=inputs))


def search(client: HubSpot, *groups: list[dict[str, Any]], **kwargs: Any) -> Any:
    request = PublicObjectSearchRequest(filter_groups=[{"filters": g} for g in groups], **kwargs)
    return client.crm.contacts.search_api.do_search(request)


def assoc(type_id: int, to_id: str) -> dict[str, Any]:
    spec = {"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": type_id}
    return {"to": {"id": to_id}, "types": [spec]}


# -- objects ------------------------------------------------------------------------------------------
def test_contact_create_get_update_list_and_archive(hub: Hub) -> None:
    client = hub.client()
    created = client.crm.contacts.basic_api.create(contact_input(
        email="lena@example.com", firstname="Lena", phone=CALLER, hs_lead_status="NEW"))
    assert created.id.isdigit() and not created.archived
    props = created.properties
    assert props["hs_object_id"] == created.id and props["createdate"] and props["lastmodifieddate"]
    assert props["lifecyclestage"] == "lead"  # HubSpot's default for API-created contacts
    assert props["hs_searchable_calculated_phone_number"] == "5550123456"

    fetched = client.crm.contacts.basic_api.get_by_id(created.id, properties=["phone", "mobilephone"])
    assert fetched.properties["phone"] == CALLER
    assert fetched.properties["mobilephone"] is None  # asked for but unset
    assert "firstname" not in fetched.properties
    by_email = client.crm.contacts.basic_api.get_by_id("LENA@example.com", id_property="email")
    assert by_email.id == created.id

    updated = client.crm.contacts.basic_api.update(created.id, SimplePublicObjectInput(
        properties={"lastname": "Marsh", "phone": ""}))
    assert updated.properties["lastname"] == "Marsh" and "phone" not in updated.properties
    assert updated.updated_at >= created.updated_at

    second = client.crm.contacts.basic_api.create(contact_input(email="other@example.com"))
    assert int(second.id) > int(created.id)  # ids are increasing numeric strings
    page = client.crm.contacts.basic_api.get_page(limit=1)
    assert [r.id for r in page.results] == [created.id] and page.paging.next.after == second.id

    client.crm.contacts.basic_api.archive(second.id)
    with pytest.raises(ContactsError) as missing:
        client.crm.contacts.basic_api.get_by_id(second.id)
    assert missing.value.status == 404 and body_of(missing.value)["message"] == "resource not found"
    state = hub.state()
    assert [c["id"] for c in state["contacts"]] == [created.id]
    assert state["archived"] == [{"type": "contacts", "id": second.id}]

    # The date-versioned path is the same API.
    versioned = hub.http("GET", f"/crm/objects/2026-03/contacts/{created.id}?properties=lastname")
    assert versioned.status_code == 200 and versioned.json()["properties"]["lastname"] == "Marsh"


def test_unknown_property_and_bad_values_are_400_validation_errors(hub: Hub) -> None:
    with pytest.raises(ContactsError) as info:
        hub.client().crm.contacts.basic_api.create(contact_input(email="x@ex.com", favourite_colour="red"))
    assert info.value.status == 400
    body = body_of(info.value)
    assert body["status"] == "error" and body["category"] == "VALIDATION_ERROR" and body["correlationId"]
    assert body["message"].startswith("Property values were not valid: ")
    assert body["errors"] == [{"message": 'Property "favourite_colour" does not exist',
                               "code": "PROPERTY_DOESNT_EXIST",
                               "context": {"propertyName": ["favourite_colour"]}}]
    assert info.value.headers["X-HubSpot-Correlation-Id"] == body["correlationId"]

    with pytest.raises(ContactsError) as bad:
        hub.client().crm.contacts.basic_api.create(contact_input(
            email="not-an-email", hs_lead_status="HOT", hubspot_owner_id="999"))
    assert [e["code"] for e in body_of(bad.value)["errors"]] == ["INVALID_EMAIL", "INVALID_OPTION",
                                                                 "INVALID_OWNER_ID"]
    assert hub.state()["contacts"] == []


def test_duplicate_email_is_409_conflict(hub: Hub) -> None:
    client = hub.client()
    first = client.crm.contacts.basic_api.create(contact_input(email="lead@example.com"))
    with pytest.raises(ContactsError) as info:
        client.crm.contacts.basic_api.create(contact_input(email="Lead@Example.com"))
    assert info.value.status == 409
    body = body_of(info.value)
    assert body["message"] == f"Contact already exists. Existing ID: {first.id}"
    assert body["category"] == "CONFLICT"
    assert len(hub.state()["contacts"]) == 1


def test_engagements_need_hs_timestamp_and_keep_inline_associations(hub: Hub) -> None:
    client = hub.client()
    lead = client.crm.contacts.basic_api.create(contact_input(phone=CALLER))
    with pytest.raises(TasksError) as info:
        client.crm.objects.tasks.basic_api.create(TaskInput(properties={"hs_task_subject": "Call back"}))
    assert info.value.status == 400
    assert body_of(info.value)["errors"][0]["context"] == {"propertyName": ["hs_timestamp"]}

    task = client.crm.objects.tasks.basic_api.create(TaskInput(
        properties={"hs_timestamp": "1767279600000", "hs_task_subject": "Call back",
                    "hs_task_status": "NOT_STARTED", "hs_task_priority": "HIGH", "hs_task_type": "CALL",
                    "hubspot_owner_id": "71000001"},
        associations=[assoc(204, lead.id)]))
    assert task.properties["hs_timestamp"] == "2026-01-01T15:00:00Z"  # epoch millis in, ISO out
    assert {"hs_createdate", "hs_lastmodifieddate", "hs_object_id"} <= set(task.properties)
    note = client.crm.objects.notes.basic_api.create(NoteInput(
        properties={"hs_timestamp": "2026-01-01T15:00:00Z", "hs_note_body": "Missed call"},
        associations=[assoc(202, lead.id)]))
    call = client.crm.objects.calls.basic_api.create(CallInput(
        properties={"hs_timestamp": "2026-01-01T15:00:00Z", "hs_call_direction": "INBOUND",
                    "hs_call_status": "NO_ANSWER", "hs_call_from_number": CALLER, "hs_call_duration": "0"},
        associations=[assoc(194, lead.id)]))

    v4 = client.crm.associations.v4.basic_api
    from_contact = {(r.to_object_id, r.association_types[0].type_id)
                    for t in ("tasks", "notes", "calls") for r in v4.get_page("contacts", lead.id, t).results}
    assert from_contact == {(task.id, 203), (note.id, 201), (call.id, 193)}
    back = v4.get_page("calls", call.id, "contacts").results
    assert [(r.to_object_id, r.association_types[0].type_id) for r in back] == [(lead.id, 194)]
    rows = {(a["from_type"], a["to_type"], a["type_id"]) for a in hub.state()["associations"]}
    assert ("tasks", "contacts", 204) in rows and ("contacts", "tasks", 203) in rows

    with pytest.raises(TasksError) as missing:
        client.crm.objects.tasks.basic_api.create(TaskInput(
            properties={"hs_timestamp": "2026-01-01T15:00:00Z"}, associations=[assoc(204, "424242")]))
    body = body_of(missing.value)
    assert missing.value.status == 400 and body["message"] == "One or more associations are invalid"
    assert body["context"]["INVALID_OBJECT_IDS"] == ["CONTACT=424242 is not valid"]
    with pytest.raises(TasksError) as wrong_way:  # 203 is contact->task, not task->contact
        client.crm.objects.tasks.basic_api.create(TaskInput(
            properties={"hs_timestamp": "2026-01-01T15:00:00Z"}, associations=[assoc(203, lead.id)]))
    assert "invalid from object type 0-27" in body_of(wrong_way.value)["message"]


def test_v4_associations_both_directions(hub: Hub) -> None:
    client = hub.client()
    lead = client.crm.contacts.basic_api.create(contact_input(email="a@example.com"))
    deal = client.crm.deals.basic_api.create(DealInput(properties={"dealname": "Panel upgrade",
                                                                   "dealstage": "appointmentscheduled"}))
    task = client.crm.objects.tasks.basic_api.create(TaskInput(properties={"hs_timestamp": "2026-01-01"}))
    v4 = client.crm.associations.v4
    spec = AssociationSpec(association_category="HUBSPOT_DEFINED", association_type_id=204)
    pair = v4.basic_api.create("tasks", task.id, "contacts", lead.id, [spec])
    assert (pair.from_object_type_id, pair.to_object_type_id) == ("0-27", "0-1")
    default = v4.basic_api.create_default("deals", deal.id, "contacts", lead.id)
    assert {r.association_spec.association_type_id for r in default.results} == {3, 4}
    batch = v4.batch_api.create("tasks", "deals", {"inputs": [
        {"from": {"id": task.id}, "to": {"id": deal.id},
         "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 216}]}]})
    assert len(batch.results) == 1

    def linked(from_type: str, from_id: str, to_type: str) -> dict[str, set[int]]:
        results = v4.basic_api.get_page(from_type, from_id, to_type).results
        return {r.to_object_id: {t.type_id for t in r.association_types} for r in results}

    assert linked("contacts", lead.id, "tasks") == {task.id: {203}}
    assert linked("contacts", lead.id, "deals") == {deal.id: {4}}
    assert linked("deals", deal.id, "tasks") == {task.id: {215}}
    embedded = hub.http("GET", f"/crm/v3/objects/tasks/{task.id}?associations=contacts").json()
    assert embedded["associations"] == {"contacts": {"results": [{"id": lead.id, "type": "task_to_contact"}]}}
    missing = hub.http("PUT", f"/crm/v4/objects/tasks/{task.id}/associations/contacts/999999",
                       json=[{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 204}])
    assert missing.status_code == 400 and missing.json()["context"]["objectId"] == ["999999"]
    assert hub.http("GET", "/crm/v4/objects/contacts/999999/associations/tasks").status_code == 404
    v4.basic_api.archive("tasks", task.id, "contacts", lead.id)
    assert linked("contacts", lead.id, "tasks") == {}


# -- properties, upsert, search -----------------------------------------------------------------------------
def test_unique_property_and_batch_upsert(hub: Hub) -> None:
    client = hub.client()
    hub.unique_phone_property()
    with pytest.raises(PropertiesError) as again:
        hub.unique_phone_property()
    assert again.value.status == 409
    assert body_of(again.value)["message"] == "Property named 'phone_e164' already exists."
    assert body_of(again.value)["category"] == "OBJECT_ALREADY_EXISTS"
    assert client.crm.properties.core_api.get_by_name("contacts", "phone_e164").has_unique_value is True
    with pytest.raises(PropertiesError) as absent:
        client.crm.properties.core_api.get_by_name("contacts", "nope")
    assert absent.value.status == 404 and body_of(absent.value)["category"] == "OBJECT_NOT_FOUND"

    first = upsert(client, CALLER, firstname="Ana")
    assert first.status == "COMPLETE" and first.results[0].new is True
    second = upsert(client, CALLER, lastname="Diaz")
    assert second.results[0].new is False and second.results[0].id == first.results[0].id
    assert second.results[0].properties["firstname"] == "Ana"  # upsert merges, it does not replace

    with pytest.raises(ContactsError) as not_unique:
        client.crm.contacts.batch_api.upsert(BatchInputSimplePublicObjectBatchInputUpsert(inputs=[
            SimplePublicObjectBatchInputUpsert(id_property="phone", id=CALLER, properties={})]))
    assert not_unique.value.status == 400

    other = client.crm.contacts.basic_api.create(contact_input(phone_e164="+15550100000"))
    with pytest.raises(ContactsError) as taken:
        client.crm.contacts.basic_api.update(other.id,
                                             SimplePublicObjectInput(properties={"phone_e164": CALLER}))
    assert taken.value.status == 409 and "phone_e164" in body_of(taken.value)["message"]

    versioned = hub.http("POST", "/crm/objects/2026-03/contacts/batch/upsert", json={"inputs": [
        {"idProperty": "phone_e164", "id": "+15550109999", "properties": {"firstname": "Raw"}}]})
    assert versioned.status_code == 200 and versioned.json()["results"][0]["new"] is True
    assert hub.state()["properties"]["contacts"] == ["phone_e164"]


def test_unique_lookups_follow_updates_archives_and_resets(hub: Hub) -> None:
    client = hub.client()
    hub.unique_phone_property()
    first = upsert(client, CALLER, email="Ana@Example.com").results[0]
    assert upsert(client, CALLER, firstname="Ana").results[0].id == first.id  # now looked up by phone

    # A value that moved to another number: the old number is free, the new one finds the contact.
    moved_to = SimplePublicObjectInput(properties={"phone_e164": "+15550100001"})
    client.crm.contacts.basic_api.update(first.id, moved_to)
    moved = upsert(client, "+15550100001", lastname="Diaz").results[0]
    assert moved.new is False and moved.id == first.id
    fresh = upsert(client, CALLER).results[0]
    assert fresh.new is True and fresh.id != first.id

    # Email stays unique case-insensitively, also for a value written after the first lookup.
    with pytest.raises(ContactsError) as taken:
        client.crm.contacts.basic_api.create(contact_input(email="ana@example.COM"))
    assert taken.value.status == 409 and first.id in body_of(taken.value)["message"]
    got = hub.http("GET", f"/crm/v3/objects/contacts/{'ANA@example.com'}?idProperty=email")
    assert got.status_code == 200 and got.json()["id"] == first.id

    # An archived contact no longer holds its values; a cleared value is no longer found.
    client.crm.contacts.basic_api.archive(first.id)
    assert hub.http("GET", "/crm/v3/objects/contacts/ana@example.com?idProperty=email").status_code == 404
    again = upsert(client, "+15550100001").results[0]
    assert again.new is True and again.id != first.id
    client.crm.contacts.basic_api.update(fresh.id, SimplePublicObjectInput(properties={"phone_e164": ""}))
    assert upsert(client, CALLER).results[0].new is True

    assert requests.post(f"{hub.url}/_emulator/reset", timeout=5).status_code == 200
    hub.unique_phone_property()
    assert upsert(client, "+15550100001").results[0].new is True  # forgotten with everything else


def test_twenty_concurrent_upserts_make_one_contact(hub: Hub) -> None:
    hub.unique_phone_property()
    barrier = threading.Barrier(20)
    outcomes: list[bool] = []
    errors: list[BaseException] = []

    def worker() -> None:
        client = hub.client()
        barrier.wait()
        try:
            outcomes.append(upsert(client, CALLER, firstname="Race").results[0].new)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not errors
    assert sorted(outcomes) == [False] * 19 + [True]
    assert len(hub.state()["contacts"]) == 1


def test_search_filters_sorts_and_paging(hub: Hub) -> None:
    hub.config(search_rate_limit=None)
    client = hub.client()
    ids = [client.crm.contacts.basic_api.create(contact_input(**props)).id for props in (
        {"email": "ana@example.com", "firstname": "Ana Maria", "phone": CALLER},
        {"email": "bob@example.com", "firstname": "Bob", "mobilephone": "+15550120000"},
        {"email": "cy@sample.org", "firstname": "Cy"},
    )]

    def found(*groups: list[dict[str, Any]], **kwargs: Any) -> list[str]:
        return [r.id for r in search(client, *groups, **kwargs).results]

    assert found([{"propertyName": "phone", "operator": "EQ", "value": CALLER}]) == [ids[0]]
    assert found([{"propertyName": "email", "operator": "EQ", "value": "BOB@example.com"}]) == [ids[1]]
    assert found([{"propertyName": "firstname", "operator": "IN", "values": ["bob", "cy"]}]) == ids[1:]
    assert found([{"propertyName": "firstname", "operator": "CONTAINS_TOKEN", "value": "maria"}]) == [ids[0]]
    wildcard = [{"propertyName": "email", "operator": "CONTAINS_TOKEN", "value": "*@example.com"}]
    assert found(wildcard) == ids[:2]
    assert found([{"propertyName": "mobilephone", "operator": "HAS_PROPERTY"}]) == [ids[1]]
    assert found([{"propertyName": "firstname", "operator": "NEQ", "value": "bob"}]) == [ids[0], ids[2]]
    either = found([{"propertyName": "firstname", "operator": "EQ", "value": "cy"}],
                   [{"propertyName": "phone", "operator": "EQ", "value": CALLER}])
    assert either == [ids[0], ids[2]]  # OR across groups
    both = found([{"propertyName": "firstname", "operator": "EQ", "value": "cy"},
                  {"propertyName": "phone", "operator": "EQ", "value": CALLER}])
    assert both == []  # AND within a group
    by_digits = [{"propertyName": "hs_searchable_calculated_phone_number", "operator": "EQ",
                  "value": "5550123456"}]
    assert found(by_digits) == [ids[0]]

    page = search(client, sorts=["-firstname"], limit=2, properties=["firstname", "phone"])
    assert page.total == 3 and [r.id for r in page.results] == [ids[2], ids[1]]
    assert page.results[1].properties["phone"] is None and page.paging.next.after == "2"
    rest = search(client, sorts=["-firstname"], limit=2, after=page.paging.next.after)
    assert [r.id for r in rest.results] == [ids[0]] and rest.paging is None

    no_headers = hub.http("POST", "/crm/v3/objects/contacts/search", json={})
    assert no_headers.status_code == 200
    assert not any(h.lower().startswith("x-hubspot-ratelimit") for h in no_headers.headers)
    bad = hub.http("POST", "/crm/v3/objects/contacts/search",
                   json={"filters": [{"propertyName": "email", "operator": "LIKE", "value": "x"}]})
    assert bad.status_code == 400 and bad.json()["category"] == "VALIDATION_ERROR"


def test_search_lag_makes_search_then_create_racy(hub: Hub) -> None:
    hub.config(search_lag_ms=400)
    client = hub.client()
    by_phone = [{"propertyName": "phone", "operator": "EQ", "value": CALLER}]

    def search_then_create() -> None:
        if search(client, by_phone).total == 0:
            client.crm.contacts.basic_api.create(contact_input(phone=CALLER))

    search_then_create()
    search_then_create()  # the index has not caught up: a second contact for the same caller
    assert len(hub.state()["contacts"]) == 2
    assert client.crm.contacts.basic_api.get_page().results  # reads by id/list are immediate
    time.sleep(0.45)
    assert search(client, by_phone).total == 2


# -- auth -------------------------------------------------------------------------------------------------
def test_unknown_or_missing_token_is_401(hub: Hub) -> None:
    with pytest.raises(ContactsError) as info:
        hub.client("pat-na1-not-a-real-token").crm.contacts.basic_api.get_page()
    assert info.value.status == 401
    body = body_of(info.value)
    assert body["category"] == "INVALID_AUTHENTICATION"
    assert body["message"].startswith("Authentication credentials not found.")
    anonymous = hub.http("GET", "/crm/v3/objects/contacts", token=None)
    assert anonymous.status_code == 401 and anonymous.json()["category"] == "INVALID_AUTHENTICATION"
    assert hub.state()["api_calls"] == 0


def test_token_without_schema_scope_gets_403_on_property_create(hub: Hub) -> None:
    scopes = ["crm.objects.contacts.read", "crm.objects.contacts.write"]
    hub.config(tokens={"pat-limited": {"scopes": scopes}})
    limited = hub.client("pat-limited")
    limited.crm.contacts.basic_api.create(contact_input(email="ok@example.com"))
    with pytest.raises(PropertiesError) as info:
        limited.crm.properties.core_api.create("contacts", PropertyCreate(
            name="phone_e164", label="Phone", type="string", field_type="text",
            group_name="contactinformation"))
    assert info.value.status == 403
    body = body_of(info.value)
    assert body["category"] == "MISSING_SCOPES"
    assert body["message"].startswith("This app hasn't been granted all required scopes")
    assert body["errors"][0]["context"] == {"requiredGranularScopes": ["crm.schemas.contacts.write"]}


def test_oauth_refresh_expiry_and_revocation(hub: Hub) -> None:
    tokens = hub.client(token="").oauth.tokens_api
    grant = {k: SANDBOX_OAUTH[k] for k in ("client_id", "client_secret", "refresh_token")}
    fresh = tokens.create(grant_type="refresh_token", **grant)
    assert fresh.token_type == "bearer" and fresh.expires_in == 1800
    assert fresh.refresh_token == SANDBOX_OAUTH["refresh_token"]
    oauth_client = hub.client(fresh.access_token)
    _, status, headers = oauth_client.crm.contacts.basic_api.get_page_with_http_info()
    assert status == 200 and "X-HubSpot-RateLimit-Max" in headers
    assert "X-HubSpot-RateLimit-Daily" not in headers  # OAuth apps get no daily headers
    assert hub.state()["oauth"]["refreshes"] == 1

    hub.config(expire_tokens=True)
    with pytest.raises(ContactsError) as expired:
        oauth_client.crm.contacts.basic_api.get_page()
    assert expired.value.status == 401 and body_of(expired.value)["category"] == "EXPIRED_AUTHENTICATION"
    renewed = tokens.create(grant_type="refresh_token", **grant)
    hub.client(renewed.access_token).crm.contacts.basic_api.get_page()
    assert hub.state()["oauth"]["refreshes"] == 2

    hub.config(revoke_refresh_tokens=True)
    with pytest.raises(OAuthApiError) as revoked:
        tokens.create(grant_type="refresh_token", **grant)
    assert revoked.value.status == 400
    assert body_of(revoked.value)["status"] == "BAD_REFRESH_TOKEN"
    assert body_of(revoked.value)["message"] == "missing or unknown refresh token"
    with pytest.raises(OAuthApiError) as wrong_client:
        tokens.create(grant_type="refresh_token", **{**grant, "client_id": "someone-else"})
    assert body_of(wrong_client.value)["status"] == "BAD_CLIENT_ID"
    assert hub.state()["oauth"]["refreshes"] == 2

    code = {"client_id": SANDBOX_OAUTH["client_id"], "client_secret": SANDBOX_OAUTH["client_secret"],
            "redirect_uri": SANDBOX_OAUTH["redirect_uri"], "code": SANDBOX_OAUTH["code"]}
    exchanged = tokens.create(grant_type="authorization_code", **code)
    assert exchanged.refresh_token != SANDBOX_OAUTH["refresh_token"]
    hub.client(exchanged.access_token).crm.contacts.basic_api.get_page()
    with pytest.raises(OAuthApiError) as reused:
        tokens.create(grant_type="authorization_code", **code)
    assert body_of(reused.value)["status"] == "BAD_AUTH_CODE"


# -- limits --------------------------------------------------------------------------------------------------
def test_rolling_limit_429_headers_and_recovery(hub: Hub) -> None:
    hub.config(rate_limit=[5, 1])
    contacts = hub.client().crm.contacts.basic_api
    remaining = []
    for _ in range(5):
        _, _, headers = contacts.get_page_with_http_info()
        assert headers["X-HubSpot-RateLimit-Max"] == "5"
        assert headers["X-HubSpot-RateLimit-Interval-Milliseconds"] == "1000"
        remaining.append(int(headers["X-HubSpot-RateLimit-Remaining"]))
    assert remaining == [4, 3, 2, 1, 0]
    with pytest.raises(ContactsError) as info:  # a POST: urllib3 never retries it on its own
        contacts.create(contact_input(email="a@example.com"))
    assert info.value.status == 429
    assert info.value.headers["X-HubSpot-RateLimit-Remaining"] == "0"
    assert int(info.value.headers["Retry-After"]) == 1
    body = body_of(info.value)
    assert body["message"] == "You have reached your ten_secondly_rolling limit."
    assert (body["errorType"], body["policyName"]) == ("RATE_LIMIT", "TEN_SECONDLY_ROLLING")
    assert body["correlationId"] and body["requestId"]
    state = hub.state()
    assert (state["api_calls"], state["rate_limited"]) == (5, 1)  # the refused call did not count
    assert state["contacts"] == []

    # A GET is different: the SDK's default urllib3 Retry honours Retry-After on 429 for idempotent
    # methods, so this call sleeps through the window and then succeeds.
    started = time.monotonic()
    assert contacts.get_page().results == []
    assert time.monotonic() - started >= 0.5
    assert hub.state()["rate_limited"] == 2


def test_daily_limit_and_search_limit(hub: Hub) -> None:
    hub.config(daily_limit=4, search_rate_limit=[2, 10])
    # retry=False: otherwise urllib3 would honour the DAILY Retry-After and sleep until midnight UTC.
    client = hub.client(retry=False)
    _, _, headers = client.crm.contacts.basic_api.get_page_with_http_info()
    assert headers["X-HubSpot-RateLimit-Daily"] == "4"
    assert headers["X-HubSpot-RateLimit-Daily-Remaining"] == "3"
    search(client)
    search(client)  # searches count against the daily budget too
    with pytest.raises(ContactsError) as searches:
        search(client)
    assert searches.value.status == 429 and body_of(searches.value)["policyName"] == "SECONDLY"
    assert "X-HubSpot-RateLimit-Max" not in searches.value.headers
    _, _, headers = client.crm.contacts.basic_api.get_page_with_http_info()
    assert headers["X-HubSpot-RateLimit-Daily-Remaining"] == "0"
    with pytest.raises(ContactsError) as daily:
        client.crm.contacts.basic_api.get_page()
    assert daily.value.status == 429
    assert body_of(daily.value)["policyName"] == "DAILY"
    assert body_of(daily.value)["message"] == "You have reached your daily limit."
    assert daily.value.headers["X-HubSpot-RateLimit-Daily-Remaining"] == "0"
    assert int(daily.value.headers["Retry-After"]) >= 1
    hub.config(daily_limit=None)
    client.crm.contacts.basic_api.get_page()


# -- deals, pipelines, owners -------------------------------------------------------------------------
def test_pipelines_owners_and_deal_validation(hub: Hub) -> None:
    client = hub.client()
    pipelines = client.crm.pipelines.pipelines_api.get_all("deals").results
    assert [(p.id, p.label) for p in pipelines] == [("default", "Sales Pipeline")]
    assert [s.id for s in pipelines[0].stages] == [
        "appointmentscheduled", "qualifiedtobuy", "presentationscheduled", "decisionmakerboughtin",
        "contractsent", "closedwon", "closedlost"]
    assert client.crm.pipelines.pipelines_api.get_by_id("deals", "default").display_order == 0
    owners = client.crm.owners.owners_api.get_page().results
    assert len(owners) == 2 and all(o.id and o.email and o.user_id and not o.archived for o in owners)

    deal = client.crm.deals.basic_api.create(DealInput(properties={
        "dealname": "Missed call +15550123456", "pipeline": "default", "dealstage": "appointmentscheduled",
        "amount": "250", "hubspot_owner_id": owners[0].id, "closedate": "2026-02-01"}))
    assert deal.properties["closedate"] == "2026-02-01T00:00:00Z" and deal.properties["hs_lastmodifieddate"]
    with pytest.raises(DealsError) as stage:
        client.crm.deals.basic_api.create(DealInput(properties={"dealname": "x", "dealstage": "won"}))
    assert stage.value.status == 400 and body_of(stage.value)["errors"][0]["code"] == "INVALID_OPTION"
    with pytest.raises(DealsError) as pipe:
        client.crm.deals.basic_api.create(DealInput(properties={"dealname": "x", "pipeline": "nope"}))
    assert body_of(pipe.value)["errors"][0]["context"] == {"propertyName": ["pipeline"]}


# -- emulator surface ---------------------------------------------------------------------------------
def test_injected_fault_then_success(hub: Hub) -> None:
    fault = {"path": "/crm/v3/objects/contacts", "method": "POST", "status": 503, "count": 1,
             "body": {"status": "error", "message": "Service Unavailable"}}
    assert requests.post(f"{hub.url}/_emulator/faults", json=fault, timeout=5).status_code == 201
    contacts = hub.client().crm.contacts.basic_api
    with pytest.raises(ContactsError) as info:
        contacts.create(contact_input(email="a@example.com"))
    assert info.value.status == 503
    assert contacts.create(contact_input(email="a@example.com")).id

    # With a urllib3 Retry that covers POST (the SDK's README example does not), the client rides it out.
    requests.post(f"{hub.url}/_emulator/faults", json={**fault, "count": 2}, timeout=5)
    retry = Retry(total=3, status_forcelist=(503,), allowed_methods=None, backoff_factor=0)
    retrying = hub.client(retry=retry)
    assert retrying.crm.contacts.basic_api.create(contact_input(email="b@example.com")).id
    assert len(hub.state()["contacts"]) == 2
    # The request log says which fault each request met, in the order they were met.
    logged = requests.get(f"{hub.url}/_emulator/requests", timeout=5).json()["requests"]
    posts = [r["fault"] for r in logged if r["method"] == "POST" and r["path"] == fault["path"]]
    assert posts == [503, None, 503, 503, None]


def test_reset_clears_data_and_counters_but_keeps_tokens(hub: Hub) -> None:
    hub.config(tokens={"pat-extra": {"scopes": None}}, rate_limit=[50, 10])
    hub.unique_phone_property()
    client = hub.client()
    lead = upsert(client, CALLER).results[0]
    client.crm.objects.tasks.basic_api.create(TaskInput(properties={"hs_timestamp": "2026-01-01"},
                                                        associations=[assoc(204, lead.id)]))
    client.oauth.tokens_api.create(grant_type="refresh_token", client_id=SANDBOX_OAUTH["client_id"],
                                   client_secret=SANDBOX_OAUTH["client_secret"],
                                   refresh_token=SANDBOX_OAUTH["refresh_token"])
    hub.config(revoke_refresh_tokens=True)
    assert requests.post(f"{hub.url}/_emulator/reset", timeout=5).status_code == 200

    state = hub.state()
    assert all(state[t] == [] for t in ("contacts", "deals", "tasks", "notes", "calls", "associations"))
    assert state["properties"]["contacts"] == []
    assert (state["oauth"]["refreshes"], state["api_calls"]) == (0, 0)
    assert state["config"]["rate_limit"] == [50, 10.0] and "pat-extra" in state["config"]["tokens"]
    hub.client("pat-extra").crm.contacts.basic_api.get_page()
    with pytest.raises(ContactsError) as gone:
        upsert(client, CALLER)  # the custom unique property went with the reset
    assert gone.value.status == 400
    client.oauth.tokens_api.create(grant_type="refresh_token", client_id=SANDBOX_OAUTH["client_id"],
                                   client_secret=SANDBOX_OAUTH["client_secret"],
                                   refresh_token=SANDBOX_OAUTH["refresh_token"])


def test_raw_error_shapes_and_config_validation(hub: Hub) -> None:
    malformed = hub.http("POST", "/crm/v3/objects/contacts", data=b'{"properties": {',
                         headers={"Content-Type": "application/json"})
    assert malformed.status_code == 400
    assert malformed.json()["message"].startswith("Invalid input JSON on line 1")
    assert malformed.headers["Content-Type"] == "application/json;charset=utf-8"
    assert hub.http("POST", "/crm/v3/objects/contacts", json={}).json()["message"] == (
        "Invalid input JSON: some of required attributes are not set [properties]")
    word = hub.http("PATCH", "/crm/v3/objects/contacts/someone@example.com", json={"properties": {}})
    assert word.status_code == 404 and word.json()["category"] == "OBJECT_NOT_FOUND"
    assert hub.http("GET", "/crm/v3/objects/widgets").status_code == 400
    assert hub.http("GET", "/crm/v3/nothing/here").json()["message"] == "resource not found"

    for bad in ({"nope": 1}, {"rate_limit": [5]}, {"daily_limit": -1}, {"tokens": {"t": {"scopes": "x"}}}):
        assert requests.post(f"{hub.url}/_emulator/config", json=bad, timeout=5).status_code == 400
    assert hub.config(search_lag_ms=5)["search_lag_ms"] == 5


def test_constructor_settings_show_in_config() -> None:
    emulator = HubSpotEmulator(tokens=("pat-a", "pat-b"), rate_limit=(5, 1.0), daily_limit=3,
                               search_lag_ms=250)
    config = emulator.app.test_client().get("/_emulator/config").get_json()
    assert set(config["tokens"]) == {"pat-a", "pat-b"}
    assert (config["rate_limit"], config["daily_limit"], config["search_lag_ms"]) == ([5, 1.0], 3, 250)
    unauthenticated = emulator.app.test_client().get("/crm/v3/objects/contacts",
                                                     headers={"Authorization": f"Bearer {SANDBOX_TOKEN}"})
    assert unauthenticated.status_code == 401


def test_batch_create_with_inline_associations_through_the_sdk(hub: Hub) -> None:
    client = hub.client()
    lead = client.crm.contacts.basic_api.create(contact_input(firstname="Ann"))
    # The SDK's own batch_api.create: inputs with inline associations and objectWriteTraceId.
    inputs = [
        {"properties": {"hs_timestamp": "2026-01-01T00:00:00Z", "hs_note_body": f"note {n}"},
         "associations": [assoc(202, lead.id)], "objectWriteTraceId": f"trace-{n}"}
        for n in range(3)
    ]
    answer = client.crm.objects.notes.batch_api.create({"inputs": inputs})
    assert answer.status == "COMPLETE" and len(answer.results) == 3
    assert {r.object_write_trace_id for r in answer.results} == {"trace-0", "trace-1", "trace-2"}
    state = hub.state()
    linked = {a["from_id"] for a in state["associations"] if a["from_type"] == "notes"}
    assert linked == {r.id for r in answer.results}
    # Over raw HTTP: 201, the batch envelope and the rate-limit headers every call carries.
    raw = hub.http("POST", "/crm/v3/objects/calls/batch/create", json={"inputs": [
        {"properties": {"hs_timestamp": "2026-01-01T00:00:00Z", "hs_call_body": "missed"},
         "associations": [assoc(194, lead.id)]}]})
    assert raw.status_code == 201
    assert {"status", "results", "startedAt", "completedAt"} <= set(raw.json())
    assert "X-HubSpot-RateLimit-Remaining" in raw.headers
    # More than 100 inputs, or an input HubSpot refuses, fails the whole request: nothing is made.
    too_many = hub.http("POST", "/crm/v3/objects/notes/batch/create",
                        json={"inputs": [inputs[0]] * 101})
    assert too_many.status_code == 400
    bad = hub.http("POST", "/crm/v3/objects/notes/batch/create", json={"inputs": [
        inputs[0], {"properties": {"hs_timestamp": "2026-01-01T00:00:00Z"},
                    "associations": [assoc(202, "999999")]}]})
    assert bad.status_code >= 400
    assert len(hub.state()["notes"]) == 3
