"""Pacing per ``kore`` connection: a request budget, connection-wide pauses, fair turns.

Kore.ai counts requests per bot in rolling windows (600/min and 18,000/h for runtime APIs, 60 and
1,800 for design-time ones) and answers 429, usually without ``Retry-After``, when one is full.
:class:`Budget` keeps a connection under a fixed budget (the connection extras), pauses it on a 429
or an outage (a transient failure), then resumes at a rate learned from what Kore accepted (see the
constants). :class:`AsyncPacer` (per event loop) serves turns first come, first served, so under
a tight budget every wait's interval stretches alike; :class:`SyncPacer` (per worker process)
only waits out pauses. A priority send (a stop) never waits. Standard library only.
"""

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
#: A 429 pauses the connection ``PAUSE_BASE`` doubling per 429 without a clean minute between, up to
#: ``PAUSE_MAX``, plus up to ``PAUSE_JITTER`` of itself (processes desynchronise); a ``Retry-After``
#: sets it (capped). A 429 (or failure) for a request sent before the pause began starts none.
PAUSE_BASE = 2.0
PAUSE_MAX = 60.0
PAUSE_JITTER = 0.5
RETRY_AFTER_MAX = 120.0
#: Then a learned rate (at least ``MIN_RATE_PER_MINUTE``; dropped at ``RATE_CEILING``, Kore's runtime
#: limit, or the fixed budget). After fewer than ``EVIDENCE_MIN`` accepted in the minute before
#: (another client filled the bot's window): a slow start, doubling every ``SLOW_START_STEP`` s.
#: Else ``LEARN_FRACTION`` x what Kore accepted (a rolling window too), x ``RAISE_FACTOR`` per
#: clean minute up to that, beyond only after ``PROBE_AFTER`` s (a hard limit brings no 429 back).
MIN_RATE_PER_MINUTE = 10.0
RATE_CEILING = 600.0
EVIDENCE_MIN = 20
SLOW_START_STEP = 5.0
LEARN_FRACTION = 0.9
RAISE_FACTOR = 1.1
PROBE_AFTER = 1800.0
#: An outage pause doubles from ``OUTAGE_PAUSE_BASE``, jitter included at most ``OUTAGE_PAUSE_MAX``
#: (every wait reads again soon after Kore is back); then one probe per pause length.
OUTAGE_PAUSE_BASE = 1.0
OUTAGE_PAUSE_MAX = 30.0
#: Pacing is logged (once) this many seconds after requests start waiting for their turn.
PACING_LOG_DELAY = 5.0
#: How long a hook call without a deadline waits out Kore's pauses before giving up.
RATE_LIMIT_PATIENCE = 900.0

_WINDOW = MINUTE + SAFETY_MARGIN
_HOUR_WINDOW = HOUR + SAFETY_MARGIN
_EARLY = 1e-6  # a turn due within this is taken now (timer and float rounding)


def clock() -> float:
    return time.monotonic()  # the pacing clock; a seam for tests


async def _sleep(seconds: float) -> None:
    await asyncio.sleep(seconds)  # a seam for tests


class BudgetExhausted(Exception):
    """The next send would come after the caller's deadline (or its wait reached the deadline)."""

    def __init__(self, not_before: float, reason: str) -> None:
        super().__init__(reason)
        self.not_before = not_before  # pacing-clock time of the earliest possible send
        self.reason = reason  # "budget" (fixed), "rate limit" (429 pause, learned rate) or "unavailable"


def _window_free_at(sends: deque[float], limit: int, window: float, now: float) -> float:
    """Earliest time a new send keeps at most ``limit`` sends in any window of ``window`` seconds."""
    while sends and sends[0] <= now - window:
        sends.popleft()
    return now if len(sends) < limit else sends[len(sends) - limit] + window


class Budget:
    """One connection's pacing arithmetic: not thread-safe, never blocking, pacing-clock times.

    ``waits`` counts the waits sharing the connection (for logs); ``rng`` gives the jitter;
    ``learn=False`` keeps the pauses only (see :class:`SyncPacer`).
    """

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
        self.per_minute: int | None
        self.per_hour: int | None
        # Counters: sends, 429s, transient failures, pauses, reads answered by another wait's read.
        self.requests = self.rate_limited = self.unavailable = self.pauses = self.coalesced = 0
        self._minute: deque[float] = deque()  # send times in the last window, sorted
        self._hour: deque[float] | None = None
        self._accepted: deque[float] = deque()  # send times of accepted answers, for learning
        self._last_send = self.paused_until = self._pause_started = self._hold_until = -math.inf
        #: The least time between two sends now (0: no spacing).
        self.gap = 0.0
        #: The learned limit (requests/min); None while no 429 constrains the connection.
        self.learned_rate: float | None = None
        self.slow_start = False  # the learned limit doubles (it came from a 429 with little evidence)
        self._hold = math.inf
        self._pause_accepted = self._consecutive = self._outages = 0  # _outages: pauses since an answer
        self._learning = False  # answers in flight when the pause began still teach the rate
        self._resumed_at: float | None = None  # first send after the last pause; clean time counts from it
        self._raised_at: float | None = None
        self._last_waited = self._pacing_since = -math.inf
        self._pacing_logged = self._pause_logged = True
        #: False while nothing can make a send wait: the per-request path stays almost free.
        self.limited = False
        self.configure(per_minute, per_hour)

    def configure(self, per_minute: int | None, per_hour: int | None) -> None:
        """Set (or change) the fixed budget; None switches a limit off."""
        for name, value in (("per_minute", per_minute), ("per_hour", per_hour)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1; got {value!r}")
        self.per_minute, self.per_hour = per_minute, per_hour
        self._hour = None if per_hour is None else self._hour if self._hour is not None else deque(self._minute)
        if self.learned_rate is not None and per_minute is not None and self.learned_rate >= per_minute:
            self.learned_rate = None
        self._update()

    def _update(self) -> None:
        gap = 0.0
        for limit, window in ((self.per_minute, _WINDOW), (self.per_hour, _HOUR_WINDOW), (self.learned_rate, _WINDOW)):
            if limit is not None:
                gap = max(gap, window / limit)
        if self._outages:
            # One probe at a time: spaced by the last pause, so hung probes do not pile up.
            gap = max(gap, self.paused_until - self._pause_started)
        self.gap = gap
        self.limited = gap > 0 or self.paused_until > -math.inf

    def rate_per_minute(self) -> float | None:
        """The cadence sends are paced at now, in requests per minute (None: not paced)."""
        return MINUTE / self.gap if self.gap > 0 else None

    def stats(self) -> dict[str, Any]:
        """Counters for the benchmark and the logs (plain JSON)."""
        stats = {name: getattr(self, name) for name in ("requests", "rate_limited", "unavailable", "pauses")}
        rate = self.rate_per_minute()
        return {
            **stats,
            "coalesced": self.coalesced,
            "waits": self.waits(),
            "current_rate_per_minute": rate and round(rate, 1),
        }

    def _describe_rate(self) -> str:
        rate = self.rate_per_minute()
        return "no fixed rate" if rate is None else f"{rate:.0f} requests/min"

    def next_send_time(self, now: float) -> float:
        """Earliest time the next request may be sent (``now`` or later)."""
        if not self.limited:
            return now
        self._maybe_raise(now)
        t = max(now, self.paused_until, self._last_send + self.gap)
        # A settled rate is a rolling window too: what Kore accepted must leave it first.
        learned = None if self.slow_start else self.learned_rate
        for sends, limit, window in ((self._minute, self.per_minute, _WINDOW), (self._minute, learned, _WINDOW)):
            if limit is not None:
                t = max(t, _window_free_at(sends, max(1, int(limit)), window, now))
        if self._hour is not None and self.per_hour is not None:
            t = max(t, _window_free_at(self._hour, self.per_hour, _HOUR_WINDOW, now))
        if not self._pause_logged and now >= self.paused_until:
            # Logged once the pause is over, when answers that were in flight have taught the rate.
            self._pause_logged = True
            log.info(
                "Kore connection %s: 429 from Kore, pausing all %d waits for %.1f s; resuming at %s",
                *(self.conn_id, self.waits(), t - self._pause_started, self._describe_rate()),
            )
        if not self.gap and self.paused_until <= now:
            self.limited = False  # the pause is over and nothing was learned: back to the free path
        return t

    def blocked_by(self, now: float) -> str:
        """What holds the next send back: ``"unavailable"``, ``"rate limit"`` or ``"budget"``."""
        if self._outages:
            return "unavailable"
        return "rate limit" if self.paused_until > now or self.learned_rate is not None else "budget"

    def record_send(self, now: float) -> None:
        """A request leaves now."""
        self.requests += 1
        self._last_send = now
        self._minute.append(now)
        while self._minute[0] <= now - _WINDOW:
            self._minute.popleft()
        if self._hour is not None:
            self._hour.append(now)
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
        if sent_at < self._pause_started:
            if wait is not None:
                self.paused_until = max(self.paused_until, now + wait)
                self.limited = True
            return False
        if self._resumed_at is not None and now - self._resumed_at >= _WINDOW:
            self._consecutive = 0
        self._consecutive += 1
        duration = min(PAUSE_MAX, PAUSE_BASE * 2 ** (self._consecutive - 1)) * (1.0 + PAUSE_JITTER * self._rng())
        if wait is not None:
            # Kore's own figure, unless a 429 comes right after one: then back off as usual.
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
        backoff = OUTAGE_PAUSE_BASE * 2 ** min(self._outages - 1, 30)
        duration = min(OUTAGE_PAUSE_MAX, backoff * (1.0 + PAUSE_JITTER * self._rng()))
        self._learning = False
        self._start_pause(now, duration)
        (log.warning if self._outages == 1 else log.info)(
            "Kore connection %s: Kore.ai is unavailable; pausing its requests for %.1f s, then probing (%d waits)",
            *(self.conn_id, duration, self.waits()),
        )
        return True

    def _start_pause(self, now: float, duration: float) -> None:
        self.pauses += 1
        self._pause_started, self.paused_until = now, now + duration
        self._resumed_at = self._raised_at = None
        self._update()

    def _learn(self) -> None:
        accepted = self._pause_accepted
        self.slow_start = accepted < EVIDENCE_MIN
        learned = max(MIN_RATE_PER_MINUTE, LEARN_FRACTION * accepted)
        self._hold, self._hold_until = max(accepted, MIN_RATE_PER_MINUTE), self._pause_started + PROBE_AFTER
        self.learned_rate = learned if self.per_minute is None or learned < self.per_minute else None
        self._update()

    def _maybe_raise(self, now: float) -> None:
        since = self._raised_at
        if since is None or now - since < (SLOW_START_STEP if self.slow_start else _WINDOW):
            return
        self._raised_at = now
        self._learning = False
        if self.learned_rate is None:
            return
        before = self._describe_rate()
        learned = self.learned_rate * (2 if self.slow_start else RAISE_FACTOR)
        if not self.slow_start and now < self._hold_until:
            learned = min(learned, max(self._hold, self.learned_rate))
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
    """What both pacers share: the driver records each answer (thread-safe in :class:`SyncPacer`)."""

    budget: Budget
    _lock: Any = contextlib.nullcontext()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return self.budget.stats()

    def record_answer(self, sent_at: float) -> None:
        """Kore answered (neither 429 nor a transient failure) the request sent at ``sent_at``."""
        with self._lock:
            self.budget.record_answer(sent_at, clock())

    def record_rate_limited(self, sent_at: float, retry_after: float | None = None) -> bool:
        """Kore answered 429; True if that paused the connection."""
        with self._lock:
            return self.budget.record_rate_limited(sent_at, clock(), retry_after)

    def record_unavailable(self, sent_at: float) -> bool:
        """A transient failure (5xx, network error, timeout); True if that paused the connection."""
        with self._lock:
            return self.budget.record_unavailable(sent_at, clock())


class AsyncPacer(_Pacer):
    """Turns for one connection in one event loop, first come first served (an asyncio.Lock is FIFO):
    only the head of the line sleeps on a timer, the others wait for the lock."""

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self._turn = asyncio.Lock()
        self.queued = 0  # requests waiting for their turn, the head included

    async def acquire(self, deadline: float | None = None, *, priority: bool = False) -> float:
        """Wait for a turn, record the send and return its time; ``priority``: now, ahead of all.

        :raise BudgetExhausted: as soon as the turn is known to come after ``deadline`` (pacing clock).
        """
        budget = self.budget
        now = clock()
        if priority or (not self.queued and (not budget.limited or budget.next_send_time(now) <= now + _EARLY)):
            budget.record_send(now)
            return now
        self.queued += 1
        try:
            try:
                timeout = None if deadline is None else max(0.0, deadline - now)
                await asyncio.wait_for(self._turn.acquire(), timeout)
            except asyncio.TimeoutError:
                raise BudgetExhausted(clock(), budget.blocked_by(clock())) from None
            try:
                while True:
                    now = clock()
                    at = budget.next_send_time(now)
                    if at <= now + _EARLY:
                        budget.record_send(now)
                        return now
                    if deadline is not None and at > deadline:
                        raise BudgetExhausted(at, budget.blocked_by(now))
                    budget.note_wait(now)
                    await _sleep(at - now)
            finally:
                self._turn.release()
        finally:
            self.queued -= 1


class SyncPacer(_Pacer):
    """One connection's 429 and outage pauses in one process; get it from :func:`sync_pacer`.

    Airflow 3 runs each task instance in its own process, so a worker's pacer serves one task: a
    fixed budget, a learned rate or FIFO turns would only space its own few requests (a lone 429
    spaced a hook's later calls 6 s apart). Waiting out a 429 and an outage is what matters there.
    ``on_kill`` runs in a SIGTERM handler on the main thread, maybe inside :meth:`acquire`: so the
    lock is reentrant and never held while sleeping, and :meth:`acquire_priority` takes none.
    """

    def __init__(self, conn_id: str) -> None:
        self.budget = Budget(conn_id, learn=False, waits=lambda: 1)
        self._lock = threading.RLock()

    def acquire(self, deadline: float | None = None, sleep: Callable[[float], Any] = time.sleep) -> float:
        """Wait out any pause, record the send and return its time (see :meth:`AsyncPacer.acquire`)."""
        while True:
            with self._lock:
                now = clock()
                at = self.budget.next_send_time(now)
                if at <= now + _EARLY:
                    self.budget.record_send(now)
                    return now
                if deadline is not None and at > deadline:
                    raise BudgetExhausted(at, self.budget.blocked_by(now))
            sleep(at - now)

    def acquire_priority(self) -> float:
        """Record a send that never waits (a stop) and return its time; takes no lock."""
        now = clock()
        self.budget.record_send(now)
        return now


_sync_pacers: dict[str, SyncPacer] = {}
_sync_lock = threading.Lock()


def sync_pacer(conn_id: str) -> SyncPacer:
    """The process's pacer for ``conn_id`` (created on first use)."""
    with _sync_lock:
        pacer = _sync_pacers.get(conn_id)
        if pacer is None:
            pacer = _sync_pacers[conn_id] = SyncPacer(conn_id)
        return pacer


def reset_sync_pacers() -> None:
    """Forget every process-wide pacer (tests)."""
    with _sync_lock:
        _sync_pacers.clear()
