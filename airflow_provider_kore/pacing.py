"""Pacing per ``kore`` connection. Kore.ai counts requests per bot in rolling windows (600/min and
18,000/h for runtime APIs, 60 and 1,800 for design-time ones) and answers 429 when one is full.
:class:`Budget` keeps a connection within a fixed budget (the connection extras), pauses it on a 429
or an outage, then resumes at a rate learned from what Kore accepted."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

MINUTE = 60.0
HOUR = 3600.0
SAFETY_MARGIN = 1.0  # added to each window
# A 429 pauses the connection (a 429 or failure of a request sent before the pause began starts none):
PAUSE_BASE = 2.0  # doubling per 429 without a clean minute between,
PAUSE_MAX = 60.0  # up to this,
PAUSE_JITTER = 0.5  # plus up to this much of itself (processes desynchronise);
RETRY_AFTER_MAX = 120.0  # a Retry-After sets it, capped at this (the engine's retries too).
# Then a learned rate (requests/min), dropped when raised to RATE_CEILING (Kore's runtime limit) or the budget:
MIN_RATE_PER_MINUTE = 10.0  # at least
RATE_CEILING = 600.0
EVIDENCE_MIN = 20  # fewer accepted in the minute before (another client filled the bot's window):
SLOW_START_STEP = 5.0  # a slow start, doubling every this many seconds;
LEARN_FRACTION = 0.9  # else this x what Kore accepted (a rolling window too),
RAISE_FACTOR = 1.1  # x this per clean minute up to what Kore accepted,
PROBE_AFTER = 1800.0  # beyond it only after this many seconds (a hard limit brings no 429 back).
OUTAGE_PAUSE_BASE = 1.0  # an outage pause doubles from this, jitter included, up to
OUTAGE_PAUSE_MAX = 30.0  # this (every wait reads soon after Kore is back); then one probe per pause
PACING_LOG_DELAY = 5.0  # pacing is logged once, this long after requests start waiting for their turn
RATE_LIMIT_PATIENCE = 900.0  # how long a hook call without a deadline waits out Kore's pauses

_WINDOW = MINUTE + SAFETY_MARGIN
_EARLY = 1e-6  # a turn due within this is taken now (timer and float rounding)

clock = time.monotonic  # the pacing clock (tests replace it, and _sleep)
_sleep = asyncio.sleep


class BudgetExhausted(Exception):
    """The next send would come after the caller's deadline (or its wait reached the deadline)."""

    def __init__(self, not_before: float, reason: str) -> None:
        super().__init__(reason)
        self.not_before = not_before  # pacing-clock time of the earliest possible send
        self.reason = reason  # "budget" (fixed), "rate limit" (429 pause, learned rate) or "unavailable"


class Budget:
    """One connection's pacing arithmetic: not thread-safe, never blocking, pacing-clock times.
    ``waits`` counts the waits on the connection (for logs); ``learn=False``: pauses only."""

    def __init__(
        self,
        conn_id: str,
        per_minute: int | None = None,
        per_hour: int | None = None,
        *,
        waits: Callable[[], int] | None = None,
        rng: Callable[[], float] = random.random,
        learn: bool = True,
    ) -> None:
        self.conn_id, self.waits, self._rng, self._learns = conn_id, waits or (lambda: 0), rng, learn
        # Counters: sends, 429s, transient failures, pauses, reads answered by another wait's read.
        self.requests = self.rate_limited = self.unavailable = self.pauses = self.coalesced = 0
        self._minute: deque[float] = deque()  # send times in the last window, sorted
        self._accepted: deque[float] = deque()  # send times of accepted answers, for learning
        self._last_send = self.paused_until = self._pause_started = self._hold_until = -math.inf
        self.gap = 0.0  # the least time between two sends now
        self.learned_rate: float | None = None  # requests/min; None while no 429 constrains the connection
        self.slow_start = False  # slow start: the learned limit doubles
        self._pause_accepted = self._consecutive = self._outages = 0  # _outages: pauses since an answer
        self._learning = False  # answers in flight when the pause began still teach the rate
        self._resumed_at: float | None = None  # first send after the last pause; clean time counts from it
        self._raised_at: float | None = None
        self._last_waited = self._pacing_since = -math.inf
        self._pacing_logged = self._pause_logged = True
        self.limited = False  # False while nothing can make a send wait: the per-request path stays free
        self.configure(per_minute, per_hour)

    def configure(self, per_minute: int | None, per_hour: int | None) -> None:
        """Set (or change) the fixed budget; None switches a limit off."""
        if any(limit is not None and limit < 1 for limit in (per_minute, per_hour)):
            raise ValueError(f"per_minute and per_hour must be at least 1; got {per_minute!r}, {per_hour!r}")
        self.per_minute, self.per_hour = per_minute, per_hour
        if self.learned_rate is not None and per_minute is not None and self.learned_rate >= per_minute:
            self.learned_rate = None
        self._update()

    def _update(self) -> None:
        limits = ((self.per_minute, _WINDOW), (self.per_hour, HOUR + SAFETY_MARGIN), (self.learned_rate, _WINDOW))
        self.gap = max([window / limit for limit, window in limits if limit is not None], default=0.0)
        if self._outages:  # one probe at a time, spaced by the last pause, so hung probes do not pile up
            self.gap = max(self.gap, self.paused_until - self._pause_started)
        self.limited = self.gap > 0 or self.paused_until > -math.inf

    def rate_per_minute(self) -> float | None:
        """The cadence sends are paced at now, in requests per minute (None: not paced)."""
        return MINUTE / self.gap if self.gap > 0 else None

    def _describe_rate(self) -> str:
        return f"{MINUTE / self.gap:.0f} requests/min" if self.gap > 0 else "no fixed rate"

    def stats(self) -> dict[str, Any]:
        """Counters for the benchmark and the logs (plain JSON)."""
        names = ("requests", "rate_limited", "unavailable", "pauses", "coalesced")
        stats = {name: getattr(self, name) for name in names}
        rate = self.rate_per_minute()
        return {**stats, "waits": self.waits(), "current_rate_per_minute": rate and round(rate, 1)}

    def next_send_time(self, now: float) -> float:
        """Earliest time the next request may be sent (``now`` or later)."""
        if not self.limited:
            return now
        self._maybe_raise(now)
        # Spacing sends ``window / limit`` apart keeps any window of a fixed budget within it.
        t = max(now, self.paused_until, self._last_send + self.gap)
        if self.learned_rate is not None and not self.slow_start:
            # A settled rate is a rolling window too: what Kore accepted must leave it first (sends
            # that left the window before ``now`` do not hold ``t`` back, so no need to drop them).
            limit = max(1, int(self.learned_rate))
            if len(self._minute) >= limit:
                t = max(t, self._minute[-limit] + _WINDOW)
        if not self._pause_logged and now >= self.paused_until:
            self._pause_logged = True  # once the answers that were in flight have taught the rate
            log.info(
                "Kore connection %s: 429 from Kore, pausing all %d waits for %.1f s; resuming at %s",
                *(self.conn_id, self.waits(), t - self._pause_started, self._describe_rate()),
            )
        if not self.gap and self.paused_until <= now:
            self.limited = False  # the pause is over and nothing was learned: back to the free path
        return t

    def blocked_by(self, now: float) -> str:
        """What holds the next send back (:attr:`BudgetExhausted.reason`)."""
        paused = self.paused_until > now or self.learned_rate is not None
        return "unavailable" if self._outages else "rate limit" if paused else "budget"

    def record_send(self, now: float) -> None:
        self.requests += 1
        self._last_send = now
        self._minute.append(now)
        while self._minute[0] <= now - _WINDOW:
            self._minute.popleft()
        if self._resumed_at is None and now >= self.paused_until:
            self._resumed_at = self._raised_at = now  # clean time is counted from here

    def record_answer(self, sent_at: float, now: float) -> None:
        """Kore answered (neither 429 nor a transient failure) a request sent at ``sent_at``."""
        self._accepted.append(sent_at)
        while self._accepted[0] <= now - 2 * _WINDOW:
            self._accepted.popleft()
        if self._outages and sent_at >= self._pause_started:
            log.info("Kore connection %s: Kore.ai answers again; resuming", self.conn_id)
            self._outages = 0
            self.paused_until = min(self.paused_until, now)
            self._pause_started = sent_at  # failures of requests sent before this one are old news
            self._update()
        if self._learning and self._pause_started - _WINDOW < sent_at < self._pause_started:
            self._pause_accepted += 1  # in flight when the pause began: Kore accepted more
            self._learn()

    def record_rate_limited(self, sent_at: float, now: float, retry_after: float | None = None) -> bool:
        """Kore answered 429 to a request sent at ``sent_at``; True if that starts a pause."""
        self.rate_limited += 1
        wait = None if retry_after is None else min(max(retry_after, 0.0), RETRY_AFTER_MAX)
        if sent_at < self._pause_started:  # in flight when the pause began: only Retry-After counts
            self.paused_until, self.limited = max(self.paused_until, now + (wait or 0.0)), True
            return False
        clean = self._resumed_at is not None and now - self._resumed_at >= _WINDOW  # a clean minute resets
        self._consecutive = 1 if clean else self._consecutive + 1
        duration = min(PAUSE_MAX, PAUSE_BASE * 2 ** (self._consecutive - 1)) * (1.0 + PAUSE_JITTER * self._rng())
        if wait is not None:  # Kore's own figure, unless a 429 comes right after one: then back off as usual
            duration = wait if self._consecutive == 1 else max(wait, duration)
        self._outages = 0  # Kore answers
        self._start_pause(now, duration)
        if self._learns:
            self._pause_accepted = sum(1 for s in self._accepted if s > now - _WINDOW)
            self._learning = True
            self._learn()
        self._pause_logged = False
        return True

    def record_unavailable(self, sent_at: float, now: float) -> bool:
        """A request sent at ``sent_at`` met a transient failure; True if that starts a pause."""
        self.unavailable += 1
        if sent_at < self._pause_started:
            return False
        self._outages += 1
        backoff = OUTAGE_PAUSE_BASE * 2 ** min(self._outages - 1, 30) * (1.0 + PAUSE_JITTER * self._rng())
        duration = min(OUTAGE_PAUSE_MAX, backoff)
        self._start_pause(now, duration)
        (log.warning if self._outages == 1 else log.info)(
            "Kore connection %s: Kore.ai is unavailable; pausing its requests for %.1f s, then probing (%d waits)",
            *(self.conn_id, duration, self.waits()),
        )
        return True

    def _start_pause(self, now: float, duration: float) -> None:
        self.pauses += 1
        self._pause_started, self.paused_until, self._learning = now, now + duration, False
        self._resumed_at = self._raised_at = None
        self._update()

    def _learn(self) -> None:
        accepted = self._pause_accepted
        self.slow_start = accepted < EVIDENCE_MIN
        learned = max(MIN_RATE_PER_MINUTE, LEARN_FRACTION * accepted)
        self._hold_until = self._pause_started + PROBE_AFTER  # held at what Kore accepted until then
        self.learned_rate = learned if self.per_minute is None or learned < self.per_minute else None
        self._update()

    def _maybe_raise(self, now: float) -> None:
        since = self._raised_at
        if since is None or now - since < (SLOW_START_STEP if self.slow_start else _WINDOW):
            return
        self._raised_at, self._learning = now, False
        if self.learned_rate is None:
            return
        before = self._describe_rate()
        learned = self.learned_rate * (2 if self.slow_start else RAISE_FACTOR)
        if not self.slow_start and now < self._hold_until:
            learned = min(learned, max(self._pause_accepted, self.learned_rate))
        self.learned_rate = None if learned >= (self.per_minute or RATE_CEILING) else learned
        self._update()
        if self._describe_rate() != before:
            log.info(
                "Kore connection %s: no 429 for %.0f s; raising the pace from %s to %s (%d waits)",
                *(self.conn_id, now - since, before, self._describe_rate(), self.waits()),
            )

    def note_wait(self, now: float) -> None:
        """A request has to wait for its turn: log once, ``PACING_LOG_DELAY`` s after pacing starts."""
        if now - self._last_waited > _WINDOW:
            self._pacing_since, self._pacing_logged = now, False
        self._last_waited = now
        if not self._pacing_logged and now - self._pacing_since >= PACING_LOG_DELAY and self.paused_until <= now:
            self._pacing_logged = True
            log.info(
                "Kore connection %s: pacing %d waits at %s (budget: %s per minute, %s per hour)",
                *(self.conn_id, self.waits(), self._describe_rate()),
                *("no fixed limit" if x is None else x for x in (self.per_minute, self.per_hour)),
            )


class _Pacer:
    """The driver records each outcome (thread-safe in :class:`SyncPacer`)."""

    budget: Budget
    _lock: Any = contextlib.nullcontext()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return self.budget.stats()

    def record(self, event: str | None, sent_at: float, retry_after: float | None = None) -> bool:
        """Record the engine decision's ``pacing`` event; True if that starts a pause."""
        with self._lock:
            if event == "rate_limited":
                return self.budget.record_rate_limited(sent_at, clock(), retry_after)
            if event == "unavailable":
                return self.budget.record_unavailable(sent_at, clock())
            if event == "answer":
                self.budget.record_answer(sent_at, clock())
            return False

    def acquire_priority(self) -> float:
        """Record a send that never waits (a stop) and return its time; takes no lock."""
        now = clock()
        self.budget.record_send(now)
        return now

    def _turn(self, deadline: float | None) -> tuple[float, float]:
        """``(now, 0)`` after recording a send if one may leave now, else ``(now, seconds to wait)``;
        :class:`BudgetExhausted` if the turn comes after ``deadline`` (pacing clock)."""
        now = clock()
        at = self.budget.next_send_time(now)
        if at <= now + _EARLY:
            self.budget.record_send(now)
            return now, 0.0
        if deadline is not None and at > deadline:
            raise BudgetExhausted(at, self.budget.blocked_by(now))
        return now, at - now


class AsyncPacer(_Pacer):
    """Turns for one connection in one event loop, first come first served (an asyncio.Lock is FIFO):
    only the head of the line sleeps on a timer, the others wait for the lock."""

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self._turn_lock = asyncio.Lock()
        self.queued = 0  # requests waiting for their turn, the head included

    async def acquire(self, deadline: float | None = None, *, priority: bool = False) -> float:
        """Wait for a turn, record the send and return its time; a ``priority`` send goes now, ahead of all."""
        budget, now = self.budget, clock()
        if priority or (not self.queued and budget.next_send_time(now) <= now + _EARLY):
            budget.record_send(now)
            return now
        self.queued += 1
        try:
            timeout = None if deadline is None else max(0.0, deadline - now)
            try:
                await asyncio.wait_for(self._turn_lock.acquire(), timeout)
            except asyncio.TimeoutError:
                raise BudgetExhausted(clock(), budget.blocked_by(clock())) from None
            try:
                while True:
                    now, wait = self._turn(deadline)
                    if not wait:
                        return now
                    budget.note_wait(now)
                    await _sleep(wait)
            finally:
                self._turn_lock.release()
        finally:
            self.queued -= 1


class SyncPacer(_Pacer):
    """One connection's 429 and outage pauses in a worker process, which runs one task: a fixed budget,
    a learned rate or turns would only space its own few requests. ``on_kill`` may run (SIGTERM) inside
    :meth:`acquire` on the same thread: so the lock is reentrant and never held while sleeping."""

    def __init__(self, conn_id: str) -> None:
        self.budget = Budget(conn_id, learn=False, waits=lambda: 1)
        self._lock = threading.RLock()

    def acquire(self, deadline: float | None = None, sleep: Callable[[float], Any] = time.sleep) -> float:
        """Wait out any pause, record the send and return its time (see :meth:`AsyncPacer.acquire`)."""
        while True:
            with self._lock:
                now, wait = self._turn(deadline)
                if not wait:
                    return now
                why = self.budget.blocked_by(now)  # "rate limit" or "unavailable": a worker keeps no budget
            log.info("Kore connection %s: waiting %.1f s for Kore.ai (%s)", self.budget.conn_id, wait, why)
            sleep(wait)


_sync_pacers: dict[str, SyncPacer] = {}


def sync_pacer(conn_id: str) -> SyncPacer:
    """The process's pacer for ``conn_id`` (created on first use; ``setdefault`` is atomic)."""
    return _sync_pacers.get(conn_id) or _sync_pacers.setdefault(conn_id, SyncPacer(conn_id))


def reset_sync_pacers() -> None:
    _sync_pacers.clear()  # tests
