"""The Kore.ai simulator, checked with plain ``requests`` and PyJWT (never the provider's hook).

Run with ``pytest tests/test_simulator.py -p airflow_provider_kore.testing.pytest_plugin`` until
the package is installed (then the ``pytest11`` entry point loads the fixtures).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
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

from airflow_provider_kore.testing import DROPPED, RATE_LIMIT_MESSAGE, KoreSimulator
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
    # The URI form printed next to it is one that stays plain HTTP (issue 13).
    exports = [line for line in output.splitlines() if line.startswith("export AIRFLOW_CONN_KORE_DEFAULT=")]
    assert len(exports) == 2
    (uri,) = shlex.split(exports[1].split("=", 1)[1])
    assert uri.startswith("kore://")
    from airflow.models.connection import Connection as ModelConnection

    from airflow_provider_kore.api import KoreConnectionConfig

    for conn in (ModelConnection(conn_id="kore_default", uri=uri), _conn_from_uri(uri, conn_id="kore_default")):
        config = KoreConnectionConfig.from_connection(conn)
        assert config.base_url == url
        assert config.base_url.startswith("http://127.0.0.1:")
        assert (config.client_secret, config.account_id, config.stream_id) == (
            secret,
            "sim-account-0001",
            "st-sim-0001",
        )
    assert "POST /campaign/api/v2/public/st-sim-0001/campaign/cd-cli-0001 -> 200" in output
    assert token not in output
    assert "Traceback" not in output
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(url, timeout=2)


# ---------------------------------------------------------------------------------------------
# The pipeline calls (issue 14): list campaigns, contact outcomes, contact lists, add contacts.

LIST_PATH = "/campaign/api/v2/public/{stream}/campaign/getAllCampaignDetails"
CREATE_LIST_PATH = "/campaign/api/v2/public/{stream}/campaign/contactList/createContactList"
ADD_CONTACTS_PATH = "/api/1.1/public/{stream}/campaign/contactList/addContacts"


def pipe(
    api: Api,
    operation: str,
    body: Any,
    *,
    campaign_id: str = VOICE,
    stream: str | None = None,
    query: dict[str, str | None] | None = None,
    timeout: float = 10,
) -> requests.Response:
    """POST one of the four pipeline calls, as documented; ``query`` entries set to None are removed."""
    s = stream or api.sim.stream_id
    account = {"accountId": api.sim.account_id}
    path, params = {
        "list": (LIST_PATH.format(stream=s), account),
        "contacts": (f"/campaign/api/v2/public/{s}/campaign/{campaign_id}/status", {"view": "contacts"}),
        "create_list": (CREATE_LIST_PATH.format(stream=s), account),
        "add": (ADD_CONTACTS_PATH.format(stream=s), {}),
    }[operation]
    final = dict(params)
    for key, value in (query or {}).items():
        final.pop(key, None)
        if value is not None:
            final[key] = value
    data = body if isinstance(body, str) else json.dumps(body)
    return api.http.post(api.sim.url + path, params=final, headers=api.headers(), data=data, timeout=timeout)


def new_list(api: Api, name: str = "Tonight", **fields: Any) -> requests.Response:
    body = {"name": name, "description": "Tonight's call list", "source": "passiveApi", **fields}
    return pipe(api, "create_list", body)


def ok_data(response: requests.Response) -> Any:
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "success"
    return body["data"]


def many_campaigns(n: int, campaign_type: str = "sms", **spec: Any) -> dict[str, Any]:
    return {
        f"cd-{campaign_type}-{i:03d}": {"campaign_type": campaign_type, "name": f"C{i:03d}", **spec} for i in range(n)
    }


def test_list_campaigns_shapes_voice_id_and_sms_id(api: Api) -> None:
    voice = ok_data(pipe(api, "list", {"type": "voice"}))
    assert set(voice) == {"results", "skip", "limit", "hasMore", "totalPages", "totalResults"}
    assert voice["totalResults"] == 1
    (row,) = voice["results"]
    assert row["_id"] == VOICE
    assert "id" not in row
    assert row["name"] == "Policy Renewal Voice Campaign"
    for key in ("description", "status", "createdAt", "updatedAt", "campaignInstanceUpdatedAt", "schedule"):
        assert key in row, key
    assert row["priority"] == "5"
    assert row["contactLists"] == ["Simulator contacts"]
    assert isinstance(row["dncLists"], list)
    assert row["dialingMode"]
    assert row["connection"]
    assert set(row["schedule"]) == {"isSchedulingEnabled", "isRecurrenceEnabled"}
    sms = ok_data(pipe(api, "list", {"type": "sms"}))
    assert [r["id"] for r in sms["results"]] == [SMS, "cd-sms-followup-0002"]
    assert all("_id" not in r for r in sms["results"])
    assert {"totalMessagesSent", "campaignExecutionType", "format", "message"} <= set(sms["results"][0])


def test_list_campaigns_pages_to_the_end() -> None:
    with KoreSimulator(campaigns=many_campaigns(7)) as sim:
        api = Api(sim)
        seen, page = [], 1
        while True:
            data = ok_data(pipe(api, "list", {"type": "sms", "limit": 3, "page": page}))
            assert (data["limit"], data["skip"], data["totalPages"], data["totalResults"]) == (3, 3 * (page - 1), 3, 7)
            seen += [r["id"] for r in data["results"]]
            if not data["hasMore"]:
                break
            page += 1
        assert page == 3
        assert seen == sim.campaign_ids
        # skip is an offset and wins over page; a page past the end is empty.
        data = ok_data(pipe(api, "list", {"type": "sms", "limit": 3, "page": 1, "skip": 5}))
        assert [r["id"] for r in data["results"]] == sim.campaign_ids[5:]
        assert data["hasMore"] is False
        assert ok_data(pipe(api, "list", {"type": "sms", "limit": 3, "page": 9}))["results"] == []
        # No voice campaigns: an empty first page.
        assert ok_data(pipe(api, "list", {"type": "voice"}))["totalPages"] == 0


def test_list_campaigns_filters_sorts_and_keeps_duplicate_names() -> None:
    with KoreSimulator(campaigns=[]) as sim:
        sim.add_campaign("cd-a", name="Nightly", campaign_type="voice", created_at="2026-01-01T00:00:00.000Z")
        sim.add_campaign("cd-b", name="Nightly", campaign_type="voice", status="Paused", priority=2)
        sim.add_campaign("cd-c", name="Alpha", campaign_type="voice", dialing_mode="Preview")
        api = Api(sim)
        names = [(r["_id"], r["name"]) for r in ok_data(pipe(api, "list", {"type": "voice"}))["results"]]
        assert names == [("cd-a", "Nightly"), ("cd-b", "Nightly"), ("cd-c", "Alpha")]
        by_status = ok_data(pipe(api, "list", {"type": "voice", "filters": {"status": ["Paused", "Active"]}}))
        assert [r["_id"] for r in by_status["results"]] == ["cd-b"]
        assert by_status["totalResults"] == 1
        by_priority = ok_data(pipe(api, "list", {"type": "voice", "filters": {"priority": [2]}}))
        assert [r["_id"] for r in by_priority["results"]] == ["cd-b"]
        by_mode = ok_data(pipe(api, "list", {"type": "voice", "filters": {"dialingMode": ["Preview"]}}))
        assert [r["_id"] for r in by_mode["results"]] == ["cd-c"]
        by_name = ok_data(pipe(api, "list", {"type": "voice", "sortBy": {"name": "asc"}}))
        assert [r["_id"] for r in by_name["results"]] == ["cd-c", "cd-a", "cd-b"]
        newest = ok_data(pipe(api, "list", {"type": "voice", "sortBy": {"createdAt": "desc"}}))
        assert newest["results"][-1]["_id"] == "cd-a"
        since = ok_data(pipe(api, "list", {"type": "voice", "startDate": "2026-01-02T00:00:00Z"}))
        assert {r["_id"] for r in since["results"]} == {"cd-b", "cd-c"}
        until = ok_data(pipe(api, "list", {"type": "voice", "endDate": "2026-01-02T00:00:00Z"}))
        assert [r["_id"] for r in until["results"]] == ["cd-a"]


@pytest.mark.parametrize(
    ("body", "word"),
    [
        ({}, "type"),
        ({"type": "email"}, "type"),
        ({"type": "sms", "limit": 0}, "limit"),
        ({"type": "sms", "limit": "10"}, "limit"),
        ({"type": "sms", "page": 0}, "page"),
        ({"type": "sms", "skip": -1}, "skip"),
        ({"type": "sms", "page": True}, "page"),
        ({"type": "sms", "filters": []}, "filters"),
        ({"type": "sms", "filters": {"status": {"Active": 1}}}, "status"),
        ({"type": "sms", "sortBy": {"priority": "asc"}}, "sortBy"),
        ({"type": "sms", "sortBy": {"name": "up"}}, "sortBy"),
        ({"type": "sms", "startDate": "yesterday"}, "startDate"),
        ("[]", "JSON object"),
    ],
)
def test_list_campaigns_validation(api: Api, body: Any, word: str) -> None:
    status, msg = kore_error(pipe(api, "list", body))
    assert status == 400
    assert word in msg


def test_list_campaigns_route_checks(api: Api) -> None:
    assert "accountId" in kore_error(pipe(api, "list", {"type": "sms"}, query={"accountId": None}))[1]
    assert kore_error(pipe(api, "list", {"type": "sms"}, stream="st-other"))[0] == 404
    response = api.http.get(api.sim.url + LIST_PATH.format(stream=api.sim.stream_id), headers=api.headers(), timeout=5)
    assert response.status_code == 405
    assert api.sim.requests[-1].operation is None
    assert api.sim.count("list_campaigns") == 2


def test_start_moves_campaign_instance_updated_at_not_updated_at(api: Api) -> None:
    def row() -> dict[str, Any]:
        return ok_data(pipe(api, "list", {"type": "sms"}))["results"][0]

    before = row()
    assert before["campaignInstanceUpdatedAt"] is None  # never run
    defined = ok_data(api.get())["updatedAt"]
    time.sleep(0.01)
    answer = api.start().json()
    after = row()
    assert after["status"] == "Active"
    assert after["updatedAt"] == before["updatedAt"] == defined == ok_data(api.get())["updatedAt"]
    assert after["campaignInstanceUpdatedAt"] == answer["updatedAt"] > defined
    info = api.sim.campaign_info(SMS)
    assert info["updated_at"] == defined
    assert info["instance_updated_at"] == answer["updatedAt"]


@pytest.mark.parametrize("where", ["simulator", "campaign"])
def test_updated_at_on_run_option(where: str) -> None:
    kwargs: dict[str, Any] = {"updated_at_on_run": True}
    sim_kwargs = kwargs if where == "simulator" else {}
    campaign_kwargs = kwargs if where == "campaign" else {}
    with KoreSimulator(campaigns=[], **sim_kwargs) as sim:
        sim.add_campaign("cd-x", **campaign_kwargs)
        defined = sim.campaign_info("cd-x")["updated_at"]
        time.sleep(0.01)
        answer = Api(sim).start("cd-x").json()
        assert sim.campaign_info("cd-x")["updated_at"] == answer["updatedAt"] > defined


def test_contact_outcomes_seeded_rows_are_completed_with_every_field(api: Api) -> None:
    api.sim.set_contact_outcomes(
        VOICE, [{"phoneNumber": "+15550001", "dialerOutcome": "completed"}, {"phoneNumber": "+15550002"}]
    )
    data = ok_data(pipe(api, "contacts", {"page": 1, "limit": 100}))
    assert (data["page"], data["limit"], data["totalPages"], data["totalResults"]) == (1, 100, 1, 2)
    first, second = data["results"]
    assert set(first) == {
        "phoneNumber",
        "uniqueId",
        "dialerOutcome",
        "numberOfAttemptsSoFar",
        "botSessionId",
        "agentDispositionCodes",
        "botOutboundStatus",
        "botOutboundStatusDetail",
    }
    assert (first["phoneNumber"], first["dialerOutcome"], second["dialerOutcome"]) == ("+15550001", "completed", "")
    assert second["agentDispositionCodes"] == []
    assert api.sim.contact_outcomes(VOICE) == data["results"]
    with pytest.raises(ValueError):
        api.sim.set_contact_outcomes(VOICE, [{"uniqueId": "no phone"}])
    with pytest.raises(KeyError):
        api.sim.set_contact_outcomes("cd-nope", 3)


def test_contact_outcomes_generated_100000_page_cheaply(api: Api) -> None:
    api.sim.set_contact_outcomes(VOICE, 100_000)
    started = time.monotonic()
    last = ok_data(pipe(api, "contacts", {"page": 1000, "limit": 100}))
    assert (last["totalPages"], last["totalResults"], len(last["results"])) == (1000, 100_000, 100)
    assert last["results"][-1]["phoneNumber"] == "+15550099999"
    assert ok_data(pipe(api, "contacts", {"page": 1001, "limit": 100}))["results"] == []
    assert time.monotonic() - started < 2
    first = ok_data(pipe(api, "contacts", {"page": 1, "limit": 100}))["results"]
    again = ok_data(pipe(api, "contacts", {"page": 1, "limit": 100}))["results"]
    assert first == again  # deterministic
    assert len({r["phoneNumber"] for r in first}) == 100
    assert {r["dialerOutcome"] for r in first} >= {"completed", "busy", "noAnswer", "failed"}
    assert any(len(r["agentDispositionCodes"]) > 1 for r in first)
    assert any(r["uniqueId"] == "" for r in first)


def test_contact_outcomes_page_to_the_end(api: Api) -> None:
    api.sim.set_contact_outcomes(SMS, 250)
    rows, page = [], 1
    while True:
        data = ok_data(pipe(api, "contacts", {"page": page, "limit": 100}, campaign_id=SMS))
        rows += data["results"]
        if page >= data["totalPages"]:
            break
        page += 1
    assert (page, len(rows)) == (3, 250)
    assert rows == api.sim.contact_outcomes(SMS)
    assert len({r["phoneNumber"] for r in rows}) == 250
    # Defaults when the body names no paging; the status view is unchanged.
    assert ok_data(pipe(api, "contacts", {}, campaign_id=SMS))["limit"] == 10
    assert api.status().json() == {
        "status": "success",
        "data": {"id": SMS, "status": "Ready", "name": "Welcome SMS Campaign"},
    }
    assert [r.operation for r in api.sim.requests][-2:] == ["get_campaign_contacts", "get_campaign_status"]


@pytest.mark.parametrize(
    "body",
    [
        {"page": 0, "limit": 10},
        {"page": 1, "limit": 0},
        {"page": 1, "limit": 101},
        {"page": "1"},
        {"limit": 2.5},
        {"page": None},
    ],
)
def test_contact_outcomes_bad_paging_is_400(api: Api, body: dict[str, Any]) -> None:
    status, msg = kore_error(pipe(api, "contacts", body))
    assert status == 400
    assert "page" in msg or "limit" in msg


def test_contact_outcomes_route_checks(api: Api) -> None:
    assert kore_error(pipe(api, "contacts", {"page": 1}, campaign_id="cd-nope")) == (404, "Campaign not found")
    assert kore_error(pipe(api, "contacts", {"page": 1}, stream="st-other"))[0] == 404
    # The page shows no accountId query, but a wrong one is still refused.
    assert kore_error(pipe(api, "contacts", {"page": 1}, query={"accountId": "other"}))[0] == 403
    assert pipe(api, "contacts", {"page": 1}, query={"accountId": api.sim.account_id}).status_code == 200


def test_create_contact_list_shape(api: Api) -> None:
    data = ok_data(new_list(api, "N" * 48, description="d" * 256))
    assert re.match(r"^cl-[0-9a-f-]{36}$", data["_id"])
    assert data["name"] == "N" * 48
    assert (data["status"], data["totalRecordCount"], data["listType"]) == ("Ready", 0, "call")
    assert set(data["mapping"]) == {"firstName", "lastName", "phoneNumber", "timeZone", "uniqueId", "contactPriority"}
    assert data["allowDuplicates"] is False
    assert api.sim.contact_list_names == ["N" * 48]
    assert api.sim.contact_list_info("N" * 48)["_id"] == data["_id"]
    assert api.sim.contact_list("N" * 48) == []


@pytest.mark.parametrize(
    ("fields", "word"),
    [
        ({"name": "N" * 49}, "name"),
        ({"name": ""}, "name"),
        ({"name": None}, "name"),
        ({"description": "d" * 257}, "description"),
        ({"description": None}, "description"),
        ({"source": "csv"}, "source"),
        ({"source": None}, "source"),
        ({"allowDuplicates": "yes"}, "allowDuplicates"),
    ],
)
def test_create_contact_list_validation(api: Api, fields: dict[str, Any], word: str) -> None:
    body = {"name": "Tonight", "description": "Tonight's list", "source": "passiveApi"}
    body.update(fields)
    status, msg = kore_error(pipe(api, "create_list", {k: v for k, v in body.items() if v is not None}))
    assert status == 400
    assert word in msg
    assert api.sim.contact_list_names == []


def test_create_contact_list_duplicate_name_is_409(api: Api) -> None:
    assert new_list(api).status_code == 200
    status, msg = kore_error(new_list(api))
    assert status == 409
    assert "already exists" in msg
    assert "accountId" in kore_error(pipe(api, "create_list", {}, query={"accountId": None}))[1]
    with pytest.raises(ValueError):
        api.sim.add_contact_list("Tonight")


def test_add_contacts_stores_them_in_order_dropping_duplicates(api: Api) -> None:
    new_list(api)
    contacts = [
        {"phoneNumber": "+1555000001", "firstName": "Ann"},
        {"phoneNumber": "+1555000002"},
        {"phoneNumber": "+1555000001"},
    ]
    response = pipe(api, "add", {"contact_list_name": "Tonight", "data": contacts})
    assert response.status_code == 200
    assert response.json() == {"message": "Adding contacts to public list is in progress"}
    assert api.sim.contact_list("Tonight") == contacts[:2]
    assert api.sim.contact_list_info("Tonight")["totalRecordCount"] == 2
    pipe(
        api,
        "add",
        {"contact_list_name": "Tonight", "data": [{"phoneNumber": "+1555000002"}, {"phoneNumber": "+1555000003"}]},
    )
    assert [c["phoneNumber"] for c in api.sim.contact_list("Tonight")] == ["+1555000001", "+1555000002", "+1555000003"]
    record = api.sim.requests[-1]
    assert (record.operation, record.campaign_id, record.query) == ("add_contacts", None, {})
    # With allowDuplicates every contact is kept.
    new_list(api, "Dupes", allowDuplicates=True)
    pipe(api, "add", {"contact_list_name": "Dupes", "data": contacts})
    assert api.sim.contact_list("Dupes") == contacts


@pytest.mark.parametrize(
    ("body", "status", "word"),
    [
        ({"contact_list_name": "Nope", "data": [{"phoneNumber": "+1"}]}, 404, "Nope"),
        ({"data": [{"phoneNumber": "+1"}]}, 400, "contact_list_name"),
        ({"contact_list_name": "Tonight", "data": []}, 400, "data"),
        ({"contact_list_name": "Tonight", "data": {"phoneNumber": "+1"}}, 400, "data"),
        (
            {"contact_list_name": "Tonight", "data": [{"phoneNumber": "+1"}, {"firstName": "x"}]},
            400,
            "data[1].phoneNumber",
        ),
        ({"contact_list_name": "Tonight", "data": [{"phoneNumber": 15550001}]}, 400, "phoneNumber"),
        ({"contact_list_name": "Tonight", "data": ["+1"]}, 400, "data[0]"),
    ],
)
def test_add_contacts_validation_stores_nothing(api: Api, body: dict[str, Any], status: int, word: str) -> None:
    new_list(api)
    code, msg = kore_error(pipe(api, "add", body))
    assert (code, word in msg) == (status, True), msg
    assert api.sim.contact_list("Tonight") == []


def test_add_contacts_unknown_iid_and_accessors(api: Api) -> None:
    new_list(api)
    body = {"contact_list_name": "Tonight", "data": [{"phoneNumber": "+1"}]}
    assert kore_error(pipe(api, "add", body, stream="st-other"))[0] == 404
    with pytest.raises(KeyError):
        api.sim.contact_list("Nope")


def test_keep_contacts_false_counts_and_dedups_only() -> None:
    with KoreSimulator(keep_contacts=False) as sim:
        api = Api(sim)
        sim.add_contact_list("Big")
        pipe(
            api,
            "add",
            {"contact_list_name": "Big", "data": [{"phoneNumber": "+1"}, {"phoneNumber": "+1"}, {"phoneNumber": "+2"}]},
        )
        assert sim.contact_list("Big") == []
        assert sim.contact_list_info("Big")["totalRecordCount"] == 2


def test_outcomes_derive_from_the_campaigns_lists_once_it_ran() -> None:
    with KoreSimulator(campaigns=[], complete_after_polls=1) as sim:
        sim.add_campaign("cd-night", name="Nightly", campaign_type="voice", contact_lists=["Tonight"])
        api = Api(sim)
        new_list(api)
        pipe(
            api,
            "add",
            {"contact_list_name": "Tonight", "data": [{"phoneNumber": "+1", "uniqueId": "u1"}, {"phoneNumber": "+2"}]},
        )
        assert ok_data(pipe(api, "contacts", {"page": 1}, campaign_id="cd-night"))["results"] == []  # never run
        api.start("cd-night", campaign_type="voice")
        running = ok_data(pipe(api, "contacts", {"page": 1}, campaign_id="cd-night"))["results"]
        assert [(r["phoneNumber"], r["uniqueId"], r["dialerOutcome"]) for r in running] == [
            ("+1", "u1", ""),
            ("+2", "", ""),
        ]
        api.status("cd-night")  # completes it
        done = ok_data(pipe(api, "contacts", {"page": 1}, campaign_id="cd-night"))["results"]
        assert all(r["dialerOutcome"] for r in done)
        sim.set_contact_outcomes("cd-night", 5)
        assert ok_data(pipe(api, "contacts", {"page": 1}, campaign_id="cd-night"))["totalResults"] == 5
        sim.set_contact_outcomes("cd-night", None)
        assert ok_data(pipe(api, "contacts", {"page": 1}, campaign_id="cd-night"))["totalResults"] == 2


def test_pipeline_operations_share_auth_and_header_checks(api: Api) -> None:
    calls = [("list", {"type": "sms"}), ("contacts", {"page": 1}), ("create_list", {}), ("add", {})]
    for operation, body in calls:
        api.token = "not-a-jwt"
        assert kore_error(pipe(api, operation, body)) == (401, "Invalid or expired token"), operation
        api.token = make_token(api.sim)
        response = api.http.post(
            api.sim.url + pipe_path(api, operation),
            headers=api.headers({"iid": None}),
            data=json.dumps(body),
            timeout=5,
        )
        assert "iid" in kore_error(response)[1]
    operations = [r.operation for r in api.sim.requests]
    assert operations == [
        op for op in ("list_campaigns", "get_campaign_contacts", "create_contact_list", "add_contacts") for _ in (0, 1)
    ]


def pipe_path(api: Api, operation: str) -> str:
    s = api.sim.stream_id
    return {
        "list": LIST_PATH.format(stream=s) + f"?accountId={api.sim.account_id}",
        "contacts": f"/campaign/api/v2/public/{s}/campaign/{VOICE}/status?view=contacts",
        "create_list": CREATE_LIST_PATH.format(stream=s) + f"?accountId={api.sim.account_id}",
        "add": ADD_CONTACTS_PATH.format(stream=s),
    }[operation]


def test_pipeline_faults(api: Api) -> None:
    sim = api.sim
    sim.inject_fault("list_campaigns", status=503, retry_after=2)
    sim.inject_fault("get_campaign_contacts", status=429)
    response = pipe(api, "list", {"type": "sms"})
    assert (response.status_code, response.headers["Retry-After"]) == (503, "2")
    assert kore_error(pipe(api, "contacts", {"page": 1})) == (429, RATE_LIMIT_MESSAGE)
    # A 502 after Kore acted: the list exists although the answer was lost.
    sim.inject_fault("create_contact_list", status=502, apply_operation=True)
    assert new_list(api).status_code == 502
    assert sim.contact_list_names == ["Tonight"]
    sim.inject_fault("add_contacts", status=504, apply_operation=True)
    sim.inject_fault("add_contacts", status=500)
    body = {"contact_list_name": "Tonight", "data": [{"phoneNumber": "+1"}]}
    assert pipe(api, "add", body).status_code == 504
    assert pipe(api, "add", {**body, "data": [{"phoneNumber": "+2"}]}).status_code == 500
    assert sim.contact_list("Tonight") == [{"phoneNumber": "+1"}]
    assert [r.status_code for r in sim.requests] == [503, 429, 502, 504, 500]


def test_pipeline_calls_count_against_the_rate_limit(api: Api) -> None:
    api.sim.set_rate_limit(3, 30)
    assert pipe(api, "list", {"type": "sms"}).status_code == 200
    assert pipe(api, "contacts", {"page": 1}).status_code == 200
    assert new_list(api).status_code == 200
    response = pipe(api, "add", {"contact_list_name": "Tonight", "data": [{"phoneNumber": "+1"}]})
    assert kore_error(response) == (429, RATE_LIMIT_MESSAGE)
    assert api.sim.count("add_contacts", 429) == 1
    assert api.sim.contact_list("Tonight") == []


# ---------------------------------------------------------------------------------------------
# Lost answers, statuses after a start, outages (issue 12).


@pytest.mark.parametrize("start_status", ["Active", "Completed", "Scheduled", "Paused", "Preparing", "Warming"])
def test_start_status_per_campaign(kore_simulator: KoreSimulator, start_status: str) -> None:
    sim = kore_simulator
    sim.add_campaign("cd-x", start_status=start_status, complete_after_polls=None)
    response = Api(sim).start("cd-x")
    assert response.status_code == 200
    assert response.json()["status"] == ("Active" if start_status == "Completed" else start_status)
    assert sim.status_of("cd-x") == start_status
    assert Api(sim).status("cd-x").json()["data"]["status"] == start_status
    assert sim.campaign_info("cd-x")["runs"] == 1
    assert sim.campaign_info("cd-x")["start_status"] == start_status


def lose_the_answer(sim: KoreSimulator, way: str) -> None:
    if way == "502-after":
        sim.inject_fault("start_campaign", status=502, apply_operation=True)
    elif way == "read-timeout":
        sim.inject_fault("start_campaign", delay=0.6)
    else:
        sim.inject_fault("start_campaign", drop=way.split("-")[1])


@pytest.mark.parametrize("start_status", ["Active", "Completed", "Scheduled", "Paused", "Preparing", "Warming"])
@pytest.mark.parametrize("way", ["502-after", "read-timeout", "drop-after", "drop-before"])
def test_lost_start_answers_leave_one_run_or_none(kore_simulator: KoreSimulator, way: str, start_status: str) -> None:
    sim = kore_simulator
    sim.add_campaign("cd-x", start_status=start_status, complete_after_polls=None)
    lose_the_answer(sim, way)
    api = Api(sim)
    try:
        response = api.start("cd-x", timeout=0.3)
    except requests.exceptions.ConnectionError:
        assert way.startswith("drop")
    except requests.exceptions.ReadTimeout:
        assert way == "read-timeout"
    else:
        assert (way, response.status_code) == ("502-after", 502)
    acted = way != "drop-before"
    assert sim.campaign_info("cd-x")["runs"] == int(acted)
    assert sim.status_of("cd-x") == (start_status if acted else "Ready")
    dropped = sim.requests[-1]
    assert dropped.operation == "start_campaign"
    if way.startswith("drop"):
        assert dropped.status_code == DROPPED
        assert dropped.body == ("" if way == "drop-before" else "{}")
    # The connection is gone, not the simulator: the next request is served.
    assert Api(sim).status("cd-x").status_code == 200


def test_drop_fault_arguments_and_delay(kore_simulator: KoreSimulator) -> None:
    sim = kore_simulator
    for bad in (
        {"drop": "during"},
        {"drop": "after", "status": 502},
        {"drop": "after", "body": {}},
        {"drop": "before", "apply_operation": True},
        {"drop": "before", "delay": 1},
    ):
        with pytest.raises(ValueError):
            sim.inject_fault("start_campaign", **bad)
    assert sim.inject_fault("start_campaign", drop="after").apply_operation is True
    sim.clear_faults()
    sim.inject_fault("get_campaign", drop="after", delay=0.3)
    started = time.monotonic()
    with pytest.raises(requests.exceptions.ConnectionError):
        Api(sim).get()
    assert time.monotonic() - started >= 0.3


def test_outage_answers_everything_503_until_cleared(api: Api) -> None:
    sim = api.sim
    sim.set_rate_limit(2, 30)
    sim.set_outage(True, retry_after=5)
    assert sim.outage
    for response in (
        api.status(),
        api.start(),
        pipe(api, "list", {"type": "sms"}),
        requests.get(sim.url + "/nowhere", timeout=5),
    ):
        assert kore_error(response) == (503, "Service temporarily unavailable")
        assert response.headers["Retry-After"] == "5"
    sim.clear_faults()
    assert api.get().status_code == 503
    assert sim.status_of(SMS) == "Ready"
    sim.set_outage(False)
    assert not sim.outage
    # Refused requests did not use the rate-limit window.
    assert api.status().status_code == 200
    assert api.status().status_code == 200
    assert api.status().status_code == 429
    assert sim.count(status_code=503) == 5
    with pytest.raises(ValueError):
        sim.set_outage(True, status=42)


def test_unknown_stream_says_so(api: Api) -> None:
    status, msg = kore_error(api.status(stream="st-someone-else"))
    assert status == 404
    assert msg.startswith("Stream not found")
    assert "st-someone-else" in msg
    assert kore_error(api.status("cd-nope")) == (404, "Campaign not found")


def test_cli_parser_names_and_outcomes() -> None:
    args = build_parser().parse_args(["--campaign", "cd-1:voice:Ready:Nightly: calls", "--outcomes", "cd-1:1000"])
    assert args.campaign == [
        {"campaign_id": "cd-1", "campaign_type": "voice", "status": "Ready", "name": "Nightly: calls"}
    ]
    assert args.outcomes == [("cd-1", 1000)]
    for bad in (["--outcomes", "cd-1"], ["--outcomes", "cd-1:many"], ["--outcomes", ":3"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(bad)
    assert main(["--port", "0", "--outcomes", "cd-nope:3"]) == 2
