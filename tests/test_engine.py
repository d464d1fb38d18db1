"""The one request engine: its decisions alone, then one table of scenarios through BOTH drivers.

The sync hook (``requests``) and the async client (``aiohttp``) are thin drivers of
:class:`airflow_provider_kore.engine.Exchange`; every scenario below runs through each of them
against the simulator and must end the same way: the same result or exception class, and the
same number of requests on the wire.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from airflow_provider_kore import aio, api, engine, pacing, shared
from airflow_provider_kore.config import KoreConnectionConfig
from airflow_provider_kore.exceptions import (
    KoreApiError,
    KoreAuthError,
    KoreBadResponseError,
    KoreConnectionError,
    KoreNotFoundError,
    KoreOutcomeUnknownError,
    KoreRateLimitError,
    KoreServerError,
    Secrets,
)
from airflow_provider_kore.hooks.kore import KoreHook
from airflow_provider_kore.testing import KoreSimulator

SECRET = "engine-test-client-secret-0123456789abcdef"
CONN_ID = "kore_engine"
VOICE = "cd-voice-renewal-0001"

# ---------------------------------------------------------------------------------------------
# The engine alone: what happened -> what to do.

CONFIG = KoreConnectionConfig(
    base_url="https://kore.test", client_id="cs-1", client_secret=SECRET, account_id="acc-1", stream_id="st-1"
)
STATUS_OK = json.dumps({"status": "success", "data": {"id": "cd-1", "status": "Active"}}).encode()


def exchange(operation: str = "get_campaign_status", **kwargs: Any) -> engine.Exchange:
    params = {"campaign_id": "cd-1", "campaign_type": "sms" if operation == "start_campaign" else "voice"}
    call = api.prepare(CONFIG, operation, **params)
    return engine.Exchange(call, secrets=Secrets(SECRET), max_retries=2, **kwargs)


def test_a_good_answer_is_done_and_recorded_as_accepted():
    decision = exchange().decide(engine.Answer(200, STATUS_OK), 0.0)
    assert (decision.action, decision.pacing) == ("done", "answer")
    assert decision.result["data"]["status"] == "Active"


@pytest.mark.parametrize("status", [500, 502, 504])
def test_a_lost_start_answer_is_an_unknown_outcome_never_a_retry(status):
    decision = exchange("start_campaign").decide(engine.Answer(status, b"{}"), 0.0)
    assert decision.action == "unknown"
    assert isinstance(decision.error, KoreOutcomeUnknownError)
    assert f"HTTP {status}" in str(decision.error)


@pytest.mark.parametrize("kind", [engine.TIMEOUT, engine.DROPPED])
def test_a_start_sent_without_an_answer_is_an_unknown_outcome(kind):
    decision = exchange("start_campaign").decide(engine.NetworkFailure(kind, "X: lost"), 0.0)
    assert decision.action == "unknown"


@pytest.mark.parametrize(
    "what",
    [engine.Answer(503, b"{}"), engine.NetworkFailure(engine.CONNECT, "ConnectionError: refused")],
    ids=["503", "never-connected"],
)
def test_a_start_kore_refused_is_retried(what):
    assert exchange("start_campaign").decide(what, 0.0).action == "retry"


def test_a_429_requeues_behind_the_pause_without_spending_a_retry():
    ex = exchange()
    for _ in range(10):
        decision = ex.decide(engine.Answer(429, b"{}", retry_after="7"), 0.0)
        assert (decision.action, decision.pacing, decision.retry_after) == ("requeue", "rate_limited", 7.0)
    assert ex.retries == 0


def test_a_priority_stop_waits_a_429_out_itself_within_its_deadline():
    ex = exchange("stop_campaign", priority=True, deadline=25.0)
    decision = ex.decide(engine.Answer(429, b"{}", retry_after="3"), 0.0)
    assert decision.action == "retry"
    assert 3.0 <= decision.delay < 25.0
    # A retry that would land past the deadline is not made: the last error is raised.
    late = ex.decide(engine.Answer(429, b"{}", retry_after="30"), 0.0)
    assert late.action == "fail"
    assert late.error.deadline_reached


def test_a_patient_read_pauses_the_connection_on_an_outage_and_spends_no_retry():
    ex = exchange(patient=True, deadline=600.0)
    for what in (engine.Answer(503, b"{}"), engine.NetworkFailure(engine.DROPPED, "X: dropped")):
        decision = ex.decide(what, 0.0)
        assert (decision.action, decision.pacing) == ("requeue", "unavailable")
    assert ex.retries == 0
    # When the pacer has no turn before the deadline, the last failure is what is raised.
    error = ex.out_of_time("unavailable")
    assert isinstance(error, KoreConnectionError)
    assert error.deadline_reached


def test_retries_stop_at_max_retries_and_name_the_attempts():
    ex = exchange()
    decisions = [ex.decide(engine.Answer(500, b"{}"), 0.0) for _ in range(3)]
    assert [d.action for d in decisions] == ["retry", "retry", "fail"]
    assert "after 3 attempts" in str(decisions[-1].error)


def test_a_retry_is_never_scheduled_past_the_deadline():
    decision = exchange(deadline=0.1).decide(engine.Answer(502, b"{}"), 0.0)
    assert decision.action == "fail"
    assert isinstance(decision.error, KoreServerError)


def test_401_re_signs_then_reloads_then_fails_with_the_hint():
    ex = exchange()
    refused = engine.Answer(401, json.dumps({"errors": [{"msg": "Invalid token"}]}).encode())
    assert ex.decide(refused, 0.0).action == "resign"
    assert ex.decide(refused, 0.0).action == "reload"
    decision = ex.reloaded(changed=False)
    assert isinstance(decision.error, KoreAuthError)
    assert "Client ID / Client Secret" in str(decision.error)


def test_401_after_a_changed_connection_signs_again():
    ex = exchange()
    refused = engine.Answer(401, b"{}")
    ex.decide(refused, 0.0)
    ex.decide(refused, 0.0)
    assert ex.reloaded(changed=True).action == "resign"


def test_a_redirect_is_not_followed():
    decision = exchange().decide(engine.Answer(302, b"", location="https://elsewhere.test/x"), 0.0)
    assert decision.action == "fail"
    assert "elsewhere.test" in str(decision.error)
    assert "not followed" in str(decision.error)


def test_a_tls_failure_fails_at_once_and_is_not_transient():
    decision = exchange().decide(engine.NetworkFailure(engine.TLS, "SSLError: the TLS handshake failed"), 0.0)
    assert decision.action == "fail"
    assert not decision.error.transient
    assert "plain HTTP" in str(decision.error)


def test_an_attempt_never_runs_past_the_deadline_but_a_last_read_gets_a_moment():
    ex = exchange(deadline=10.0)
    assert ex.timeout(0.0, 30.0) == 10.0
    assert ex.timeout(9.9, 30.0) == engine.LAST_ATTEMPT_TIMEOUT
    assert exchange().timeout(0.0, 30.0) == 30.0


# ---------------------------------------------------------------------------------------------
# One table, two drivers.


@dataclass
class Scenario:
    name: str
    faults: list[dict[str, Any]]
    operation: str = "get_campaign_status"
    #: The exception class, or None for a good answer.
    raises: type[Exception] | None = None
    #: Requests the simulator must see for the operation.
    requests: int = 1
    extra: dict[str, Any] = field(default_factory=dict)


SCENARIOS = [
    Scenario("ok", []),
    Scenario("404", [{"status": 404}], raises=KoreNotFoundError),
    Scenario("400", [{"status": 400}], raises=KoreApiError),
    Scenario("401-once", [{"status": 401}], requests=2),
    Scenario("401-always", [{"status": 401, "times": None}], raises=KoreAuthError, requests=2),
    Scenario("503-once", [{"status": 503}], requests=2),
    Scenario("500-always", [{"status": 500, "times": None}], raises=KoreServerError, requests=3),
    Scenario("429-twice", [{"status": 429, "retry_after": 0, "times": 2}], requests=3),
    Scenario("redirect", [{"status": 302}], raises=KoreApiError),
    Scenario("non-json", [{"non_json": True}], raises=KoreBadResponseError),
    Scenario("stop-503-once", [{"status": 503}], operation="stop_campaign", requests=2),
    Scenario("stop-404", [{"status": 404}], operation="stop_campaign", raises=KoreNotFoundError),
]


@pytest.fixture
def fast(monkeypatch):
    """Backoff and pacing waits pass at once: the pacing clock jumps by each wait instead."""
    waits: list[float] = []
    real = time.monotonic

    def sleep(seconds: float) -> None:
        waits.append(seconds)

    async def async_sleep(seconds: float) -> None:
        waits.append(seconds)
        await asyncio.sleep(0)

    monkeypatch.setattr(pacing, "clock", lambda: real() + sum(waits))
    monkeypatch.setattr(pacing, "_sleep", async_sleep)
    monkeypatch.setattr(aio, "_sleep", async_sleep)
    pacing.reset_sync_pacers()
    yield sleep
    pacing.reset_sync_pacers()
    shared.reset_shared_clients()


@pytest.fixture
def sim(monkeypatch):
    with KoreSimulator(client_secret=SECRET) as simulator:
        monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", simulator.airflow_conn_json(max_retries=2))
        simulator.set_status(VOICE, "Active")
        yield simulator


def run_sync(scenario: Scenario, sleep) -> Any:
    hook = KoreHook(CONN_ID)
    hook._sleep = sleep
    if scenario.operation == "stop_campaign":
        return hook.stop_campaign(VOICE, campaign_type="voice")
    return hook.get_campaign_status(VOICE)


def run_async(scenario: Scenario) -> Any:
    async def go() -> Any:
        async with shared.shared_client(CONN_ID) as client:
            if scenario.operation == "stop_campaign":
                return await client.stop_campaign(VOICE, campaign_type="voice", deadline=time.time() + 600)
            return await client.get_campaign_status(VOICE)

    return asyncio.run(go())


@pytest.mark.parametrize("driver", ["sync", "async"])
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_both_drivers_decide_alike(scenario, driver, sim, fast):
    for fault in scenario.faults:
        sim.inject_fault(scenario.operation, **fault)
    call = (lambda: run_sync(scenario, fast)) if driver == "sync" else (lambda: run_async(scenario))
    if scenario.raises is None:
        answer = call()
        assert answer["status"] in ("Active", "Stopped", "Ready", "Completed")
    else:
        with pytest.raises(scenario.raises) as caught:
            call()
        text = str(caught.value)
        assert SECRET not in text
        assert "eyJ" not in text
    assert sim.count(scenario.operation) == scenario.requests


def test_only_the_sync_driver_starts_and_a_lost_start_is_never_resent(sim, fast):
    sim.inject_fault("start_campaign", status=502, apply_operation=True)
    hook = KoreHook(CONN_ID)
    hook._sleep = fast
    with pytest.raises(KoreOutcomeUnknownError) as caught:
        hook.start_campaign("cd-sms-welcome-0001", campaign_type="sms")
    assert sim.count("start_campaign") == 1
    assert caught.value.status == sim.status_of("cd-sms-welcome-0001")
    assert repr(caught.value.status) in str(caught.value)


def test_a_429_with_no_turn_before_the_deadline_is_a_rate_limit_error_in_both(sim, fast, monkeypatch):
    sim.inject_fault("get_campaign_status", status=429, retry_after=100, times=None)
    hook = KoreHook(CONN_ID, deadline=time.time() + 30)
    hook._sleep = fast
    with pytest.raises(KoreRateLimitError) as sync_error:
        hook.get_campaign_status(VOICE)

    async def go() -> Any:
        async with shared.shared_client(CONN_ID) as client:
            return await client.get_campaign_status(VOICE, deadline=time.time() + 30)

    with pytest.raises(KoreRateLimitError) as async_error:
        asyncio.run(go())
    assert sync_error.value.deadline_reached
    assert async_error.value.deadline_reached
