"""The Kore.ai simulator, checked with plain ``requests`` and PyJWT (never the provider's hook).

Run with ``pytest tests/test_simulator.py -p airflow_provider_kore.testing.pytest_plugin`` until
the package is installed (then the ``pytest11`` entry point loads the fixtures).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests

from airflow_provider_kore.testing import RATE_LIMIT_MESSAGE, KoreSimulator
from airflow_provider_kore.testing.__main__ import build_parser, main
from airflow_provider_kore.testing.simulator import DEFAULT_CLIENT_SECRET

# The simulator's default secret is shorter than PyJWT's recommended 32 bytes: signing warns.
# Short secrets on purpose; the warning class only exists in PyJWT >= 2.11, so match its text.
pytestmark = pytest.mark.filterwarnings("ignore:The HMAC key is .* bytes long")

ROOT = Path(__file__).resolve().parents[1]
ISO_MS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
INSTANCE_ID = re.compile(r"^cid-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
SMS = "cd-sms-welcome-0001"
VOICE = "cd-voice-renewal-0001"


def make_token(sim: KoreSimulator, *, secret: str | None = None, algorithm: str = "HS256", **claims: Any) -> str:
    now = int(time.time())
    payload: dict[str, Any] = {"appId": sim.client_id, "iat": now, "exp": now + 300, "jti": uuid.uuid4().hex}
    for key, value in claims.items():
        if value is None:
            payload.pop(key, None)
        else:
            payload[key] = value
    return jwt.encode(payload, sim.client_secret if secret is None else secret, algorithm=algorithm)


class Api:
    """Builds the four documented requests; every part can be overridden (None removes it)."""

    def __init__(self, sim: KoreSimulator, session: requests.Session | None = None) -> None:
        self.sim = sim
        self.http = session or requests.Session()
        self.token = make_token(sim)

    def headers(self, overrides: dict[str, str | None] | None = None) -> dict[str, str]:
        headers = {
            "auth": self.token,
            "iid": self.sim.stream_id,
            "accountId": self.sim.account_id,
            "Content-Type": "application/json",
        }
        for key, value in (overrides or {}).items():
            headers.pop(key, None)
            if value is not None:
                headers[key] = value
        return headers

    def call(
        self,
        operation: str,
        campaign_id: str = SMS,
        *,
        campaign_type: str = "sms",
        stream: str | None = None,
        query: dict[str, str | None] | None = None,
        headers: dict[str, str | None] | None = None,
        body: str | None = "{}",
        method: str | None = None,
        timeout: float = 10,
    ) -> requests.Response:
        s = stream or self.sim.stream_id
        account = self.sim.account_id
        base = f"/campaign/api/v2/public/{s}/campaign/{campaign_id}"
        if operation == "status":
            verb, path, params = "POST", f"{base}/status", {"accountId": account, "view": "status"}
        elif operation == "get":
            verb, path, params, body = "GET", base, {"accountId": account}, None
        elif operation == "start":
            verb, path, params = "POST", base, {"campaignType": campaign_type, "trigger": "play"}
        elif operation == "stop":
            verb = "POST"
            path = f"/api/v2/public/{s}/campaign/trigger/{campaign_id}"
            params = {"accountId": account, "campaignType": campaign_type, "trigger": "stop"}
        else:
            raise ValueError(operation)
        final: dict[str, str] = dict(params)
        for key, value in (query or {}).items():
            final.pop(key, None)
            if value is not None:
                final[key] = value
        return self.http.request(
            method or verb,
            self.sim.url + path,
            params=final,
            headers=self.headers(headers),
            data=body,
            timeout=timeout,
        )

    def status(self, campaign_id: str = SMS, **kw: Any) -> requests.Response:
        return self.call("status", campaign_id, **kw)

    def get(self, campaign_id: str = SMS, **kw: Any) -> requests.Response:
        return self.call("get", campaign_id, **kw)

    def start(self, campaign_id: str = SMS, **kw: Any) -> requests.Response:
        return self.call("start", campaign_id, **kw)

    def stop(self, campaign_id: str = SMS, **kw: Any) -> requests.Response:
        return self.call("stop", campaign_id, **kw)


@pytest.fixture
def api(kore_simulator: KoreSimulator) -> Iterator[Api]:
    client = Api(kore_simulator)
    yield client
    client.http.close()


def kore_error(response: requests.Response) -> tuple[int, str]:
    body = response.json()
    assert set(body) == {"errors"}
    assert len(body["errors"]) == 1
    error = body["errors"][0]
    assert error["code"] == response.status_code
    return response.status_code, error["msg"]


# ---------------------------------------------------------------------------------------------
# Documented shapes.


def test_default_campaigns_are_seeded_ready(kore_simulator: KoreSimulator) -> None:
    assert kore_simulator.campaign_ids == ["cd-sms-welcome-0001", "cd-voice-renewal-0001", "cd-sms-followup-0002"]
    for campaign_id in kore_simulator.campaign_ids:
        assert kore_simulator.status_of(campaign_id) == "Ready"
    assert kore_simulator.campaign_info(VOICE)["campaign_type"] == "voice"
    assert kore_simulator.campaign_info("cd-sms-followup-0002")["campaign_type"] == "sms"


def test_campaign_status_shape(api: Api) -> None:
    response = api.status()
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json() == {
        "status": "success",
        "data": {"id": SMS, "status": "Ready", "name": "Welcome SMS Campaign"},
    }


def test_campaign_status_view_is_optional(api: Api) -> None:
    response = api.status(query={"view": None})
    assert response.status_code == 200
    assert response.json()["data"]["status"] == "Ready"


def test_get_campaign_shape(api: Api) -> None:
    response = api.get(VOICE)
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"status", "message", "data"}
    assert body["status"] == "success"
    assert body["message"] == "Campaign Policy Renewal Voice Campaign retrieved successfully"
    data = body["data"]
    for key in (
        "_id",
        "name",
        "lname",
        "description",
        "dncLists",
        "priority",
        "dialingMode",
        "dialingStrategy",
        "experienceFlow",
        "status",
        "createdAt",
        "updatedAt",
        "schedule",
        "contactLists",
    ):
        assert key in data, key
    assert data["_id"] == VOICE
    assert data["lname"] == data["name"].lower()
    assert data["status"] == "Ready"
    assert set(data["dncLists"]) == {"id", "name"}
    assert "callerId" in data["dialingStrategy"]
    hours = data["dialingStrategy"]["callingHours"]
    assert {"frequency", "timezone", "days"} <= set(hours)
    assert hours["days"]
    assert all(set(day) == {"start", "end", "day"} for day in hours["days"])
    assert data["schedule"] == {"isSchedulingEnabled": False, "isRecurrenceEnabled": False}
    assert isinstance(data["contactLists"], list)
    assert ISO_MS.match(data["createdAt"])
    assert ISO_MS.match(data["updatedAt"])


def test_start_campaign_shape_without_account_query(api: Api) -> None:
    response = api.start()
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"status", "message", "updatedAt"}
    assert body["status"] == "Active"
    assert body["message"] == "Campaign Started"
    assert ISO_MS.match(body["updatedAt"])
    record = api.sim.requests[-1]
    assert record.path == f"/campaign/api/v2/public/{api.sim.stream_id}/campaign/{SMS}"
    assert record.query == {"campaignType": "sms", "trigger": "play"}
    assert api.sim.status_of(SMS) == "Active"


def test_start_voice_campaign(api: Api) -> None:
    response = api.start(VOICE, campaign_type="voice")
    assert response.status_code == 200
    assert response.json()["status"] == "Active"


def test_start_accepts_a_matching_account_query(api: Api) -> None:
    assert api.start(query={"accountId": api.sim.account_id}).status_code == 200


def test_stop_campaign_shape_and_path(api: Api) -> None:
    api.start(VOICE, campaign_type="voice")
    response = api.stop(VOICE, campaign_type="voice")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"status", "message", "updatedAt", "campaignInstanceId"}
    assert body["status"] == "Stopped"
    assert body["message"] == "Campaign Stopped"
    assert ISO_MS.match(body["updatedAt"])
    assert INSTANCE_ID.match(body["campaignInstanceId"])
    assert body["campaignInstanceId"] == api.sim.campaign_info(VOICE)["campaign_instance_id"]
    assert api.sim.requests[-1].path == f"/api/v2/public/{api.sim.stream_id}/campaign/trigger/{VOICE}"
    assert api.sim.status_of(VOICE) == "Stopped"


def test_stop_path_with_a_leading_campaign_segment_is_not_a_route(api: Api) -> None:
    api.start()
    url = f"{api.sim.url}/campaign/api/v2/public/{api.sim.stream_id}/campaign/trigger/{SMS}"
    params = {"accountId": api.sim.account_id, "campaignType": "sms", "trigger": "stop"}
    response = requests.post(url, params=params, headers=api.headers(), data="{}", timeout=5)
    assert kore_error(response) == (404, "Route not found")
    assert api.sim.status_of(SMS) == "Active"


# ---------------------------------------------------------------------------------------------
# Validation, in the documented order.


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/campaign/api/v2/public/st-sim-0001/campaigns",
        "/campaign/api/v1/public/st-sim-0001/campaign/cd-sms-welcome-0001",
        "/campaign/api/v2/public/st-sim-0001/campaign/cd-sms-welcome-0001/status/extra",
        "/api/v2/public/st-sim-0001/campaign/trigger",
    ],
)
def test_unknown_route_is_404(api: Api, path: str) -> None:
    response = requests.post(api.sim.url + path, headers=api.headers(), data="{}", timeout=5)
    assert response.json() == {"errors": [{"msg": "Route not found", "code": 404}]}
    assert response.status_code == 404
    assert api.sim.requests[-1].operation is None


@pytest.mark.parametrize(
    ("method", "operation"),
    [("GET", "status"), ("PUT", "get"), ("DELETE", "start"), ("GET", "stop"), ("PATCH", "stop")],
)
def test_wrong_method_on_a_known_path_is_405(api: Api, method: str, operation: str) -> None:
    response = api.call(operation, method=method)
    assert response.status_code == 405
    assert kore_error(response)[0] == 405
    assert "POST" in response.headers["Allow"]


def test_head_is_refused_without_a_body(api: Api) -> None:
    response = api.http.head(f"{api.sim.url}/campaign/api/v2/public/{api.sim.stream_id}/campaign/{SMS}", timeout=5)
    assert response.status_code == 405
    assert response.content == b""
    # The keep-alive connection is still usable after a body-less answer.
    assert api.status().status_code == 200


@pytest.mark.parametrize("operation", ["status", "get", "start", "stop"])
def test_missing_auth_is_401(api: Api, operation: str) -> None:
    status, msg = kore_error(api.call(operation, headers={"auth": None}))
    assert status == 401
    assert "auth" in msg


@pytest.mark.parametrize(
    "kind",
    ["wrong secret", "expired", "wrong appId", "no appId", "no exp", "alg none", "garbage", "issued in the future"],
)
def test_bad_token_is_401_and_never_echoed(api: Api, kind: str) -> None:
    sim = api.sim
    now = int(time.time())
    if kind == "wrong secret":
        token = make_token(sim, secret="not-the-secret-not-the-secret-0123")
    elif kind == "expired":
        token = make_token(sim, iat=now - 600, exp=now - 300)
    elif kind == "wrong appId":
        token = make_token(sim, appId="someone-else")
    elif kind == "no appId":
        token = make_token(sim, appId=None)
    elif kind == "no exp":
        token = make_token(sim, exp=None)
    elif kind == "alg none":
        token = jwt.encode({"appId": sim.client_id, "iat": now, "exp": now + 300}, "", algorithm="none")
    elif kind == "issued in the future":
        token = make_token(sim, iat=now + 3600, exp=now + 7200)
    else:
        token = "not.a.jwt"
    response = api.status(headers={"auth": token})
    assert kore_error(response) == (401, "Invalid or expired token")
    assert token not in response.text
    assert api.sim.status_of(SMS) == "Ready"


def test_hs512_tokens_are_accepted(api: Api) -> None:
    token = make_token(api.sim, algorithm="HS512")
    assert api.status(headers={"auth": token}).status_code == 200


def test_token_is_verified_once_but_expiry_is_checked_every_time(api: Api) -> None:
    sim = api.sim
    calls = []
    real_decode = sim._jws.decode

    def counting_decode(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real_decode(*args, **kwargs)

    sim._jws.decode = counting_decode  # type: ignore[method-assign]
    now = int(time.time())
    token = make_token(sim, iat=now, exp=now + 2)
    for _ in range(5):
        assert api.status(headers={"auth": token}).status_code == 200
    assert len(calls) == 1
    time.sleep(max(0.0, now + 2 - time.time()) + 0.05)
    assert kore_error(api.status(headers={"auth": token})) == (401, "Invalid or expired token")
    assert len(calls) == 1


@pytest.mark.parametrize("operation", ["status", "get", "start", "stop"])
def test_missing_iid_is_400_naming_it(api: Api, operation: str) -> None:
    status, msg = kore_error(api.call(operation, headers={"iid": None}))
    assert status == 400
    assert "iid" in msg


@pytest.mark.parametrize("operation", ["status", "get", "start", "stop"])
def test_missing_account_header_is_400_naming_it(api: Api, operation: str) -> None:
    status, msg = kore_error(api.call(operation, headers={"accountId": None}))
    assert status == 400
    assert "accountId" in msg


def test_header_names_are_case_insensitive(api: Api) -> None:
    headers = {"accountId": None, "auth": None, "iid": None, "accountid": api.sim.account_id}
    headers.update({"AUTH": api.token, "IID": api.sim.stream_id})
    assert api.status(headers=headers).status_code == 200


@pytest.mark.parametrize("operation", ["status", "get", "start", "stop"])
def test_wrong_account_header_is_refused(api: Api, operation: str) -> None:
    status, msg = kore_error(api.call(operation, headers={"accountId": "another-account"}))
    assert status == 403
    assert "accountId" in msg


@pytest.mark.parametrize("operation", ["status", "get", "stop", "start"])
def test_wrong_account_query_is_refused(api: Api, operation: str) -> None:
    status, msg = kore_error(api.call(operation, query={"accountId": "another-account"}))
    assert status == 403
    assert "accountId" in msg


@pytest.mark.parametrize("operation", ["status", "get", "stop"])
def test_missing_account_query_is_400_where_documented(api: Api, operation: str) -> None:
    status, msg = kore_error(api.call(operation, query={"accountId": None}))
    assert status == 400
    assert "accountId" in msg


def test_view_other_than_status_or_contacts_is_400(api: Api) -> None:
    status, msg = kore_error(api.status(query={"view": "everything"}))
    assert status == 400
    assert "view" in msg


@pytest.mark.parametrize("operation", ["start", "stop"])
@pytest.mark.parametrize(
    ("query", "word"),
    [
        ({"campaignType": None}, "campaignType"),
        ({"campaignType": "email"}, "campaignType"),
        ({"campaignType": "SMS"}, "campaignType"),
        ({"trigger": None}, "trigger"),
        ({"trigger": "pause"}, "trigger"),
    ],
)
def test_bad_start_or_stop_query_is_400(api: Api, operation: str, query: dict[str, str | None], word: str) -> None:
    if operation == "stop":
        api.sim.set_status(SMS, "Active")
    status, msg = kore_error(api.call(operation, query=query))
    assert status == 400
    assert word in msg


def test_trigger_must_match_its_route(api: Api) -> None:
    assert kore_error(api.start(query={"trigger": "stop"}))[0] == 400
    api.sim.set_status(SMS, "Active")
    assert kore_error(api.stop(query={"trigger": "play"}))[0] == 400
    assert api.sim.status_of(SMS) == "Active"


@pytest.mark.parametrize("operation", ["status", "start", "stop"])
@pytest.mark.parametrize("body", ["", "[]", "null", "not json", '"{}"'])
def test_post_body_must_be_a_json_object(api: Api, operation: str, body: str) -> None:
    status, msg = kore_error(api.call(operation, body=body))
    assert status == 400
    assert "JSON object" in msg


def test_get_ignores_a_missing_body(api: Api) -> None:
    assert api.get(body=None).status_code == 200


@pytest.mark.parametrize("operation", ["status", "get", "start", "stop"])
def test_unknown_stream_is_404(api: Api, operation: str) -> None:
    status, _ = kore_error(api.call(operation, stream="st-someone-else"))
    assert status == 404


@pytest.mark.parametrize("operation", ["status", "get", "start", "stop"])
def test_unknown_campaign_is_404(api: Api, operation: str) -> None:
    assert kore_error(api.call(operation, "cd-no-such-campaign")) == (404, "Campaign not found")


@pytest.mark.parametrize("operation", ["start", "stop"])
def test_campaign_type_must_match_the_campaign(api: Api, operation: str) -> None:
    api.sim.set_status(VOICE, "Active")
    status, msg = kore_error(api.call(operation, VOICE, campaign_type="sms"))
    assert status == 400
    assert "campaignType" in msg
    assert api.sim.status_of(VOICE) == "Active"


def test_validation_order(api: Api) -> None:
    # Auth comes before everything else about the request ...
    response = api.start("cd-no-such", stream="st-other", headers={"auth": None, "iid": None})
    assert kore_error(response)[0] == 401
    # ... then headers, then the account, then the query, then the body, then the path ids.
    assert "iid" in kore_error(api.start("cd-no-such", headers={"iid": None, "accountId": "x"}))[1]
    assert kore_error(api.start("cd-no-such", stream="st-other", headers={"accountId": "x"}))[0] == 403
    assert "campaignType" in kore_error(api.start("cd-no-such", stream="st-other", query={"campaignType": "x"}))[1]
    assert "JSON" in kore_error(api.start("cd-no-such", stream="st-other", body="[]"))[1]
    assert kore_error(api.start("cd-no-such", stream="st-other"))[1] != "Campaign not found"
    assert kore_error(api.start("cd-no-such")) == (404, "Campaign not found")


# ---------------------------------------------------------------------------------------------
# State.


def test_start_then_completed_after_n_status_reads(api: Api) -> None:
    assert api.start().json()["status"] == "Active"
    assert api.get().json()["data"]["status"] == "Active"  # get is not a poll
    assert api.status().json()["data"]["status"] == "Active"
    assert api.status().json()["data"]["status"] == "Active"
    assert api.get().json()["data"]["status"] == "Active"
    assert api.status().json()["data"]["status"] == "Completed"
    assert api.get().json()["data"]["status"] == "Completed"
    assert api.sim.status_of(SMS) == "Completed"
    assert api.sim.campaign_info(SMS)["polls"] == 3


def test_status_reads_before_start_do_not_count(api: Api) -> None:
    for _ in range(5):
        assert api.status().json()["data"]["status"] == "Ready"
    api.start()
    assert api.status().json()["data"]["status"] == "Active"


def test_complete_after_polls_none_keeps_it_active() -> None:
    with KoreSimulator(complete_after_polls=None) as sim:
        api = Api(sim)
        api.start()
        for _ in range(10):
            assert api.status().json()["data"]["status"] == "Active"


def test_complete_after_seconds() -> None:
    with KoreSimulator(complete_after_polls=None, complete_after_seconds=0.3) as sim:
        api = Api(sim)
        api.start()
        assert api.status().json()["data"]["status"] == "Active"
        time.sleep(0.35)
        assert api.get().json()["data"]["status"] == "Completed"
        assert sim.status_of(SMS) == "Completed"


def test_per_campaign_completion_overrides(kore_simulator: KoreSimulator) -> None:
    kore_simulator.add_campaign("cd-quick", complete_after_polls=1)
    kore_simulator.add_campaign("cd-forever", campaign_type="voice", complete_after_polls=None)
    api = Api(kore_simulator)
    api.start("cd-quick")
    assert api.status("cd-quick").json()["data"]["status"] == "Completed"
    api.start("cd-forever", campaign_type="voice")
    for _ in range(5):
        assert api.status("cd-forever").json()["data"]["status"] == "Active"
    # The simulator-wide default is read at check time.
    api.start()
    kore_simulator.complete_after_polls = 1
    assert api.status().json()["data"]["status"] == "Completed"


def test_start_twice_is_400(api: Api) -> None:
    assert api.start().status_code == 200
    assert kore_error(api.start()) == (400, "Campaign is already active")
    assert api.sim.campaign_info(SMS)["runs"] == 1


def test_stop_twice_is_400(api: Api) -> None:
    api.start()
    assert api.stop().json()["status"] == "Stopped"
    assert kore_error(api.stop()) == (400, "Campaign is not active")


@pytest.mark.parametrize("status", ["Ready", "Completed", "Stopped"])
def test_stop_when_not_active_is_400(api: Api, status: str) -> None:
    api.sim.set_status(SMS, status)
    assert kore_error(api.stop()) == (400, "Campaign is not active")
    assert api.sim.status_of(SMS) == status


@pytest.mark.parametrize("status", ["Paused", "Scheduled", "Active"])
def test_stop_from_paused_scheduled_or_active(api: Api, status: str) -> None:
    api.sim.set_status(SMS, status)
    response = api.stop()
    assert response.status_code == 200
    assert INSTANCE_ID.match(response.json()["campaignInstanceId"])
    assert api.sim.status_of(SMS) == "Stopped"


@pytest.mark.parametrize("previous", ["Completed", "Stopped"])
def test_start_again_after_a_run_ends_is_a_new_run(api: Api, previous: str) -> None:
    api.start()
    first = api.sim.campaign_info(SMS)["campaign_instance_id"]
    api.sim.set_status(SMS, previous)
    response = api.start()
    assert response.status_code == 200
    assert response.json()["status"] == "Active"
    info = api.sim.campaign_info(SMS)
    assert info["runs"] == 2
    assert info["polls"] == 0
    assert info["campaign_instance_id"] != first


def test_set_status_and_status_of(kore_simulator: KoreSimulator) -> None:
    kore_simulator.set_status(SMS, "Failed")
    assert kore_simulator.status_of(SMS) == "Failed"
    assert Api(kore_simulator).status().json()["data"]["status"] == "Failed"
    with pytest.raises(KeyError):
        kore_simulator.status_of("cd-nope")
    with pytest.raises(KeyError):
        kore_simulator.set_status("cd-nope", "Ready")
    with pytest.raises(ValueError):
        kore_simulator.set_status(SMS, "")


def test_seeding_variants() -> None:
    assert KoreSimulator(campaigns=[]).campaign_ids == []
    sim = KoreSimulator(campaigns=["a", {"campaign_id": "b", "campaign_type": "voice", "status": "Active"}])
    assert sim.campaign_ids == ["a", "b"]
    assert sim.campaign_info("b")["campaign_type"] == "voice"
    assert sim.status_of("b") == "Active"
    sim = KoreSimulator(campaigns={"x": "voice", "y": {"name": "Why", "status": "Paused"}})
    assert sim.campaign_info("x")["campaign_type"] == "voice"
    assert sim.campaign_info("y")["name"] == "Why"
    assert sim.status_of("y") == "Paused"
    with pytest.raises(ValueError):
        KoreSimulator(campaigns={"z": "email"})


# ---------------------------------------------------------------------------------------------
# Faults.


def test_fault_status_with_retry_after_replaces_the_operation(api: Api) -> None:
    api.sim.inject_fault("start_campaign", status=503, retry_after=7, times=2)
    for _ in range(2):
        response = api.start()
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "7"
        assert kore_error(response)[0] == 503
        assert api.sim.status_of(SMS) == "Ready"
    assert api.sim.pending_faults == 0
    response = api.start()
    assert response.status_code == 200
    assert "Retry-After" not in response.headers


def test_fault_default_status_is_503(api: Api) -> None:
    api.sim.inject_fault("get_campaign_status")
    assert api.status().status_code == 503
    assert api.status().status_code == 200


def test_faults_are_consumed_in_order_and_match_their_operation(api: Api) -> None:
    api.sim.inject_fault("get_campaign_status", status=500)
    api.sim.inject_fault("get_campaign_status", status=502)
    api.sim.inject_fault("get_campaign", status=504)
    assert api.get().status_code == 504
    assert api.status().status_code == 500
    assert api.status().status_code == 502
    assert api.status().status_code == 200
    assert api.get().status_code == 200


def test_wildcard_fault(api: Api) -> None:
    api.sim.inject_fault("*", status=500, times=2)
    assert api.get().status_code == 500
    assert api.stop().status_code == 500
    assert api.get().status_code == 200


def test_unlimited_fault_until_cleared(api: Api) -> None:
    api.sim.inject_fault("get_campaign", status=502, times=None)
    for _ in range(4):
        assert api.get().status_code == 502
    assert api.sim.pending_faults == 1
    api.sim.clear_faults()
    assert api.sim.pending_faults == 0
    assert api.get().status_code == 200


def test_fault_401_is_a_rejected_token(api: Api) -> None:
    api.sim.inject_fault("get_campaign_status", status=401)
    assert kore_error(api.status()) == (401, "Invalid or expired token")


def test_fault_429_is_kores_rate_limit_answer(api: Api) -> None:
    api.sim.inject_fault("get_campaign_status", status=429)
    response = api.status()
    assert kore_error(response) == (429, RATE_LIMIT_MESSAGE)
    assert "Retry-After" not in response.headers


def test_fault_non_json(api: Api) -> None:
    api.sim.inject_fault("get_campaign_status", non_json=True)
    api.sim.inject_fault("get_campaign", non_json=True, status=502)
    response = api.status()
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    assert response.text.startswith("<html>")
    with pytest.raises(ValueError):
        response.json()
    response = api.get()
    assert response.status_code == 502
    assert response.headers["Content-Type"].startswith("text/html")


def test_fault_custom_body(api: Api) -> None:
    api.sim.inject_fault("get_campaign_status", status=200, body={"status": "success", "data": {}})
    api.sim.inject_fault("get_campaign_status", status=500, body="plain text")
    assert api.status().json() == {"status": "success", "data": {}}
    assert api.status().text == "plain text"


def test_fault_delay_applies_the_operation_and_answers_late(api: Api) -> None:
    api.sim.inject_fault("start_campaign", delay=1.0)
    with pytest.raises(requests.exceptions.ReadTimeout):
        api.start(timeout=0.3)
    # The start happened although the client gave up waiting.
    assert api.sim.status_of(SMS) == "Active"
    assert api.sim.count("start_campaign", status_code=200) == 1
    # With a patient client the normal answer arrives, late.
    api.sim.inject_fault("get_campaign_status", delay=0.5)
    started = time.monotonic()
    response = Api(api.sim).status()
    assert time.monotonic() - started >= 0.5
    assert response.status_code == 200
    assert response.json()["data"]["status"] == "Active"


def test_fault_delay_with_status(api: Api) -> None:
    api.sim.inject_fault("get_campaign", status=504, delay=0.3)
    started = time.monotonic()
    assert api.get().status_code == 504
    assert time.monotonic() - started >= 0.3


def test_fault_apply_operation(api: Api) -> None:
    api.sim.inject_fault("start_campaign", status=502, apply_operation=True)
    assert api.start().status_code == 502
    assert api.sim.status_of(SMS) == "Active"


def test_fault_arguments_are_checked(kore_simulator: KoreSimulator) -> None:
    with pytest.raises(ValueError):
        kore_simulator.inject_fault("launch_rocket")
    with pytest.raises(ValueError):
        kore_simulator.inject_fault("get_campaign", times=0)
    with pytest.raises(ValueError):
        kore_simulator.inject_fault("get_campaign", status=99)


# ---------------------------------------------------------------------------------------------
# Rate limit.


def test_rate_limit_rolling_window(kore_simulator: KoreSimulator) -> None:
    sim = kore_simulator
    api = Api(sim)
    sim.set_rate_limit(3, 0.6)
    assert sim.rate_limit == (3, 0.6)
    first = time.monotonic()
    for _ in range(3):
        assert api.status().status_code == 200
    time.sleep(0.3)
    response = api.status()
    assert response.status_code == 429
    assert response.json() == {"errors": [{"msg": RATE_LIMIT_MESSAGE, "code": 429}]}
    assert "Retry-After" not in response.headers
    assert sim.count(status_code=429) == 1
    assert sim.requests[-1].operation == "get_campaign_status"
    # Once the first requests leave the rolling window, requests are served again.
    time.sleep(max(0.0, first + 0.65 - time.monotonic()))
    assert api.status().status_code == 200
    sim.set_rate_limit(None)
    assert sim.rate_limit is None
    for _ in range(10):
        assert api.status().status_code == 200


def test_rate_limit_counts_every_route() -> None:
    with KoreSimulator(rate_limit=(2, 30)) as sim:
        api = Api(sim)
        assert requests.get(sim.url + "/nowhere", timeout=5).status_code == 404
        assert api.get().status_code == 200
        assert api.start().status_code == 429
        assert sim.status_of(SMS) == "Ready"


def test_rate_limit_arguments_are_checked(kore_simulator: KoreSimulator) -> None:
    with pytest.raises(ValueError):
        kore_simulator.set_rate_limit(0, 1)
    with pytest.raises(ValueError):
        kore_simulator.set_rate_limit(5)


# ---------------------------------------------------------------------------------------------
# Request log and connections.


def test_request_log_records(api: Api) -> None:
    before = time.monotonic()
    api.status()
    api.start(headers={"auth": None})
    requests.get(api.sim.url + "/nowhere?x=1", timeout=5)
    log = list(api.sim.requests)
    assert len(log) == 3
    first, second, third = log
    assert before <= first.time <= second.time <= third.time <= time.monotonic()
    assert first.method == "POST"
    assert first.path == f"/campaign/api/v2/public/{api.sim.stream_id}/campaign/{SMS}/status"
    assert first.query == {"accountId": api.sim.account_id, "view": "status"}
    assert first.headers["auth"] == api.token
    assert first.headers["accountid"] == api.sim.account_id
    assert first.headers["iid"] == api.sim.stream_id
    assert first.body == "{}"
    assert first.operation == "get_campaign_status"
    assert first.campaign_id == SMS
    assert first.status_code == 200
    assert second.operation == "start_campaign"
    assert second.status_code == 401
    assert "auth" not in second.headers
    assert third.operation is None
    assert third.campaign_id is None
    assert third.query == {"x": "1"}
    assert third.status_code == 404
    assert api.token not in repr(first)
    assert api.sim.count() == 3
    assert api.sim.count("start_campaign") == 1
    assert api.sim.count(status_code=200) == 1
    assert api.sim.count("get_campaign_status", 200) == 1
    api.sim.reset_log()
    assert len(api.sim.requests) == 0
    assert api.sim.count() == 0


def test_keep_alive_reuses_one_connection(kore_simulator: KoreSimulator) -> None:
    with requests.Session() as session:
        api = Api(kore_simulator, session)
        for i in range(20):
            call = ("status", "get", "status", "get")[i % 4]
            assert api.call(call).status_code == 200
        api.start()
        api.stop()
        assert api.start().status_code == 200
    assert len(kore_simulator.requests) == 23
    assert kore_simulator.connections_opened == 1


def test_keep_alive_survives_error_answers(kore_simulator: KoreSimulator) -> None:
    with requests.Session() as session:
        api = Api(kore_simulator, session)
        kore_simulator.inject_fault("get_campaign", status=503, delay=0.05)
        kore_simulator.inject_fault("get_campaign", non_json=True)
        assert api.get().status_code == 503
        assert api.get().status_code == 200
        assert api.status(body="not json").status_code == 400
        assert api.status(headers={"auth": "bad"}).status_code == 401
        assert session.get(kore_simulator.url + "/nope", timeout=5).status_code == 404
        assert api.status().status_code == 200
    assert kore_simulator.connections_opened == 1


def test_concurrent_status_polls() -> None:
    aiohttp = pytest.importorskip("aiohttp")

    with KoreSimulator() as sim:
        api = Api(sim)
        url = f"{sim.url}/campaign/api/v2/public/{sim.stream_id}/campaign/{SMS}/status"
        params = {"accountId": sim.account_id, "view": "status"}
        headers = api.headers()

        async def poll_all(n: int) -> list[int]:
            connector = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=connector) as session:

                async def one() -> int:
                    async with session.post(url, params=params, headers=headers, data="{}") as response:
                        await response.read()
                        return int(response.status)

                return await asyncio.gather(*(one() for _ in range(n)))

        started = time.monotonic()
        statuses = asyncio.run(poll_all(1000))
        elapsed = time.monotonic() - started
        assert statuses == [200] * 1000
        assert sim.count("get_campaign_status", 200) == 1000
        assert elapsed < 20, f"1,000 concurrent status polls took {elapsed:.1f}s"


# ---------------------------------------------------------------------------------------------
# Lifecycle and binding.


def test_binds_to_loopback_only(kore_simulator: KoreSimulator) -> None:
    host, port = kore_simulator.server_address
    assert host == "127.0.0.1"
    assert kore_simulator.url == f"http://127.0.0.1:{port}"
    with pytest.raises(ValueError, match=r"127\.0\.0\.1"):
        KoreSimulator(host="0.0.0.0")
    with pytest.raises(ValueError, match=r"127\.0\.0\.1"):
        KoreSimulator(host="localhost")
    # If this machine has a non-loopback address, nothing answers on it.
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.1", 9))  # TEST-NET-1, no packet is sent
        outside = probe.getsockname()[0]
    except OSError:
        outside = "127.0.0.1"
    finally:
        probe.close()
    if not outside.startswith("127."):
        with pytest.raises(OSError), socket.create_connection((outside, port), timeout=2):
            pass


def test_port_zero_picks_a_free_port_and_lifecycle() -> None:
    sim = KoreSimulator()
    with pytest.raises(RuntimeError):
        _ = sim.url
    assert not sim.running
    sim.start()
    try:
        assert sim.running
        assert sim.port > 0
        assert sim.start() is sim  # idempotent while running
        session = requests.Session()
        assert Api(sim, session).status().status_code == 200
    finally:
        sim.stop()
    assert not sim.running
    with pytest.raises(requests.exceptions.ConnectionError):
        Api(sim, session).status(timeout=2)
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(sim.url, timeout=2)
    with pytest.raises(RuntimeError):
        sim.start()
    sim.stop()  # stopping twice is harmless


def test_fixed_port() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    with KoreSimulator(port=free) as sim:
        assert sim.url == f"http://127.0.0.1:{free}"
        assert Api(sim).status().status_code == 200


def test_stop_wakes_a_delayed_answer() -> None:
    sim = KoreSimulator()
    sim.start()
    sim.inject_fault("get_campaign", delay=30)
    started = time.monotonic()
    result: list[object] = []

    def call() -> None:
        try:
            result.append(Api(sim).get(timeout=10).status_code)
        except requests.RequestException as exc:
            result.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    time.sleep(0.3)
    sim.stop()
    thread.join(10)
    assert not thread.is_alive()
    assert time.monotonic() - started < 10


# ---------------------------------------------------------------------------------------------
# Airflow connection helpers and fixtures.


def _conn_from_json(text: str, conn_id: str) -> Any:
    """Parse as a worker would: the SDK's Connection, or the model's on 3.0 (whose SDK class can't)."""
    from airflow.sdk import Connection

    if hasattr(Connection, "from_json"):
        return Connection.from_json(text, conn_id=conn_id)
    from airflow.models.connection import Connection as ModelConnection

    return ModelConnection.from_json(text, conn_id=conn_id)


def _conn_from_uri(uri: str, conn_id: str) -> Any:
    from airflow.sdk import Connection

    if hasattr(Connection, "from_uri"):
        return Connection.from_uri(uri, conn_id=conn_id)
    from airflow.models.connection import Connection as ModelConnection

    return ModelConnection(conn_id=conn_id, uri=uri)


def test_conn_extra(kore_simulator: KoreSimulator) -> None:
    assert kore_simulator.conn_extra() == {"account_id": "sim-account-0001", "stream_id": "st-sim-0001"}


def test_airflow_conn_json_parses(kore_simulator: KoreSimulator) -> None:
    text = kore_simulator.airflow_conn_json(timeout=5, iid="st-app")
    raw = json.loads(text)
    assert raw["conn_type"] == "kore"
    conn = _conn_from_json(text, conn_id="kore_default")
    assert conn.conn_type == "kore"
    assert conn.host == kore_simulator.url
    assert conn.login == "kore-sim-client"
    assert conn.password == DEFAULT_CLIENT_SECRET
    assert len(DEFAULT_CLIENT_SECRET.encode()) >= 64  # a full-length HS512 key
    assert conn.extra_dejson == {
        "account_id": "sim-account-0001",
        "stream_id": "st-sim-0001",
        "timeout": 5,
        "iid": "st-app",
    }


@pytest.mark.parametrize("loader", ["sdk", "models"])
def test_airflow_conn_uri_parses(loader: str) -> None:
    secret = "s3cr:t/with@odd?chars#&=+ and spaces-0123456789"
    with KoreSimulator(client_id="cs-id:with@chars", client_secret=secret) as sim:
        uri = sim.airflow_conn_uri()
        assert uri.startswith("kore://")
        if loader == "sdk":
            conn = _conn_from_uri(uri, conn_id="kore_default")
        else:
            from airflow.models.connection import Connection as ModelConnection

            conn = ModelConnection(conn_id="kore_default", uri=uri)
        assert conn.conn_type == "kore"
        assert conn.host == "127.0.0.1"
        assert conn.port == sim.port
        assert conn.schema == "http"
        assert conn.login == "cs-id:with@chars"
        assert conn.password == secret
        assert conn.extra_dejson == {"account_id": sim.account_id, "stream_id": sim.stream_id}
        # host + schema + port give back the simulator's URL.
        assert f"{conn.schema}://{conn.host}:{conn.port}" == sim.url


def test_airflow_conn_uri_with_non_string_extras(kore_simulator: KoreSimulator) -> None:
    conn = _conn_from_uri(kore_simulator.airflow_conn_uri(timeout=2.5, verify=False), conn_id="k")
    assert conn.extra_dejson == {
        "account_id": kore_simulator.account_id,
        "stream_id": kore_simulator.stream_id,
        "timeout": 2.5,
        "verify": False,
    }


def test_kore_connection_fixture(kore_connection: KoreSimulator) -> None:
    value = os.environ["AIRFLOW_CONN_KORE_DEFAULT"]
    assert value == kore_connection.airflow_conn_json()
    conn = _conn_from_json(value, conn_id="kore_default")
    assert conn.host == kore_connection.url
    assert kore_connection.running


# ---------------------------------------------------------------------------------------------
# The command line.


def test_cli_parser() -> None:
    args = build_parser().parse_args(
        ["--campaign", "a", "--campaign", "b:voice:Paused", "--rate-limit", "600/60", "--complete-after-polls", "none"]
    )
    assert args.port == 8765
    assert args.campaign == [{"campaign_id": "a"}, {"campaign_id": "b", "campaign_type": "voice", "status": "Paused"}]
    assert args.rate_limit == (600, 60.0)
    assert args.complete_after_polls is None
    for bad in (["--campaign", "x:email"], ["--rate-limit", "10"], ["--rate-limit", "0/5"]):
        with pytest.raises(SystemExit):
            main(bad)


class _Cli:
    """The CLI as a subprocess, its output collected line by line by a reader thread."""

    def __init__(self, *args: str) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "airflow_provider_kore.testing", "--port", "0", *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def url(self, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", self.output)
            if match:
                return match.group(1)
            time.sleep(0.05)
        raise AssertionError(f"the CLI did not start: {self.output}")

    def finish(self, sig: int, timeout: float = 20) -> int:
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._reader.join(5)
            if self.proc.stdout is not None:
                self.proc.stdout.close()
        return code


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_cli_serves_and_stops_cleanly(sig: signal.Signals) -> None:
    secret = "cli-secret-0123456789abcdef0123456789"
    cli = _Cli("--campaign", "cd-cli-0001:voice", "--client-secret", secret, "--rate-limit", "100/1")
    try:
        url = cli.url()
        token = make_token(KoreSimulator(client_secret=secret, campaigns=[]))
        response = requests.post(
            f"{url}/campaign/api/v2/public/st-sim-0001/campaign/cd-cli-0001",
            params={"campaignType": "voice", "trigger": "play"},
            headers={"auth": token, "iid": "st-sim-0001", "accountId": "sim-account-0001"},
            json={},
            timeout=10,
        )
        assert response.status_code == 200
        assert response.json()["status"] == "Active"
        deadline = time.monotonic() + 10
        while "-> 200" not in cli.output and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        code = cli.finish(sig)
    output = cli.output
    assert code == 0, output
    assert "export AIRFLOW_CONN_KORE_DEFAULT=" in output
    conn_json = output.split("export AIRFLOW_CONN_KORE_DEFAULT=", 1)[1].splitlines()[0].strip("'")
    assert json.loads(conn_json)["host"] == url
    assert "POST /campaign/api/v2/public/st-sim-0001/campaign/cd-cli-0001 -> 200" in output
    assert token not in output
    assert "Traceback" not in output
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(url, timeout=2)
