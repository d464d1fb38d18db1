"""KoreCampaignStatusTrigger: run() driven directly against the Kore.ai simulator."""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import time

import pytest
from airflow.triggers.base import TriggerEvent
from structlog.testing import capture_logs

from airflow_provider_kore import aio, config, pacing, shared
from airflow_provider_kore.config import KoreConnectionConfig
from airflow_provider_kore.exceptions import KoreConfigurationError
from airflow_provider_kore.testing import KoreSimulator
from airflow_provider_kore.triggers import campaign as campaign_module
from airflow_provider_kore.triggers.campaign import CLASSPATH, MIN_FIRST_READ_DELAY, KoreCampaignStatusTrigger

CONN_ID = "kore_test"
SECRET = "trigger-test-client-secret-0123456789abcdef"
VOICE = "cd-voice-renewal-0001"
EVENT_KEYS = {"status", "campaign_id", "campaign_status", "data", "message", "polls", "elapsed", "counters"}
COUNTER_KEYS = {"requests", "coalesced", "rate_limited", "pauses"}


def set_conn(monkeypatch, sim, password=None, **extra):
    conn = json.loads(sim.airflow_conn_json(**{"max_retries": 0, **extra}))
    if password is not None:
        conn["password"] = password
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(conn))


@pytest.fixture
def sim(monkeypatch):
    with KoreSimulator(client_secret=SECRET, complete_after_polls=3) as simulator:
        simulator.set_status(VOICE, "Active")
        set_conn(monkeypatch, simulator)
        yield simulator


@pytest.fixture(autouse=True)
def sleeps(monkeypatch):
    """Record the trigger's waits and the client's backoffs; backoffs are not slept."""
    waits: dict[str, list[float]] = {"poll": [], "backoff": []}

    async def poll_sleep(seconds):
        waits["poll"].append(seconds)
        await asyncio.sleep(min(seconds, 0.05))

    async def backoff_sleep(seconds):
        waits["backoff"].append(seconds)
        await asyncio.sleep(0)

    async def pacing_sleep(seconds):
        waits["pacing"].append(seconds)
        await asyncio.sleep(0)

    real_clock = time.monotonic
    waits["pacing"] = []
    monkeypatch.setattr(campaign_module, "_sleep", poll_sleep)
    monkeypatch.setattr(aio, "_sleep", backoff_sleep)
    # Pacing waits (budget turns, 429 pauses) pass at once: the pacing clock jumps by each one.
    monkeypatch.setattr(pacing, "_sleep", pacing_sleep)
    # Backoff moves the pacing clock too, so a deadline (end_time, on_kill's) comes.
    monkeypatch.setattr(pacing, "clock", lambda: real_clock() + sum(waits["pacing"]) + sum(waits["backoff"]))
    yield waits
    shared.reset_shared_clients()


class TriggerLogs:
    """What the trigger logged, whichever way this Airflow routes ``BaseTrigger.log``.

    Airflow 3.1+ gives triggers a structlog logger (seen with ``capture_logs``, at the levels
    Airflow's configuration lets through); older ones a stdlib logger (seen by ``caplog``).
    """

    def __init__(self, structlog_entries, caplog):
        self._structlog = structlog_entries
        self._caplog = caplog

    def entries(self):
        found = [(e["log_level"], str(e["event"])) for e in self._structlog]
        found += [(r.levelname.lower(), r.getMessage()) for r in self._caplog.records if r.name.startswith(CLASSPATH)]
        return found

    def messages(self, level):
        return [text for lvl, text in self.entries() if lvl == level]


@pytest.fixture
def trigger_logs(caplog):
    caplog.set_level(logging.INFO)
    with capture_logs() as entries:
        yield TriggerLogs(entries, caplog)


def make(campaign_id=VOICE, **kwargs):
    kwargs.setdefault("kore_conn_id", CONN_ID)
    kwargs.setdefault("poll_interval", 0.01)
    return KoreCampaignStatusTrigger(campaign_id, **kwargs)


def run(trigger):
    """Drive run() to its end in a fresh loop; return the single event's payload."""

    async def collect():
        return [event async for event in trigger.run()]

    events = asyncio.run(collect())
    assert len(events) == 1
    assert isinstance(events[0], TriggerEvent)
    payload = events[0].payload
    assert set(payload) == EVENT_KEYS
    assert set(payload["counters"]) == COUNTER_KEYS
    assert shared.active_clients() == []  # released before the event was handed over
    return payload


# -- outcomes ---------------------------------------------------------------------------------


def test_success_when_the_campaign_completes(sim):
    payload = run(make())
    assert payload["status"] == "success"
    assert payload["campaign_id"] == VOICE
    assert payload["campaign_status"] == "Completed"
    assert payload["data"] == {"id": VOICE, "status": "Completed", "name": "Policy Renewal Voice Campaign"}
    assert payload["polls"] == 3
    assert VOICE in payload["message"]
    assert "Completed" in payload["message"]
    assert isinstance(payload["elapsed"], float)
    assert payload["counters"] == {"requests": 3, "coalesced": 0, "rate_limited": 0, "pauses": 0}
    json.dumps(payload)  # plain JSON, as the triggerer stores it


def test_target_statuses_are_case_insensitive(sim):
    payload = run(make(target_statuses=["active"]))
    assert payload["status"] == "success"
    assert payload["polls"] == 1


def test_failure_status_ends_the_wait(sim):
    sim.set_status(VOICE, "Failed")
    payload = run(make())
    assert payload["status"] == "failure"
    assert payload["campaign_status"] == "Failed"
    assert payload["polls"] == 1
    assert VOICE in payload["message"]
    assert "'Failed'" in payload["message"]
    assert "a failure status" in payload["message"]


def test_custom_failure_status(sim):
    sim.set_status(VOICE, "Paused")
    payload = run(make(failure_statuses=["Paused"]))
    assert payload["status"] == "failure"
    assert payload["campaign_status"] == "Paused"


def test_terminal_non_target_fails_at_the_first_poll(sim):
    sim.set_status(VOICE, "Stopped")
    payload = run(make(target_statuses=["Completed"]))
    assert payload["status"] == "failure"
    assert payload["campaign_status"] == "Stopped"
    assert payload["polls"] == 1
    assert "terminal status that is not a target" in payload["message"]


def test_unknown_status_is_waited_on_and_logged_once(sim, trigger_logs):
    sim.set_status(VOICE, "Warming")
    reads = []

    def advance(record):
        if record.operation == "get_campaign_status":
            reads.append(record)
            if len(reads) == 3:
                sim.set_status(VOICE, "Completed")

    sim.on_request = advance
    payload = run(make())
    assert payload["status"] == "success"
    assert payload["polls"] == 4
    unknown = [m for m in trigger_logs.messages("info") if "does not know" in m]
    assert len(unknown) == 1
    assert "'Warming'" in unknown[0]


def test_logs_at_info_only_on_the_first_poll_and_on_change(sim, trigger_logs):
    sim.add_campaign("cd-slow", campaign_type="voice", status="Active", complete_after_polls=5)
    payload = run(make("cd-slow"))
    assert payload["polls"] == 5
    # The read that ends the wait is told by the event (and the task's log), not by a line per wait.
    assert trigger_logs.messages("info") == ["Kore.ai campaign cd-slow is Active (poll 1)"]
    assert "reached 'Completed' after 5 poll(s)" in payload["message"]


def test_a_wait_ended_by_its_first_read_writes_no_info_line(sim, trigger_logs):
    sim.add_campaign("cd-done", campaign_type="voice", status="Completed")
    assert run(make("cd-done"))["status"] == "success"
    assert trigger_logs.messages("info") == []


# -- end_time ---------------------------------------------------------------------------------


def test_timeout_after_end_time_with_a_last_poll_at_the_end(sim, sleeps):
    sim.add_campaign("cd-forever", campaign_type="voice", status="Active", complete_after_polls=None)
    # end_time leaves room for a slow first read (connection lookup, session, JWT) on any Airflow.
    payload = run(make("cd-forever", poll_interval=600.0, end_time=time.time() + 5.0))
    assert payload["status"] == "timeout"
    assert payload["campaign_status"] == "Active"
    assert payload["polls"] == 2  # the first read, then one at end_time instead of 600 s later
    assert len(sleeps["poll"]) == 1
    assert 0 < sleeps["poll"][0] <= 5.0
    assert "cd-forever" in payload["message"]
    assert "'Active'" in payload["message"]
    assert "Completed" in payload["message"]


def test_end_time_in_the_past_polls_once(sim, sleeps):
    payload = run(make(end_time=time.time() - 10))
    assert payload["status"] == "timeout"
    assert payload["polls"] == 1
    assert sleeps["poll"] == []


def test_a_decision_at_the_last_poll_wins_over_the_timeout(sim):
    sim.set_status(VOICE, "Completed")
    payload = run(make(end_time=time.time() - 10))
    assert payload["status"] == "success"


# -- the first read after a deferral (last_read_at) ------------------------------------------
# Airflow's scheduler can fail a deferred task whose trigger fires within seconds of the deferral
# (apache/airflow#66374, #71580, #72716): the first read waits one poll interval after the
# worker's read, and at least MIN_FIRST_READ_DELAY after the trigger started.


def test_min_first_read_delay_is_a_few_seconds():
    assert MIN_FIRST_READ_DELAY == 6.0


def test_the_first_read_waits_one_poll_interval_after_the_workers_read(sim, sleeps):
    sim.add_campaign("cd-done-next", campaign_type="voice", status="Active", complete_after_polls=1)
    payload = run(make("cd-done-next", poll_interval=30.0, last_read_at=time.time() - 1.0))
    assert payload["status"] == "success"
    assert payload["polls"] == 1  # the one read came after the one sleep
    assert sleeps["poll"] == [pytest.approx(29.0, abs=0.5)]


@pytest.mark.parametrize(
    ("read_ago", "poll_interval"),
    [
        (1.0, 2.0),  # the sensor's read a second before deferring, a short poke_interval
        (0.0, 0.01),
        (3600.0, 30.0),  # a trigger restarted long after the deferral (triggerer restart)
    ],
)
def test_the_first_read_never_comes_within_the_triggers_first_seconds(sim, sleeps, read_ago, poll_interval):
    sim.add_campaign("cd-done-next", campaign_type="voice", status="Active", complete_after_polls=1)
    payload = run(make("cd-done-next", poll_interval=poll_interval, last_read_at=time.time() - read_ago))
    assert payload["status"] == "success"
    assert payload["polls"] == 1
    assert sleeps["poll"] == [pytest.approx(MIN_FIRST_READ_DELAY, abs=0.5)]


def test_later_reads_follow_the_first_one_poll_interval_apart(sim, sleeps):
    sim.add_campaign("cd-third", campaign_type="voice", status="Active", complete_after_polls=3)
    payload = run(make("cd-third", poll_interval=2.0, last_read_at=time.time()))
    assert payload["polls"] == 3
    assert sleeps["poll"] == [
        pytest.approx(MIN_FIRST_READ_DELAY, abs=0.5),
        pytest.approx(2.0, abs=0.5),
        pytest.approx(2.0, abs=0.5),
    ]


def test_an_end_time_before_the_first_read_is_due_makes_that_read_the_last(sim, sleeps):
    sim.add_campaign("cd-forever", campaign_type="voice", status="Active", complete_after_polls=None)
    payload = run(make("cd-forever", poll_interval=30.0, end_time=time.time() + 3.0, last_read_at=time.time()))
    assert payload["status"] == "timeout"
    assert payload["polls"] == 1  # one read, at end_time, then the timeout
    assert sleeps["poll"] == [pytest.approx(3.0, abs=0.5)]


def test_an_end_time_after_the_first_read_is_due_does_not_move_it(sim, sleeps):
    sim.add_campaign("cd-done-next", campaign_type="voice", status="Active", complete_after_polls=1)
    payload = run(make("cd-done-next", poll_interval=30.0, end_time=time.time() + 40.0, last_read_at=time.time()))
    assert payload["status"] == "success"
    assert payload["polls"] == 1
    assert sleeps["poll"] == [pytest.approx(30.0, abs=0.5)]


def test_an_end_time_already_past_reads_once_at_once(sim, sleeps):
    payload = run(make(end_time=time.time() - 10, last_read_at=time.time() - 11))
    assert payload["status"] == "timeout"
    assert payload["polls"] == 1
    assert sleeps["poll"] == []
    sim.set_status(VOICE, "Completed")
    assert run(make(end_time=time.time() - 10, last_read_at=time.time() - 11))["status"] == "success"


def test_without_last_read_at_the_first_read_is_made_at_once(sim, sleeps):
    sim.set_status(VOICE, "Completed")
    payload = run(make(poll_interval=30.0))
    assert payload["polls"] == 1
    assert sleeps["poll"] == []


def test_each_trigger_counts_from_its_own_start_not_a_shared_moment():
    last_read = 1_900_000_000.0
    trigger = make(poll_interval=2.0, last_read_at=last_read)
    assert trigger.first_read_due(last_read + 0.5) == last_read + 0.5 + MIN_FIRST_READ_DELAY
    assert trigger.first_read_due(last_read + 3.0) == last_read + 3.0 + MIN_FIRST_READ_DELAY
    slow = make(poll_interval=60.0, last_read_at=last_read)
    assert slow.first_read_due(last_read + 0.5) == last_read + 60.0
    assert make(poll_interval=2.0).first_read_due(last_read) is None


# -- errors -----------------------------------------------------------------------------------


def test_transient_errors_are_tolerated_then_success(sim, trigger_logs):
    sim.inject_fault("get_campaign_status", status=503, times=3)
    payload = run(make(max_consecutive_errors=3))
    assert payload["status"] == "success"
    assert payload["polls"] == 6  # three failed reads, then three good ones
    warnings = [m for m in trigger_logs.messages("warning") if "status read failed" in m]
    assert len(warnings) == 3
    assert "status read failed (3 in a row)" in warnings[-1]
    assert "HTTP 503" in warnings[-1]


def test_too_many_transient_errors_in_a_row_end_with_an_error_event(sim):
    sim.inject_fault("get_campaign_status", status=503, times=None)
    payload = run(make(max_consecutive_errors=2))
    assert payload["status"] == "error"
    assert payload["polls"] == 3
    assert payload["campaign_status"] is None
    assert payload["data"] is None
    assert "3 status reads in a row failed" in payload["message"]
    assert "HTTP 503" in payload["message"]
    assert VOICE in payload["message"]


def test_a_good_answer_resets_the_error_count(sim):
    sim.add_campaign("cd-flaky", campaign_type="voice", status="Active", complete_after_polls=2)
    sim.inject_fault("get_campaign_status", status=503, times=2)

    def more_faults(record):
        if record.status_code == 200 and sim.status_of("cd-flaky") == "Active":
            sim.inject_fault("get_campaign_status", status=503, times=2)

    sim.on_request = more_faults
    payload = run(make("cd-flaky", max_consecutive_errors=2))
    assert payload["status"] == "success"
    assert payload["polls"] == 6  # 503, 503, Active, 503, 503, Completed


def test_network_errors_are_transient_and_counted_with_a_limit(sim, monkeypatch, trigger_logs):
    set_conn(monkeypatch, sim, timeout=0.1)
    sim.inject_fault("get_campaign_status", delay=0.5, times=1)
    payload = run(make(max_consecutive_errors=1))
    assert payload["status"] == "success"
    # The late answer still counted as a read on Kore's side: Completed comes at the third poll.
    assert payload["polls"] == 3
    assert sim.count("get_campaign_status") == 3
    (warning,) = [m for m in trigger_logs.messages("warning") if "status read failed" in m]
    assert "(1 in a row)" in warning


def test_without_a_limit_a_network_error_is_read_again_within_the_same_poll(sim, monkeypatch, sleeps):
    set_conn(monkeypatch, sim, timeout=0.1)
    sim.inject_fault("get_campaign_status", delay=0.5, times=1)
    payload = run(make())
    assert payload["status"] == "success"
    assert payload["polls"] == 2  # the timed-out read was re-queued, not counted as a poll of its own
    assert sim.count("get_campaign_status") == 3
    assert payload["counters"]["requests"] == 3
    assert sleeps["backoff"] == []  # a patient read pauses the connection instead of spending retries


def test_an_outage_shorter_than_the_time_left_fails_no_wait(sim, sleeps, trigger_logs):
    outage_requests = 8  # more than any retry budget: only patience gets through it
    sim.set_outage(True)

    def end_outage(record):
        if sim.count("get_campaign_status") >= outage_requests:
            sim.set_outage(False)

    sim.on_request = end_outage
    payload = run(make(end_time=time.time() + 600))
    assert payload["status"] == "success"
    assert payload["polls"] == 3
    assert sim.count("get_campaign_status") == outage_requests + 3
    assert sleeps["backoff"] == []
    assert len(sleeps["pacing"]) >= outage_requests  # paused between probes: no burst at a Kore that is down
    assert not [m for m in trigger_logs.messages("warning") if "status read failed" in m]


def test_an_outage_past_end_time_ends_with_a_timeout_at_end_time(sim, sleeps):
    sim.set_outage(True)
    payload = run(make(end_time=time.time() + 3.0))
    assert payload["status"] == "timeout"
    assert payload["campaign_status"] is None
    assert "HTTP 503" in payload["message"]
    assert "no status read" in payload["message"]
    assert sim.count("get_campaign_status") >= 2  # it kept probing
    assert sum(sleeps["pacing"]) <= 3.0


def test_401_is_answered_by_one_new_token(sim):
    sim.inject_fault("get_campaign_status", status=401)
    payload = run(make())
    assert payload["status"] == "success"
    assert len({r.headers["auth"] for r in sim.requests}) == 2


def test_rejected_credentials_end_with_an_error_event_at_once(sim, monkeypatch):
    set_conn(monkeypatch, sim, password="wrong-" + SECRET)
    payload = run(make(max_consecutive_errors=5))
    assert payload["status"] == "error"
    assert payload["polls"] == 1
    assert "HTTP 401" in payload["message"]
    assert "wrong-" not in payload["message"]


def test_rate_limit_with_retry_after_pauses_the_connection(sim, monkeypatch, sleeps):
    set_conn(monkeypatch, sim, max_retries=2)
    sim.inject_fault("get_campaign_status", status=429, retry_after=5)
    payload = run(make())
    assert payload["status"] == "success"
    assert sleeps["backoff"] == []  # not a retry
    assert sum(sleeps["pacing"]) >= 4.9
    assert payload["counters"]["rate_limited"] == 1
    assert payload["counters"]["pauses"] == 1


def test_429s_never_use_up_retries_or_tolerated_errors(sim, trigger_logs):
    sim.inject_fault("get_campaign_status", status=429, times=4)
    payload = run(make(max_consecutive_errors=0))
    assert payload["status"] == "success"
    assert payload["polls"] == 3  # a refused read is not a poll of its own: it waits and reads again
    assert payload["counters"] == {"requests": 7, "coalesced": 0, "rate_limited": 4, "pauses": 4}
    assert not [m for m in trigger_logs.messages("warning") if "status read failed" in m]


def test_a_pause_past_end_time_ends_with_a_timeout_not_an_error(sim, sleeps):
    sim.inject_fault("get_campaign_status", status=429, retry_after=100, times=None)
    payload = run(make(end_time=time.time() + 5.0))
    assert payload["status"] == "timeout"
    assert "rate limit" in payload["message"]
    assert payload["counters"]["rate_limited"] == 1
    assert sleeps["poll"]
    assert 0 < sleeps["poll"][-1] <= 5.0  # the wait lasted until end_time


def test_the_budget_stretches_the_interval_and_a_wait_past_end_time_times_out(sim, monkeypatch, sleeps):
    set_conn(monkeypatch, sim, max_requests_per_minute=1)
    sim.add_campaign("cd-forever", campaign_type="voice", status="Active", complete_after_polls=None)
    payload = run(make("cd-forever", poll_interval=1.0, end_time=time.time() + 30))
    assert payload["status"] == "timeout"
    assert payload["polls"] == 2  # the second read found no turn before end_time
    assert "request budget" in payload["message"]
    assert payload["counters"]["requests"] == 1
    assert sim.count("get_campaign_status") == 1


def test_waits_on_one_campaign_share_their_reads(sim):
    sim.add_campaign("cd-shared", campaign_type="voice", status="Active", complete_after_polls=3)

    async def main():
        async def one():
            return [event.payload async for event in make("cd-shared").run()]

        return await asyncio.gather(*(one() for _ in range(20)))

    events = [events[0] for events in asyncio.run(main())]
    assert all(event["status"] == "success" for event in events)
    requests = sum(event["counters"]["requests"] for event in events)
    coalesced = sum(event["counters"]["coalesced"] for event in events)
    assert requests == sim.count("get_campaign_status")
    assert requests < 20
    assert requests + coalesced == sum(event["polls"] for event in events)


def test_non_json_answer_ends_with_an_error_event(sim):
    sim.inject_fault("get_campaign_status", non_json=True)
    payload = run(make())
    assert payload["status"] == "error"
    assert payload["polls"] == 1
    assert "non-JSON" in payload["message"]


def test_unknown_campaign_ends_with_an_error_event(sim):
    payload = run(make("cd-does-not-exist"))
    assert payload["status"] == "error"
    assert payload["polls"] == 1
    assert "'cd-does-not-exist'" in payload["message"]
    assert "404" in payload["message"]


def test_missing_connection_ends_with_an_error_event(sim):
    payload = run(make(kore_conn_id="kore_missing"))
    assert payload["status"] == "error"
    assert payload["polls"] == 0
    assert "kore_missing" in payload["message"]


def test_missing_stream_id_ends_with_an_error_event(monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_KORE_TEST",
        json.dumps(
            {
                "conn_type": "kore",
                "host": "http://127.0.0.1:9",
                "login": "cs-1",
                "password": SECRET,
                "extra": {"account_id": "acc-1"},
            }
        ),
    )
    payload = run(make())
    assert payload["status"] == "error"
    assert "stream_id" in payload["message"]
    assert VOICE in payload["message"]


def test_unexpected_exception_fails_closed(sim, monkeypatch, trigger_logs):
    async def boom(self, campaign_id, stream_id=None, **kwargs):
        raise RuntimeError(f"boom with {SECRET}")

    monkeypatch.setattr(aio.KoreAsyncClient, "get_campaign_status", boom)
    payload = run(make())
    assert payload["status"] == "error"
    assert "unexpected RuntimeError: boom with ***" in payload["message"]
    (logged,) = trigger_logs.messages("error")
    assert "boom with ***" in logged
    assert SECRET not in json.dumps(trigger_logs.entries())


def test_no_secret_or_token_in_events_or_logs(sim, monkeypatch, caplog, trigger_logs):
    caplog.set_level(logging.DEBUG)
    set_conn(monkeypatch, sim, max_retries=1)
    sim.inject_fault("get_campaign_status", status=401)
    sim.inject_fault("get_campaign_status", status=503, times=3)
    sim.inject_fault("get_campaign_status", status=429)
    payloads = [run(make(max_consecutive_errors=3))]  # counted reads: retries and failures are logged
    sim.inject_fault("get_campaign_status", status=503, times=2)
    sim.set_status(VOICE, "Active")
    payloads.append(run(make()))  # patient reads
    set_conn(monkeypatch, sim, password="other-" + SECRET)
    payloads.append(run(make()))
    assert [p["status"] for p in payloads] == ["success", "success", "error"]
    tokens = {r.headers["auth"] for r in sim.requests}
    texts = [json.dumps(p) for p in payloads] + [r.getMessage() for r in caplog.records]
    texts += [text for _, text in trigger_logs.entries()]
    # The retries, the failed reads and the 401 were all logged or reported, and all are scanned.
    assert any("retry 1" in text and "HTTP 503" in text for text in texts)
    assert any("status read failed" in text for text in texts)
    assert any("HTTP 401" in text for text in texts)
    for text in texts:
        assert SECRET not in text
        assert "eyJ" not in text
        assert not any(token in text for token in tokens)


# -- many triggers, one client ----------------------------------------------------------------


def test_many_triggers_share_one_lookup_session_and_token(sim, monkeypatch):
    lookups = []
    real_lookup = KoreConnectionConfig.load

    def counting_lookup(conn_id):
        lookups.append(conn_id)
        time.sleep(0.01)
        return real_lookup(conn_id)

    monkeypatch.setattr(KoreConnectionConfig, "load", counting_lookup)
    import aiohttp

    sessions = []
    real_session = aiohttp.ClientSession

    def recording_session(*args, **kwargs):
        sessions.append(real_session(*args, **kwargs))
        return sessions[-1]

    monkeypatch.setattr(aiohttp, "ClientSession", recording_session)
    ids = [f"cd-many-{n:03d}" for n in range(200)]
    for campaign_id in ids:
        sim.add_campaign(campaign_id, campaign_type="voice", status="Active", complete_after_polls=2)

    async def main():
        async def one(campaign_id):
            return [event.payload async for event in make(campaign_id).run()]

        return await asyncio.gather(*(one(c) for c in ids))

    results = asyncio.run(main())
    assert all(len(events) == 1 and events[0]["status"] == "success" for events in results)
    assert lookups == [CONN_ID]
    assert len(sessions) == 1
    assert sessions[0].closed
    assert len({r.headers["auth"] for r in sim.requests}) == 1
    assert sim.count("get_campaign_status", status_code=200) == 400
    assert shared.active_clients() == []


# -- serialisation and validation -------------------------------------------------------------


def test_serialize_round_trip():
    trigger = KoreCampaignStatusTrigger(
        VOICE,
        kore_conn_id=CONN_ID,
        target_statuses=("Completed", "Stopped"),
        failure_statuses=("Failed", "Paused"),
        stream_id="st-1",
        poll_interval=15,
        end_time=1_900_000_000.5,
        stop_on_kill=True,
        campaign_type="SMS",
        max_consecutive_errors=4,
        last_read_at=1_899_999_700.25,
    )
    classpath, kwargs = trigger.serialize()
    assert classpath == CLASSPATH
    assert kwargs == {
        "campaign_id": VOICE,
        "kore_conn_id": CONN_ID,
        "target_statuses": ["Completed", "Stopped"],
        "failure_statuses": ["Failed", "Paused"],
        "stream_id": "st-1",
        "poll_interval": 15.0,
        "end_time": 1_900_000_000.5,
        "stop_on_kill": True,
        "campaign_type": "sms",
        "max_consecutive_errors": 4,
        "last_read_at": 1_899_999_700.25,
    }
    rebuilt = KoreCampaignStatusTrigger(**json.loads(json.dumps(kwargs)))
    assert rebuilt.serialize() == (classpath, kwargs)
    assert rebuilt.rule == trigger.rule
    assert rebuilt.last_read_at == 1_899_999_700.25


def test_kwargs_serialised_before_last_read_at_still_build_a_trigger():
    _, kwargs = KoreCampaignStatusTrigger(VOICE, poll_interval=15, last_read_at=1_900_000_000).serialize()
    del kwargs["last_read_at"]  # a trigger row written by an older release
    old = KoreCampaignStatusTrigger(**kwargs)
    assert old.last_read_at is None
    assert old.serialize()[1]["last_read_at"] is None


def test_serialize_resolves_default_failure_statuses():
    _, kwargs = KoreCampaignStatusTrigger(VOICE).serialize()
    assert kwargs["target_statuses"] == ["Completed"]
    assert kwargs["failure_statuses"] == ["Failed"]
    assert kwargs["kore_conn_id"] == "kore_default"
    assert kwargs["end_time"] is None
    assert kwargs["last_read_at"] is None
    _, kwargs = KoreCampaignStatusTrigger(VOICE, target_statuses="Failed").serialize()
    assert kwargs["failure_statuses"] == []
    assert KoreCampaignStatusTrigger(**kwargs).serialize()[1] == kwargs


def test_the_classpath_imports_the_class():
    module, _, name = CLASSPATH.rpartition(".")
    assert getattr(importlib.import_module(module), name) is KoreCampaignStatusTrigger


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"target_statuses": []}, "target_statuses"),
        ({"target_statuses": ["Completed"], "failure_statuses": ["completed"]}, "share"),
        ({"poll_interval": 0}, "poll_interval"),
        ({"poll_interval": "30"}, "poll_interval"),
        ({"end_time": "tomorrow"}, "end_time"),
        ({"last_read_at": "a second ago"}, "last_read_at"),
        ({"last_read_at": True}, "last_read_at"),
        ({"campaign_type": "fax"}, "campaign_type"),
        ({"max_consecutive_errors": -1}, "max_consecutive_errors"),
        ({"max_consecutive_errors": 1.5}, "max_consecutive_errors"),
        ({"stream_id": "st/1"}, "stream_id"),
        ({"kore_conn_id": ""}, "kore_conn_id"),
    ],
)
def test_invalid_arguments_are_refused(kwargs, field):
    with pytest.raises(KoreConfigurationError, match=field):
        KoreCampaignStatusTrigger(VOICE, **kwargs)


def test_invalid_campaign_id_is_refused():
    with pytest.raises(KoreConfigurationError, match="campaign_id"):
        KoreCampaignStatusTrigger("")


# -- on_kill, cancellation, cleanup -----------------------------------------------------------


def test_on_kill_stops_the_campaign_with_stop_on_kill(sim, trigger_logs):
    asyncio.run(make(stop_on_kill=True).on_kill())
    assert sim.status_of(VOICE) == "Stopped"
    (stop,) = [r for r in sim.requests if r.operation == "stop_campaign"]
    assert stop.query["campaignType"] == "voice"
    assert trigger_logs.messages("info") == [
        "Stopped Kore.ai campaign cd-voice-renewal-0001 after the task was killed: Campaign Stopped"
    ]
    assert shared.active_clients() == []


def test_on_kill_retries_a_refused_stop_within_its_deadline(sim, sleeps):
    sim.inject_fault("stop_campaign", status=503, times=3)  # more than max_retries=0 allows
    asyncio.run(make(stop_on_kill=True).on_kill())
    assert sim.status_of(VOICE) == "Stopped"
    assert sim.count("stop_campaign") == 4
    assert 0 < sum(sleeps["backoff"]) <= 25


def test_on_kill_gives_up_within_25_seconds(sim, sleeps, trigger_logs):
    sim.inject_fault("stop_campaign", status=503, times=None)
    asyncio.run(make(stop_on_kill=True).on_kill())
    assert sim.status_of(VOICE) == "Active"
    assert sim.count("stop_campaign") > 1
    assert sum(sleeps["backoff"]) + sum(sleeps["pacing"]) <= 25
    (warning,) = trigger_logs.messages("warning")
    assert "Could not stop Kore.ai campaign cd-voice-renewal-0001" in warning
    assert shared.active_clients() == []


def test_on_kill_does_not_wait_behind_a_rate_limit_pause(sim, sleeps):
    sim.inject_fault("get_campaign_status", status=429, retry_after=100, times=None)
    trigger = make(stop_on_kill=True, end_time=time.time() + 5.0)

    async def main():
        async with shared.shared_client(CONN_ID):  # keeps the paused client alive for on_kill
            (payload,) = [event.payload async for event in trigger.run()]
            waited = sum(sleeps["pacing"])
            await trigger.on_kill()
            return payload, sum(sleeps["pacing"]) - waited

    payload, waited_for_stop = asyncio.run(main())
    assert payload["status"] == "timeout"
    assert sim.status_of(VOICE) == "Stopped"
    assert waited_for_stop == 0


def test_on_kill_returns_in_time_even_when_the_connection_lookup_hangs(sim, trigger_logs, monkeypatch):
    # Airflow gives on_kill 30 s; the lookup of a client the cancelled wait released counts too.
    real_load = KoreConnectionConfig.load

    def slow_load(conn_id):
        time.sleep(3)
        return real_load(conn_id)

    monkeypatch.setattr(KoreConnectionConfig, "load", slow_load)
    monkeypatch.setattr(campaign_module, "STOP_DEADLINE", 0.1)
    monkeypatch.setattr(campaign_module, "LAST_ATTEMPT_TIMEOUT", 0.1)
    started = time.monotonic()
    asyncio.run(make(stop_on_kill=True).on_kill())
    assert time.monotonic() - started < 2.5  # not held by the 3 s lookup
    (warning,) = trigger_logs.messages("warning")
    assert "Could not stop Kore.ai campaign cd-voice-renewal-0001" in warning
    assert sim.status_of(VOICE) == "Active"


def test_on_kill_does_nothing_without_stop_on_kill(sim):
    asyncio.run(make().on_kill())
    assert sim.count() == 0
    assert sim.status_of(VOICE) == "Active"


def test_on_kill_logs_and_swallows_a_failed_stop(sim, trigger_logs):
    sim.set_status(VOICE, "Completed")  # Kore refuses to stop a campaign that is not running
    asyncio.run(make(stop_on_kill=True).on_kill())
    (warning,) = trigger_logs.messages("warning")
    assert "Could not stop Kore.ai campaign cd-voice-renewal-0001" in warning
    assert "Campaign is not active" in warning
    assert shared.active_clients() == []


def test_cancellation_propagates_and_releases_the_client_then_on_kill_stops(sim):
    sim.add_campaign("cd-long", campaign_type="voice", status="Active", complete_after_polls=None)
    trigger = make("cd-long", stop_on_kill=True)

    async def main():
        seen = []

        async def consume():
            async for event in trigger.run():
                seen.append(event)

        task = asyncio.create_task(consume())
        for _ in range(500):  # until the trigger is polling
            if sim.count("get_campaign_status") >= 2:
                break
            await asyncio.sleep(0.01)
        (client,) = shared.active_clients()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0)  # the shielded session close
        assert shared.active_clients() == []
        assert client.closed
        await trigger.cleanup()  # the triggerer calls it too: nothing left to release
        await trigger.on_kill()  # Airflow 3.3: the user killed the task
        return seen

    assert asyncio.run(main()) == []
    assert sim.status_of("cd-long") == "Stopped"
    assert shared.active_clients() == []


# -- nothing blocks the triggerer's loop on the supervisor --------------------------------------


class _SupervisorComms:
    """Stands in for the triggerer's channel to its supervisor, as the task SDK finds it.

    A synchronous ``send`` from a thread that runs an event loop is what deadlocks a real
    triggerer (3.3 stalls the loop, 3.0 raises "cannot use AsyncToSync in the same thread as an
    async event loop"); it is recorded here so the test can fail on it.
    """

    def __init__(self) -> None:
        self.sent_on_loop: list[str] = []
        self.masked: list[object] = []

    def _record(self, msg: object, *, on_loop: bool) -> None:
        if on_loop:
            self.sent_on_loop.append(type(msg).__name__)
        if type(msg).__name__ == "MaskSecret":
            self.masked.append(getattr(msg, "value", None))

    def send(self, msg: object) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            self._record(msg, on_loop=False)
        else:
            self._record(msg, on_loop=True)

    async def asend(self, msg: object) -> None:
        self._record(msg, on_loop=False)


def test_masking_and_lookup_never_block_the_loop_on_the_supervisor(sim, monkeypatch):
    from airflow.sdk.execution_time import task_runner

    comms = _SupervisorComms()
    monkeypatch.setattr(task_runner, "SUPERVISOR_COMMS", comms, raising=False)
    monkeypatch.setattr(config, "_masked", set())  # as in a fresh triggerer process: the secret is registered
    payloads = [run(make(VOICE, target_statuses=["Active"])) for _ in range(2)]

    assert [p["status"] for p in payloads] == ["success", "success"]
    assert comms.sent_on_loop == []
    # The client secret reached the supervisor's masker, and no token: the masker rebuilds its
    # regex per secret, and a JWT lives minutes (issue 12). (Airflow's own connection lookup
    # masks the password too, so how often it arrives here is not the provider's count.)
    assert SECRET in comms.masked
    assert not any(isinstance(value, str) and value.startswith("eyJ") for value in comms.masked)
