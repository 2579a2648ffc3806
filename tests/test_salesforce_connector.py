"""The Salesforce connector: the conformance kit, then the real stack against the Salesforce emulator."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote_plus

import pytest
import requests
import yaml
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from simple_salesforce import Salesforce
from sqlalchemy import select, update

from bridge.cli import main
from connectors.base import ConnectorContext
from connectors.emulator import serve_in_thread
from connectors.emulator.base import ServerThread
from connectors.salesforce import auth as sf_auth
from connectors.salesforce import mappers, sandbox
from connectors.salesforce.connector import SalesforceConnector
from connectors.salesforce.emulator import SANDBOX, SalesforceEmulator
from connectors.salesforce.kit import SalesforceKit
from connectors.salesforce.loopback import loopback_session
from connectors.testing import conformance_suite
from core import connector_state, db, secrets, sync
from core.connector_state import TokenStore
from core.crm import ActivityData, ContactData, DealData, TaskData
from core.errors import AuthError, ConnectorConfigError, RateLimited, Rejected, TransientError
from core.models import Alert, OutboxJob, utcnow
from core.secrets import generate_key
from tests.schema import migrate
from tests.stack import Stack, settle

TestSalesforceConformance = conformance_suite(SalesforceKit())

BUSINESS = "bright-spark"
VERSION = "62.0"


# -- fixtures and helpers ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sf_server() -> Iterator[ServerThread]:
    server = serve_in_thread(SalesforceEmulator().app)
    yield server
    server.stop()


@pytest.fixture
def sf_url(sf_server: ServerThread) -> str:
    requests.post(f"{sf_server.url}/_emulator/reset", timeout=5).raise_for_status()
    return sf_server.url


@pytest.fixture
def secret_key(monkeypatch: pytest.MonkeyPatch) -> str:
    key = generate_key()
    monkeypatch.setenv("TEXTBACK_SECRET_KEY", key)
    return key


def state(url: str) -> dict[str, Any]:
    return dict(requests.get(f"{url}/_emulator/state", timeout=5).json())


def emulate(url: str, **spec: Any) -> None:
    requests.post(f"{url}/_emulator/config", json=spec, timeout=5).raise_for_status()


def fault(url: str, **spec: Any) -> None:
    assert requests.post(f"{url}/_emulator/faults", json=spec, timeout=5).status_code == 201


def cc_config(url: str, **extra: Any) -> dict[str, Any]:
    return {**SalesforceKit().config(url), **extra}


def connector(config: dict[str, Any], tokens: TokenStore | None = None, **context: Any
              ) -> SalesforceConnector:
    return SalesforceConnector(config, ConnectorContext(business_id="acme", connector_id="salesforce",
                                                        tokens=tokens, timeout=5, **context))


def at_the_missed_call(url: str) -> dict[str, Any]:
    """The sandbox's sync settings with a deal and a call-back task for every missed call."""
    return {**sandbox.settings(url)["sync"], "deal_on": "missed_call", "create_task": True}


def install(stack: Stack, url: str, **overrides: Any) -> Any:
    settings = {**sandbox.settings(url), **overrides}
    path = stack.tmp_path / "salesforce.yaml"
    path.write_text(yaml.safe_dump(settings))
    result = CliRunner().invoke(main, ["connectors", "install", "salesforce", "--config",
                                       str(stack.config_path), "--config-file", str(path)])
    assert result.exit_code == 0, result.output
    return result


def by_id(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["Id"]: r for r in records}


def emit(stack: Stack, phone: str, event: str, ref: str) -> None:
    lead = stack.lead(phone)
    assert lead is not None
    with db.transaction(stack.factory) as session:
        sync.emit(session, BUSINESS, lead["id"], event, ref)


def pem_pair() -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, public


# -- through the real stack --------------------------------------------------------------------------
def test_missed_call_is_one_lead_with_its_call_and_callback_tasks(stack: Stack, sf_url: str,
                                                                   secret_key: str) -> None:
    result = install(stack, sf_url, sync=at_the_missed_call(sf_url))
    assert "ok: connected to Salesforce" in result.output
    assert "deduplicated by upsert on Phone_E164__c" in result.output
    caller = "+13125550142"
    stack.call(caller, "no-answer", voicemail_text="please call me back")
    stack.drain()
    org = state(sf_url)
    [lead] = org["Lead"]
    assert lead["Phone_E164__c"] == caller and lead["Phone"] == "+1 312-555-0142"
    assert (lead["LastName"], lead["Company"], lead["LeadSource"]) == ("Caller 0142", "[not provided]",
                                                                       "Missed call")
    assert lead["Status"] == "Open - Not Contacted"
    tasks = org["Task"]
    calls = [t for t in tasks if t["TaskSubtype"] == "Call"]
    callbacks = [t for t in tasks if t["Status"] == "Not Started"]
    assert len(calls) == 1 and len(callbacks) == 1
    call, callback = calls[0], callbacks[0]
    assert (call["CallType"], call["Status"], call["WhoId"], call["WhatId"]) == (
        "Inbound", "Completed", lead["Id"], None)
    assert call["Subject"] == "Missed call" and "Ref: tb-" in call["Description"]
    assert callback["WhoId"] == lead["Id"] and callback["Subject"].startswith("Call back")
    assert callback["Priority"] == "High" and "Ref: tb-" in callback["Description"]
    texts = [t for t in tasks if t["Subject"] == "Text to the caller"]
    assert len(texts) == 1 and texts[0]["WhoId"] == lead["Id"]  # the text-back, logged on the Lead
    assert org["Contact"] == [] and org["Opportunity"] == []

    # Replaying the call's webhooks (same CallSid) ten times changes nothing in Salesforce.
    for _ in range(10):
        stack.call(caller, "no-answer", call_sid=stack.last_call_sid)
    stack.drain()
    again = state(sf_url)
    assert by_id(again["Lead"]) == by_id(org["Lead"]) and by_id(again["Task"]) == by_id(org["Task"])

    # A booking moves the Lead (not converted) to the booked stage.
    emit(stack, caller, "booked", "slot-1")
    stack.drain()
    [booked] = state(sf_url)["Lead"]
    assert booked["Status"] == "Working - Contacted" and booked["IsConverted"] is False


def test_a_push_to_a_crm_the_text_does_not_look_callers_up_in_goes_at_once(
    stack: Stack, sf_url: str, secret_key: str
) -> None:
    """Salesforce declares no ``find_contact``: the first text's caller lookup does not ask it, so
    its push has no lookup to wait for (core.sync.LOOKUP_REASON), nor a text (it logs its own Task)."""
    install(stack, sf_url, sync=at_the_missed_call(sf_url))
    caller = "+13125550163"
    stack.call(caller, "no-answer")
    with stack.factory() as s:
        [push] = s.scalars(select(OutboxJob).where(OutboxJob.target == "salesforce")).all()
    assert (push.payload["event"], push.status, push.last_error) == ("missed_call", "pending", None)
    assert push.next_attempt_at <= push.created_at + timedelta(seconds=0.5)


def test_salesforce_outage_loses_nothing(stack: Stack, sf_url: str, secret_key: str) -> None:
    install(stack, sf_url, sync=at_the_missed_call(sf_url))
    fault(sf_url, path="/services/data/", status=503, count=3,
          body=[{"message": "Service unavailable", "errorCode": "SERVER_UNAVAILABLE"}])
    stack.call("+13125550143", "busy")
    settle(stack, timeout=20)
    org = state(sf_url)
    assert len(org["Lead"]) == 1
    assert sorted(t["TaskSubtype"] + ":" + t["Status"] for t in org["Task"]) == [
        "Call:Completed", "Task:Completed", "Task:Not Started"]
    assert len(stack.sent("+13125550143")) == 1  # texts are unaffected by the CRM outage


CONTACT_STAGES = {"new": "Prospecting", "qualified": "Qualification", "booked": "Value Proposition"}
SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # nothing database-specific


@SQLITE_ONLY
def test_contact_mode_makes_contact_account_and_opportunity(stack: Stack, sf_url: str, secret_key: str
                                                            ) -> None:
    install(stack, sf_url, mode="contact",
            sync={"deal_on": "missed_call", "create_task": True, "stages": CONTACT_STAGES})
    caller = "+13125550144"
    stack.call(caller, "no-answer")
    stack.drain()
    org = state(sf_url)
    assert org["Lead"] == []
    [contact], [account], [opp], [role] = (org["Contact"], org["Account"], org["Opportunity"],
                                           org["OpportunityContactRole"])
    assert contact["Phone_E164__c"] == caller and contact["AccountId"] == account["Id"]
    assert opp["StageName"] == "Prospecting" and opp["AccountId"] == account["Id"]
    assert opp["CloseDate"] and "Ref: tb-" in opp["Description"]
    assert (role["OpportunityId"], role["ContactId"], role["IsPrimary"]) == (opp["Id"], contact["Id"], True)
    [call] = [t for t in org["Task"] if t["TaskSubtype"] == "Call"]
    [callback] = [t for t in org["Task"] if t["Status"] == "Not Started"]
    assert (call["WhoId"], call["WhatId"]) == (contact["Id"], opp["Id"])
    assert (callback["WhoId"], callback["WhatId"]) == (contact["Id"], opp["Id"])
    emit(stack, caller, "booked", "slot-1")
    stack.drain()
    [moved] = state(sf_url)["Opportunity"]
    assert moved["StageName"] == "Value Proposition" and len(state(sf_url)["Contact"]) == 1


def test_by_default_a_missed_call_makes_no_opportunity_or_task_and_a_reply_makes_one(
        stack: Stack, sf_url: str, secret_key: str) -> None:
    # The product's default sync settings (no deal_on, no create_task), in contact mode.
    install(stack, sf_url, mode="contact",
            sync={"stages": CONTACT_STAGES})
    caller = "+13125550149"
    stack.call(caller, "no-answer")
    stack.drain()
    org = state(sf_url)
    [contact] = org["Contact"]
    assert org["Opportunity"] == [] and [t for t in org["Task"] if t["Status"] == "Not Started"] == []
    assert [t["WhoId"] for t in org["Task"] if t["TaskSubtype"] == "Call"] == [contact["Id"]]
    stack.inbound_sms(caller, "Yes please, can someone come tomorrow?")
    settle(stack, timeout=20)
    org = state(sf_url)
    [opp], [role] = org["Opportunity"], org["OpportunityContactRole"]
    assert (role["OpportunityId"], role["ContactId"]) == (opp["Id"], contact["Id"])
    assert [t for t in org["Task"] if t["Status"] == "Not Started"] == []


@SQLITE_ONLY
def test_request_limit_exceeded_pauses_the_connector(stack: Stack, sf_url: str, secret_key: str) -> None:
    install(stack, sf_url)
    usage = state(sf_url)["api_usage"]
    emulate(sf_url, daily_limit=usage, api_usage=usage)  # the org's daily allocation is used up
    stack.call("+13125550145", "no-answer")
    stack.drain(timeout=5, settle=0.1)  # the text's job waits behind the deferred one (same lead): never due
    with stack.factory() as session:
        until = connector_state.paused_until(session, BUSINESS, "salesforce")
    assert until is not None and until > utcnow() + timedelta(minutes=10)  # a long pause, every worker
    assert state(sf_url)["Lead"] == []
    # The allocation refills: once the pause is over the deferred jobs run, and nothing was lost.
    emulate(sf_url, daily_limit=15000)
    with db.transaction(stack.factory) as session:
        connector_state.resume(session, BUSINESS, "salesforce")
        pending = update(OutboxJob).where(OutboxJob.status == "pending")
        session.execute(pending.values(next_attempt_at=utcnow()))
    stack.drain()
    assert len(state(sf_url)["Lead"]) == 1


@SQLITE_ONLY
def test_always_invalid_session_is_an_auth_error_after_one_renewal(stack: Stack, sf_url: str,
                                                                   secret_key: str) -> None:
    install(stack, sf_url)
    emulate(sf_url, always_invalid_session=True)
    before = state(sf_url)["tokens_issued"]
    stack.call("+13125550146", "no-answer")
    stack.drain(timeout=5, settle=0.1)  # the text's job waits behind the deferred one (same lead): never due
    assert state(sf_url)["tokens_issued"] - before <= 2  # one sign-in, one renewal, then AuthError
    with stack.factory() as session:
        assert connector_state.paused_until(session, BUSINESS, "salesforce") is not None
        alerts = session.scalars(select(Alert).where(Alert.connector_id == "salesforce")).all()
    assert [a.kind for a in alerts] == ["auth_failed"] and "INVALID_SESSION_ID twice" in alerts[0].message


# -- the connector on its own --------------------------------------------------------------------------
def test_always_invalid_session_does_not_loop(sf_url: str) -> None:
    sf = connector(cc_config(sf_url))
    emulate(sf_url, always_invalid_session=True)
    with pytest.raises(AuthError, match="INVALID_SESSION_ID twice"):
        sf.upsert_contact(ContactData(phone="+15550101111"), None)
    assert state(sf_url)["tokens_issued"] == 2 and sf.api_calls == 4  # 2 sign-ins + 2 REST calls


def test_expired_session_is_renewed_once_and_replayed(sf_url: str) -> None:
    sf = connector(cc_config(sf_url))
    first = sf.upsert_contact(ContactData(phone="+15550101112"), None)
    emulate(sf_url, expire_sessions=True)
    again = sf.upsert_contact(ContactData(phone="+15550101112"), None)
    assert (first.created, again.created, again.id) == (True, False, first.id)
    assert state(sf_url)["tokens_issued"] == 2


def test_several_records_sharing_the_phone_are_reported_not_guessed(sf_url: str) -> None:
    emulate(sf_url, external_id_fields={"Lead": {"field": "Phone_E164__c", "unique": False}})
    direct = Salesforce(consumer_key=SANDBOX["client_id"], consumer_secret=SANDBOX["client_secret"],
                        domain=SANDBOX["domain"], session=loopback_session(sf_url), version=VERSION)
    for name in ("One", "Two"):
        direct.Lead.create({"LastName": name, "Company": "X", "Phone_E164__c": "+15550102222"})
    sf = connector(cc_config(sf_url))
    with pytest.raises(Rejected, match=r"2 Salesforce records share this phone number.*merge them"):
        sf.upsert_contact(ContactData(phone="+15550102222"), None)
    assert len(state(sf_url)["Lead"]) == 2
    assert "not Unique" in "\n".join(sf.check().details)


@pytest.mark.parametrize("setting", ["org_lacks_field", "empty_setting"])
def test_without_the_external_id_field_a_phone_search_is_used_and_check_warns(sf_url: str, setting: str
                                                                               ) -> None:
    if setting == "org_lacks_field":
        emulate(sf_url, external_id_fields={"Lead": None, "Contact": None})
        sf = connector(cc_config(sf_url))
    else:
        sf = connector(cc_config(sf_url, external_id_field=""))
    result = sf.check()
    assert result.ok and "duplicates are possible" in "\n".join(result.details)
    first = sf.upsert_contact(ContactData(phone="+15550103333", first_name="Ada", last_name="Lovelace"), None)
    second = sf.upsert_contact(ContactData(phone="+15550103333"), None)
    assert (first.created, second.created, second.id) == (True, False, first.id)
    [lead] = state(sf_url)["Lead"]
    assert (lead["FirstName"], lead["LastName"], lead["Phone"]) == ("Ada", "Lovelace", "+1 555-010-3333")
    searches = [r for r in requests.get(f"{sf_url}/_emulator/requests", timeout=5).json()["requests"]
                if r["path"].endswith("/search/")]
    assert searches and "IN PHONE FIELDS" in unquote_plus(searches[0]["query"])


def test_known_people_are_matched_and_only_filled_in(sf_url: str) -> None:
    direct = Salesforce(consumer_key=SANDBOX["client_id"], consumer_secret=SANDBOX["client_secret"],
                        domain=SANDBOX["domain"], session=loopback_session(sf_url), version=VERSION)
    known = direct.Contact.create({"LastName": "Known", "Phone_E164__c": "+15550104444"})["id"]
    sf = connector(cc_config(sf_url))
    remote = sf.upsert_contact(ContactData(phone="+15550104444", first_name="Kim", last_name="Other",
                                           email="kim@example.com"), None)
    assert (remote.id, remote.created, remote.kind) == (known, False, "Contact")
    [contact] = state(sf_url)["Contact"]
    assert (contact["LastName"], contact["FirstName"], contact["Email"]) == ("Known", None, "kim@example.com")
    assert state(sf_url)["Lead"] == []  # a known Contact does not become a Lead too
    # A Contact entered by hand before textback (no external id) is found by its phone number.
    by_hand = direct.Contact.create({"LastName": "Before", "Phone": "(555) 010-4321"})["id"]
    assert sf.upsert_contact(ContactData(phone="+15550104321"), None).id == by_hand
    assert state(sf_url)["Lead"] == []
    # A Lead textback made gets the caller's name once it is known (its own placeholder only).
    lead = sf.upsert_contact(ContactData(phone="+15550105555"), None)
    sf.upsert_contact(ContactData(phone="+15550105555", first_name="Ada", last_name="Lovelace"), lead)
    [made] = state(sf_url)["Lead"]
    assert (made["FirstName"], made["LastName"]) == ("Ada", "Lovelace")


def test_activities_find_record_and_opt_out(sf_url: str) -> None:
    sf = connector(cc_config(sf_url))
    lead = sf.upsert_contact(ContactData(phone="+15550106666"), None)
    at = datetime(2030, 1, 2, 15, 0, tzinfo=UTC)
    missed = ActivityData(kind="call", at=at, body="Missed inbound call.", status="missed",
                          extra={"call_sid": "CA123"})
    call = sf.log_activity("tb-call", missed, lead, None, None)
    sf.log_activity("tb-call", ActivityData(kind="call", at=at, body="Missed.\nVoicemail: https://x/v.mp3",
                                            status="missed", duration_seconds=12), lead, None, call)
    sms = sf.log_activity("tb-sms", ActivityData(kind="sms", at=at, body="Hi, sorry we missed you",
                                                 direction="outbound", from_number="+15550100000",
                                                 to_number="+15550106666"), lead, None, None)
    task = sf.create_task("tb-task", TaskData(subject="Call back", body="Call them", due_at=at), lead, lead)
    tasks = by_id(state(sf_url)["Task"])
    assert tasks[call.id]["CallObject"] == "CA123" and tasks[call.id]["CallDurationInSeconds"] == 12
    assert "Voicemail: https://x/v.mp3" in tasks[call.id]["Description"]
    assert tasks[sms.id]["TaskSubtype"] == "Task" and "Hi, sorry" in tasks[sms.id]["Description"]
    assert tasks[task.id]["WhatId"] is None and tasks[task.id]["ActivityDate"] == "2030-01-02"
    found = sf.find_record("task", "tb-task")
    assert found is not None and found.id == task.id and sf.find_record("sms", "tb-nothing") is None
    assert call.url and call.url.endswith(f"/lightning/r/Task/{call.id}/view")
    sf.mark_opted_out(lead)
    sf.mark_opted_out(lead)
    assert [t["Subject"] for t in state(sf_url)["Task"]].count(mappers.OPT_OUT_SUBJECT) == 1
    deal = sf.upsert_deal("tb-deal", DealData(name="x", stage="Working - Contacted"), lead, None)
    assert deal.id == lead.id and state(sf_url)["Lead"][0]["Status"] == "Working - Contacted"


def test_request_limit_and_other_errors_map_to_the_taxonomy(sf_url: str) -> None:
    sf = connector(cc_config(sf_url))
    cases: list[tuple[int, str, type[Exception]]] = [
        (403, "REQUEST_LIMIT_EXCEEDED", RateLimited), (400, "UNABLE_TO_LOCK_ROW", TransientError),
        (403, "INSUFFICIENT_ACCESS", AuthError), (400, "DUPLICATES_DETECTED", Rejected),
        (404, "NOT_FOUND", Rejected), (403, "API_DISABLED_FOR_ORG", ConnectorConfigError)]
    for status, code, expected in cases:
        fault(sf_url, path="/services/data/", status=status, count=1,
              body=[{"message": f"{code} happened", "errorCode": code, "fields": []}])
        with pytest.raises(expected) as info:
            sf.upsert_contact(ContactData(phone="+15550107777"), None)
        assert code in str(info.value)
        if expected is RateLimited:
            assert isinstance(info.value, RateLimited) and info.value.retry_after == 900


def test_throttle_runs_before_every_request(sf_url: str) -> None:
    costs: list[int] = []
    sf = connector(cc_config(sf_url), throttle=lambda cost, *scopes: costs.append(cost))
    sent: list[str] = []
    sf._http.hooks["response"].append(lambda response, *args, **kwargs: sent.append(response.request.url))
    sf.upsert_contact(ContactData(phone="+15550108888"), None)
    assert costs == [1] * sf.api_calls and sf.api_calls == 4  # sign-in, lookup, phone search, upsert
    # The emulator's request log shows decoded paths; what went on the wire has the + encoded.
    assert sent[-1].endswith(f"/services/data/v{VERSION}/sobjects/Lead/Phone_E164__c/%2B15550108888")


@pytest.mark.parametrize("base", ["https://evil.example.com", "http://10.0.0.5:8080", "ftp://127.0.0.1"])
def test_api_base_url_must_be_loopback(base: str) -> None:
    with pytest.raises(ConnectorConfigError):
        connector(cc_config(base))


def test_jwt_bearer_sign_in(sf_url: str) -> None:
    private, public = pem_pair()
    emulate(sf_url, jwt_public_key=public)
    config = {"auth_kind": "jwt_bearer", "consumer_key": SANDBOX["client_id"],
              "username": SANDBOX["username"], "private_key": private.replace("\n", "\\n"),  # one YAML line
              "domain": "login", "api_base_url": sf_url}
    assert connector(config).upsert_contact(ContactData(phone="+15550109999"), None).created is True
    stranger, _ = pem_pair()
    with pytest.raises(AuthError, match="invalid_grant") as info:
        connector({**config, "private_key": stranger}).upsert_contact(ContactData(phone="+15550109999"), None)
    assert stranger not in str(info.value)


def test_legacy_password_works_and_check_warns(sf_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def soap_login(**kwargs: Any) -> tuple[str, str]:  # the emulator has no SOAP endpoint
        seen.update(kwargs)
        token = requests.post(f"{sf_url}/_emulator/token", timeout=5).json()["access_token"]
        return token, "textback-sandbox.my.salesforce.com"

    monkeypatch.setattr(sf_auth, "SalesforceLogin", soap_login)
    sf = connector({"auth_kind": "legacy_password", "username": SANDBOX["username"], "password": "pw",
                    "security_token": "tok", "api_version": "66.0", "api_base_url": sf_url})
    result = sf.check()
    assert result.ok and any("retiring" in d for d in result.details)
    assert seen["sf_version"] == "64.0" and seen["security_token"] == "tok"  # SOAP login ends at 64.0


@pytest.fixture
def token_store(db_url: str, monkeypatch: pytest.MonkeyPatch) -> TokenStore:
    monkeypatch.setenv(secrets.ENV_KEY, secrets.generate_key())
    engine = db.make_engine(db_url)
    migrate(engine)
    return TokenStore(db.session_factory(engine), secrets.SecretBox(), "acme", "salesforce")


def _refresh_token(url: str) -> str:
    redirect = requests.get(f"{url}/services/oauth2/authorize", allow_redirects=False, timeout=5, params={
        "response_type": "code", "client_id": SANDBOX["client_id"], "redirect_uri": SANDBOX["redirect_uri"]})
    code = redirect.headers["Location"].split("code=")[1].split("&")[0]
    granted = requests.post(f"{url}/services/oauth2/token", timeout=5, data={
        "grant_type": "authorization_code", "code": code, "client_id": SANDBOX["client_id"],
        "client_secret": SANDBOX["client_secret"], "redirect_uri": SANDBOX["redirect_uri"]}).json()
    return str(granted["refresh_token"])


def test_oauth_ten_workers_share_one_refresh(sf_url: str, token_store: TokenStore) -> None:
    config = {"auth_kind": "oauth", "client_id": SANDBOX["client_id"],
              "client_secret": SANDBOX["client_secret"], "refresh_token": _refresh_token(sf_url),
              "instance_url": SANDBOX["instance_url"],
              "api_base_url": sf_url}
    granted = state(sf_url)["tokens_issued"]

    def ten_workers(phone: str) -> None:
        barrier = threading.Barrier(10)

        def worker(_: int) -> None:
            sf = connector(config, token_store)
            barrier.wait(timeout=10)
            sf.upsert_contact(ContactData(phone=phone), None)

        with ThreadPoolExecutor(10) as pool:
            list(pool.map(worker, range(10)))

    ten_workers("+15550101234")
    assert state(sf_url)["tokens_issued"] == granted + 1  # one refresh for ten workers
    emulate(sf_url, expire_sessions=True)  # every issued session now answers INVALID_SESSION_ID
    ten_workers("+15550101235")
    assert state(sf_url)["tokens_issued"] == granted + 2  # exactly one more
    assert len(state(sf_url)["Lead"]) == 2
    emulate(sf_url, revoke=True, expire_sessions=True)
    with pytest.raises(AuthError, match=r"invalid_grant.*reconnect") as info:
        connector(config, token_store).upsert_contact(ContactData(phone="+15550101236"), None)
    assert config["refresh_token"] not in str(info.value)
