"""Pacing: the request budget, the 429 pause, the learned rate and fair turns.

The first half drives :class:`~airflow_provider_kore.pacing.Budget` and the pacers on a fake
clock (milliseconds, deterministic). The second half (``-m pacing``) runs fleets of real
triggers in one event loop, and hooks in threads, against rate-limited simulators in real time;
the scenarios run side by side, so the whole half takes about as long as the longest one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import heapq
import itertools
import json
import logging
import math
import os
import re
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import pytest

from airflow_provider_kore import pacing, shared
from airflow_provider_kore.testing import KoreSimulator
from airflow_provider_kore.triggers.campaign import KoreCampaignStatusTrigger

MINUTE_WINDOW = pacing.MINUTE + pacing.SAFETY_MARGIN
SECRET = "pacing-test-client-secret-0123456789abcdef"


class FakeClock:
    """The pacing clock; sleeping moves it on."""

    def __init__(self, now: float = 10_000.0) -> None:
        self.now = now
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    async def async_sleep(self, seconds: float) -> None:
        self.sleep(seconds)
        await asyncio.sleep(0)


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(pacing, "clock", fake)
    monkeypatch.setattr(pacing, "_sleep", fake.async_sleep)
    return fake


def greedy(budget: pacing.Budget, count: int, start: float = 0.0) -> list[float]:
    """Send ``count`` requests as early as the budget allows; return the send times."""
    now = start
    sent = []
    for _ in range(count):
        now = budget.next_send_time(now)
        budget.record_send(now)
        budget.record_answer(now, now)
        sent.append(now)
    return sent


def most_in_window(times: list[float], window: float) -> int:
    """The most sends in any half-open window (t - window, t], as Kore and the simulator count."""
    times = sorted(times)
    most = first = 0
    for last, t in enumerate(times):
        while times[first] <= t - window:
            first += 1
        most = max(most, last - first + 1)
    return most


def storm(budget: pacing.Budget, sent: int, accepted: int, *, at: float = 0.0) -> None:
    """``sent`` requests leave at once; Kore accepts ``accepted`` and refuses the rest."""
    for _ in range(sent):
        budget.record_send(at)
    budget.record_rate_limited(at, at + 0.05)  # the first refusal comes back first
    for n in range(accepted):
        budget.record_answer(at, at + 0.06 + n * 0.001)  # in flight when the pause began
    for _ in range(sent - accepted - 1):
        budget.record_rate_limited(at, at + 0.2)


class Kore:
    """Kore's rolling window on the fake clock: at most ``limit`` accepted in any ``window`` s.

    Refused requests do not count (as with the simulator); before ``busy_until`` another client
    has filled the bot's window (a stray 429); in ``down`` every request fails.
    """

    def __init__(self, limit: int | None = None, window: float = 60.0, *, busy_until: float = -1.0, down=(0, 0)):
        self.limit, self.window, self.busy_until, self.down = limit, window, busy_until, down
        self.accepted: deque[float] = deque()

    def __call__(self, t: float) -> int:
        if self.down[0] <= t < self.down[1]:
            return 503
        if t < self.busy_until:
            return 429
        while self.accepted and self.accepted[0] <= t - self.window:
            self.accepted.popleft()
        if self.limit is not None and len(self.accepted) >= self.limit:
            return 429
        self.accepted.append(t)
        return 200


def fleet(
    budget: pacing.Budget,
    kore: Callable[[float], int],
    *,
    waits: int = 20,
    interval: float = 2.0,
    until: float,
    latency: float = 0.1,
    failure_latency: float | None = None,
) -> list[tuple[float, int, int]]:
    """Drive ``budget`` as an event loop of ``waits`` reads every ``interval`` s would, from 0.

    Turns are taken in arrival order; a 429 or a failure queues the read again at once (after
    :meth:`~pacing.Budget.record_rate_limited` / ``record_unavailable``). Kore sees a request
    half way through ``latency``; a failure comes back after ``failure_latency``.
    Returns ``(sent_at, status, wait)`` for every request.
    """
    seq = itertools.count()
    ready = [(0.0, next(seq), n) for n in range(waits)]  # (wants to send at, order, wait)
    in_flight: list[tuple[float, int, float, int, int]] = []  # (answered at, order, sent at, status, wait)
    sent: list[tuple[float, int, int]] = []
    now = 0.0
    while True:
        t = max(now, ready[0][0]) if ready else math.inf
        answer_at = in_flight[0][0] if in_flight else math.inf
        if answer_at <= t:
            now, _, sent_at, status, wait = heapq.heappop(in_flight)
            if status == 429:
                budget.record_rate_limited(sent_at, now)
            elif status >= 500:
                budget.record_unavailable(sent_at, now)
            else:
                budget.record_answer(sent_at, now)
            heapq.heappush(ready, (now + (interval if status < 429 else 0.0), next(seq), wait))
            continue
        if t >= until:
            return sent
        now = t
        at = budget.next_send_time(now)
        if at > now + 1e-9:
            now = min(at, answer_at)  # the head of the line sleeps; an answer may come first
            continue
        _, _, wait = heapq.heappop(ready)
        budget.record_send(now)
        status = kore(now + latency / 2)
        back = latency if status < 500 or failure_latency is None else failure_latency
        heapq.heappush(in_flight, (now + back, next(seq), now, status, wait))
        sent.append((now, status, wait))


def per_minute(sent: list[tuple[float, int, int]], start: float, end: float) -> float:
    return sum(1 for t, _, _ in sent if start <= t < end) * 60 / (end - start)


# -- the fixed budget -------------------------------------------------------------------------


def test_no_budget_and_no_429_costs_nothing():
    budget = pacing.Budget("kore_default")
    assert not budget.limited
    sent = greedy(budget, 1000)
    assert set(sent) == {0.0}  # never held back
    assert budget.rate_per_minute() is None
    assert budget.stats() == {
        "requests": 1000,
        "rate_limited": 0,
        "unavailable": 0,
        "pauses": 0,
        "coalesced": 0,
        "waits": 0,
        "current_rate_per_minute": None,
    }


@pytest.mark.parametrize("per_minute", [1, 7, 60, 150, 600])
def test_never_more_than_the_budget_in_any_rolling_minute(per_minute):
    budget = pacing.Budget("kore_default", per_minute=per_minute)
    sent = greedy(budget, 3 * per_minute + 5)
    assert most_in_window(sent, pacing.MINUTE) <= per_minute
    assert most_in_window(sent, MINUTE_WINDOW - 1e-6) <= per_minute  # the safety margin too


def test_sends_are_spaced_evenly_not_burst():
    budget = pacing.Budget("kore_default", per_minute=150)
    sent = greedy(budget, 300)
    gaps = {round(b - a, 9) for a, b in itertools.pairwise(sent)}
    assert gaps == {round(MINUTE_WINDOW / 150, 9)}
    assert budget.rate_per_minute() == pytest.approx(60 * 150 / 61)


def test_the_hourly_budget_is_spread_over_the_hour():
    budget = pacing.Budget("kore_default", per_minute=600, per_hour=18_000)
    sent = greedy(budget, 20_000)
    assert most_in_window(sent, pacing.HOUR) <= 18_000
    assert most_in_window(sent, pacing.MINUTE) <= 600
    # Kore's runtime limits: the hour is the tighter one, so one request every 0.2 s, steadily.
    assert budget.gap == pytest.approx((pacing.HOUR + pacing.SAFETY_MARGIN) / 18_000)


def test_a_late_request_is_not_held_back():
    budget = pacing.Budget("kore_default", per_minute=60)
    budget.record_send(0.0)
    assert budget.next_send_time(5.0) == 5.0
    assert budget.next_send_time(0.5) == pytest.approx(MINUTE_WINDOW / 60)


def test_configure_changes_the_budget():
    budget = pacing.Budget("kore_default", per_minute=60)
    budget.configure(None, None)
    assert not budget.limited
    budget.configure(None, 3600)
    assert budget.gap == pytest.approx((pacing.HOUR + pacing.SAFETY_MARGIN) / 3600)
    with pytest.raises(ValueError, match="per_minute"):
        budget.configure(0, None)


# -- 429: pause, learn, resume ----------------------------------------------------------------


def test_a_429_pauses_the_whole_connection_with_backoff_and_jitter():
    budget = pacing.Budget("kore_default", rng=lambda: 1.0)
    greedy(budget, 50)
    assert budget.record_rate_limited(0.0, 1.0) is True
    pause = pacing.PAUSE_BASE * (1 + pacing.PAUSE_JITTER)
    assert budget.paused_until == pytest.approx(1.0 + pause)
    assert budget.next_send_time(1.5) >= 1.0 + pause
    assert budget.stats()["pauses"] == 1


def test_retry_after_is_honoured_and_capped():
    budget = pacing.Budget("kore_default", rng=lambda: 0.0)
    budget.record_send(0.0)
    budget.record_rate_limited(0.0, 1.0, retry_after=30.0)
    assert budget.paused_until == 31.0
    budget.record_send(40.0)
    budget.record_rate_limited(40.0, 41.0, retry_after=86_400.0)
    assert budget.paused_until == 41.0 + pacing.RETRY_AFTER_MAX


def test_429s_for_requests_in_flight_when_the_pause_began_start_no_new_pause():
    budget = pacing.Budget("kore_default", rng=lambda: 0.0)
    storm(budget, sent=150, accepted=100)
    stats = budget.stats()
    assert stats["rate_limited"] == 50
    assert stats["pauses"] == 1
    assert budget.paused_until == pytest.approx(0.05 + pacing.PAUSE_BASE)


def test_the_rate_is_learned_from_what_kore_accepted_and_the_storm_does_not_come_back():
    budget = pacing.Budget("kore_default", rng=lambda: 0.0)
    storm(budget, sent=150, accepted=100)
    # Answers that were in flight when the pause began count: 90% of the 100 Kore accepted.
    assert budget.learned_rate == pytest.approx(pacing.LEARN_FRACTION * 100)
    # Nothing is sent until Kore's own window (which holds the 100) has room for the new rate.
    first = budget.next_send_time(3.0)
    assert first == pytest.approx(MINUTE_WINDOW)
    sent = greedy(budget, 80, start=first)  # within the first clean minute, before any raise
    assert all(b - a == pytest.approx(MINUTE_WINDOW / 90) for a, b in itertools.pairwise(sent))
    # What a server limited to 100 per 60 s would see: never more than 100 accepted in a window.
    assert most_in_window([0.0] * 100 + sent[:85], pacing.MINUTE) <= 100


def test_a_refused_probe_after_the_pause_doubles_the_next_pause():
    budget = pacing.Budget("kore_default", rng=lambda: 0.0)
    budget.record_send(0.0)
    budget.record_rate_limited(0.0, 0.1)
    probe = budget.next_send_time(0.1)
    budget.record_send(probe)
    assert budget.record_rate_limited(probe, probe + 0.1) is True
    assert budget.paused_until == pytest.approx(probe + 0.1 + 2 * pacing.PAUSE_BASE)
    assert budget.stats()["pauses"] == 2


def test_the_learned_rate_never_falls_below_the_floor():
    budget = pacing.Budget("kore_default", rng=lambda: 0.0)
    budget.record_send(0.0)
    budget.record_rate_limited(0.0, 0.1)  # nothing accepted at all
    assert budget.learned_rate == pacing.MIN_RATE_PER_MINUTE


def test_the_learned_rate_never_exceeds_the_fixed_budget():
    budget = pacing.Budget("kore_default", per_minute=60, rng=lambda: 0.0)
    greedy(budget, 59)
    budget.record_rate_limited(budget.next_send_time(60.0), 60.0)
    learned = budget.learned_rate
    assert learned is not None
    assert learned <= 60


def test_the_rate_is_raised_slowly_while_answers_are_good(caplog):
    caplog.set_level(logging.INFO, logger="airflow_provider_kore.pacing")
    budget = pacing.Budget("kore_default", per_minute=200, rng=lambda: 0.0)
    storm(budget, sent=150, accepted=100)
    rates = []
    now = budget.next_send_time(0.0)
    for _ in range(400):
        now = budget.next_send_time(now)
        budget.record_send(now)
        budget.record_answer(now, now)
        rates.append(budget.learned_rate)
    # 90, then +10% per clean minute back up to the 100 Kore accepted, held there for
    # PROBE_AFTER (no 429 every few minutes under a hard limit), then on to the fixed budget.
    raised = [r for r in dict.fromkeys(rates)]
    assert raised[:3] == [pytest.approx(90), pytest.approx(99), 100]
    assert not budget.slow_start
    for _ in range(int(pacing.PROBE_AFTER / 60 * 100) + 2000):
        now = budget.next_send_time(now)
        budget.record_send(now)
        budget.record_answer(now, now)
        rates.append(budget.learned_rate)
    raised = [r for r in dict.fromkeys(rates)]
    assert raised[3] == pytest.approx(110)
    assert raised[-1] is None
    assert rates.index(raised[3]) * 60 / 100 >= pacing.PROBE_AFTER - 120  # ~100 sends/min while held
    raises = [r.getMessage() for r in caplog.records if "raising the pace" in r.getMessage()]
    assert len(raises) == len(raised) - 1  # one line per change, none per request


def test_without_a_budget_a_learned_rate_well_above_what_kore_took_is_dropped():
    budget = pacing.Budget("kore_default", rng=lambda: 0.0)
    storm(budget, sent=20, accepted=15)
    now = budget.next_send_time(0.0)
    while budget.learned_rate is not None:
        now = budget.next_send_time(now)
        budget.record_send(now)
        budget.record_answer(now, now)
        assert now < 3600
    assert budget.next_send_time(now + 1) == now + 1
    assert not budget.limited  # back on the free path


def test_a_429_with_little_evidence_starts_a_slow_start_that_doubles():
    budget = pacing.Budget("kore_default", per_minute=300, rng=lambda: 0.0)
    greedy(budget, 5)  # a nearly idle connection
    budget.record_rate_limited(0.0, 0.1)
    assert budget.slow_start
    assert budget.learned_rate == pacing.MIN_RATE_PER_MINUTE
    now, rates = budget.next_send_time(0.1), []
    while budget.learned_rate is not None:
        budget.record_send(now)
        budget.record_answer(now, now)
        rates.append((now, budget.learned_rate))
        now = budget.next_send_time(now)
    steps = list(dict.fromkeys(rate for _, rate in rates))
    assert steps == [10, 20, 40, 80, 160]  # then 320: over the fixed budget, so the limit is dropped
    assert now - rates[0][0] < 6 * (pacing.SLOW_START_STEP + MINUTE_WINDOW / 10)


def test_a_429_that_ends_a_slow_start_with_evidence_settles():
    budget = pacing.Budget("kore_default", rng=lambda: 0.0)
    budget.record_send(0.0)
    budget.record_rate_limited(0.0, 0.1)
    assert budget.slow_start
    sent = greedy(budget, 60, start=budget.next_send_time(0.1))
    budget.record_rate_limited(sent[-1], sent[-1] + 0.1)
    assert not budget.slow_start
    assert budget.learned_rate == pytest.approx(pacing.LEARN_FRACTION * 60)


def test_a_fleet_is_back_at_full_speed_within_a_minute_of_a_stray_429():
    # 20 waits asking 600 requests/min; another client had filled the bot's window at the start.
    budget = pacing.Budget("kore_default", rng=lambda: 0.5)
    sent = fleet(budget, Kore(busy_until=0.5), until=120)
    assert 0 < sum(1 for _, status, _ in sent if status == 429) <= 20
    assert budget.pauses == 1
    assert per_minute(sent, 60, 80) >= 400  # it was 9/min before the slow start
    assert budget.learned_rate is None


@pytest.mark.parametrize("busy_until", [-1.0, 0.5], ids=["storm", "stray-429-first"])
def test_under_a_hard_limit_the_429s_stop(busy_until):
    # Kore accepts at most 300 per rolling 60 s; the fleet asks 600/min for 20 minutes.
    budget = pacing.Budget("kore_default", rng=lambda: 0.5)
    until = 1200.0
    sent = fleet(budget, Kore(300, busy_until=busy_until), until=until)
    refused = [t for t, status, _ in sent if status == 429]
    assert max(refused) < 0.6 * until  # in fact within the first ~70 s
    assert per_minute(sent, 0.6 * until, until) >= 280  # and Kore's limit is used, not wasted
    accepted = [t + 0.05 for t, status, _ in sent if status == 200]
    assert most_in_window(accepted, pacing.MINUTE) <= 300


def test_a_priority_send_skips_the_line_the_budget_and_the_pause(clock, monkeypatch):
    budget = pacing.Budget("kore_default", per_minute=6)
    pacer = pacing.AsyncPacer(budget)

    async def main():
        gate = asyncio.Event()

        async def held_sleep(seconds: float) -> None:
            await gate.wait()  # the head of the line sleeps until the stop has gone
            clock.sleep(seconds)

        monkeypatch.setattr(pacing, "_sleep", held_sleep)
        pacer.record("rate_limited", await pacer.acquire())
        line = [asyncio.ensure_future(pacer.acquire()) for _ in range(3)]
        await asyncio.sleep(0)
        stop = await pacer.acquire(deadline=clock.now, priority=True)
        assert stop == 10_000
        assert pacer.queued == 3
        gate.set()
        return await asyncio.gather(*line)

    assert min(asyncio.run(main())) > 10_000 + pacing.PAUSE_BASE
    assert budget.requests == 5


# -- outages ----------------------------------------------------------------------------------


@pytest.mark.parametrize("failure_latency", [0.1, 10.0, 30.0], ids=["503", "slow-502", "timeout"])
def test_an_outage_is_probed_not_hammered_and_every_wait_reads_soon_after(failure_latency, caplog):
    # 20 waits polling every 5 s; Kore is down from 100 s to 250 s.
    caplog.set_level(logging.INFO, logger="airflow_provider_kore.pacing")
    budget = pacing.Budget("kore_default", rng=lambda: 0.5)
    sent = fleet(budget, Kore(down=(100, 250)), interval=5.0, until=600, failure_latency=failure_latency)
    during = [t for t, _, _ in sent if 100 <= t + 0.05 < 250]
    assert len(during) <= 70  # 600 before the pause (480 measured in the old triggers)
    back: dict[int, float] = {}
    for t, status, wait in sent:
        if status == 200 and t >= 250:
            back.setdefault(wait, t - 250)
    assert len(back) == 20
    assert max(back.values()) <= 45  # every wait reads again well within 90 s
    down = [r for r in caplog.records if "unavailable" in r.getMessage()]
    assert len(down) == budget.pauses  # once per pause
    assert down[0].levelno == logging.WARNING
    assert "kore_default" in down[0].getMessage()
    assert sum("answers again" in r.getMessage() for r in caplog.records) == 1


def test_outage_pauses_double_up_to_the_cap_and_in_flight_failures_start_none():
    budget = pacing.Budget("kore_default", rng=lambda: 1.0)
    now, pauses = 0.0, []
    for _ in range(12):
        sent_at = budget.next_send_time(now)
        budget.record_send(sent_at)
        now = sent_at + 0.1
        assert budget.record_unavailable(sent_at, now) is True
        assert budget.record_unavailable(sent_at - 0.05, now + 0.01) is False  # in flight
        pauses.append(budget.paused_until - now)
    assert pauses[:3] == [pytest.approx(1.5), pytest.approx(3.0), pytest.approx(6.0)]
    assert max(pauses) == pacing.OUTAGE_PAUSE_MAX
    assert budget.blocked_by(now) == "unavailable"
    # An answer to a request sent before the pause is old news; one sent since ends the outage.
    budget.record_answer(now - 1, now + 1)
    assert budget.next_send_time(now + 1) > now + 1
    budget.record_send(now + 1)  # a priority send during the pause
    budget.record_answer(now + 1, now + 1.1)
    assert budget.next_send_time(now + 1.2) == now + 1.2
    assert budget.record_unavailable(now - 1, now + 2) is False  # sent before the probe that got through


def test_an_outage_blocks_an_async_deadline_as_unavailable(clock):
    pacer = pacing.AsyncPacer(pacing.Budget("kore_default"))

    async def main():
        pacer.record("unavailable", await pacer.acquire())
        with pytest.raises(pacing.BudgetExhausted) as info:
            await pacer.acquire(deadline=clock.now + 0.5)
        return info.value.reason

    assert asyncio.run(main()) == "unavailable"


# -- logging ----------------------------------------------------------------------------------


def test_pause_and_pacing_are_logged_once_each(caplog):
    caplog.set_level(logging.DEBUG, logger="airflow_provider_kore.pacing")
    budget = pacing.Budget("kore_default", per_minute=120, waits=lambda: 42, rng=lambda: 0.0)
    now = 0.0
    for _ in range(300):
        at = budget.next_send_time(now)
        if at > now:
            budget.note_wait(now)
        now = at
        budget.record_send(now)
        budget.record_answer(now, now)
    budget.record_rate_limited(now, now + 0.1)
    budget.record_rate_limited(now - 1, now + 0.2)  # in flight: no second line
    for later in (now + 1, now + 5, now + 6):  # the pause is logged once it is over
        budget.next_send_time(later)
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert infos[0] == (
        "Kore connection kore_default: pacing 42 waits at 118 requests/min "
        "(budget: 120 per minute, no fixed limit per hour)"
    )
    # 90% of the ~120 accepted in the last minute, paced over the 61 s window; the pause lasts
    # until Kore's rolling minute has room for that.
    assert re.fullmatch(
        r"Kore connection kore_default: 429 from Kore, pausing all 42 waits for \d+\.\d s; "
        r"resuming at 10[67] requests/min",
        infos[1],
    )
    assert len(infos) == 2


# -- fair turns -------------------------------------------------------------------------------


def test_async_turns_rotate_first_come_first_served(clock):
    budget = pacing.Budget("kore_default", per_minute=60)
    pacer = pacing.AsyncPacer(budget)
    served: list[tuple[str, float]] = []

    async def wait(name: str) -> None:
        for _ in range(4):
            served.append((name, await pacer.acquire()))
            await asyncio.sleep(0)  # the answer; then the next poll queues at the back

    async def main():
        await asyncio.gather(*(wait(name) for name in "ABCDE"))

    asyncio.run(main())
    names = [name for name, _ in served]
    assert names == list("ABCDE") * 4
    times = [t for _, t in served]
    assert all(b - a == pytest.approx(MINUTE_WINDOW / 60) for a, b in itertools.pairwise(times))
    assert len(clock.slept) == 19  # only the head of the line ever holds a timer


def test_async_waits_past_their_deadline_leave_the_line(clock):
    budget = pacing.Budget("kore_default", per_minute=6)
    pacer = pacing.AsyncPacer(budget)

    async def main():
        await pacer.acquire()
        with pytest.raises(pacing.BudgetExhausted) as info:
            await pacer.acquire(deadline=clock.now + 5)
        assert info.value.reason == "budget"
        return await pacer.acquire(deadline=clock.now + 60)

    assert asyncio.run(main()) == pytest.approx(10_000 + MINUTE_WINDOW / 6)


def test_a_cancelled_wait_does_not_block_the_line(clock):
    budget = pacing.Budget("kore_default", per_minute=60)
    pacer = pacing.AsyncPacer(budget)

    async def main():
        await pacer.acquire()
        head = asyncio.ensure_future(pacer.acquire())
        queued = asyncio.ensure_future(pacer.acquire())
        last = asyncio.ensure_future(pacer.acquire())
        await asyncio.sleep(0)
        queued.cancel()
        await asyncio.gather(head, last)
        return pacer.queued

    assert asyncio.run(main()) == 0
    assert budget.requests == 3


def test_sync_pacer_waits_out_a_lone_429_and_nothing_more(monkeypatch, caplog):
    # A worker's pacer serves one task: after a 429 with Retry-After: 2 the hook waits 2 s, and
    # its later calls are not spaced out (a learned rate used to space them 6 s apart).
    caplog.set_level(logging.INFO, logger="airflow_provider_kore.pacing")
    fake = FakeClock()
    monkeypatch.setattr(pacing, "clock", fake)
    pacer = pacing.SyncPacer("kore_default")
    sent_at = pacer.acquire(sleep=fake.sleep)
    assert pacer.record("rate_limited", sent_at, retry_after=2.0) is True
    for _ in range(10):
        pacer.record("answer", pacer.acquire(deadline=fake.now + 60, sleep=fake.sleep))
        fake.now += 0.1  # the answer's latency
    assert fake.slept == [pytest.approx(2.0)]
    # The task log says what it waits on.
    assert "kore_default: waiting 2.0 s for Kore.ai (rate limit)" in caplog.text
    # A 429 right after one backs off as usual, never shorter than Retry-After.
    pacer.record("rate_limited", pacer.acquire(sleep=fake.sleep), retry_after=2.0)
    pacer.record("rate_limited", pacer.acquire(sleep=fake.sleep), retry_after=1.0)
    assert fake.slept[-1] >= 1.0
    assert pacer.budget.learned_rate is None
    assert pacer.budget.gap == 0


def test_sync_pacer_deadline_outage_and_process_wide_registry(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(pacing, "clock", fake)
    pacing.reset_sync_pacers()
    try:
        pacer = pacing.sync_pacer("kore_x")
        assert pacing.sync_pacer("kore_x") is pacer
        assert pacing.sync_pacer("kore_y") is not pacer
        assert pacer.record("unavailable", pacer.acquire(sleep=fake.sleep)) is True
        with pytest.raises(pacing.BudgetExhausted) as info:
            pacer.acquire(deadline=fake.now + 0.5, sleep=fake.sleep)
        assert info.value.reason == "unavailable"
        probe = pacer.acquire(sleep=fake.sleep)
        assert fake.now - 10_000 >= pacing.OUTAGE_PAUSE_BASE
        pacer.record("answer", probe)
        assert pacer.acquire(sleep=fake.sleep) == fake.now  # the outage is over: no more waiting
        assert pacer.stats()["unavailable"] == 1
    finally:
        pacing.reset_sync_pacers()


def _stop_path(pacer: pacing.SyncPacer) -> list[str]:
    """What a worker's on_kill does: a priority send, then its answer recorded."""
    sent_at = pacer.acquire_priority()
    pacer.record("answer", sent_at)
    pacer.record("rate_limited", sent_at - 100, retry_after=0.0)  # every recorder takes the lock
    pacer.record("unavailable", sent_at - 100)
    return ["stopped"]


def test_the_sync_stop_path_never_blocks_on_the_waiting_path(monkeypatch):
    # on_kill runs in a SIGTERM handler on the main thread, possibly while that thread holds the
    # pacer's lock inside acquire: the stop path must not wait for it (a plain Lock deadlocks).
    pacer = pacing.SyncPacer("kore_default")
    done: list[str] = []
    entered = threading.Event()

    def inside_acquire() -> float:
        if not entered.is_set():
            entered.set()
            done.extend(_stop_path(pacer))  # the handler runs here, the lock held by acquire
        return time.monotonic()

    monkeypatch.setattr(pacing, "clock", inside_acquire)
    thread = threading.Thread(target=pacer.acquire, kwargs={"sleep": lambda s: None}, daemon=True)
    thread.start()
    thread.join(timeout=10)
    assert done == ["stopped"]
    assert not thread.is_alive()


@pytest.mark.skipif(not hasattr(signal, "SIGALRM"), reason="POSIX signals")
def test_a_real_sigterm_like_handler_can_stop_while_acquire_holds_the_lock(monkeypatch):
    pacer = pacing.SyncPacer("kore_default")
    pacer.record("rate_limited", pacer.acquire(), retry_after=0.05)  # the main thread will wait
    done: list[str] = []
    fired = threading.Event()

    def on_signal(signum, frame):
        fired.set()
        done.extend(_stop_path(pacer))

    def watchdog(signum, frame):
        raise TimeoutError("the stop path deadlocked")

    def clock() -> float:
        if not fired.is_set():
            signal.raise_signal(signal.SIGUSR1)  # delivered here, under acquire's lock
        return time.monotonic()

    old_usr1 = signal.signal(signal.SIGUSR1, on_signal)
    old_alarm = signal.signal(signal.SIGALRM, watchdog)
    signal.alarm(10)
    try:
        monkeypatch.setattr(pacing, "clock", clock)
        pacer.acquire(sleep=lambda s: time.sleep(min(s, 0.05)))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGUSR1, old_usr1)
        signal.signal(signal.SIGALRM, old_alarm)
    assert done == ["stopped"]


def test_importing_pacing_is_cheap():
    import subprocess
    import sys

    code = (
        "import sys, airflow_provider_kore.pacing; "
        "heavy = {'aiohttp', 'requests', 'jwt', 'airflow'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_the_simulator_refuses_over_its_window_as_kore_does_and_measures_windows():
    import requests

    from airflow_provider_kore.testing.simulator import RATE_LIMIT_MESSAGE

    with KoreSimulator(rate_limit=(3, 0.5), client_secret=SECRET) as sim:
        url = f"{sim.url}/campaign/api/v2/public/{sim.stream_id}/campaign/cd-x/status"
        answers = [requests.post(url, json={}, timeout=5) for _ in range(4)]
        refused = answers[-1]
        assert [a.status_code for a in answers[:3]] != [429] * 3
        assert refused.status_code == 429
        assert refused.json() == {"errors": [{"msg": RATE_LIMIT_MESSAGE, "code": 429}]}
        assert "Retry-After" not in refused.headers
        assert sim.max_requests_in_window(0.5) == 4  # refused requests arrived too
        assert sim.max_requests_in_window(0.5, status_code=429) == 1
        time.sleep(0.6)
        assert requests.post(url, json={}, timeout=5).status_code != 429  # the window rolled on
        assert sim.max_requests_in_window(0.5) == 4
        assert sim.max_requests_in_window(1e-9) == 1
        with pytest.raises(ValueError, match="window_seconds"):
            sim.max_requests_in_window(0)


# ---------------------------------------------------------------------------------------------
# Fleets in real time against rate-limited simulators (run side by side).


def _active(ids: list[str]) -> dict[str, Any]:
    return {campaign_id: {"campaign_type": "voice", "status": "Active"} for campaign_id in ids}


def _fleet(conn_id: str, waits: list[tuple[float, str, float]]) -> dict[str, Any]:
    """Run the triggers ``(start_delay, campaign_id, poll_interval)`` in one event loop."""

    async def one(delay: float, campaign_id: str, poll_interval: float) -> dict[str, Any]:
        await asyncio.sleep(delay)
        trigger = KoreCampaignStatusTrigger(
            campaign_id, kore_conn_id=conn_id, poll_interval=poll_interval, end_time=time.time() + 600
        )
        events = [event.payload async for event in trigger.run()]
        assert len(events) == 1
        return events[0]

    async def main() -> dict[str, Any]:
        started = time.monotonic()
        # Held like a triggerer would: the client (and its counters) outlive each wait.
        async with shared.shared_client(conn_id) as client:
            events = await asyncio.gather(*(one(*wait) for wait in waits))
            stats = client.pacing.stats()
        return {"events": events, "stats": stats, "elapsed": time.monotonic() - started}

    return asyncio.run(main())


def _budgeted_fleet(sim: KoreSimulator, conn_id: str) -> dict[str, Any]:
    # 100 waits x 2 reads = 200 requests at 150/min: about 80 s, over a minute's budget.
    return _fleet(conn_id, [(0.0, campaign_id, 5.0) for campaign_id in sim.campaign_ids])


def _fifty_on_one(sim: KoreSimulator, conn_id: str) -> dict[str, Any]:
    return _fleet(conn_id, [(0.0, "cd-one", 1.0)] * 50)


def _staggered_on_one(sim: KoreSimulator, conn_id: str) -> dict[str, Any]:
    return _fleet(conn_id, [(0.4 * n, "cd-staggered", STAGGERED_INTERVAL) for n in range(20)])


def _storm(sim: KoreSimulator, conn_id: str) -> dict[str, Any]:
    return _fleet(conn_id, [(0.0, campaign_id, 5.0) for campaign_id in sim.campaign_ids])


def _hooks_in_threads(sim: KoreSimulator, conn_id: str) -> dict[str, Any]:
    from airflow_provider_kore.hooks.kore import KoreHook

    time.sleep(5)  # after the storm's first burst: a worker process is not sharing its GIL with one

    def worker(campaign_id: str) -> int:
        hook = KoreHook(conn_id)
        try:
            return sum(1 for _ in range(12) if hook.get_campaign_status(campaign_id)["id"] == campaign_id)
        finally:
            hook.close()

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        reads = list(pool.map(worker, sim.campaign_ids))
    return {"reads": reads}


def _outage(sim: KoreSimulator, conn_id: str) -> dict[str, Any]:
    """20 waits, 10 minutes of time left, meet a 150 s outage (every request answered 503)."""

    def outage() -> None:
        time.sleep(OUTAGE_START)
        sim.set_outage(True)
        marks["down"] = time.monotonic()
        time.sleep(OUTAGE_SECONDS)
        sim.set_outage(False)
        marks["up"] = time.monotonic()

    marks: dict[str, float] = {}
    switch = threading.Thread(target=outage, daemon=True)
    switch.start()
    result = _fleet(conn_id, [(0.0, campaign_id, 5.0) for campaign_id in sim.campaign_ids])
    switch.join()
    return {**result, "marks": marks, "done_at": time.monotonic()}


STAGGERED_INTERVAL = 20.0
OUTAGE_START = 8.0
# The scenario is a 150 s outage; the suite runs 60 s (same rules: at most about one
# probe a second, every wait back soon after). KORE_OUTAGE_SECONDS=150 runs the full one.
OUTAGE_SECONDS = float(os.environ.get("KORE_OUTAGE_SECONDS", "60"))

#: name -> (simulator settings, connection extras, scenario)
SCENARIOS: dict[str, tuple[dict[str, Any], dict[str, Any], Callable[[KoreSimulator, str], dict[str, Any]]]] = {
    "budget": (
        {
            "rate_limit": (160, 60),
            "complete_after_polls": 2,
            "campaigns": _active([f"cd-budget-{n:03d}" for n in range(100)]),
        },
        {"max_requests_per_minute": 150},
        _budgeted_fleet,
    ),
    "fifty_on_one": ({"complete_after_polls": 4, "campaigns": _active(["cd-one"])}, {}, _fifty_on_one),
    "staggered_on_one": ({"complete_after_polls": 4, "campaigns": _active(["cd-staggered"])}, {}, _staggered_on_one),
    "storm": (
        {
            "rate_limit": (100, 60),
            "complete_after_polls": 1,
            "campaigns": _active([f"cd-storm-{n:03d}" for n in range(150)]),
        },
        {},
        _storm,
    ),
    "outage": (
        {
            # Each campaign completes on its 6th read: after the outage for every wait.
            "complete_after_polls": 6,
            "campaigns": _active([f"cd-outage-{n:02d}" for n in range(20)]),
        },
        {},
        _outage,
    ),
    "hooks": (
        {
            "rate_limit": (32, 60),
            "complete_after_polls": None,
            "campaigns": _active([f"cd-hook-{n}" for n in range(3)]),
        },
        {},
        _hooks_in_threads,
    ),
}


class Scenarios:
    """Every scenario started at once, each in its own thread (its own event loop) and simulator."""

    def __init__(self) -> None:
        self.sims: dict[str, KoreSimulator] = {}
        self.futures: dict[str, concurrent.futures.Future[dict[str, Any]]] = {}

    def result(self, name: str) -> tuple[dict[str, Any], KoreSimulator]:
        return self.futures[name].result(timeout=300), self.sims[name]


@pytest.fixture(scope="module")
def scenarios():
    with pytest.MonkeyPatch.context() as mp:
        runner = Scenarios()
        pool = concurrent.futures.ThreadPoolExecutor(len(SCENARIOS))
        try:
            for name, (sim_settings, extras, _) in SCENARIOS.items():
                sim = KoreSimulator(client_secret=SECRET, **sim_settings).start()
                runner.sims[name] = sim
                conn = json.loads(sim.airflow_conn_json(**extras))
                mp.setenv(f"AIRFLOW_CONN_KORE_PACING_{name.upper()}", json.dumps(conn))
            for name, (_, _, scenario) in SCENARIOS.items():
                runner.futures[name] = pool.submit(scenario, runner.sims[name], f"kore_pacing_{name}")
            yield runner
        finally:
            pool.shutdown(wait=True)
            for sim in runner.sims.values():
                sim.stop()
            pacing.reset_sync_pacers()


def _status_requests(sim: KoreSimulator) -> list[Any]:
    return [r for r in sim.requests if r.operation == "get_campaign_status"]


@pytest.mark.pacing
def test_a_fleet_under_a_budget_never_exceeds_it_and_never_sees_a_429(scenarios):
    result, sim = scenarios.result("budget")
    events = result["events"]
    assert len(events) == 100
    assert all(event["status"] == "success" for event in events)
    assert sim.count(status_code=429) == 0
    assert sim.count() >= 200  # more than a minute's budget in all
    assert sim.max_requests_in_window(60) <= 150
    # Fair: every campaign got its two reads; no wait starved while others polled again.
    assert {sim.campaign_info(c)["polls"] for c in sim.campaign_ids} == {2}
    assert sum(event["counters"]["requests"] for event in events) == sim.count()
    assert result["stats"]["rate_limited"] == 0
    assert result["stats"]["current_rate_per_minute"] == pytest.approx(60 * 150 / 61, abs=0.1)


@pytest.mark.pacing
def test_fifty_waits_on_one_campaign_share_their_reads(scenarios):
    result, sim = scenarios.result("fifty_on_one")
    events = result["events"]
    assert all(event["status"] == "success" for event in events)
    assert len(_status_requests(sim)) <= 8
    assert sum(event["counters"]["requests"] for event in events) == len(_status_requests(sim))
    assert sum(event["counters"]["coalesced"] for event in events) >= 50 * 4 - 8
    assert result["stats"]["coalesced"] == sum(event["counters"]["coalesced"] for event in events)


@pytest.mark.pacing
def test_waits_started_at_different_times_fall_into_step(scenarios):
    result, sim = scenarios.result("staggered_on_one")
    events = result["events"]
    assert all(event["status"] == "success" for event in events)
    reads = _status_requests(sim)
    # About one request per poll interval for the 20 waits together (not one per wait).
    intervals = (reads[-1].time - reads[0].time) / STAGGERED_INTERVAL
    assert len(reads) == 4  # the campaign completes at its 4th read
    assert len(reads) <= intervals + 2
    assert all(b.time - a.time >= STAGGERED_INTERVAL * 0.9 for a, b in itertools.pairwise(reads))


@pytest.mark.pacing
def test_a_429_storm_pauses_once_and_does_not_come_back(scenarios):
    result, sim = scenarios.result("storm")
    events = result["events"]
    assert len(events) == 150
    assert all(event["status"] == "success" for event in events)
    refused = [r for r in sim.requests if r.status_code == 429]
    assert refused  # the first burst did go over Kore's limit
    first = min(r.time for r in refused)
    # Only requests already in flight when the first 429 came back were refused too.
    assert max(r.time for r in refused) < first + pacing.PAUSE_BASE
    assert result["stats"]["pauses"] == 1
    assert result["stats"]["rate_limited"] == len(refused)
    assert sum(event["counters"]["rate_limited"] for event in events) == len(refused)
    assert sim.max_requests_in_window(60, status_code=200) <= 100


@pytest.mark.pacing
def test_hooks_in_one_process_wait_out_kore_429s(scenarios):
    # A worker's pacer keeps no budget (one task per process): threads meet Kore's limit, and the
    # shared pause (doubling) holds them all until Kore's window has room again.
    result, sim = scenarios.result("hooks")
    assert result["reads"] == [12, 12, 12]
    assert sim.count(status_code=200) == 36
    assert 0 < sim.count(status_code=429) <= 24  # at most one per thread per pause


@pytest.mark.pacing
def test_a_kore_outage_shorter_than_the_time_left_fails_no_wait(scenarios, caplog):
    result, sim = scenarios.result("outage")
    down, up = result["marks"]["down"], result["marks"]["up"]
    assert [event["status"] for event in result["events"]] == ["success"] * 20
    during = [r for r in sim.requests if down <= r.time <= up]
    back_within = result["done_at"] - up
    print(f"outage {OUTAGE_SECONDS:.0f} s: {len(during)} requests during it; all done {back_within:.1f} s after")
    assert len(during) <= OUTAGE_SECONDS  # about one probe a second at most, for the whole fleet
    assert back_within <= 90  # every wait read again soon after Kore came back
