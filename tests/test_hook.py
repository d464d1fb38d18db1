"""KoreHook against requests-mock: exact requests, auth, retries, error mapping, secrets."""

from __future__ import annotations

import json
import logging
import signal
import socket
import ssl
import time
from urllib.parse import urlsplit

import jwt
import pytest
import requests
import urllib3
from urllib3.exceptions import MaxRetryError, NameResolutionError, NewConnectionError

from airflow_provider_kore import pacing
from airflow_provider_kore.config import KoreConnectionConfig
from airflow_provider_kore.exceptions import (
    KoreApiError,
    KoreAuthError,
    KoreBadResponseError,
    KoreConfigurationError,
    KoreConnectionError,
    KoreNotFoundError,
    KoreOutcomeUnknownError,
    KoreRateLimitError,
    KoreServerError,
)
from airflow_provider_kore.hooks.kore import KoreHook
from airflow_provider_kore.shared import JwtSigner

SECRET = "hook-test-client-secret-0123456789abcdef"
BASE = "https://kore.test"
STATUS_URL = f"{BASE}/campaign/api/v2/public/st-1/campaign/cd-1/status?accountId=acc-1&view=status"
CAMPAIGN_URL = f"{BASE}/campaign/api/v2/public/st-1/campaign/cd-1?accountId=acc-1"
START_URL = f"{BASE}/campaign/api/v2/public/st-1/campaign/cd-1?campaignType=sms&trigger=play"
STOP_URL = f"{BASE}/api/v2/public/st-1/campaign/trigger/cd-1?accountId=acc-1&campaignType=voice&trigger=stop"
LIST_URL = f"{BASE}/campaign/api/v2/public/st-1/campaign/getAllCampaignDetails?accountId=acc-1"
CONTACTS_URL = f"{BASE}/campaign/api/v2/public/st-1/campaign/cd-1/status?view=contacts"
STATUS_BODY = {"status": "success", "data": {"id": "cd-1", "status": "Active", "name": "Welcome"}}
START_BODY = {"status": "Active", "message": "Campaign Started", "updatedAt": "2025-12-05T12:05:23.765Z"}
STOP_BODY = {
    "status": "Stopped",
    "message": "Campaign Stopped",
    "updatedAt": "2025-12-05T12:01:35.312Z",
    "campaignInstanceId": "cid-1",
}


def set_conn(monkeypatch, conn_id="kore_default", *, password=SECRET, **extra):
    extras = {"account_id": "acc-1", "stream_id": "st-1", "max_retries": 3}
    extras.update(extra)
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{conn_id.upper()}",
        json.dumps({"conn_type": "kore", "host": BASE, "login": "cs-app-1", "password": password, "extra": extras}),
    )


class FakeClock:
    """The pacing clock, moved on by each recorded sleep instead of sleeping."""

    def __init__(self) -> None:
        self.now = time.monotonic()
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture(autouse=True)
def clock(monkeypatch):
    """A fake pacing clock, and a fresh process-wide pacer per test."""
    fake = FakeClock()
    monkeypatch.setattr(pacing, "clock", fake)
    pacing.reset_sync_pacers()
    yield fake
    pacing.reset_sync_pacers()


@pytest.fixture
def hook(monkeypatch, clock):
    set_conn(monkeypatch)
    h = KoreHook()
    h.sleeps = clock.sleeps
    h._sleep = clock.sleep  # record backoff and pacing waits instead of sleeping
    return h


def claims(request):
    return jwt.decode(request.headers["auth"], SECRET, algorithms=["HS256"])


# -- exact requests -------------------------------------------------------------------------------


def test_get_campaign_status_sends_the_documented_request(hook, requests_mock):
    requests_mock.post(STATUS_URL, json=STATUS_BODY)
    assert hook.get_campaign_status("cd-1") == STATUS_BODY["data"]
    (req,) = requests_mock.request_history
    assert req.method == "POST"
    assert req.url == STATUS_URL
    assert req.headers["iid"] == "st-1"
    assert req.headers["accountId"] == "acc-1"
    assert req.headers["Content-Type"] == "application/json"
    assert req.body == b"{}"
    token = claims(req)
    assert token["appId"] == "cs-app-1"
    assert token["exp"] > token["iat"]
    assert token["jti"]


def test_get_campaign_is_a_get_without_body(hook, requests_mock):
    body = {"status": "success", "message": "ok", "data": {"_id": "cd-1", "status": "Ready"}}
    requests_mock.get(CAMPAIGN_URL, json=body)
    assert hook.get_campaign("cd-1") == body["data"]
    (req,) = requests_mock.request_history
    assert req.method == "GET"
    assert req.body is None
    assert "Content-Type" not in req.headers
    claims(req)


def test_start_campaign_has_no_account_query_but_the_header(hook, requests_mock):
    requests_mock.post(START_URL, json=START_BODY)
    assert hook.start_campaign("cd-1") == START_BODY
    (req,) = requests_mock.request_history
    assert req.url == START_URL
    assert req.headers["accountId"] == "acc-1"
    assert req.body == b"{}"


def test_stop_campaign_uses_the_stop_pages_path(hook, requests_mock):
    requests_mock.post(STOP_URL, json=STOP_BODY)
    assert hook.stop_campaign("cd-1") == STOP_BODY
    assert requests_mock.request_history[0].url == STOP_URL


def test_other_channel_combinations(hook, requests_mock):
    requests_mock.post(START_URL.replace("=sms", "=voice"), json=START_BODY)
    requests_mock.post(STOP_URL.replace("=voice", "=sms"), json=STOP_BODY)
    hook.start_campaign("cd-1", campaign_type="voice")
    hook.stop_campaign("cd-1", campaign_type="sms")
    assert [r.qs["campaigntype"] for r in requests_mock.request_history] == [["voice"], ["sms"]]


def test_stream_override(hook, requests_mock):
    url = STATUS_URL.replace("/st-1/", "/st-2/")
    requests_mock.post(url, json=STATUS_BODY)
    hook.get_campaign_status("cd-1", stream_id="st-2")
    assert requests_mock.request_history[0].headers["iid"] == "st-2"


def test_every_request_has_a_connect_and_read_timeout_and_follows_no_redirect(hook, requests_mock, monkeypatch):
    seen = []
    real = requests.Session.request

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("timeout"))
        assert kwargs.get("allow_redirects") is False
        return real(self, *args, **kwargs)

    monkeypatch.setattr(requests.Session, "request", spy)
    requests_mock.post(STATUS_URL, json=STATUS_BODY)
    requests_mock.get(CAMPAIGN_URL, json={"status": "success", "data": {}})
    requests_mock.post(START_URL, json=START_BODY)
    requests_mock.post(STOP_URL, json=STOP_BODY)
    hook.get_campaign_status("cd-1")
    hook.get_campaign("cd-1")
    hook.start_campaign("cd-1")
    hook.stop_campaign("cd-1")
    assert seen == [(30.0, 30.0)] * 4


def test_timeout_extra_and_override(monkeypatch, requests_mock):
    set_conn(monkeypatch, timeout=4)
    assert KoreHook().timeout == 4
    assert KoreHook(timeout=9).timeout == 9


# -- bad input is refused before any request -----------------------------------------------------


@pytest.mark.parametrize("campaign_id", ["", " ", "a/b", "a?b", "a#b", "a%b", "a b", "..", "x" * 500, 7, None])
def test_bad_ids_send_nothing(hook, requests_mock, campaign_id):
    with pytest.raises(KoreConfigurationError, match="campaign_id"):
        hook.get_campaign_status(campaign_id)
    with pytest.raises(KoreConfigurationError):
        hook.start_campaign(campaign_id)
    assert requests_mock.call_count == 0


def test_unknown_campaign_type_sends_nothing(hook, requests_mock):
    with pytest.raises(KoreConfigurationError, match="campaign_type"):
        hook.start_campaign("cd-1", campaign_type="email")
    with pytest.raises(KoreConfigurationError, match="campaign_type"):
        hook.stop_campaign("cd-1", campaign_type="fax")
    assert requests_mock.call_count == 0


@pytest.mark.parametrize(
    ("conn", "field"),
    [
        ({"conn_type": "kore", "login": "c", "password": "p", "extra": {"account_id": "a"}}, "host"),
        ({"conn_type": "kore", "host": BASE, "password": "p", "extra": {"account_id": "a"}}, "Client ID"),
        ({"conn_type": "kore", "host": BASE, "login": "c", "extra": {"account_id": "a"}}, "Client Secret"),
        ({"conn_type": "kore", "host": BASE, "login": "c", "password": "p", "extra": {}}, "account_id"),
        ({"conn_type": "kore", "host": BASE, "login": "c", "password": "p", "extra": {"account_id": "a"}}, "stream_id"),
    ],
)
def test_incomplete_connection_sends_nothing(monkeypatch, requests_mock, conn, field):
    monkeypatch.setenv("AIRFLOW_CONN_KORE_BAD", json.dumps(conn))
    with pytest.raises(KoreConfigurationError, match=field):
        KoreHook("kore_bad").get_campaign_status("cd-1")
    assert requests_mock.call_count == 0


def test_connection_from_a_uri(monkeypatch, requests_mock):
    monkeypatch.setenv(
        "AIRFLOW_CONN_KORE_URI",
        "kore://cs-app-1:" + SECRET + "@127.0.0.1:8765/http?account_id=acc-1&stream_id=st-1",
    )
    hook = KoreHook("kore_uri")
    assert hook.config.base_url == "http://127.0.0.1:8765"
    requests_mock.post(STATUS_URL.replace(BASE, "http://127.0.0.1:8765"), json=STATUS_BODY)
    assert hook.get_campaign_status("cd-1")["status"] == "Active"


# -- tokens --------------------------------------------------------------------------------------


def test_one_token_is_reused_across_requests(hook, requests_mock):
    requests_mock.post(STATUS_URL, json=STATUS_BODY)
    for _ in range(5):
        hook.get_campaign_status("cd-1")
    assert len({r.headers["auth"] for r in requests_mock.request_history}) == 1
    assert hook.signer.signed == 1


def test_token_is_refreshed_before_expiry():
    now = [1_000_000.0]
    config = KoreConnectionConfig(base_url=BASE, client_id="cs", client_secret=SECRET, account_id="acc-1")
    signer = JwtSigner(config, clock=lambda: now[0])
    first = signer.token()
    now[0] += 200
    assert signer.token() == first
    now[0] += 50  # 250 s in: inside the refresh margin
    second = signer.token()
    assert second != first
    assert jwt.decode(second, SECRET, algorithms=["HS256"], options={"verify_exp": False})["iat"] == 1_000_250


def test_the_token_is_signed_after_the_wait_for_a_turn(hook, requests_mock, clock):
    """A 429 pause that outlasts the cached token: the request after it carries a token signed after the wait,
    so it is not refused (no 401, no re-sign)."""
    start = clock.now
    hook.__dict__["signer"] = JwtSigner(hook.config, clock=lambda: 1_000_000 + clock.now - start)
    hook.signer.token()
    clock.now += 200  # the cached token has 100 s to live
    answered = []

    def signed(request):  # the claims, whatever the real clock says of them
        return jwt.decode(request.headers["auth"], SECRET, algorithms=["HS256"], options={"verify_exp": False})

    def answer(request, context):
        if signed(request)["exp"] <= 1_000_000 + clock.now - start:
            context.status_code = 401
        elif not answered:
            context.status_code = 429
            context.headers["Retry-After"] = "120"
        answered.append(context.status_code)
        return STATUS_BODY if context.status_code == 200 else {"errors": [{"msg": "Invalid or expired token"}]}

    requests_mock.post(STATUS_URL, json=answer)
    assert hook.get_campaign_status("cd-1")["status"] == "Active"
    assert answered == [429, 200]
    assert hook.auth_refreshes == 0
    assert hook.signer.signed == 2
    assert signed(requests_mock.request_history[-1])["iat"] == 1_000_320


def test_hs512(monkeypatch, requests_mock):
    secret = SECRET + "-" + "x" * 64  # a full-length HS512 key
    set_conn(monkeypatch, jwt_algorithm="HS512", password=secret)
    requests_mock.post(STATUS_URL, json=STATUS_BODY)
    KoreHook().get_campaign_status("cd-1")
    token = requests_mock.request_history[0].headers["auth"]
    assert jwt.get_unverified_header(token)["alg"] == "HS512"
    jwt.decode(token, secret, algorithms=["HS512"])


def test_jwt_per_request_signs_a_fresh_jti_each_time(monkeypatch, requests_mock):
    set_conn(monkeypatch, jwt_per_request=True)
    requests_mock.post(STATUS_URL, json=STATUS_BODY)
    hook = KoreHook()
    for _ in range(3):
        hook.get_campaign_status("cd-1")
    jtis = [claims(r)["jti"] for r in requests_mock.request_history]
    assert len(set(jtis)) == 3
    assert hook.signer.signed == 3


def test_401_re_signs_once_and_retries(hook, requests_mock):
    requests_mock.post(
        STATUS_URL, [{"status_code": 401, "json": {"errors": [{"msg": "expired"}]}}, {"json": STATUS_BODY}]
    )
    assert hook.get_campaign_status("cd-1")["status"] == "Active"
    first, second = requests_mock.request_history
    assert claims(first)["jti"] != claims(second)["jti"]
    assert hook.signer.signed == 2


def test_401_twice_rereads_the_connection_then_is_an_auth_error(hook, requests_mock, monkeypatch):
    loads = []
    real_load = KoreConnectionConfig.load.__func__

    def counting(cls, conn_id):
        loads.append(conn_id)
        return real_load(cls, conn_id)

    _ = hook.config  # the first lookup
    monkeypatch.setattr(KoreConnectionConfig, "load", classmethod(counting))
    requests_mock.post(STATUS_URL, status_code=401, json={"errors": [{"msg": "Invalid token", "code": 401}]})
    with pytest.raises(KoreAuthError, match="Invalid token") as err:
        hook.get_campaign_status("cd-1")
    assert requests_mock.call_count == 2
    assert loads == ["kore_default"]  # one re-read after the fresh token was refused too
    assert "Client ID / Client Secret" in str(err.value)
    assert "'kore_default'" in str(err.value)
    assert SECRET not in str(err.value)


def test_a_rotated_secret_is_picked_up_after_a_second_401(monkeypatch, requests_mock):
    old = "old-client-secret-0123456789abcdef0123"
    set_conn(monkeypatch, password=old)
    hook = KoreHook()
    hook._sleep = lambda seconds: None
    _ = hook.config
    answered = []

    def answer(request, context):
        try:
            jwt.decode(request.headers["auth"], SECRET, algorithms=["HS256"])
        except jwt.InvalidSignatureError:
            set_conn(monkeypatch)  # the new secret lands in the connection meanwhile
            context.status_code = 401
            answered.append(401)
            return {"errors": [{"msg": "Invalid token"}]}
        answered.append(200)
        return STATUS_BODY

    requests_mock.post(STATUS_URL, json=answer)
    assert hook.get_campaign_status("cd-1")["status"] == "Active"
    assert answered == [401, 401, 200]
    assert hook.config.client_secret == SECRET


def test_after_a_reload_the_request_follows_the_changed_connection(monkeypatch, requests_mock):
    """A connection fixed after a 401 (new host, secret and TLS setting) is used whole for the very next attempt:
    the session is rebuilt from it, so its TLS setting (and proxies) apply at once."""
    set_conn(monkeypatch, password="old-client-secret-0123456789abcdef0123")
    hook = KoreHook()
    hook._sleep = lambda seconds: None
    _ = hook.config

    def refused(request, context):
        monkeypatch.setenv(
            "AIRFLOW_CONN_KORE_DEFAULT",
            json.dumps(
                {
                    "conn_type": "kore",
                    "host": "https://kore-new.test",
                    "login": "cs-app-1",
                    "password": SECRET,
                    "extra": {"account_id": "acc-1", "stream_id": "st-1", "verify": "false"},
                }
            ),
        )
        context.status_code = 401
        return {"errors": [{"msg": "Invalid token"}]}

    requests_mock.post(STATUS_URL, json=refused)
    requests_mock.post(STATUS_URL.replace("kore.test", "kore-new.test"), json=STATUS_BODY)
    assert hook.get_campaign_status("cd-1")["status"] == "Active"
    hosts = [urlsplit(r.url).hostname for r in requests_mock.request_history]
    assert hosts == ["kore.test", "kore.test", "kore-new.test"]
    assert [r.verify is False for r in requests_mock.request_history] == [False, False, True]
    jwt.decode(requests_mock.request_history[-1].headers["auth"], SECRET, algorithms=["HS256"])


# -- retries ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [500, 502, 503, 504])
def test_retryable_statuses_are_retried_with_backoff(hook, requests_mock, code):
    requests_mock.post(STATUS_URL, [{"status_code": code, "text": "busy"}] * 2 + [{"json": STATUS_BODY}])
    assert hook.get_campaign_status("cd-1")["status"] == "Active"
    assert requests_mock.call_count == 3
    assert len(hook.sleeps) == 2
    assert hook.sleeps[0] <= 1.0 <= hook.sleeps[1] * 2  # exponential: the ceiling doubles


@pytest.mark.parametrize("code", [400, 403, 404, 409, 422])
def test_other_4xx_are_never_retried(hook, requests_mock, code):
    requests_mock.post(STATUS_URL, status_code=code, json={"errors": [{"msg": "no"}]})
    with pytest.raises(KoreApiError):
        hook.get_campaign_status("cd-1")
    assert requests_mock.call_count == 1
    assert hook.sleeps == []


def test_429_pauses_the_connection_without_using_a_retry(monkeypatch, requests_mock, clock):
    set_conn(monkeypatch, max_retries=0)
    hook = KoreHook()
    hook._sleep = clock.sleep
    requests_mock.post(STATUS_URL, [{"status_code": 429, "json": {}}] * 2 + [{"json": STATUS_BODY}])
    assert hook.get_campaign_status("cd-1")["status"] == "Active"
    assert requests_mock.call_count == 3  # max_retries=0: a 429 spends no retry
    # Each re-send came after a pause, not at once.
    assert len(clock.sleeps) >= 2
    assert all(pause > 0 for pause in clock.sleeps)


def test_retry_after_is_honoured(hook, requests_mock):
    requests_mock.post(
        STATUS_URL, [{"status_code": 429, "headers": {"Retry-After": "17"}, "json": {}}, {"json": STATUS_BODY}]
    )
    hook.get_campaign_status("cd-1")
    assert hook.sleeps
    assert hook.sleeps[0] >= 17


def test_429s_give_up_at_the_deadline(monkeypatch, requests_mock, clock):
    set_conn(monkeypatch)
    hook = KoreHook(deadline=time.time() + 100)
    hook._sleep = clock.sleep
    requests_mock.post(STATUS_URL, status_code=429, json={"errors": [{"msg": "Rate limit reached"}]})
    with pytest.raises(KoreRateLimitError, match="before the deadline"):
        hook.get_campaign_status("cd-1")
    assert sum(clock.sleeps) <= 100
    assert requests_mock.call_count > 4  # more than max_retries=3 would allow: 429s are not retries


def test_429s_give_up_after_the_patience_without_a_deadline(hook, requests_mock, clock):
    requests_mock.post(STATUS_URL, status_code=429, json={})
    with pytest.raises(KoreRateLimitError, match="rate limit"):
        hook.get_campaign_status("cd-1")
    assert pacing.RATE_LIMIT_PATIENCE / 2 <= sum(clock.sleeps) <= pacing.RATE_LIMIT_PATIENCE


def test_a_429_pause_past_the_deadline_is_a_rate_limit_error_without_waiting_it_out(monkeypatch, requests_mock, clock):
    set_conn(monkeypatch)
    hook = KoreHook(deadline=time.time() + 30)
    hook._sleep = clock.sleep
    requests_mock.post(STATUS_URL, status_code=429, headers={"Retry-After": "60"}, json={})
    with pytest.raises(KoreRateLimitError, match="before the deadline") as err:
        hook.get_campaign_status("cd-1")
    assert err.value.deadline_reached
    assert requests_mock.call_count == 1
    assert sum(clock.sleeps) <= 30


def test_a_call_deadline_overrides_the_hooks(hook, requests_mock, clock):
    requests_mock.post(STATUS_URL, status_code=429, headers={"Retry-After": "60"}, json={})
    with pytest.raises(KoreRateLimitError, match="before the deadline"):
        hook.get_campaign_status("cd-1", deadline=time.time() + 10)
    assert requests_mock.call_count == 1
    assert sum(clock.sleeps) <= 10


def test_huge_retry_after_is_capped(hook, requests_mock):
    requests_mock.post(
        STATUS_URL, [{"status_code": 503, "headers": {"Retry-After": "86400"}, "json": {}}, {"json": STATUS_BODY}]
    )
    hook.get_campaign_status("cd-1")
    assert hook.sleeps == [120.0]


@pytest.mark.parametrize(("code", "cls"), [(500, KoreServerError), (503, KoreServerError)])
def test_retries_are_bounded_by_max_retries(hook, requests_mock, code, cls):
    requests_mock.post(STATUS_URL, status_code=code, json={"errors": [{"msg": "still busy"}]})
    with pytest.raises(cls, match="still busy"):
        hook.get_campaign_status("cd-1")
    assert requests_mock.call_count == 4  # max_retries=3 in the connection
    assert len(hook.sleeps) == 3


def test_connection_errors_are_retried_then_raised(hook, requests_mock):
    requests_mock.post(STATUS_URL, exc=requests.exceptions.ConnectTimeout)
    with pytest.raises(KoreConnectionError) as err:
        hook.get_campaign_status("cd-1")
    assert requests_mock.call_count == 4
    assert err.value.transient
    assert "get campaign status" in str(err.value)
    assert "'cd-1'" in str(err.value)
    assert "timed out connecting" in str(err.value)
    assert "after 4 attempts" in str(err.value)


def refused():
    reason = NewConnectionError(None, "Failed to establish a new connection: [Errno 111] Connection refused")
    return requests.exceptions.ConnectionError(MaxRetryError(None, "/x", reason=reason))


def unresolvable():
    reason = NameResolutionError("kore.test", None, socket.gaierror(-2, "Name or service not known"))
    return requests.exceptions.ConnectionError(MaxRetryError(None, "/x", reason=reason))


@pytest.mark.parametrize(
    ("exc", "cause"),
    [
        (refused, "the connection was refused"),
        (unresolvable, "the host name could not be resolved"),
        (lambda: requests.exceptions.ReadTimeout(), "no answer in time"),
        (lambda: requests.exceptions.ConnectionError("Connection aborted."), "dropped before an answer came"),
    ],
)
def test_network_failures_name_their_cause_and_are_retried(hook, requests_mock, exc, cause):
    requests_mock.post(STATUS_URL, exc=exc())
    with pytest.raises(KoreConnectionError) as err:
        hook.get_campaign_status("cd-1")
    assert cause in str(err.value)
    assert BASE in str(err.value)
    assert requests_mock.call_count == 4


def _tls_closed() -> requests.exceptions.SSLError:
    """What requests raises when the server closes a TLS connection under a request (a stale keep-alive
    connection, a load balancer without a backend): the same SSLError class as a failed handshake."""
    eof = ssl.SSLEOFError(8, "EOF occurred in violation of protocol (_ssl.c:2427)")
    return requests.exceptions.SSLError(MaxRetryError(None, "/x", urllib3.exceptions.SSLError(eof)))


def test_a_tls_connection_closed_under_a_read_is_retried_not_taken_for_a_handshake_failure(hook, requests_mock):
    requests_mock.post(STATUS_URL, [{"exc": _tls_closed()}, {"json": STATUS_BODY}])
    assert hook.get_campaign_status("cd-1")["status"] == "Active"
    assert requests_mock.call_count == 2


def test_a_tls_handshake_failure_fails_at_once_naming_plain_http(hook, requests_mock):
    requests_mock.post(STATUS_URL, exc=requests.exceptions.SSLError("wrong version number"))
    with pytest.raises(KoreConnectionError) as err:
        hook.get_campaign_status("cd-1")
    assert requests_mock.call_count == 1
    assert hook.sleeps == []
    assert err.value.transient is False
    assert "plain HTTP" in str(err.value)


@pytest.mark.parametrize("code", [302, 308])
def test_a_redirect_is_an_error_naming_it_never_followed(hook, requests_mock, code):
    requests_mock.post(STATUS_URL, status_code=code, headers={"Location": "https://elsewhere.example/x"})
    requests_mock.post("https://elsewhere.example/x", json=STATUS_BODY)
    with pytest.raises(KoreApiError) as err:
        hook.get_campaign_status("cd-1")
    assert requests_mock.call_count == 1
    assert err.value.http_status == code
    assert "redirect" in str(err.value)
    assert "elsewhere.example" in str(err.value)


def test_read_timeout_on_a_read_is_retried(hook, requests_mock):
    requests_mock.post(STATUS_URL, [{"exc": requests.exceptions.ReadTimeout}, {"json": STATUS_BODY}])
    assert hook.get_campaign_status("cd-1")["status"] == "Active"


@pytest.mark.parametrize(
    ("method", "call", "url"),
    [
        ("get", lambda h: h.get_campaign("cd-1"), CAMPAIGN_URL),
        ("post", lambda h: h.stop_campaign("cd-1"), STOP_URL),
        ("post", lambda h: list(h.list_campaigns("sms")), LIST_URL),
        ("post", lambda h: list(h.iter_campaign_contacts("cd-1")), CONTACTS_URL),
    ],
)
def test_other_reads_are_retried_on_transient_failures(hook, requests_mock, method, call, url):
    answers = {
        CAMPAIGN_URL: {"status": "success", "data": {"_id": "cd-1"}},
        STOP_URL: STOP_BODY,
        LIST_URL: {"status": "success", "data": {"results": [], "hasMore": False}},
        CONTACTS_URL: {"status": "success", "data": {"results": [], "totalPages": 1}},
    }
    getattr(requests_mock, method)(
        url, [{"status_code": 502, "text": "gateway"}, {"exc": requests.exceptions.ReadTimeout}, {"json": answers[url]}]
    )
    call(hook)
    assert requests_mock.call_count == 3
    assert len(hook.sleeps) == 2


def test_max_retries_override(monkeypatch, requests_mock):
    set_conn(monkeypatch)
    hook = KoreHook(max_retries=0)
    hook._sleep = lambda s: None
    requests_mock.post(STATUS_URL, status_code=503, json={})
    with pytest.raises(KoreServerError):
        hook.get_campaign_status("cd-1")
    assert requests_mock.call_count == 1


# -- a start whose outcome is unknown --------------------------------------------------------------


def start_posts(requests_mock) -> int:
    return sum(1 for r in requests_mock.request_history if r.method == "POST" and "trigger=play" in r.url)


@pytest.mark.parametrize(
    ("lost", "cause"),
    [
        ({"status_code": 500, "text": "oops"}, "HTTP 500"),
        ({"status_code": 502, "text": "gateway"}, "HTTP 502"),
        ({"status_code": 504, "text": "gateway"}, "HTTP 504"),
        ({"exc": requests.exceptions.ReadTimeout}, "no answer in time"),
        ({"exc": requests.exceptions.ConnectionError("Connection aborted.")}, "dropped"),
        ({"exc": _tls_closed()}, "TLS connection was closed"),
    ],
)
@pytest.mark.parametrize("status", ["Active", "Ready", "Completed", "Preparing"])
def test_a_start_whose_answer_was_lost_is_never_resent_and_names_the_status(hook, requests_mock, lost, cause, status):
    requests_mock.post(START_URL, [lost, {"json": START_BODY}])
    requests_mock.post(STATUS_URL, json={"status": "success", "data": {"id": "cd-1", "status": status, "name": "n"}})
    with pytest.raises(KoreOutcomeUnknownError) as err:
        hook.start_campaign("cd-1")
    assert start_posts(requests_mock) == 1
    assert sum("/status" in r.url for r in requests_mock.request_history) == 1  # read once afterwards
    assert err.value.status == status
    assert repr(status) in str(err.value)
    assert cause in str(err.value)
    assert "'cd-1'" in str(err.value)
    assert hook.sleeps == []


def test_a_lost_start_whose_status_cannot_be_read_says_so(hook, requests_mock):
    requests_mock.post(START_URL, status_code=502, text="gateway")
    requests_mock.post(STATUS_URL, status_code=404, json={"errors": [{"msg": "Campaign not found"}]})
    with pytest.raises(KoreOutcomeUnknownError) as err:
        hook.start_campaign("cd-1")
    assert start_posts(requests_mock) == 1
    assert err.value.status is None
    assert "could not be read afterwards" in str(err.value)


def test_refused_start_is_retried_directly(hook, requests_mock):
    requests_mock.post(
        START_URL, [{"status_code": 429, "json": {}}, {"status_code": 503, "json": {}}, {"json": START_BODY}]
    )
    assert hook.start_campaign("cd-1") == START_BODY
    assert all("trigger=play" in r.url for r in requests_mock.request_history)
    assert start_posts(requests_mock) == 3


@pytest.mark.parametrize("never_opened", [requests.exceptions.ConnectTimeout, refused, unresolvable])
def test_start_that_never_connects_is_retried_without_a_status_read(hook, requests_mock, never_opened):
    requests_mock.post(START_URL, [{"exc": never_opened()}, {"json": START_BODY}])
    assert hook.start_campaign("cd-1") == START_BODY
    assert all("trigger=play" in r.url for r in requests_mock.request_history)
    assert start_posts(requests_mock) == 2


def test_a_start_refused_every_time_is_bounded_by_max_retries(hook, requests_mock):
    requests_mock.post(START_URL, status_code=503, json={"errors": [{"msg": "busy"}]})
    with pytest.raises(KoreServerError, match="busy"):
        hook.start_campaign("cd-1")
    assert start_posts(requests_mock) == 4  # max_retries=3


# -- errors ----------------------------------------------------------------------------------------


def test_not_found(hook, requests_mock):
    requests_mock.post(STATUS_URL, status_code=404, json={"errors": [{"msg": "Campaign not found", "code": 404}]})
    with pytest.raises(KoreNotFoundError, match="Campaign not found"):
        hook.get_campaign_status("cd-1")


def test_non_json_answer_is_a_clear_error(hook, requests_mock):
    requests_mock.post(STATUS_URL, text="<html>maintenance</html>", headers={"Content-Type": "text/html"})
    with pytest.raises(KoreBadResponseError, match="non-JSON"):
        hook.get_campaign_status("cd-1")


def test_status_failure_in_a_200_is_an_error(hook, requests_mock):
    requests_mock.post(STATUS_URL, json={"status": "failure", "errors": [{"msg": "Invalid stream"}]})
    with pytest.raises(KoreApiError, match="Invalid stream"):
        hook.get_campaign_status("cd-1")


# -- test_connection --------------------------------------------------------------------------------


def probe_url():
    return STATUS_URL.replace("cd-1", "cd-airflow-connection-test")


def test_test_connection_ok_on_404_for_the_unknown_probe_campaign(hook, requests_mock):
    requests_mock.post(probe_url(), status_code=404, json={"errors": [{"msg": "Campaign not found"}]})
    ok, message = hook.test_connection()
    assert ok, message
    assert "acc-1" in message


@pytest.mark.parametrize(
    "answer",
    [
        {"json": {"errors": [{"msg": "Stream not found"}]}},
        {"json": {"errors": [{"msg": "Campaign route not found"}]}},
        {"text": "<pre>Cannot POST /campaign/api/v2/public/st-1/campaign/cd-airflow-connection-test/status</pre>"},
        {"text": "<html>Not Found</html>"},
        {"text": ""},
    ],
)
def test_test_connection_fails_on_a_404_that_is_not_the_unknown_campaign(hook, requests_mock, answer):
    requests_mock.post(probe_url(), status_code=404, **answer)
    ok, message = hook.test_connection()
    assert not ok
    assert "check the Stream / Bot ID and the platform URL" in message


def test_test_connection_reports_a_bad_secret(hook, requests_mock):
    requests_mock.post(probe_url(), status_code=401, json={"errors": [{"msg": "Invalid token"}]})
    ok, message = hook.test_connection()
    assert not ok
    assert "Client ID / Client Secret" in message
    assert "'kore_default'" in message
    assert SECRET not in message


def test_test_connection_reports_an_unreachable_host(hook, requests_mock):
    requests_mock.post(probe_url(), exc=requests.exceptions.ConnectionError("refused"))
    ok, message = hook.test_connection()
    assert not ok
    assert "kore.test" in message


def test_test_connection_reports_a_broken_connection(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_KORE_DEFAULT", json.dumps({"conn_type": "kore", "host": BASE}))
    ok, message = KoreHook().test_connection()
    assert not ok
    assert "Client ID" in message


# -- secrets never leak ----------------------------------------------------------------------------


def test_no_secret_or_token_in_logs_or_exceptions(hook, requests_mock, caplog):
    caplog.set_level(logging.DEBUG)
    requests_mock.post(STATUS_URL, status_code=503, text=f"echo {SECRET}")
    requests_mock.post(START_URL, exc=requests.exceptions.ReadTimeout)
    errors = []
    for call in (lambda: hook.get_campaign_status("cd-1"), lambda: hook.start_campaign("cd-1")):
        with pytest.raises(Exception) as err:
            call()
        errors.append(f"{err.value!s} {err.value!r}")
    tokens = {r.headers["auth"] for r in requests_mock.request_history}
    assert tokens
    text = caplog.text + " ".join(errors) + repr(hook.config) + repr(hook.signer)
    assert SECRET not in text
    for token in tokens:
        assert token not in text


# -- the environment is read once, when the session is made --------------------------------------


def test_session_reads_proxy_and_ca_bundle_from_the_environment_once(monkeypatch):
    set_conn(monkeypatch)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/corp-ca.pem")
    session = KoreHook().session
    assert session.proxies["https"] == "http://proxy.example:3128"
    assert session.verify == "/etc/ssl/corp-ca.pem"
    # Read once: requests does not walk the environment again on each request.
    assert session.trust_env is False


def test_session_honours_no_proxy_and_an_explicit_verify(monkeypatch):
    set_conn(monkeypatch, verify=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", urlsplit(BASE).hostname)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/corp-ca.pem")
    session = KoreHook().session
    assert "https" not in session.proxies
    assert session.verify is False


def test_a_priority_stop_in_a_signal_handler_takes_no_lock_the_interrupted_call_holds(hook, requests_mock):
    """on_kill runs in a SIGTERM handler on the thread it interrupts, maybe mid-token or mid-request."""
    requests_mock.post(STOP_URL, json=STOP_BODY)
    hook.get_campaign_status  # noqa: B018 - the hook is built
    shared = hook.session

    def interrupted_request(*args, **kwargs):
        raise AssertionError("the stop used the session the interrupted call holds")

    shared.request = interrupted_request

    def deadlocked(signum, frame):
        raise AssertionError("the stop waited for a lock the interrupted call holds")

    old_handler = signal.signal(signal.SIGALRM, deadlocked)
    signal.alarm(10)  # a deadlock fails the test instead of hanging it
    try:
        with hook.signer._lock:  # as if the signal came while this thread was inside token()
            answer = hook.stop_campaign("cd-1", campaign_type="voice", deadline=time.time() + 25, priority=True)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old_handler)
    assert answer["status"] == "Stopped"
