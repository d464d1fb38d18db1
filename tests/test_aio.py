"""The shared async client against the Kore.ai simulator: requests, retries, auth, sharing, closing."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import ssl
import subprocess
import sys
import time

import aiohttp
import jwt
import pytest

from airflow_provider_kore import aio, api, engine, pacing, shared
from airflow_provider_kore.config import KoreConnectionConfig
from airflow_provider_kore.exceptions import (
    KoreApiError,
    KoreAuthError,
    KoreBadResponseError,
    KoreConfigurationError,
    KoreConnectionError,
    KoreNotFoundError,
    KoreRateLimitError,
    KoreServerError,
)
from airflow_provider_kore.testing import KoreSimulator

CONN_ID = "kore_test"
SECRET = "aio-test-client-secret-0123456789abcdef"
VOICE = "cd-voice-renewal-0001"
SMS = "cd-sms-welcome-0001"


def set_conn(monkeypatch, sim, conn_id=CONN_ID, password=None, host=None, **extra):
    extras = {"max_retries": 2, **extra}
    conn = json.loads(sim.airflow_conn_json(**extras))
    if password is not None:
        conn["password"] = password
    if host is not None:
        conn["host"] = host
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))


@pytest.fixture
def sim(monkeypatch):
    with KoreSimulator(client_secret=SECRET) as simulator:
        set_conn(monkeypatch, simulator)
        yield simulator


@pytest.fixture(autouse=True)
def backoff(monkeypatch):
    """Record retry delays instead of sleeping them."""
    delays: list[float] = []

    async def fake_sleep(seconds):
        delays.append(seconds)
        await asyncio.sleep(0)

    monkeypatch.setattr(aio, "_sleep", fake_sleep)
    yield delays
    shared.reset_shared_clients()


@pytest.fixture(autouse=True)
def pacing_waits(monkeypatch, backoff):
    """Pacing waits (budget turns, 429 pauses) pass at once: the pacing clock jumps by each wait.

    Retry backoff (recorded by ``backoff``) moves the pacing clock too, so deadlines come.
    """
    waits: list[float] = []
    real = time.monotonic

    def clock():
        return real() + sum(waits) + sum(backoff)

    async def fast_sleep(seconds):
        waits.append(seconds)
        await asyncio.sleep(0)

    monkeypatch.setattr(pacing, "clock", clock)
    monkeypatch.setattr(pacing, "_sleep", fast_sleep)
    return waits


@pytest.fixture
def lookups(monkeypatch):
    """Count connection lookups (each one takes a while in its worker thread, as a real one may)."""
    calls: list[str] = []
    real = KoreConnectionConfig.load

    def counting(conn_id):
        calls.append(conn_id)
        time.sleep(0.01)
        return real(conn_id)

    monkeypatch.setattr(KoreConnectionConfig, "load", counting)
    return calls


def call(coro_fn, conn_id=CONN_ID):
    """Run ``coro_fn(client)`` in a fresh loop with the shared client; return (result, client)."""

    async def main():
        async with shared.shared_client(conn_id) as client:
            return await coro_fn(client), client

    return asyncio.run(main())


def call_error(coro_fn, conn_id=CONN_ID):
    holder = {}

    async def main():
        async with shared.shared_client(conn_id) as client:
            holder["client"] = client
            await coro_fn(client)

    with pytest.raises(Exception) as info:
        asyncio.run(main())
    return info.value, holder["client"]


# -- requests as documented -------------------------------------------------------------------


def test_status_read_sends_the_documented_request(sim):
    sim.set_status(VOICE, "Active")
    data, client = call(lambda c: c.get_campaign_status(VOICE))
    assert data == {"id": VOICE, "status": "Active", "name": "Policy Renewal Voice Campaign"}
    (req,) = sim.requests
    assert req.method == "POST"
    assert req.path == f"/campaign/api/v2/public/{sim.stream_id}/campaign/{VOICE}/status"
    assert req.query == {"accountId": sim.account_id, "view": "status"}
    assert req.headers["iid"] == sim.stream_id
    assert req.headers["accountid"] == sim.account_id
    assert req.headers["content-type"] == "application/json"
    assert req.body == "{}"
    claims = jwt.decode(req.headers["auth"], sim.client_secret, algorithms=["HS256"])
    assert claims["appId"] == sim.client_id
    assert client.requests_sent == 1
    assert client.retries == 0


def test_stop_campaign_sends_the_stop_request_and_returns_the_answer(sim):
    sim.set_status(VOICE, "Active")
    answer, _ = call(lambda c: c.stop_campaign(VOICE))
    assert answer["status"] == "Stopped"
    assert answer["campaignInstanceId"]
    (req,) = sim.requests
    assert req.path == f"/api/v2/public/{sim.stream_id}/campaign/trigger/{VOICE}"
    assert req.query == {"accountId": sim.account_id, "campaignType": "voice", "trigger": "stop"}
    assert sim.status_of(VOICE) == "Stopped"


def test_stream_id_argument_overrides_the_connection(sim):
    error, _ = call_error(lambda c: c.get_campaign_status(VOICE, stream_id="st-other"))
    assert isinstance(error, KoreNotFoundError)
    assert sim.requests[0].path.startswith("/campaign/api/v2/public/st-other/")


def test_prepared_requests_are_built_once_per_campaign(sim, monkeypatch):
    built = []
    real = api.prepare
    monkeypatch.setattr(api, "prepare", lambda *a, **k: built.append((a[1], k["campaign_id"])) or real(*a, **k))

    async def three_reads(client):
        for _ in range(3):
            await client.get_campaign_status(VOICE)
        await client.get_campaign_status(SMS)

    call(three_reads)
    assert built == [("get_campaign_status", VOICE), ("get_campaign_status", SMS)]


def test_invalid_input_is_refused_before_sending(sim):
    error, _ = call_error(lambda c: c.get_campaign_status("../etc"))
    assert isinstance(error, KoreConfigurationError)
    error, _ = call_error(lambda c: c.stop_campaign(VOICE, campaign_type="fax"))
    assert isinstance(error, KoreConfigurationError)
    assert len(sim.requests) == 0


# -- errors and retries -----------------------------------------------------------------------


def test_404_is_not_retried(sim):
    error, client = call_error(lambda c: c.get_campaign_status("cd-unknown"))
    assert isinstance(error, KoreNotFoundError)
    assert "'cd-unknown'" in str(error)
    assert "Campaign not found" in str(error)
    assert client.requests_sent == 1


def test_400_is_not_retried(sim):
    error, client = call_error(lambda c: c.stop_campaign(VOICE))  # a Ready campaign cannot be stopped
    assert type(error) is KoreApiError
    assert error.http_status == 400
    assert client.requests_sent == 1


def test_5xx_is_retried_then_answered(sim, backoff):
    sim.inject_fault("get_campaign_status", status=502)
    sim.inject_fault("get_campaign_status", status=503)
    data, client = call(lambda c: c.get_campaign_status(VOICE))
    assert data["status"] == "Ready"
    assert client.requests_sent == 3
    assert client.retries == 2
    assert len(backoff) == 2


def test_5xx_after_every_retry_raises_server_error(sim):
    sim.inject_fault("get_campaign_status", status=500, times=None)
    error, client = call_error(lambda c: c.get_campaign_status(VOICE))
    assert isinstance(error, KoreServerError)
    assert error.transient
    assert client.requests_sent == 3  # max_retries=2 from the connection


def test_429_honours_retry_after_by_pausing_the_connection(sim, backoff, pacing_waits):
    sim.inject_fault("get_campaign_status", status=429, retry_after=7)
    data, client = call(lambda c: c.get_campaign_status(VOICE))
    assert data["id"] == VOICE
    assert client.rate_limited == 1
    assert client.retries == 0  # a 429 is not a retry
    assert backoff == []
    assert client.pacing.stats()["pauses"] == 1
    assert sum(pacing_waits) >= 6.9  # measured from when the 429 came back


def test_429s_never_use_up_retries(sim, monkeypatch, backoff, pacing_waits):
    set_conn(monkeypatch, sim, max_retries=0)
    sim.inject_fault("get_campaign_status", status=429, times=3)
    data, client = call(lambda c: c.get_campaign_status(VOICE))
    assert data["id"] == VOICE
    assert client.rate_limited == 3
    assert client.requests_sent == 4
    assert backoff == []
    stats = client.pacing.stats()
    assert stats["pauses"] == 3  # each refused request was sent after the previous pause
    assert len(pacing_waits) >= 3
    assert all(wait > 0 for wait in pacing_waits)


def test_a_deadline_ends_the_wait_for_a_turn_with_a_rate_limit_error(sim, monkeypatch):
    sim.inject_fault("get_campaign_status", status=429, retry_after=60)

    async def read(client):
        return await client.get_campaign_status(VOICE, deadline=time.time() + 30)

    error, client = call_error(read)
    assert isinstance(error, KoreRateLimitError)
    assert "429" in str(error)
    assert "before the deadline" in str(error)
    assert client.requests_sent == 1


def end_outage_after(sim, requests: int) -> None:
    """Kore is down (503) for the first ``requests`` requests, then answers again."""
    sim.set_outage(True)

    def count(record):
        if len(sim.requests) >= requests:
            sim.set_outage(False)

    sim.on_request = count


def test_a_patient_read_rides_out_an_outage_without_spending_retries(sim, monkeypatch, backoff, pacing_waits):
    set_conn(monkeypatch, sim, max_retries=0)
    end_outage_after(sim, 5)
    data, client = call(lambda c: c.get_campaign_status(VOICE, patient=True, deadline=time.time() + 600))
    assert data["id"] == VOICE
    assert client.requests_sent == 6  # 5 answered 503, then the good one
    assert backoff == []  # no retry spent: the connection paused instead
    assert client.retries == 0
    assert len(pacing_waits) >= 5  # a pause before each probe, not a burst
    assert all(wait > 0 for wait in pacing_waits)


def test_an_impatient_read_fails_after_its_retries_in_an_outage(sim, backoff):
    end_outage_after(sim, 50)
    error, client = call_error(lambda c: c.get_campaign_status(VOICE, deadline=time.time() + 600))
    assert isinstance(error, KoreServerError)
    assert client.requests_sent == 3  # max_retries=2
    assert len(backoff) == 2


def test_a_patient_read_gives_up_at_its_deadline_with_the_last_error(sim, pacing_waits):
    end_outage_after(sim, 200)  # never back within the deadline (a bound, so a broken pause fails, not hangs)

    async def read(client):
        return await client.get_campaign_status(VOICE, patient=True, deadline=time.time() + 60)

    error, client = call_error(read)
    assert isinstance(error, KoreServerError)
    assert error.deadline_reached
    assert "503" in str(error)
    assert 3 < client.requests_sent < 200
    assert sum(pacing_waits) <= 60


def test_a_stop_does_not_queue_behind_a_rate_limit_pause(sim, pacing_waits, backoff):
    sim.set_status(VOICE, "Active")
    sim.inject_fault("get_campaign_status", status=429, retry_after=60)

    async def main(client):
        with pytest.raises(KoreRateLimitError):
            await client.get_campaign_status(SMS, deadline=time.time() + 5)  # the connection is now paused
        waited = sum(pacing_waits)
        answer = await client.stop_campaign(VOICE, deadline=time.time() + 25)
        return answer, sum(pacing_waits) - waited

    (answer, waited_for_stop), _ = call(main)
    assert answer["status"] == "Stopped"
    assert waited_for_stop == 0
    assert backoff == []


def test_a_stop_is_retried_until_its_deadline_not_its_max_retries(sim, backoff):
    sim.set_status(VOICE, "Active")
    sim.inject_fault("stop_campaign", status=429, times=2)
    sim.inject_fault("stop_campaign", status=503, times=1)
    answer, client = call(lambda c: c.stop_campaign(VOICE, deadline=time.time() + 25))
    assert answer["status"] == "Stopped"
    assert client.requests_sent == 4  # more than max_retries=2 allows: a stop counts its deadline
    assert len(backoff) == 3  # a 429 is waited out by the stop itself, not behind the pause
    assert sum(backoff) <= 25


def test_a_stop_gives_up_at_its_deadline(sim, backoff):
    sim.set_status(VOICE, "Active")
    sim.inject_fault("stop_campaign", status=503, times=None)
    error, _ = call_error(lambda c: c.stop_campaign(VOICE, deadline=time.time() + 25))
    assert isinstance(error, KoreServerError)
    assert error.deadline_reached
    assert sum(backoff) <= 25
    assert sim.status_of(VOICE) == "Active"


def test_the_budget_spaces_requests_and_a_deadline_bounds_the_wait(sim, monkeypatch, pacing_waits):
    set_conn(monkeypatch, sim, max_requests_per_minute=6)

    async def reads(client):
        await client.get_campaign_status(VOICE)
        await client.get_campaign_status(VOICE)
        with pytest.raises(KoreRateLimitError, match="request budget"):
            await client.get_campaign_status(VOICE, deadline=time.time() + 1)
        return client.pacing.stats()

    stats, _ = call(reads)
    # One turn waited for: the second read is due 61/6 s after the first was sent (the wait is that, less the
    # first read's own time, which a loaded machine stretches).
    assert len(pacing_waits) == 1
    assert 61 / 6 - 1 < pacing_waits[0] <= 61 / 6
    assert stats["requests"] == 2
    assert stats["current_rate_per_minute"] == pytest.approx(60 * 6 / 61, abs=0.1)


# -- coalescing ---------------------------------------------------------------------------------


def test_concurrent_reads_of_one_campaign_share_one_request(sim):
    async def reads(client):
        waits = [aio.WaitCounters() for _ in range(10)]
        answers = await asyncio.gather(*(client.get_campaign_status(VOICE, wait=w) for w in waits))
        return answers, waits

    (answers, waits), client = call(reads)
    assert all(a == answers[0] for a in answers)
    assert sim.count("get_campaign_status") == 1
    assert sum(w.requests for w in waits) == 1
    assert sum(w.coalesced for w in waits) == 9
    assert client.pacing.stats()["coalesced"] == 9


def test_a_recent_answer_is_reused_within_max_age_but_never_by_the_wait_that_read_it(sim):
    async def reads(client):
        first, second = aio.WaitCounters(), aio.WaitCounters()
        await client.get_campaign_status(VOICE, max_age=60, wait=first)
        await client.get_campaign_status(VOICE, max_age=60, wait=second)  # reuses first's answer
        await client.get_campaign_status(VOICE, max_age=60, wait=first)  # its own: reads again
        await client.get_campaign_status(VOICE, max_age=0, wait=second)  # no reuse asked for
        return first, second

    (first, second), _ = call(reads)
    assert sim.count("get_campaign_status") == 3
    assert (first.requests, first.coalesced) == (2, 0)
    assert (second.requests, second.coalesced) == (1, 1)


def test_reads_of_different_campaigns_are_not_shared(sim):
    async def reads(client):
        return await asyncio.gather(client.get_campaign_status(VOICE), client.get_campaign_status(SMS))

    (voice, sms), _ = call(reads)
    assert (voice["id"], sms["id"]) == (VOICE, SMS)
    assert sim.count("get_campaign_status") == 2


def test_an_error_is_shared_by_the_reads_that_joined(sim):
    async def reads(client):
        return await asyncio.gather(
            *(client.get_campaign_status("cd-missing") for _ in range(5)), return_exceptions=True
        )

    errors, _ = call(reads)
    assert all(isinstance(e, KoreNotFoundError) for e in errors)
    assert sim.count("get_campaign_status") == 1


def test_a_cancelled_leader_leaves_the_joined_reads_to_read_for_themselves(sim):
    sim.inject_fault("get_campaign_status", delay=0.3)

    async def reads(client):
        leader = asyncio.ensure_future(client.get_campaign_status(VOICE))
        await asyncio.sleep(0.05)
        follower = asyncio.ensure_future(client.get_campaign_status(VOICE))
        await asyncio.sleep(0.05)
        leader.cancel()
        return await follower

    data, _ = call(reads)
    assert data["id"] == VOICE
    assert sim.count("get_campaign_status") == 2


def test_stop_requests_are_never_coalesced(sim):
    sim.set_status(VOICE, "Active")
    sim.set_status(SMS, "Active")

    async def stops(client):
        return await asyncio.gather(client.stop_campaign(VOICE), client.stop_campaign(VOICE), return_exceptions=True)

    _, _ = call(stops)
    assert sim.count("stop_campaign") == 2


def test_401_signs_a_new_token_once(sim):
    sim.inject_fault("get_campaign_status", status=401)
    data, client = call(lambda c: c.get_campaign_status(VOICE))
    assert data["id"] == VOICE
    assert client.auth_refreshes == 1
    assert client.signer.signed == 2
    first, second = (r.headers["auth"] for r in sim.requests)
    assert first != second
    assert client.retries == 0


def test_the_token_is_signed_after_the_wait_for_a_turn(sim, pacing_waits):
    """A 429 pause that outlasts the cached token: the request after it carries a token signed after the wait,
    so it is not refused (no 401, no re-sign). The signer's clock runs 400 s behind the simulator's, plus the
    pacing waits, so every token it signs is valid there when it should be."""
    jump = [0.0]
    sim.inject_fault("get_campaign_status", status=429, retry_after=120)

    async def read(client):
        client.signer = shared.JwtSigner(client.config, clock=lambda: time.time() - 400 + jump[0] + sum(pacing_waits))
        client.signer.token()
        jump[0] = 200  # the cached token is 200 s old, valid for 100 s more by the signer's clock
        return await client.get_campaign_status(VOICE)

    data, client = call(read)
    assert data["id"] == VOICE
    assert [r.status_code for r in sim.requests] == [429, 200]
    assert client.auth_refreshes == 0
    assert client.signer.signed == 2


def test_wrong_secret_fails_with_auth_error_after_one_resign_and_one_reread(sim, monkeypatch, lookups):
    set_conn(monkeypatch, sim, password="wrong-secret-0123456789abcdef0123456789")
    error, client = call_error(lambda c: c.get_campaign_status(VOICE))
    assert isinstance(error, KoreAuthError)
    assert error.http_status == 401
    assert not error.transient
    assert client.requests_sent == 2
    assert lookups == [CONN_ID, CONN_ID]  # the first read and one re-read
    assert "wrong-secret-0123456789abcdef0123456789" not in str(error)


def test_rotated_secret_is_picked_up_by_rereading_the_connection(sim, monkeypatch, lookups):
    set_conn(monkeypatch, sim, password="old-secret-0123456789abcdef0123456789")

    def rotate(record):
        if record.status_code == 401:
            set_conn(monkeypatch, sim)  # the new secret lands in the connection meanwhile

    sim.on_request = rotate
    data, client = call(lambda c: c.get_campaign_status(VOICE))
    assert data["id"] == VOICE
    assert [r.status_code for r in sim.requests] == [401, 401, 200]
    assert len(lookups) == 2
    assert client.config.client_secret == sim.client_secret


def test_non_json_answer_is_a_bad_response(sim):
    sim.inject_fault("get_campaign_status", non_json=True)
    error, client = call_error(lambda c: c.get_campaign_status(VOICE))
    assert isinstance(error, KoreBadResponseError)
    assert "non-JSON" in str(error)
    assert client.requests_sent == 1


def test_read_timeout_is_retried_then_raises_connection_error(sim, monkeypatch):
    set_conn(monkeypatch, sim, timeout=0.2, max_retries=1)
    sim.inject_fault("get_campaign_status", delay=1.0, times=2)
    error, client = call_error(lambda c: c.get_campaign_status(VOICE))
    assert isinstance(error, KoreConnectionError)
    assert error.transient
    message = str(error)
    assert "get campaign status" in message
    assert repr(VOICE) in message
    assert "TimeoutError" in message
    assert "after 2 attempts" in message
    assert client.requests_sent == 2
    assert client.retries == 1


def test_refused_connection_raises_connection_error(monkeypatch, sim):
    sim.stop()  # nothing listens on its port any more
    set_conn(monkeypatch, sim, max_retries=1)
    error, client = call_error(lambda c: c.get_campaign_status(VOICE))
    assert isinstance(error, KoreConnectionError)
    assert error.transient
    assert "the connection was refused" in str(error)
    assert sim.url in str(error)
    assert client.requests_sent == 2


def test_a_tls_handshake_failure_fails_at_once_naming_plain_http(monkeypatch, sim):
    set_conn(monkeypatch, sim, host=sim.url.replace("http://", "https://"))  # TLS to a plain-HTTP server
    error, client = call_error(lambda c: c.get_campaign_status(VOICE))
    assert isinstance(error, KoreConnectionError)
    assert error.transient is False
    assert "plain HTTP" in str(error)
    assert client.requests_sent == 1
    assert client.retries == 0


def test_a_redirect_is_an_error_never_followed(sim):
    sim.inject_fault("get_campaign_status", status=302, body="")
    error, client = call_error(lambda c: c.get_campaign_status(VOICE))
    assert type(error) is KoreApiError
    assert error.http_status == 302
    assert "redirect" in str(error)
    assert client.requests_sent == 1
    assert len(sim.requests) == 1


def _tls_error_mid_answer() -> BaseException:
    try:
        try:
            raise ssl.SSLError(1, "[SSL: DECRYPTION_FAILED_OR_BAD_RECORD_MAC] decryption failed")
        except ssl.SSLError as exc:
            raise aiohttp.ClientOSError(5, "reading the answer from kore.test") from exc
    except aiohttp.ClientOSError as wrapped:
        return wrapped


@pytest.mark.parametrize(
    ("make", "kind", "cause"),
    [
        (
            lambda: aiohttp.ClientConnectorError(
                aiohttp.client_reqrep.ConnectionKey("kore.test", 443, True, True, None, None, None),
                socket.gaierror(-2, "Name or service not known"),
            ),
            engine.CONNECT,
            "could not be resolved",
        ),
        (
            lambda: aiohttp.ClientConnectorError(
                aiohttp.client_reqrep.ConnectionKey("kore.test", 443, True, True, None, None, None),
                ConnectionRefusedError(111, "Connection refused"),
            ),
            engine.CONNECT,
            "refused",
        ),
        (lambda: asyncio.TimeoutError(), engine.TIMEOUT, "in time"),
        (lambda: aiohttp.ServerDisconnectedError(), engine.DROPPED, "dropped"),
        (lambda: aiohttp.ClientPayloadError("truncated"), engine.DROPPED, "dropped"),
        (lambda: ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"), engine.TLS, "TLS"),
        # A TLS error in the middle of an answer (aiohttp wraps it): the request was sent, the connection
        # dropped; a patient read rides it out as an outage, not as a final handshake failure.
        (_tls_error_mid_answer, engine.DROPPED, "dropped"),
        # The server closed the TLS connection (no backend behind a load balancer): an outage, as in the hook.
        (
            lambda: aiohttp.ClientConnectorSSLError(
                aiohttp.client_reqrep.ConnectionKey("kore.test", 443, True, True, None, None, None),
                ssl.SSLEOFError(8, "EOF occurred in violation of protocol"),
            ),
            engine.DROPPED,
            "TLS connection was closed",
        ),
    ],
)
def test_network_failure_classifies_aiohttp_errors_without_their_text(make, kind, cause):
    failure = aio.network_failure(make())
    assert failure.kind == kind
    assert cause in failure.detail
    assert "kore.test" not in failure.detail  # the exception's text names the URL: left out


def test_a_connect_timeout_never_left(monkeypatch):
    timeout_error = getattr(aiohttp, "ConnectionTimeoutError", None)
    if timeout_error is None:
        pytest.skip("aiohttp < 3.10 has no ConnectionTimeoutError")
    assert aio.network_failure(timeout_error()).kind == engine.CONNECT


def test_logs_and_errors_carry_no_secret_or_token(sim, caplog):
    caplog.set_level(logging.DEBUG)
    sim.inject_fault("get_campaign_status", status=401)
    sim.inject_fault("get_campaign_status", status=503)
    sim.inject_fault("get_campaign_status", status=404, body={"errors": [{"msg": f"bad {sim.client_secret}"}]})
    error, _ = call_error(lambda c: c.get_campaign_status(VOICE))
    assert isinstance(error, KoreNotFoundError)
    tokens = {r.headers["auth"] for r in sim.requests}
    texts = [str(error)] + [record.getMessage() for record in caplog.records]
    for text in texts:
        assert sim.client_secret not in text
        assert "eyJ" not in text
        assert not any(token in text for token in tokens)
    assert any("retry 1 in" in record.getMessage() for record in caplog.records)


# -- one client per loop and connection -------------------------------------------------------


def test_users_in_one_loop_share_one_client_lookup_session_and_token(sim, lookups):
    async def main():
        clients = []

        async def one(n):
            async with shared.shared_client(CONN_ID) as client:
                clients.append(client)
                await client.get_campaign_status(VOICE if n % 2 else SMS)
                return client.session

        sessions = await asyncio.gather(*(one(n) for n in range(50)))
        return clients, sessions

    clients, sessions = asyncio.run(main())
    assert len({id(c) for c in clients}) == 1
    assert len({id(s) for s in sessions}) == 1
    assert lookups == [CONN_ID]
    client = clients[0]
    assert client.signer.signed == 1
    assert len({r.headers["auth"] for r in sim.requests}) == 1
    # Concurrent reads of one campaign share one request: two campaigns, two requests.
    assert client.requests_sent == 2
    assert client.pacing.stats()["coalesced"] == 48
    assert sessions[0].closed
    assert client.closed
    assert shared.active_clients() == []


def test_each_connection_id_gets_its_own_client(sim, monkeypatch):
    set_conn(monkeypatch, sim, conn_id="kore_other")

    async def main():
        async with shared.shared_client(CONN_ID) as a, shared.shared_client("kore_other") as b:
            async with shared.shared_client(CONN_ID) as a2:
                assert a2 is a
                assert a.users == 2
            assert a.users == 1
            assert len(shared.active_clients()) == 2
            return a, b

    a, b = asyncio.run(main())
    assert a is not b
    assert a.closed
    assert b.closed


def test_each_event_loop_gets_its_own_client(sim):
    first = call(lambda c: c.get_campaign_status(VOICE))[1]
    second = call(lambda c: c.get_campaign_status(VOICE))[1]
    assert first is not second
    assert first.closed
    assert second.closed


def test_session_closes_only_after_the_last_user(sim):
    async def main():
        outer = shared.shared_client(CONN_ID)
        client = await outer.__aenter__()
        async with shared.shared_client(CONN_ID):
            pass
        assert not client.session.closed
        session = client.session
        await outer.release()
        await outer.release()  # a second release does nothing
        return client, session

    client, session = asyncio.run(main())
    assert session.closed
    assert client.users == 0


def test_a_new_user_after_the_last_release_gets_a_fresh_client(sim, lookups):
    async def main():
        async with shared.shared_client(CONN_ID) as first:
            await first.get_campaign_status(VOICE)
        async with shared.shared_client(CONN_ID) as second:
            await second.get_campaign_status(VOICE)
        return first, second

    first, second = asyncio.run(main())
    assert first is not second
    assert len(lookups) == 2


def test_a_missing_connection_fails_every_waiter_with_one_lookup(sim, monkeypatch, lookups):
    monkeypatch.delenv(f"AIRFLOW_CONN_{CONN_ID.upper()}")

    async def main():
        async def one():
            async with shared.shared_client(CONN_ID):
                pass

        results = await asyncio.gather(*(one() for _ in range(10)), return_exceptions=True)
        assert shared.active_clients() == []
        set_conn(monkeypatch, sim)  # fixed: the next user looks it up again
        async with shared.shared_client(CONN_ID) as client:
            await client.get_campaign_status(VOICE)
        return results

    results = asyncio.run(main())
    assert len(results) == 10
    assert all(isinstance(r, Exception) and CONN_ID in str(r) for r in results)
    assert len(lookups) == 2


def test_an_incomplete_connection_is_a_configuration_error(monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_KORE_TEST",
        json.dumps({"conn_type": "kore", "host": "https://kore.test", "login": "cs-1", "password": "s" * 20}),
    )

    async def main():
        async with shared.shared_client(CONN_ID):
            pass

    with pytest.raises(KoreConfigurationError, match="account_id"):
        asyncio.run(main())
    assert shared.active_clients() == []


def test_cancelling_a_holder_releases_and_closes(sim):
    async def main():
        entered = asyncio.Event()
        seen = {}

        async def holder():
            async with shared.shared_client(CONN_ID) as client:
                seen["client"] = client
                entered.set()
                await asyncio.sleep(3600)

        task = asyncio.create_task(holder())
        await entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0)  # the shielded close runs as its own task
        return seen["client"]

    client = asyncio.run(main())
    assert client.users == 0
    assert client.closed
    assert shared.active_clients() == []


def test_client_outside_shared_client_is_not_open():
    client = aio.KoreAsyncClient(CONN_ID)
    with pytest.raises(RuntimeError, match="shared_client"):
        _ = client.config


# -- TLS ----------------------------------------------------------------------------------------


def test_ca_bundle_path_builds_one_context_per_process(sim, monkeypatch):
    bundle = ssl.get_default_verify_paths().cafile or ""
    if not bundle:
        import certifi

        bundle = certifi.where()
    set_conn(monkeypatch, sim, verify=bundle)
    monkeypatch.setattr(aio, "_ssl_contexts", {})
    call(lambda c: c.get_campaign_status(VOICE))
    context = aio._ssl_contexts[bundle]
    assert isinstance(context, ssl.SSLContext)
    call(lambda c: c.get_campaign_status(VOICE))
    assert aio._ssl_contexts == {bundle: context}


def test_a_connection_changed_after_a_401_brings_its_tls_setting_with_it(sim, monkeypatch, lookups):
    """A connection fixed after a refused token (new secret, and now a CA bundle) is used whole from the next
    request: its TLS setting too, not only its credentials (the hook builds a new session; so must the client)."""
    bundle = ssl.get_default_verify_paths().cafile or ""
    if not bundle:
        import certifi

        bundle = certifi.where()
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    set_conn(monkeypatch, sim, password="old-secret-0123456789abcdef0123456789")
    monkeypatch.setattr(aio, "_ssl_contexts", {})

    def rotate(record):
        if record.status_code == 401:
            set_conn(monkeypatch, sim, verify=bundle)

    sim.on_request = rotate
    data, client = call(lambda c: c.get_campaign_status(VOICE))
    assert data["id"] == VOICE
    assert [r.status_code for r in sim.requests] == [401, 401, 200]
    assert client.config.verify == bundle
    assert list(aio._ssl_contexts) == [bundle]  # built for the changed connection


def test_unreadable_ca_bundle_is_a_configuration_error(sim, monkeypatch, tmp_path):
    set_conn(monkeypatch, sim, verify=str(tmp_path / "missing.pem"))

    async def main():
        async with shared.shared_client(CONN_ID):
            pass

    with pytest.raises(KoreConfigurationError, match="CA bundle"):
        asyncio.run(main())


def test_the_triggerer_trusts_the_ca_bundle_of_requests_ca_bundle_as_workers_do(sim, monkeypatch, tmp_path):
    """A corporate CA named by REQUESTS_CA_BUNDLE (or CURL_CA_BUNDLE): the hook's session uses it, so must the
    async client, or a DAG that works in a worker fails its deferred wait in the triggerer."""
    bundle = ssl.get_default_verify_paths().cafile or ""
    if not bundle:
        import certifi

        bundle = certifi.where()
    set_conn(monkeypatch, sim)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", bundle)
    monkeypatch.setattr(aio, "_ssl_contexts", {})
    call(lambda c: c.get_campaign_status(VOICE))
    assert list(aio._ssl_contexts) == [bundle]

    monkeypatch.delenv("REQUESTS_CA_BUNDLE")
    monkeypatch.setenv("CURL_CA_BUNDLE", str(tmp_path / "missing.pem"))

    async def main():
        async with shared.shared_client(CONN_ID):
            pass

    with pytest.raises(KoreConfigurationError, match="CURL_CA_BUNDLE"):
        asyncio.run(main())


def test_importing_the_client_and_trigger_does_not_import_aiohttp():
    code = (
        "import sys, airflow_provider_kore.aio, airflow_provider_kore.triggers.campaign; "
        "assert 'aiohttp' not in sys.modules, 'aiohttp imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
