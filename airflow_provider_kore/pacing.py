"""Pacing: one request budget per ``kore`` connection, a connection-wide pause on 429, fair turns.

Kore.ai counts requests per bot in rolling windows (600 per 60 s and 18,000 per hour for the
runtime APIs, 60 and 1,800 for design-time ones) and answers 429, without a promised
``Retry-After``, once a window is full. This module keeps a connection under that:

* **A fixed budget** from the connection extras ``max_requests_per_minute`` /
  ``max_requests_per_hour``: never more than N sends in any rolling minute, M in any rolling
  hour. The windows are counted as ``60 + SAFETY_MARGIN`` and ``3600 + SAFETY_MARGIN`` seconds
  (Kore counts a request a little after it leaves), and sends are spaced at least
  ``window / limit`` apart, so a fleet sees a steady cadence, not a burst and a silent minute.
* **An adaptive limit** learned from 429s: the first 429 pauses the whole connection
  (``PAUSE_BASE`` doubling per consecutive pause up to ``PAUSE_MAX``, plus up to
  ``PAUSE_JITTER`` of itself; never shorter than a ``Retry-After``, capped at
  ``RETRY_AFTER_MAX``). Sending resumes at ``LEARN_FRACTION`` x the requests Kore accepted in
  the minute before the 429 (at least ``MIN_RATE_PER_MINUTE``), counted as a rolling window
  too, so nothing is sent until Kore's own window has room again. Every clean window (61 s of
  sending with no 429) raises the rate by ``RAISE_FACTOR``, up to the fixed budget (or until it
  is twice what Kore accepted, when the learned limit is dropped). A 429 for a request sent
  before the current pause began was already in flight: it is counted but starts no new pause.
* **Fair turns**: requests wait in arrival order (FIFO); a wait that was just served queues at
  the back for its next poll, so when the budget cannot serve every wait at its poke interval,
  every interval stretches by the same amount and service rotates.

:class:`Budget` holds the arithmetic and counters (and a clock can be handed in, so tests
run in milliseconds); :class:`AsyncPacer` (one per event loop and connection, owned by the
shared async client) and :class:`SyncPacer` (one per process and connection, shared by every
:class:`~airflow_provider_kore.hooks.kore.KoreHook` on it) only differ in how they wait.

Standard library only, and cheap to import.
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

#: Kore's rolling windows, in seconds.
MINUTE = 60.0
HOUR = 3600.0
#: Added to each window: Kore counts a request a little after it is sent.
SAFETY_MARGIN = 1.0
#: First connection-wide pause after a 429 without ``Retry-After``, in seconds.
PAUSE_BASE = 2.0
#: Longest pause; each consecutive pause (a 429 after resuming) doubles the last one up to this.
PAUSE_MAX = 60.0
#: A pause is lengthened by up to this fraction of itself, at random, so processes desynchronise.
PAUSE_JITTER = 0.5
#: A ``Retry-After`` is honoured up to this many seconds.
RETRY_AFTER_MAX = 120.0
#: After a 429 the rate becomes this fraction of what Kore accepted in the minute before it.
LEARN_FRACTION = 0.9
#: Each clean window (no 429) raises the learned rate by this factor.
RAISE_FACTOR = 1.1
#: The learned rate never goes below this many requests per minute.
MIN_RATE_PER_MINUTE = 10.0
#: Without a fixed budget, a learned rate this many times what Kore accepted is dropped.
FORGET_FACTOR = 2.0
#: Pacing is logged (once) this many seconds after requests start waiting for their turn.
PACING_LOG_DELAY = 5.0
#: How long a caller without a deadline waits out Kore's rate limit before giving up (hook only).
RATE_LIMIT_PATIENCE = 900.0

_MINUTE_WINDOW = MINUTE + SAFETY_MARGIN
_HOUR_WINDOW = HOUR + SAFETY_MARGIN
# A turn due within this many seconds is taken now (timer and float rounding).
_EARLY = 1e-6


def clock() -> float:
    """The pacing clock (monotonic seconds); a seam for tests."""
    return time.monotonic()


async def _sleep(seconds: float) -> None:
    """How an async pacer waits for its turn (a seam for tests)."""
    await asyncio.sleep(seconds)


class BudgetExhausted(Exception):
    """The next send would come after the caller's deadline (or its wait reached the deadline)."""

    def __init__(self, not_before: float, reason: str) -> None:
        super().__init__(reason)
        #: Pacing-clock time of the earliest possible send.
        self.not_before = not_before
        #: ``"budget"`` (the fixed budget), ``"rate limit"`` (a 429 pause or the learned limit).
        self.reason = reason


def _window_free_at(sends: deque[float], limit: int, window: float, now: float) -> float:
    """Earliest time a new send keeps at most ``limit`` sends in any window of ``window`` seconds."""
    horizon = now - window
    while sends and sends[0] <= horizon:
        sends.popleft()
    if len(sends) < limit:
        return now
    # The send ``limit`` places back must leave the window first.
    return sends[len(sends) - limit] + window


class Budget:
    """The arithmetic of one connection's pacing: fixed budget, learned limit, pauses, counters.

    Not thread-safe and never blocking: :class:`AsyncPacer` and :class:`SyncPacer` call it
    from their event loop or under their lock. Times are pacing-clock seconds.

    :param conn_id: Only for log lines.
    :param per_minute: At most this many sends in any rolling minute (None: no fixed limit).
    :param per_hour: At most this many sends in any rolling hour (None: no fixed limit).
    :param waits: How many waits share the connection now (for log lines and :meth:`stats`).
    :param rng: A ``random()``-like function for the pause jitter (a seam for tests).
    """

    def __init__(
        self,
        conn_id: str,
        per_minute: int | None = None,
        per_hour: int | None = None,
        *,
        waits: Callable[[], int] | None = None,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.conn_id = conn_id
        self.waits = waits or (lambda: 0)
        self._rng = rng
        self.per_minute: int | None = None
        self.per_hour: int | None = None
        #: Requests sent (each attempt counts).
        self.requests = 0
        #: 429 answers received.
        self.rate_limited = 0
        #: Connection-wide pauses started.
        self.pauses = 0
        #: Status reads answered by another wait's request (in flight or just answered).
        self.coalesced = 0
        # Send times in the last minute (and hour, if an hourly budget is set); sorted.
        self._minute: deque[float] = deque()
        self._hour: deque[float] | None = None
        # Send times of answers Kore accepted (not 429), roughly sorted; for learning.
        self._accepted: deque[float] = deque()
        self._last_send = -math.inf
        self._gap = 0.0
        # The learned limit (requests per minute), None when no 429 constrains the connection.
        self._learned: float | None = None
        self._learned_ceiling = math.inf
        self._pause_started = -math.inf
        self._pause_until = -math.inf
        self._pause_accepted = 0
        self._pause_logged = True
        self._pre_pause_rate: float | None = None
        self._learning = False
        self._consecutive = 0
        self._clean_since: float | None = None
        self._resumed = True
        self._last_waited = -math.inf
        self._pacing_since = -math.inf
        self._pacing_logged = True
        #: False while nothing can make a send wait: the per-request path stays almost free.
        self.limited = False
        self.configure(per_minute, per_hour)

    # -- settings -----------------------------------------------------------------------------

    def configure(self, per_minute: int | None, per_hour: int | None) -> None:
        """Set (or change) the fixed budget; None switches a limit off."""
        if per_minute is not None and per_minute < 1:
            raise ValueError(f"per_minute must be at least 1; got {per_minute!r}")
        if per_hour is not None and per_hour < 1:
            raise ValueError(f"per_hour must be at least 1; got {per_hour!r}")
        self.per_minute = per_minute
        self.per_hour = per_hour
        if per_hour is not None and self._hour is None:
            self._hour = deque(self._minute)
        elif per_hour is None:
            self._hour = None
        if self._learned is not None and per_minute is not None and self._learned >= per_minute:
            self._learned = None
        self._update()

    def _update(self) -> None:
        gap = 0.0
        if self.per_minute is not None:
            gap = max(gap, _MINUTE_WINDOW / self.per_minute)
        if self.per_hour is not None:
            gap = max(gap, _HOUR_WINDOW / self.per_hour)
        if self._learned is not None:
            gap = max(gap, _MINUTE_WINDOW / self._learned)
        self._gap = gap
        self.limited = gap > 0 or self._pause_until > -math.inf

    # -- reading ------------------------------------------------------------------------------

    @property
    def gap(self) -> float:
        """The least time between two sends now (0: no spacing)."""
        return self._gap

    @property
    def learned_rate(self) -> float | None:
        """The learned limit in requests per minute, or None."""
        return self._learned

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
            "pauses": self.pauses,
            "coalesced": self.coalesced,
            "waits": self.waits(),
            "current_rate_per_minute": None if rate is None else round(rate, 1),
        }

    def _describe_rate(self) -> str:
        rate = self.rate_per_minute()
        return "no fixed rate" if rate is None else f"{rate:.0f} requests/min"

    # -- the decisions ------------------------------------------------------------------------

    def next_send_time(self, now: float) -> float:
        """Earliest time the next request may be sent (``now`` or later)."""
        if not self.limited:
            return now
        self._maybe_raise(now)
        t = now
        if self._pause_until > t:
            t = self._pause_until
        if self._gap and self._last_send + self._gap > t:
            t = self._last_send + self._gap
        if self.per_minute is not None:
            t = max(t, _window_free_at(self._minute, self.per_minute, _MINUTE_WINDOW, now))
        if self._learned is not None:
            t = max(t, _window_free_at(self._minute, max(1, int(self._learned)), _MINUTE_WINDOW, now))
        if self.per_hour is not None and self._hour is not None:
            t = max(t, _window_free_at(self._hour, self.per_hour, _HOUR_WINDOW, now))
        if not self._pause_logged and now >= self._pause_until:
            # Logged once the backoff is over, when answers that were in flight have taught the rate.
            self._pause_logged = True
            log.info(
                "Kore connection %s: 429 from Kore, pausing all %d waits for %.1f s; resuming at %s",
                self.conn_id,
                self.waits(),
                t - self._pause_started,
                self._describe_rate(),
            )
        if not self._gap and self._pause_until <= now:
            self.limited = False  # the pause is over and nothing was learned: back to the free path
        return t

    def blocked_by(self, now: float) -> str:
        """What holds the next send back: ``"rate limit"`` (a pause or learned limit) or ``"budget"``."""
        return "rate limit" if self._pause_until > now or self._learned is not None else "budget"

    def record_send(self, now: float) -> None:
        """A request leaves now."""
        self.requests += 1
        self._last_send = now
        minute = self._minute
        minute.append(now)
        horizon = now - _MINUTE_WINDOW
        while minute[0] <= horizon:
            minute.popleft()
        if self._hour is not None:
            self._hour.append(now)
        if not self._resumed and now >= self._pause_until:
            # The first send after a pause: a clean window is counted from here.
            self._resumed = True
            self._clean_since = now

    def record_answer(self, sent_at: float, now: float) -> None:
        """Kore answered (anything but 429) a request sent at ``sent_at``."""
        accepted = self._accepted
        accepted.append(sent_at)
        horizon = now - 2 * _MINUTE_WINDOW
        while accepted and accepted[0] <= horizon:
            accepted.popleft()
        if self._learning and self._pause_started - _MINUTE_WINDOW < sent_at < self._pause_started:
            # An answer that was in flight when the pause began: Kore accepted more than we knew.
            self._pause_accepted += 1
            self._learn()

    def record_rate_limited(self, sent_at: float, now: float, retry_after: float | None = None) -> bool:
        """Kore answered 429 to a request sent at ``sent_at``; True if that starts a pause."""
        self.rate_limited += 1
        if sent_at < self._pause_started:
            # Sent before the current pause began: the pause already accounts for it.
            if retry_after is not None:
                self._pause_until = max(self._pause_until, now + min(retry_after, RETRY_AFTER_MAX))
                self.limited = True
            return False
        if self._clean_since is not None and now - self._clean_since >= _MINUTE_WINDOW:
            self._consecutive = 0
        self._consecutive += 1
        backoff = min(PAUSE_MAX, PAUSE_BASE * 2 ** (self._consecutive - 1))
        duration = backoff * (1.0 + PAUSE_JITTER * self._rng())
        if retry_after is not None:
            duration = max(duration, min(retry_after, RETRY_AFTER_MAX))
        self.pauses += 1
        self._pause_started = now
        self._pause_until = now + duration
        horizon = now - _MINUTE_WINDOW
        self._pause_accepted = sum(1 for s in self._accepted if s > horizon)
        self._pre_pause_rate = self._effective_limit()
        self._learning = True
        self._resumed = False
        self._clean_since = None
        self._pause_logged = False
        self._learn()
        log.debug("Kore connection %s: 429 from Kore; pausing for at least %.1f s", self.conn_id, duration)
        return True

    def _effective_limit(self) -> float | None:
        limits = [x for x in (self.per_minute, self._learned) if x is not None]
        return float(min(limits)) if limits else None

    def _learn(self) -> None:
        learned = max(MIN_RATE_PER_MINUTE, LEARN_FRACTION * self._pause_accepted)
        if self._pre_pause_rate is not None:
            learned = min(learned, self._pre_pause_rate)
        self._learned_ceiling = FORGET_FACTOR * max(self._pause_accepted, MIN_RATE_PER_MINUTE)
        self._learned = learned
        if self.per_minute is not None and learned >= self.per_minute:
            self._learned = None
        self._update()

    def _maybe_raise(self, now: float) -> None:
        since = self._clean_since
        if since is None or now - since < _MINUTE_WINDOW:
            return
        self._clean_since = now
        self._consecutive = 0
        self._learning = False
        if self._learned is None:
            return
        before = self._describe_rate()
        learned = self._learned * RAISE_FACTOR
        if (self.per_minute is not None and learned >= self.per_minute) or (
            self.per_minute is None and learned >= self._learned_ceiling
        ):
            self._learned = None
        else:
            self._learned = learned
        self._update()
        log.info(
            "Kore connection %s: no 429 for a minute; raising the pace from %s to %s (%d waits)",
            self.conn_id,
            before,
            self._describe_rate(),
            self.waits(),
        )

    def note_wait(self, now: float) -> None:
        """A request has to wait for its turn: log once when pacing starts (then debug only).

        Pacing starts with the first wait after a minute without any; it is logged
        ``PACING_LOG_DELAY`` seconds later, once a fleet that starts together has joined.
        """
        if now - self._last_waited > _MINUTE_WINDOW:
            self._pacing_since = now
            self._pacing_logged = False
        self._last_waited = now
        if not self._pacing_logged and now - self._pacing_since >= PACING_LOG_DELAY and self._pause_until <= now:
            self._pacing_logged = True
            log.info(
                "Kore connection %s: pacing %d waits at %s (budget: %s per minute, %s per hour)",
                self.conn_id,
                self.waits(),
                self._describe_rate(),
                self.per_minute if self.per_minute is not None else "no fixed limit",
                self.per_hour if self.per_hour is not None else "no fixed limit",
            )


class AsyncPacer:
    """Turns for one connection in one event loop: FIFO, one waiter at a time watches the clock.

    The waiter at the head of the line sleeps until the budget lets it send; the others wait on
    a future until the head hands over, so a thousand paced waits hold one timer, not a thousand.
    """

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self._queue: deque[asyncio.Future[None]] = deque()
        self._head = False

    @property
    def queued(self) -> int:
        """Requests waiting for their turn (the head included; cancelled ones may linger)."""
        return len(self._queue) + (1 if self._head else 0)

    def stats(self) -> dict[str, Any]:
        """The connection's counters: see :meth:`Budget.stats`."""
        return self.budget.stats()

    async def acquire(self, deadline: float | None = None) -> float:
        """Wait for a turn, record the send and return its time.

        :param deadline: Pacing-clock time after which the caller cannot use a send; if the
            next send cannot come by then, :class:`BudgetExhausted` is raised at once.
        """
        budget = self.budget
        now = clock()
        if not self._head and not self._queue and (not budget.limited or budget.next_send_time(now) <= now + _EARLY):
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
        timer = None
        if deadline is not None:
            timer = loop.call_later(max(0.0, deadline - clock()), self._expire, turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                # The turn was handed to us just as we were cancelled: pass it on.
                self._head = False
                self._hand_over()
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def _expire(self, turn: asyncio.Future[None]) -> None:
        if not turn.done():
            turn.set_exception(BudgetExhausted(clock(), self.budget.blocked_by(clock())))

    def _hand_over(self) -> None:
        """Wake the next waiter still in line; it becomes the head."""
        queue = self._queue
        while queue:
            turn = queue.popleft()
            if not turn.done():
                self._head = True
                turn.set_result(None)
                return


class SyncPacer:
    """Turns for one connection in one process (threads): FIFO tickets under one lock.

    Get it from :func:`sync_pacer` so every hook on the connection in the process shares it.
    """

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self._cond = threading.Condition()
        self._next_ticket = 0
        self._serving = 0
        self._abandoned: set[int] = set()
        budget.waits = self._callers

    def _callers(self) -> int:
        """Callers in line or sending (at least the one asking)."""
        return max(1, self._next_ticket - self._serving)

    def acquire(self, deadline: float | None = None, sleep: Callable[[float], Any] | None = None) -> float:
        """Wait for a turn, record the send and return its time (see :meth:`AsyncPacer.acquire`).

        :param sleep: How the head of the line sleeps (default ``time.sleep``; a seam for tests).
        """
        budget = self.budget
        sleep = sleep or time.sleep
        with self._cond:
            ticket = self._next_ticket
            self._next_ticket += 1
            try:
                while True:
                    while self._serving in self._abandoned:
                        self._abandoned.discard(self._serving)
                        self._serving += 1
                    now = clock()
                    if ticket != self._serving:
                        if deadline is not None and now >= deadline:
                            raise BudgetExhausted(now, budget.blocked_by(now))
                        self._cond.wait(1.0 if deadline is None else min(1.0, deadline - now))
                        continue
                    at = budget.next_send_time(now)
                    if at <= now + _EARLY:
                        budget.record_send(now)
                        self._serving += 1
                        self._cond.notify_all()
                        return now
                    if deadline is not None and at > deadline:
                        raise BudgetExhausted(at, budget.blocked_by(now))
                    budget.note_wait(now)
                    self._cond.release()
                    try:
                        sleep(at - now)
                    finally:
                        self._cond.acquire()
            except BaseException:
                if ticket == self._serving:
                    self._serving += 1
                    self._cond.notify_all()
                elif ticket > self._serving:
                    self._abandoned.add(ticket)
                raise

    def stats(self) -> dict[str, Any]:
        """The connection's counters in this process: see :meth:`Budget.stats`."""
        with self._cond:
            return self.budget.stats()

    def record_answer(self, sent_at: float) -> None:
        """Thread-safe :meth:`Budget.record_answer`."""
        with self._cond:
            self.budget.record_answer(sent_at, clock())

    def record_rate_limited(self, sent_at: float, retry_after: float | None = None) -> bool:
        """Thread-safe :meth:`Budget.record_rate_limited`."""
        with self._cond:
            return self.budget.record_rate_limited(sent_at, clock(), retry_after)


# ---------------------------------------------------------------------------------------------
# One sync pacer per connection id in this process.

_sync_pacers: dict[str, SyncPacer] = {}
_sync_lock = threading.Lock()


def sync_pacer(conn_id: str, per_minute: int | None, per_hour: int | None) -> SyncPacer:
    """The process's pacer for ``conn_id`` (created on first use; the budget follows the connection)."""
    with _sync_lock:
        pacer = _sync_pacers.get(conn_id)
        if pacer is None:
            pacer = SyncPacer(Budget(conn_id, per_minute, per_hour))
            _sync_pacers[conn_id] = pacer
        elif (pacer.budget.per_minute, pacer.budget.per_hour) != (per_minute, per_hour):
            with pacer._cond:
                pacer.budget.configure(per_minute, per_hour)
        return pacer


def reset_sync_pacers() -> None:
    """Forget every process-wide pacer (tests)."""
    with _sync_lock:
        _sync_pacers.clear()


__all__ = [
    "FORGET_FACTOR",
    "HOUR",
    "LEARN_FRACTION",
    "MINUTE",
    "MIN_RATE_PER_MINUTE",
    "PACING_LOG_DELAY",
    "PAUSE_BASE",
    "PAUSE_JITTER",
    "PAUSE_MAX",
    "RAISE_FACTOR",
    "RATE_LIMIT_PATIENCE",
    "RETRY_AFTER_MAX",
    "SAFETY_MARGIN",
    "AsyncPacer",
    "Budget",
    "BudgetExhausted",
    "SyncPacer",
    "clock",
    "reset_sync_pacers",
    "sync_pacer",
]
