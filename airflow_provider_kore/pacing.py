"""Pacing: one request budget per ``kore`` connection, connection-wide pauses, fair turns.

Kore.ai counts requests per bot in rolling windows (600 per 60 s and 18,000 per hour for the
runtime APIs, 60 and 1,800 for design-time ones) and answers 429, usually without
``Retry-After``, once a window is full. :class:`Budget` keeps a connection under that:

* **A fixed budget** (``max_requests_per_minute`` / ``max_requests_per_hour``): at most N sends
  in any rolling minute, M in any hour, counted over ``SAFETY_MARGIN`` longer windows (Kore
  counts a request a little after it leaves) and spaced ``window / limit`` apart.
* **A 429 pauses the connection** (``PAUSE_BASE`` doubling per 429 without a clean minute
  between, up to ``PAUSE_MAX``, plus up to ``PAUSE_JITTER`` of itself; a ``Retry-After`` sets
  the pause). A 429 for a request sent before the current pause began was in flight: it is
  counted but starts no new pause. Then sending resumes at a learned rate:

  - with evidence (at least ``EVIDENCE_MIN`` of the connection's requests accepted in the minute
    before it): ``LEARN_FRACTION`` x what Kore accepted, as a rolling window too, +``RAISE_FACTOR``
    per clean minute, back up to what Kore accepted; higher (until ``FORGET_FACTOR`` x that, when
    the limit is dropped) only after ``PROBE_AFTER`` s, so a hard limit does not bring a 429
    back every few minutes;
  - with little evidence (another client filled the bot's window): a *slow start* from
    ``MIN_RATE_PER_MINUTE``, doubling every ``SLOW_START_STEP`` s without a 429 up to the fixed
    budget or ``SLOW_START_CEILING``, when the limit is dropped. A stray 429 costs seconds.
* **An outage** (a transient failure of a read: 5xx, network error, timeout) pauses the
  connection too (``OUTAGE_PAUSE_BASE`` doubling, at most ``OUTAGE_PAUSE_MAX`` with jitter), then
  probes one request per pause length; an accepted answer to a request sent since the pause
  began ends the outage at once.

:class:`AsyncPacer` (one per event loop and connection) hands out turns in arrival order, so
when the budget cannot serve every wait at its poke interval, every interval stretches alike.
:class:`SyncPacer` (one per worker process and connection) only waits out pauses. A priority
send (a stop) never waits. Standard library only, cheap to import.
"""

from __future__ import annotations

import asyncio
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
#: Added to each window: Kore counts a request a little after it is sent.
SAFETY_MARGIN = 1.0
#: First pause after a 429 without ``Retry-After``; it doubles per 429 up to ``PAUSE_MAX`` (s).
PAUSE_BASE = 2.0
PAUSE_MAX = 60.0
#: A pause is lengthened by up to this fraction of itself, at random, so processes desynchronise.
PAUSE_JITTER = 0.5
#: A ``Retry-After`` is honoured up to this many seconds.
RETRY_AFTER_MAX = 120.0
#: A 429 after fewer accepted requests than this in the minute before says little: slow start.
EVIDENCE_MIN = 20
#: In a slow start the learned rate doubles after this many seconds without a 429.
SLOW_START_STEP = 5.0
#: ...and is dropped at this rate (Kore's runtime limit per minute) unless a fixed budget is lower.
SLOW_START_CEILING = 600.0
#: After a 429 with evidence the rate becomes this fraction of what Kore accepted in the minute.
LEARN_FRACTION = 0.9
#: Each clean minute (no 429) raises a settled rate by this factor.
RAISE_FACTOR = 1.1
#: A settled rate climbs above what Kore accepted only after this many seconds without a 429.
PROBE_AFTER = 1800.0
#: The learned rate never goes below this many requests per minute.
MIN_RATE_PER_MINUTE = 10.0
#: Without a fixed budget, a settled rate this many times what Kore accepted is dropped.
FORGET_FACTOR = 2.0
#: First pause after a transient failure; it doubles per failed probe. Jitter included, a pause
#: never exceeds ``OUTAGE_PAUSE_MAX``, so every wait reads again soon after Kore is back.
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
    """The pacing clock (monotonic seconds); a seam for tests."""
    return time.monotonic()


async def _sleep(seconds: float) -> None:
    await asyncio.sleep(seconds)  # a seam for tests


class BudgetExhausted(Exception):
    """The next send would come after the caller's deadline (or its wait reached the deadline)."""

    def __init__(self, not_before: float, reason: str) -> None:
        super().__init__(reason)
        #: Pacing-clock time of the earliest possible send.
        self.not_before = not_before
        #: ``"budget"`` (fixed budget), ``"rate limit"`` (429 pause, learned rate) or ``"unavailable"``.
        self.reason = reason


def _window_free_at(sends: deque[float], limit: int, window: float, now: float) -> float:
    """Earliest time a new send keeps at most ``limit`` sends in any window of ``window`` seconds."""
    while sends and sends[0] <= now - window:
        sends.popleft()
    return now if len(sends) < limit else sends[len(sends) - limit] + window


class Budget:
    """One connection's pacing arithmetic; not thread-safe, never blocking, pacing-clock times.

    :param waits: How many waits share the connection now (for log lines and :meth:`stats`).
    :param rng: A ``random()``-like function for the jitter (a seam for tests).
    :param learn: False: pauses only, no learned rate (see :class:`SyncPacer`).
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
        self.conn_id = conn_id
        self.waits = waits or (lambda: 0)
        self._rng = rng
        self._learns = learn
        self.per_minute: int | None = None
        self.per_hour: int | None = None
        # Counters: sends, 429s, transient failures, pauses, reads answered by another wait's read.
        self.requests = self.rate_limited = self.unavailable = self.pauses = self.coalesced = 0
        self._minute: deque[float] = deque()  # send times in the last window, sorted
        self._hour: deque[float] | None = None
        self._accepted: deque[float] = deque()  # send times of accepted answers, for learning
        self._last_send = -math.inf
        self._gap = 0.0
        self._learned: float | None = None  # requests/min; None: no 429 constrains the connection
        self._slow = False
        self._ceiling = math.inf
        self._hold = math.inf
        self._hold_until = -math.inf
        self._pause_started = self._pause_until = -math.inf
        self._pause_accepted = 0
        self._pause_logged = True
        self._pre_pause_rate: float | None = None
        self._learning = False
        self._consecutive = 0  # 429 pauses without a clean minute between
        self._outages = 0  # outage pauses since Kore last answered (0: no outage)
        self._resumed_at: float | None = None  # first send after the last pause
        self._raised_at: float | None = None
        self._last_waited = self._pacing_since = -math.inf
        self._pacing_logged = True
        #: False while nothing can make a send wait: the per-request path stays almost free.
        self.limited = False
        self.configure(per_minute, per_hour)

    def configure(self, per_minute: int | None, per_hour: int | None) -> None:
        """Set (or change) the fixed budget; None switches a limit off."""
        for name, value in (("per_minute", per_minute), ("per_hour", per_hour)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1; got {value!r}")
        self.per_minute, self.per_hour = per_minute, per_hour
        if per_hour is None:
            self._hour = None
        elif self._hour is None:
            self._hour = deque(self._minute)
        if self._learned is not None and per_minute is not None and self._learned >= per_minute:
            self._learned = None
        self._update()

    def _update(self) -> None:
        gap = 0.0
        for limit, window in ((self.per_minute, _WINDOW), (self.per_hour, _HOUR_WINDOW), (self._learned, _WINDOW)):
            if limit is not None:
                gap = max(gap, window / limit)
        if self._outages:
            # One probe at a time: spaced by the last pause, so a hung probe does not flood Kore.
            gap = max(gap, self._pause_until - self._pause_started)
        self._gap = gap
        self.limited = gap > 0 or self._pause_until > -math.inf

    @property
    def gap(self) -> float:
        """The least time between two sends now (0: no spacing)."""
        return self._gap

    @property
    def learned_rate(self) -> float | None:
        """The learned limit in requests per minute, or None."""
        return self._learned

    @property
    def slow_start(self) -> bool:
        """True while the learned limit doubles (after a 429 that came with little evidence)."""
        return self._learned is not None and self._slow

    @property
    def paused_until(self) -> float:
        """Pacing-clock time the current pause ends (``-inf``: never paused)."""
        return self._pause_until

    def rate_per_minute(self) -> float | None:
        """The cadence sends are paced at now, in requests per minute (None: not paced)."""
        return MINUTE / self._gap if self._gap > 0 else None

    def stats(self) -> dict[str, Any]:
        """Counters for the benchmark and the logs (plain JSON)."""
        rate = self.rate_per_minute()
        return {
            "requests": self.requests,
            "rate_limited": self.rate_limited,
            "unavailable": self.unavailable,
            "pauses": self.pauses,
            "coalesced": self.coalesced,
            "waits": self.waits(),
            "current_rate_per_minute": None if rate is None else round(rate, 1),
        }

    def _describe_rate(self) -> str:
        rate = self.rate_per_minute()
        return "no fixed rate" if rate is None else f"{rate:.0f} requests/min"

    def next_send_time(self, now: float) -> float:
        """Earliest time the next request may be sent (``now`` or later)."""
        if not self.limited:
            return now
        self._maybe_raise(now)
        t = max(now, self._pause_until, self._last_send + self._gap)
        if self.per_minute is not None:
            t = max(t, _window_free_at(self._minute, self.per_minute, _WINDOW, now))
        if self._learned is not None and not self._slow:
            # Settled: what Kore accepted must leave its window first. A slow start knows too
            # little for that (the window may hold a burst Kore refused).
            t = max(t, _window_free_at(self._minute, max(1, int(self._learned)), _WINDOW, now))
        if self._hour is not None and self.per_hour is not None:
            t = max(t, _window_free_at(self._hour, self.per_hour, _HOUR_WINDOW, now))
        if not self._pause_logged and now >= self._pause_until:
            # Logged once the pause is over, when answers that were in flight have taught the rate.
            self._pause_logged = True
            log.info(
                "Kore connection %s: 429 from Kore, pausing all %d waits for %.1f s; resuming at %s",
                *(self.conn_id, self.waits(), t - self._pause_started, self._describe_rate()),
            )
        if not self._gap and self._pause_until <= now:
            self.limited = False  # the pause is over and nothing was learned: back to the free path
        return t

    def blocked_by(self, now: float) -> str:
        """What holds the next send back: ``"unavailable"``, ``"rate limit"`` or ``"budget"``."""
        if self._outages:
            return "unavailable"
        return "rate limit" if self._pause_until > now or self._learned is not None else "budget"

    def record_send(self, now: float) -> None:
        """A request leaves now."""
        self.requests += 1
        self._last_send = now
        self._minute.append(now)
        while self._minute[0] <= now - _WINDOW:
            self._minute.popleft()
        if self._hour is not None:
            self._hour.append(now)
        if self._resumed_at is None and now >= self._pause_until:
            self._resumed_at = self._raised_at = now  # clean time is counted from here

    def record_answer(self, sent_at: float, now: float) -> None:
        """Kore answered (anything but 429 or a transient failure) a request sent at ``sent_at``."""
        self._accepted.append(sent_at)
        while self._accepted and self._accepted[0] <= now - 2 * _WINDOW:
            self._accepted.popleft()
        if self._outages and sent_at >= self._pause_started:
            log.info("Kore connection %s: Kore.ai answers again; resuming", self.conn_id)
            self._outages = 0
            self._pause_until = min(self._pause_until, now)
            self._pause_started = sent_at  # failures of requests sent before this one are old news
            self._update()
        if self._learning and self._pause_started - _WINDOW < sent_at < self._pause_started:
            # In flight when the pause began: Kore accepted more than we knew.
            self._pause_accepted += 1
            self._learn()

    def record_rate_limited(self, sent_at: float, now: float, retry_after: float | None = None) -> bool:
        """Kore answered 429 to a request sent at ``sent_at``; True if that starts a pause."""
        self.rate_limited += 1
        wait = None if retry_after is None else min(max(retry_after, 0.0), RETRY_AFTER_MAX)
        if sent_at < self._pause_started:
            if wait is not None:
                self._pause_until = max(self._pause_until, now + wait)
                self.limited = True
            return False
        if self._resumed_at is not None and now - self._resumed_at >= _WINDOW:
            self._consecutive = 0
        self._consecutive += 1
        duration = min(PAUSE_MAX, PAUSE_BASE * 2 ** (self._consecutive - 1)) * (1.0 + PAUSE_JITTER * self._rng())
        if wait is not None:
            # Kore's own figure, unless a 429 comes right after one: then back off as usual.
            duration = wait if self._consecutive == 1 else max(wait, duration)
        self._outages = 0  # Kore answered
        self._start_pause(now, duration)
        if self._learns:
            self._pause_accepted = sum(1 for s in self._accepted if s > now - _WINDOW)
            self._pre_pause_rate = self._effective_limit()
            self._learning = True
            self._learn()
        self._pause_logged = False
        log.debug("Kore connection %s: 429 from Kore; pausing for at least %.1f s", self.conn_id, duration)
        return True

    def record_unavailable(self, sent_at: float, now: float) -> bool:
        """A request sent at ``sent_at`` met a transient failure; True if that starts a pause."""
        self.unavailable += 1
        if sent_at < self._pause_started:
            return False  # in flight when the current pause began
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
        self._pause_started = now
        self._pause_until = now + duration
        self._resumed_at = self._raised_at = None
        self._update()

    def _effective_limit(self) -> float | None:
        limits = [x for x in (self.per_minute, self._learned) if x is not None]
        return float(min(limits)) if limits else None

    def _learn(self) -> None:
        accepted = self._pause_accepted
        self._slow = accepted < EVIDENCE_MIN
        learned = max(MIN_RATE_PER_MINUTE, LEARN_FRACTION * accepted)
        if self._pre_pause_rate is not None:
            learned = min(learned, self._pre_pause_rate)
        self._ceiling = SLOW_START_CEILING if self._slow else FORGET_FACTOR * max(accepted, MIN_RATE_PER_MINUTE)
        self._hold = max(accepted, MIN_RATE_PER_MINUTE)
        self._hold_until = self._pause_started + PROBE_AFTER
        self._learned = learned if self.per_minute is None or learned < self.per_minute else None
        self._update()

    def _maybe_raise(self, now: float) -> None:
        since = self._raised_at
        if since is None or now - since < (SLOW_START_STEP if self._slow else _WINDOW):
            return
        self._raised_at = now
        self._learning = False
        if self._learned is None:
            return
        before = self._describe_rate()
        if self._slow:
            learned = 2 * self._learned
        else:
            learned = self._learned * RAISE_FACTOR
            if now < self._hold_until:
                learned = min(learned, max(self._hold, self._learned))
        ceiling = self.per_minute if self.per_minute is not None else self._ceiling
        self._learned = None if learned >= ceiling else learned
        self._update()
        if self._describe_rate() != before:
            log.info(
                "Kore connection %s: no 429 for %.0f s; raising the pace from %s to %s (%d waits)",
                *(self.conn_id, now - since, before, self._describe_rate(), self.waits()),
            )

    def note_wait(self, now: float) -> None:
        """A request has to wait for its turn: log once, ``PACING_LOG_DELAY`` s after pacing starts."""
        if now - self._last_waited > _WINDOW:
            self._pacing_since = now
            self._pacing_logged = False
        self._last_waited = now
        if not self._pacing_logged and now - self._pacing_since >= PACING_LOG_DELAY and self._pause_until <= now:
            self._pacing_logged = True
            log.info(
                "Kore connection %s: pacing %d waits at %s (budget: %s per minute, %s per hour)",
                *(self.conn_id, self.waits(), self._describe_rate()),
                *("no fixed limit" if x is None else x for x in (self.per_minute, self.per_hour)),
            )


class AsyncPacer:
    """Turns for one connection in one event loop: FIFO, and only the head of the line holds a timer."""

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self._queue: deque[asyncio.Future[None]] = deque()
        self._head = False

    @property
    def queued(self) -> int:
        """Requests waiting for their turn (the head included; cancelled ones may linger)."""
        return len(self._queue) + (1 if self._head else 0)

    def stats(self) -> dict[str, Any]:
        return self.budget.stats()

    async def acquire(self, deadline: float | None = None, *, priority: bool = False) -> float:
        """Wait for a turn, record the send and return its (pacing-clock) time.

        :param deadline: Pacing-clock time after which a send is no use: :class:`BudgetExhausted`
            is raised as soon as the next turn is known to come later.
        :param priority: Send now (a stop), ahead of the line, the budget and any pause.
        """
        budget = self.budget
        now = clock()
        if priority or (
            not self._head and not self._queue and (not budget.limited or budget.next_send_time(now) <= now + _EARLY)
        ):
            budget.record_send(now)
            return now
        if self._head or self._queue:
            await self._wait_in_line(deadline)
        else:
            self._head = True
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
            self._head = False
            self._hand_over()

    async def _wait_in_line(self, deadline: float | None) -> None:
        loop = asyncio.get_running_loop()
        turn: asyncio.Future[None] = loop.create_future()
        self._queue.append(turn)
        timer = None if deadline is None else loop.call_later(max(0.0, deadline - clock()), self._expire, turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self._head = False  # the turn came just as we were cancelled: pass it on
                self._hand_over()
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def _expire(self, turn: asyncio.Future[None]) -> None:
        if not turn.done():
            turn.set_exception(BudgetExhausted(clock(), self.budget.blocked_by(clock())))

    def _hand_over(self) -> None:
        while self._queue:
            turn = self._queue.popleft()
            if not turn.done():
                self._head = True
                turn.set_result(None)
                return

    def record_answer(self, sent_at: float) -> None:
        self.budget.record_answer(sent_at, clock())

    def record_rate_limited(self, sent_at: float, retry_after: float | None = None) -> bool:
        return self.budget.record_rate_limited(sent_at, clock(), retry_after)

    def record_unavailable(self, sent_at: float) -> bool:
        return self.budget.record_unavailable(sent_at, clock())


class SyncPacer:
    """One connection's 429 and outage pauses in one process (a worker); get it from :func:`sync_pacer`.

    Airflow 3 runs each task instance in its own process, so a worker's pacer serves one task: a
    fixed budget, a learned rate or FIFO turns would only space that task's own few requests (a
    lone 429 used to space a hook's later calls 6 s apart). What matters there is waiting out a
    429 (Retry-After honoured) and an outage, so that is all it does.

    ``on_kill`` runs in a SIGTERM handler on the main thread, possibly while it is inside
    :meth:`acquire`: the lock is reentrant and never held while sleeping, and
    :meth:`acquire_priority` takes no lock at all.
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

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return self.budget.stats()

    def record_answer(self, sent_at: float) -> None:
        with self._lock:
            self.budget.record_answer(sent_at, clock())

    def record_rate_limited(self, sent_at: float, retry_after: float | None = None) -> bool:
        with self._lock:
            return self.budget.record_rate_limited(sent_at, clock(), retry_after)

    def record_unavailable(self, sent_at: float) -> bool:
        with self._lock:
            return self.budget.record_unavailable(sent_at, clock())


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
