"""The Salesforce emulator, driven by the real simple-salesforce SDK through the loopback session."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from simple_salesforce import Salesforce, format_soql
from simple_salesforce.exceptions import (
    SalesforceAuthenticationFailed,
    SalesforceExpiredSession,
    SalesforceGeneralError,
    SalesforceMalformedRequest,
    SalesforceMoreThanOneRecord,
    SalesforceRefusedRequest,
    SalesforceResourceNotFound,
)
from simple_salesforce.format import format_external_id

from connectors.emulator.base import ServerThread, serve_in_thread
from connectors.salesforce.emulator import SANDBOX, SalesforceEmulator
from connectors.salesforce.loopback import loopback_session

VERSION = "62.0"
PHONE = "+15550102030"
API = f"/services/data/v{VERSION}"


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    emulator = SalesforceEmulator()
    running = serve_in_thread(emulator.app)
    yield running
    running.stop()


@pytest.fixture
def url(server: ServerThread) -> str:
    requests.post(f"{server.url}/_emulator/reset", timeout=5).raise_for_status()
    return server.url


def emu(url: str, path: str, body: Any = None) -> Any:
    """Talk to the emulator surface: GET without a body, POST with one."""
    if body is None:
        response = requests.get(f"{url}/_emulator/{path}", timeout=5)
    else:
        response = requests.post(f"{url}/_emulator/{path}", json=body, timeout=5)
    response.raise_for_status()
    return response.json()


def client_credentials(url: str) -> Salesforce:
    return Salesforce(consumer_key=SANDBOX["client_id"], consumer_secret=SANDBOX["client_secret"],
                      domain=SANDBOX["domain"], session=loopback_session(url), version=VERSION)


@pytest.fixture
def sf(url: str) -> Salesforce:
    return client_credentials(url)


def pem_pair() -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, public


@pytest.fixture(scope="module")
def keys() -> tuple[str, str]:
    return pem_pair()


def new_lead(sf: Salesforce, **fields: Any) -> str:
    body = {"LastName": "Caller", "Company": "[not provided]", **fields}
    return str(sf.Lead.create(body)["id"])


def error_code(exc: pytest.ExceptionInfo[Any]) -> str:
    return str(exc.value.content[0]["errorCode"])


# -- auth ---------------------------------------------------------------------------------------------
def test_client_credentials_login_then_create_and_read_lead(sf: Salesforce, url: str) -> None:
    lead_id = new_lead(sf, FirstName="Ada", Phone="(555) 010-2030", LeadSource="Phone Inquiry")
    assert lead_id.startswith("00Q") and len(lead_id) == 18
    record = sf.Lead.get(lead_id)
    assert record["attributes"] == {"type": "Lead", "url": f"{API}/sobjects/Lead/{lead_id}"}
    assert record["Name"] == "Ada Caller" and record["Status"] == "Open - Not Contacted"
    assert record["IsConverted"] is False
    state = emu(url, "state")
    assert state["tokens_issued"] == 1 and [r["Id"] for r in state["Lead"]] == [lead_id]
    assert sf.Lead.update(lead_id, {"Email": "ada@example.com"}) == 204
    assert sf.Lead.get(lead_id, params={"fields": "Id,Email"})["Email"] == "ada@example.com"
    assert sf.Lead.delete(lead_id) == 204
    with pytest.raises(SalesforceResourceNotFound):
        sf.Lead.get(lead_id)
    token = requests.post(f"{url}/services/oauth2/token", data={"grant_type": "client_credentials",
                          "client_id": SANDBOX["client_id"], "client_secret": "wrong"}, timeout=5)
    assert token.status_code == 400 and token.json()["error"] == "invalid_client"


def test_jwt_bearer_login_checks_the_signature_when_a_key_is_configured(url: str, keys: tuple[str, str]
                                                                        ) -> None:
    private, public = keys
    emu(url, "config", {"jwt_public_key": public})
    sf = Salesforce(username=SANDBOX["username"], consumer_key=SANDBOX["client_id"], privatekey=private,
                    domain="login", session=loopback_session(url), version=VERSION)
    assert new_lead(sf).startswith("00Q")
    stranger, _ = pem_pair()
    with pytest.raises(SalesforceAuthenticationFailed) as exc:
        Salesforce(username=SANDBOX["username"], consumer_key=SANDBOX["client_id"], privatekey=stranger,
                   domain="login", session=loopback_session(url))
    assert exc.value.code == "invalid_grant"
    emu(url, "config", {"jwt_public_key": None})  # unverified: any key, but iss and sub must be known
    Salesforce(username=SANDBOX["username"], consumer_key=SANDBOX["client_id"], privatekey=stranger,
               domain="login", session=loopback_session(url))
    with pytest.raises(SalesforceAuthenticationFailed, match="authentication failure"):
        Salesforce(username="someone@else.example", consumer_key=SANDBOX["client_id"], privatekey=stranger,
                   domain="login", session=loopback_session(url))
    emu(url, "config", {"revoke": True})
    with pytest.raises(SalesforceAuthenticationFailed, match="invalid_grant"):
        Salesforce(username=SANDBOX["username"], consumer_key=SANDBOX["client_id"], privatekey=private,
                   domain="login", session=loopback_session(url))
    assert emu(url, "state")["tokens_issued"] == 2


def test_direct_session_id_works_until_sessions_expire(url: str) -> None:
    token = requests.post(f"{url}/services/oauth2/token", timeout=5, data={
        "grant_type": "client_credentials", "client_id": SANDBOX["client_id"],
        "client_secret": SANDBOX["client_secret"]}).json()
    assert token["token_type"] == "Bearer" and token["instance_url"] == SANDBOX["instance_url"]
    assert {"access_token", "id", "issued_at", "signature", "scope"} <= set(token)
    sf = Salesforce(instance_url="https://acme.my.salesforce.com", session_id=token["access_token"],
                    session=loopback_session(url), version=VERSION)
    assert sf.query("SELECT Id FROM Lead")["totalSize"] == 0
    emu(url, "config", {"expire_sessions": True})
    with pytest.raises(SalesforceExpiredSession) as exc:
        sf.query("SELECT Id FROM Lead")
    assert exc.value.content == [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]


def test_authorization_code_then_refresh_token_until_revoked(url: str) -> None:
    redirect = requests.get(f"{url}/services/oauth2/authorize", allow_redirects=False, timeout=5, params={
        "response_type": "code", "client_id": SANDBOX["client_id"], "redirect_uri": SANDBOX["redirect_uri"],
        "state": "xyz"})
    assert redirect.status_code == 302 and "state=xyz" in redirect.headers["Location"]
    code = redirect.headers["Location"].split("code=")[1].split("&")[0]
    form = {"grant_type": "authorization_code", "code": code, "client_id": SANDBOX["client_id"],
            "client_secret": SANDBOX["client_secret"], "redirect_uri": SANDBOX["redirect_uri"]}
    granted = requests.post(f"{url}/services/oauth2/token", data=form, timeout=5).json()
    again = requests.post(f"{url}/services/oauth2/token", data=form, timeout=5)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"  # codes are single-use
    refresh = {"grant_type": "refresh_token", "refresh_token": granted["refresh_token"],
               "client_id": SANDBOX["client_id"]}
    renewed = requests.post(f"{url}/services/oauth2/token", data=refresh, timeout=5)
    assert renewed.status_code == 200 and "refresh_token" not in renewed.json()
    emu(url, "config", {"revoke": True})
    refused = requests.post(f"{url}/services/oauth2/token", data=refresh, timeout=5)
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"


def test_api_calls_without_a_valid_bearer_token_get_401(url: str) -> None:
    response = requests.get(f"{url}{API}/sobjects/Lead/describe", timeout=5)
    assert response.status_code == 401
    assert response.json() == [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]
    versions = requests.get(f"{url}/services/data/", timeout=5).json()  # the one unauthenticated resource
    assert {"label": "Winter '25", "url": "/services/data/v62.0", "version": "62.0"} in versions


def test_expired_session_makes_login_modes_log_in_again(sf: Salesforce, url: str, keys: tuple[str, str]
                                                         ) -> None:
    jwt_sf = Salesforce(username=SANDBOX["username"], consumer_key=SANDBOX["client_id"], privatekey=keys[0],
                        domain="login", session=loopback_session(url), version=VERSION)
    emu(url, "config", {"expire_sessions": True})
    assert new_lead(sf).startswith("00Q")
    assert jwt_sf.query("SELECT Id FROM Lead")["totalSize"] == 1
    assert emu(url, "state")["tokens_issued"] == 4


def test_always_invalid_session_ends_in_expired_session_after_the_sdk_retries(sf: Salesforce, url: str
                                                                              ) -> None:
    # Salesforce.query gives up after 3 refreshes; SFType methods (sf.Lead.create...) would loop forever.
    emu(url, "config", {"always_invalid_session": True})
    with pytest.raises(SalesforceExpiredSession):
        sf.query("SELECT Id FROM Lead")
    assert emu(url, "state")["tokens_issued"] == 5


# -- upsert by external id -------------------------------------------------------------------------
def test_upsert_by_phone_creates_then_updates(sf: Salesforce, url: str) -> None:
    key = format_external_id("Phone_E164__c", PHONE)
    created = sf.Lead.upsert(key, {"LastName": "Caller", "Company": "[not provided]"}, raw_response=True)
    assert created.status_code == 201
    lead_id = created.json()["id"]
    assert created.json() == {"id": lead_id, "success": True, "errors": [], "created": True}
    updated = sf.Lead.upsert(key, {"Description": "called twice"}, raw_response=True)
    assert updated.status_code == 200
    assert updated.json() == {"id": lead_id, "success": True, "errors": [], "created": False}
    [lead] = emu(url, "state")["Lead"]
    assert lead["Phone_E164__c"] == PHONE and lead["Description"] == "called twice"
    assert sf.Lead.get_by_custom_id("Phone_E164__c", PHONE)["Id"] == lead_id
    paths = [r["path"] for r in emu(url, "requests")["requests"] if r["method"] == "PATCH"]
    assert paths == [f"{API}/sobjects/Lead/Phone_E164__c/{PHONE}"] * 2
    old_api = Salesforce(instance_url="https://x.my.salesforce.com", session_id=sf.session_id,
                         session=loopback_session(url), version="45.0")
    assert old_api.Lead.upsert(key, {"Description": "v45"}) == 204  # no body before API 46


def test_twenty_concurrent_upserts_make_one_lead(sf: Salesforce, url: str) -> None:
    barrier = threading.Barrier(20)
    statuses: list[int] = []

    def upsert() -> None:
        barrier.wait()
        response = sf.Lead.upsert(format_external_id("Phone_E164__c", PHONE),
                                  {"LastName": "Caller", "Company": "[not provided]"}, raw_response=True)
        statuses.append(response.status_code)

    threads = [threading.Thread(target=upsert) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(statuses) == [200] * 19 + [201]
    assert len(emu(url, "state")["Lead"]) == 1


def test_several_matches_on_a_non_unique_external_id_give_300(sf: Salesforce, url: str) -> None:
    new_lead(sf, Phone_E164__c=PHONE)
    with pytest.raises(SalesforceMalformedRequest) as dup:
        new_lead(sf, Phone_E164__c=PHONE)  # unique by default
    assert error_code(dup) == "DUPLICATE_VALUE"
    emu(url, "config", {"external_id_fields": {"Lead": {"field": "Phone_E164__c", "unique": False}}})
    second = new_lead(sf, Phone_E164__c=PHONE)
    with pytest.raises(SalesforceMoreThanOneRecord) as exc:
        sf.Lead.upsert(format_external_id("Phone_E164__c", PHONE), {"LastName": "X"})
    assert len(exc.value.content) == 2 and exc.value.content[1] == f"{API}/sobjects/Lead/{second}"


def test_upsert_needs_a_configured_external_id_field(sf: Salesforce, url: str) -> None:
    with pytest.raises(SalesforceResourceNotFound) as exc:
        sf.Lead.upsert(format_external_id("Email", "a@b.example"), {"LastName": "X", "Company": "Y"})
    message = "Provided external ID field does not exist or is not accessible: Email"
    assert exc.value.content == [{"message": message, "errorCode": "NOT_FOUND"}]
    emu(url, "config", {"external_id_fields": {"Lead": None, "Account": "Ext_Id__c"}})
    with pytest.raises(SalesforceResourceNotFound):
        sf.Lead.upsert(format_external_id("Phone_E164__c", PHONE), {"LastName": "X", "Company": "Y"})
    assert sf.Account.upsert("Ext_Id__c/A-1", {"Name": "Acme"}) == 201
    described = {f["name"]: f for f in sf.Account.describe()["fields"]}
    assert described["Ext_Id__c"]["externalId"] and described["Ext_Id__c"]["unique"]


# -- queries -----------------------------------------------------------------------------------------
def test_soql_subset(sf: Salesforce) -> None:
    a = new_lead(sf, LastName="Alpha", Phone_E164__c="+15550100001", LeadSource="Web")
    b = new_lead(sf, LastName="Bravo", Phone_E164__c="+15550100002", LeadSource="Web")
    c = new_lead(sf, LastName="Charlie", LeadSource="Other")
    result = sf.query(format_soql("SELECT Id, LastName FROM Lead WHERE LeadSource = {} AND LastName != {} "
                                  "ORDER BY LastName DESC LIMIT 5", "web", "Alpha"))
    assert result["totalSize"] == 1 and result["done"] is True
    assert result["records"][0] == {"attributes": {"type": "Lead", "url": f"{API}/sobjects/Lead/{b}"},
                                    "Id": b, "LastName": "Bravo"}
    either = sf.query("SELECT Id FROM Lead WHERE LastName = 'Alpha' OR Phone_E164__c = '+15550100002' "
                      "ORDER BY LastName")
    assert [r["Id"] for r in either["records"]] == [a, b]
    picked = sf.query(format_soql("SELECT Id FROM Lead WHERE Id IN {} ORDER BY LastName", [c, a]))
    assert [r["Id"] for r in picked["records"]] == [a, c]
    assert sf.query("SELECT COUNT() FROM Lead WHERE IsConverted = false")["totalSize"] == 3
    for bad, code in (("SELECT Id FORM Lead", "MALFORMED_QUERY"), ("SELECT Nope FROM Lead", "INVALID_FIELD"),
                      ("SELECT Id FROM Nope", "INVALID_TYPE"),
                      ("SELECT Id FROM Lead WHERE IsConverted = 'false'", "INVALID_QUERY_FILTER_OPERATOR")):
        with pytest.raises(SalesforceMalformedRequest) as exc:
            sf.query(bad)
        assert error_code(exc) == code


def test_sosl_phone_search_ignores_formatting(sf: Salesforce, url: str) -> None:
    lead = new_lead(sf, Phone="(555) 010-2030")
    contact = sf.Contact.create({"LastName": "Known", "MobilePhone": "+1 555-010-2030"})["id"]
    new_lead(sf, Phone="555-010-9999")
    found = sf.search("FIND {+15550102030} IN PHONE FIELDS RETURNING Lead(Id, Phone, IsConverted), "
                      "Contact(Id, MobilePhone, AccountId)")
    assert [(r["attributes"]["type"], r["Id"]) for r in found["searchRecords"]] == [
        ("Lead", lead), ("Contact", contact)]
    assert found["searchRecords"][1]["MobilePhone"] == "+1 555-010-2030"
    emu(url, "config", {"search_index_delay_ms": 60_000})
    new_lead(sf, Phone="555 010 7777")
    assert sf.search("FIND {5550107777} IN PHONE FIELDS RETURNING Lead(Id)")["searchRecords"] == []
    with pytest.raises(SalesforceMalformedRequest):
        sf.search("FIND {5} IN PHONE FIELDS")


# -- composite ------------------------------------------------------------------------------------
def _sub(ref: str, method: str, path: str, body: Any = None) -> dict[str, Any]:
    sub: dict[str, Any] = {"method": method, "url": f"{API}{path}", "referenceId": ref}
    if body is not None:
        sub["body"] = body
    return sub


def test_composite_with_references_and_per_subrequest_status(sf: Salesforce, url: str) -> None:
    requests_ = [
        _sub("lead", "POST", "/sobjects/Lead", {"LastName": "Caller", "Company": "[not provided]"}),
        _sub("task", "POST", "/sobjects/Task", {"WhoId": "@{lead.id}", "Subject": "Missed call",
                                                "TaskSubtype": "Call", "CallType": "Inbound"}),
        _sub("broken", "POST", "/sobjects/Lead", {"LastName": "NoCompany"}),
        _sub("dependent", "PATCH", "/sobjects/Lead/@{broken.id}", {"Status": "Working - Contacted"}),
        _sub("check", "GET", "/query?q=SELECT+Id,WhoId+FROM+Task"),
    ]
    answer = sf.restful("composite", method="POST", json={"allOrNone": False, "compositeRequest": requests_})
    results = {r["referenceId"]: r for r in answer["compositeResponse"]}
    assert [r["httpStatusCode"] for r in answer["compositeResponse"]] == [201, 201, 400, 400, 200]
    assert results["lead"]["httpHeaders"]["Location"].endswith(results["lead"]["body"]["id"])
    assert results["broken"]["body"][0]["errorCode"] == "REQUIRED_FIELD_MISSING"
    assert results["dependent"]["body"][0]["errorCode"] == "PROCESSING_HALTED"
    assert results["check"]["body"]["records"][0]["WhoId"] == results["lead"]["body"]["id"]

    before = emu(url, "state")
    halted = sf.restful("composite", method="POST", json={"allOrNone": True, "compositeRequest": requests_})
    statuses = [(r["httpStatusCode"], r["body"][0]["errorCode"]) for r in halted["compositeResponse"]]
    assert statuses == [(400, "PROCESSING_HALTED")] * 2 + [(400, "REQUIRED_FIELD_MISSING")] + [
        (400, "PROCESSING_HALTED")] * 2
    assert halted["compositeResponse"][0]["body"][0]["message"] == (
        "The transaction was rolled back since another operation in the same transaction failed.")
    after = emu(url, "state")
    assert (len(after["Lead"]), len(after["Task"])) == (len(before["Lead"]), len(before["Task"])) == (1, 1)
    with pytest.raises(SalesforceMalformedRequest):
        sf.restful("composite", method="POST", json={"compositeRequest": [
            _sub(f"r{i}", "GET", "/limits") for i in range(26)]})


# -- activities and validation ----------------------------------------------------------------------
def test_task_linked_to_a_lead_and_activity_rules(sf: Salesforce) -> None:
    lead = new_lead(sf)
    task_id = sf.Task.create({"WhoId": lead, "Subject": "Missed call", "TaskSubtype": "Call",
                              "CallType": "Inbound", "Status": "Completed", "ActivityDate": "2026-11-27",
                              "CallObject": "CA123", "CallDurationInSeconds": 0})["id"]
    task = sf.Task.get(task_id)
    assert task_id.startswith("00T") and task["WhoId"] == lead and task["IsClosed"] is True
    account = sf.Account.create({"Name": "Acme"})["id"]
    with pytest.raises(SalesforceMalformedRequest) as exc:
        sf.Task.create({"WhoId": lead, "WhatId": account, "Subject": "x"})
    assert error_code(exc) == "FIELD_INTEGRITY_EXCEPTION"
    with pytest.raises(SalesforceMalformedRequest) as exc:
        sf.Task.create({"WhoId": account, "Subject": "x"})
    assert error_code(exc) == "FIELD_INTEGRITY_EXCEPTION"
    with pytest.raises(SalesforceMalformedRequest) as exc:
        sf.Task.create({"WhoId": "00Q8b0000000zzzAAA", "Subject": "x"})
    assert error_code(exc) == "INVALID_CROSS_REFERENCE_KEY"
    with pytest.raises(SalesforceMalformedRequest) as exc:
        sf.Task.create({"CallType": "Sideways"})
    assert error_code(exc) == "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"
    contact = sf.Contact.create({"LastName": "Known", "AccountId": account})["id"]
    slot = {"StartDateTime": "2026-11-28T15:00:00Z", "EndDateTime": "2026-11-28T15:30:00Z"}
    event = sf.Event.create({"WhoId": contact, "Subject": "Call back", **slot})["id"]
    assert event.startswith("00U")
    assert sf.Event.get(event)["DurationInMinutes"] == 30 and sf.Event.get(event)["AccountId"] == account
    with pytest.raises(SalesforceMalformedRequest) as exc:
        sf.Event.create({"WhoId": contact, "Subject": "no time"})
    assert exc.value.content[0]["fields"] == ["ActivityDateTime", "DurationInMinutes"]
    opp = sf.Opportunity.create({"Name": "Panel upgrade", "StageName": "Prospecting",
                                 "CloseDate": "2026-12-31", "AccountId": account})["id"]
    assert opp.startswith("006")
    role = sf.OpportunityContactRole.create({"OpportunityId": opp, "ContactId": contact})
    assert role["id"].startswith("00K")
    with pytest.raises(SalesforceMalformedRequest) as exc:
        sf.Opportunity.create({"Name": "No stage"})
    assert exc.value.content[0]["fields"] == ["StageName", "CloseDate"]


def test_validation_errors_are_salesforce_error_arrays(sf: Salesforce) -> None:
    with pytest.raises(SalesforceMalformedRequest) as exc:
        sf.Lead.create({"FirstName": "Only"})
    assert exc.value.content == [{"message": "Required fields are missing: [LastName, Company]",
                                  "errorCode": "REQUIRED_FIELD_MISSING", "fields": ["LastName", "Company"]}]
    with pytest.raises(SalesforceMalformedRequest) as exc:
        sf.Lead.create({"LastName": "X", "Company": "Y", "Shoe_Size__c": 9})
    assert exc.value.content == [{"message": "No such column 'Shoe_Size__c' on sobject of type Lead",
                                  "errorCode": "INVALID_FIELD", "fields": []}]
    with pytest.raises(SalesforceMalformedRequest) as exc:
        sf.Lead.create({"LastName": "X", "Company": "Y", "Name": "X"})
    assert error_code(exc) == "INVALID_FIELD_FOR_INSERT_UPDATE"
    with pytest.raises(SalesforceMalformedRequest) as exc:
        sf.Lead.create({"LastName": "X", "Company": "Y", "Email": "not-an-email"})
    assert error_code(exc) == "INVALID_EMAIL_ADDRESS"
    lead = new_lead(sf)
    with pytest.raises(SalesforceMalformedRequest) as exc:
        sf.Lead.update(lead, {"LastName": None})
    assert error_code(exc) == "REQUIRED_FIELD_MISSING"


# -- limits, faults, reset ----------------------------------------------------------------------------
def test_limit_info_header_and_limits_resource(sf: Salesforce) -> None:
    lead_type = sf.Lead  # api_usage lives on the SFType instance, and sf.Lead makes a new one each time
    lead_type.create({"LastName": "X", "Company": "Y"})
    lead_type.create({"LastName": "Z", "Company": "Y"})
    assert lead_type.api_usage["api-usage"].used == 2 and lead_type.api_usage["api-usage"].total == 15000
    limits = sf.limits()
    assert limits["DailyApiRequests"] == {"Max": 15000, "Remaining": 15000 - 3}
    assert sf.api_usage["api-usage"].used == 3


def test_daily_limit_exhausted_is_403_without_retry_after(sf: Salesforce, url: str) -> None:
    emu(url, "config", {"daily_limit": 100, "api_usage": 99})
    assert sf.query("SELECT Id FROM Lead")["totalSize"] == 0
    with pytest.raises(SalesforceRefusedRequest) as exc:
        sf.query("SELECT Id FROM Lead")
    assert exc.value.content == [{"message": "TotalRequests Limit exceeded.",
                                  "errorCode": "REQUEST_LIMIT_EXCEEDED"}]
    raw = requests.get(f"{url}{API}/limits", headers={"Authorization": f"Bearer {sf.session_id}"}, timeout=5)
    assert raw.status_code == 403 and "Retry-After" not in raw.headers
    assert raw.headers["Sforce-Limit-Info"] == "api-usage=100/100"


def test_faults_reset_and_loopback_timeout(sf: Salesforce, url: str) -> None:
    new_lead(sf)
    emu(url, "faults", {"path": f"{API}/sobjects/Lead", "method": "POST", "status": 503, "count": 1,
                        "body": [{"message": "Service unavailable", "errorCode": "SERVER_UNAVAILABLE"}]})
    with pytest.raises(SalesforceGeneralError) as exc:
        new_lead(sf)
    assert exc.value.status == 503
    new_lead(sf)
    emu(url, "faults", {"path": f"{API}/query", "delay_ms": 1500, "count": 1})
    impatient = Salesforce(instance_url="https://x.my.salesforce.com", session_id=sf.session_id,
                           session=loopback_session(url, timeout=0.3), version=VERSION)
    with pytest.raises(requests.exceptions.ReadTimeout):
        impatient.query("SELECT Id FROM Lead")
    emu(url, "reset", {})
    state = emu(url, "state")
    assert (state["Lead"], state["tokens_issued"], state["api_usage"]) == ([], 0, 0)
    assert sf.query("SELECT Id FROM Lead")["totalSize"] == 0  # issued sessions survive a reset
