"""``KoreCampaignStatusTrigger``: wait in the triggerer for a Kore.ai campaign to reach a status.

Waits on one connection share the event loop's client (one lookup, session and JWT), its request
budget and 429 pauses (a 429 never ends a wait); waits on one campaign share their status reads.
Fires exactly one :class:`TriggerEvent` whose payload is::

    {
        "status": "success" | "failure" | "timeout" | "error",
        "campaign_id": str,
        "campaign_status": str | None,  # the last status Kore reported
        "data": dict | None,  # the last status ``data`` object Kore sent
        "message": str,  # names the campaign and status; never a secret
        "polls": int,  # status reads made by this run of the trigger
        "elapsed": float,  # seconds this run of the trigger waited
        "counters": {
            "requests": int,  # requests this wait's reads put on the wire (retries included)
            "coalesced": int,  # reads answered by another wait's request or recent answer
            "rate_limited": int,  # 429 answers to this wait's requests
            "pauses": int,  # connection-wide 429 pauses while this wait ran
        },
    }
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_kore import ids, pacing
from airflow_provider_kore.aio import KoreAsyncClient, WaitCounters
from airflow_provider_kore.engine import LAST_ATTEMPT_TIMEOUT
from airflow_provider_kore.exceptions import KoreConfigurationError, KoreError, redact
from airflow_provider_kore.shared import SharedClient, shared_client
from airflow_provider_kore.status import StatusRule, is_known
from airflow_provider_kore.waiting import max_errors

#: What ``serialize()`` names; the triggerer imports the class from it.
CLASSPATH = "airflow_provider_kore.triggers.campaign.KoreCampaignStatusTrigger"

#: Payload ``status`` values.
SUCCESS = "success"
FAILURE = "failure"
TIMEOUT = "timeout"
ERROR = "error"
EVENT_STATUSES = (SUCCESS, FAILURE, TIMEOUT, ERROR)

#: A status answer another wait on the same campaign got less than this fraction of the poll
#: interval ago is reused; the next read is then due one interval after that answer, so waits
#: that started at different times fall into step and share one request per interval.
COALESCE_FRACTION = 0.5
#: ``on_kill`` returns within this many seconds (Airflow 3.3 gives it 30: ``[triggerer] on_kill_timeout``).
STOP_DEADLINE = 25.0
#: The first read of a trigger started with ``last_read_at`` comes at least this many seconds
#: after the trigger started. Airflow's scheduler can fail a deferred task whose trigger fires
#: within seconds of the deferral ("finished with state success, but the task instance's state
#: attribute is queued"; apache/airflow#66374, #71580, #72716, open on 3.3); 6 s kept out of that
#: window in every run tried (SQLite and PostgreSQL, CPUs loaded).
MIN_FIRST_READ_DELAY = 6.0


async def _sleep(seconds: float) -> None:
    """The wait between status reads (a seam for tests)."""
    await asyncio.sleep(seconds)


def _number(name: str, value: object, *, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise KoreConfigurationError(f"{name} must be a number of seconds; got {value!r}")
    if positive and value <= 0:
        raise KoreConfigurationError(f"{name} must be more than 0 seconds; got {value!r}")
    return float(value)


class KoreCampaignStatusTrigger(BaseTrigger):
    """Polls a Kore.ai campaign's status until it reaches a target, a failure, or ``end_time``.

    :param campaign_id: The campaign to watch (``cd-...``).
    :param kore_conn_id: The ``kore`` connection.
    :param target_statuses: Statuses that end the wait well (case-insensitive), e.g. ``["Completed"]``.
    :param failure_statuses: Statuses that end it badly. Default ``["Failed"]`` (unless a target);
        a terminal non-target status (``Stopped`` while waiting for ``Completed``) does too.
    :param stream_id: The stream (bot) id; default: the connection's ``stream_id`` extra.
    :param poll_interval: Seconds between status reads.
    :param end_time: Epoch seconds (``time.time()``) after which the wait ends with a
        ``timeout`` event; a last read is made at that moment. ``None`` waits without limit.
    :param stop_on_kill: Stop the campaign when a user marks the deferred task failed or
        success, or clears it (Airflow 3.3+ calls :meth:`on_kill` then; earlier versions never do).
    :param campaign_type: ``"voice"`` or ``"sms"``: the type the stop request names.
    :param max_consecutive_errors: None (default): a transient failure (5xx, network) never ends
        the wait while ``end_time`` allows (the connection pauses and probes, as for a 429). A
        number: failed reads in a row tolerated; one more ends the wait with an ``error`` event.
    :param last_read_at: Epoch seconds of the deferring task's own status read: the first read
        comes as :meth:`first_read_due` says. None: at once.
    """

    def __init__(
        self,
        campaign_id: str,
        kore_conn_id: str = ids.DEFAULT_CONN_ID,
        target_statuses: str | list[str] | tuple[str, ...] = ("Completed",),
        failure_statuses: str | list[str] | tuple[str, ...] | None = None,
        stream_id: str | None = None,
        poll_interval: float = 30.0,
        end_time: float | None = None,
        stop_on_kill: bool = False,
        campaign_type: str = "voice",
        max_consecutive_errors: int | None = None,
        last_read_at: float | None = None,
    ) -> None:
        super().__init__()
        self.campaign_id = ids.validate_id("campaign_id", campaign_id)
        if not isinstance(kore_conn_id, str) or not kore_conn_id.strip():
            raise KoreConfigurationError(f"kore_conn_id must be a connection id; got {kore_conn_id!r}")
        self.kore_conn_id = kore_conn_id
        self.rule = StatusRule.build(target_statuses, failure_statuses)
        #: Statuses that end the wait with ``success`` (validated, as given).
        self.target_statuses = self.rule.target_statuses
        #: Statuses that end it with ``failure`` (besides non-target terminal ones).
        self.failure_statuses = self.rule.failure_statuses
        self.stream_id = ids.validate_id("stream_id", stream_id) if stream_id is not None else None
        self.poll_interval = _number("poll_interval", poll_interval, positive=True)
        self.end_time = _number("end_time", end_time, positive=False) if end_time is not None else None
        self.stop_on_kill = bool(stop_on_kill)
        self.campaign_type = ids.validate_campaign_type(campaign_type)
        self.max_consecutive_errors = max_errors(max_consecutive_errors)
        self.last_read_at = _number("last_read_at", last_read_at, positive=False) if last_read_at is not None else None
        self._lease: SharedClient | None = None

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """The class path and plain-JSON kwargs the triggerer rebuilds this trigger from."""
        return (
            CLASSPATH,
            {
                "campaign_id": self.campaign_id,
                "kore_conn_id": self.kore_conn_id,
                "target_statuses": list(self.rule.target_statuses),
                "failure_statuses": list(self.rule.failure_statuses),
                "stream_id": self.stream_id,
                "poll_interval": self.poll_interval,
                "end_time": self.end_time,
                "stop_on_kill": self.stop_on_kill,
                "campaign_type": self.campaign_type,
                "max_consecutive_errors": self.max_consecutive_errors,
                "last_read_at": self.last_read_at,
            },
        )

    # -- waiting ------------------------------------------------------------------------------

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Poll until the campaign's status decides the wait, then fire one event."""
        # The shared client is released before the event is yielded: the triggerer may drop
        # this generator right after the event without ever resuming it.
        payload = await self._wait()
        yield TriggerEvent(payload)

    async def _wait(self) -> dict[str, Any]:
        started_at = time.time()
        state = _Progress(self.campaign_id)
        secret: str | None = None
        self._lease = shared_client(self.kore_conn_id)
        try:
            async with self._lease as client:
                secret = client.config.client_secret
                state.budget = client.pacing.budget
                state.pauses_before = state.budget.pauses
                return await self._poll(client, state, started_at)
        except asyncio.CancelledError:
            raise
        except KoreError as exc:  # e.g. an incomplete connection: nothing to retry
            return state.event(ERROR, _about(self.campaign_id, exc))
        except Exception as exc:  # fail closed: an event the sensor reads as an error, never a hang
            text = redact(f"{type(exc).__name__}: {exc}", secret)
            if secret is None:  # the connection could not be looked up (e.g. it does not exist)
                return state.event(
                    ERROR,
                    f"Kore.ai campaign {self.campaign_id!r}: cannot use connection {self.kore_conn_id!r}: {text}",
                )
            # The text is redacted; the traceback (which repeats the raw text) only at debug level.
            self.log.error("Unexpected error while waiting on Kore.ai campaign %s: %s", self.campaign_id, text)
            self.log.debug("Traceback of the unexpected error", exc_info=True)
            return state.event(ERROR, f"Kore.ai campaign {self.campaign_id!r}: unexpected {text}")
        finally:
            self._lease = None

    async def _poll(self, client: KoreAsyncClient, state: _Progress, started_at: float) -> dict[str, Any]:
        campaign = self.campaign_id
        errors = 0
        last_error = ""
        unknown_seen: set[str] = set()
        last_read = await self._before_first_read(started_at)
        max_age = COALESCE_FRACTION * self.poll_interval
        counters = state.counters
        while True:
            state.polls += 1
            read_before = counters.seen_at
            limit = self.max_consecutive_errors
            try:
                data = await client.get_campaign_status(
                    campaign,
                    stream_id=self.stream_id,
                    max_age=max_age,
                    deadline=self.end_time,
                    wait=counters,
                    patient=limit is None,
                )
            except KoreError as exc:
                if not exc.transient:  # auth, not found, bad answer, configuration: polling cannot help
                    return state.event(ERROR, _about(campaign, exc))
                # Transient (429, 5xx, network): the client waited it out until end_time, or,
                # with a limit, retried; a read that ran out of time ends the wait as a timeout.
                last_error = str(exc)
                if self.end_time is not None and (exc.deadline_reached or time.time() >= self.end_time):
                    remaining = self.end_time - time.time()
                    if remaining > 0:  # no turn before end_time: the wait still lasts until then
                        await _sleep(remaining)
                    return state.event(TIMEOUT, self._timeout_message(state, last_error))
                errors += 1
                if limit is not None and errors > limit:
                    return state.event(
                        ERROR,
                        f"Kore.ai campaign {campaign!r}: {errors} status reads in a row failed; last: {last_error}",
                    )
                self.log.warning(
                    "Kore.ai campaign %s: status read failed (%d in a row): %s", campaign, errors, last_error
                )
            else:
                errors = 0
                status = data["status"]
                verdict = self.rule.verdict(status)
                # Info when a wait goes on in a new status; a read that ends the wait is said by
                # its event (the task logs it), so a thousand waits ending write no extra lines.
                if verdict == "waiting" and (status != state.status or state.polls == 1):
                    self.log.info("Kore.ai campaign %s is %s (poll %d)", campaign, status, state.polls)
                else:
                    self.log.debug("Kore.ai campaign %s is %s (poll %d)", campaign, status, state.polls)
                state.status, state.data = status, data
                if verdict == "success":
                    return state.event(
                        SUCCESS, f"Kore.ai campaign {campaign!r} reached {status!r} after {state.polls} poll(s)"
                    )
                if verdict == "failure":
                    return state.event(FAILURE, self.rule.explain_failure(campaign, status))
                if not is_known(status) and status.lower() not in unknown_seen:
                    unknown_seen.add(status.lower())
                    self.log.info(
                        "Kore.ai campaign %s reports status %r, which this provider does not know; waiting for %s",
                        campaign,
                        status,
                        ", ".join(self.rule.target_statuses),
                    )

            delay = self.poll_interval
            if counters.seen_at > read_before:
                # The next read is due one interval after the answer was asked for (it may be
                # another wait's, a little older): waits on one campaign fall into step.
                delay = max(0.0, min(delay, counters.seen_at + delay - pacing.clock()))
            if self.end_time is not None:
                remaining = self.end_time - time.time()
                if last_read or remaining <= 0:
                    return state.event(TIMEOUT, self._timeout_message(state, last_error if errors else ""))
                if remaining <= delay:  # the next read is the last one, made at end_time
                    last_read = True
                    delay = remaining
            await _sleep(delay)

    async def _before_first_read(self, started_at: float) -> bool:
        """Sleep until the first read is due (see ``last_read_at``); True if it is the last one."""
        due = self.first_read_due(started_at)
        if due is None:
            return False
        last_read = False
        if self.end_time is not None and self.end_time <= due:  # the first read is the last, at end_time
            due, last_read = self.end_time, True
        delay = due - time.time()
        self.log.debug("Kore.ai campaign %s: first status read in %.1fs", self.campaign_id, delay)
        if delay > 0:
            await _sleep(delay)
        return last_read

    def first_read_due(self, started_at: float) -> float | None:
        """Epoch seconds of the first read for a run started at ``started_at`` (before ``end_time``).

        One poll interval after ``last_read_at``, and never within :data:`MIN_FIRST_READ_DELAY`
        of this run's start. None without ``last_read_at``: read at once.
        """
        if self.last_read_at is None:
            return None
        return max(self.last_read_at + self.poll_interval, started_at + MIN_FIRST_READ_DELAY)

    def _timeout_message(self, state: _Progress, last_error: str) -> str:
        last = f"last status {state.status!r}" if state.status is not None else "no status read"
        if last_error:
            last += f"; last read failed: {last_error}"
        return (
            f"Kore.ai campaign {self.campaign_id!r} did not reach {', '.join(self.rule.target_statuses)} "
            f"before the end time ({last}, {state.polls} poll(s))"
        )

    # -- leaving ------------------------------------------------------------------------------

    async def cleanup(self) -> None:
        """Release the shared client if a cancelled wait still holds it (normally a no-op)."""
        lease, self._lease = self._lease, None
        if lease is not None:
            await lease.release()

    async def on_kill(self) -> None:
        """With ``stop_on_kill``, stop the campaign (Airflow 3.3+: the user killed the deferred task).

        Errors are logged, not raised: this is cleanup, and the task is already being ended.
        """
        if not self.stop_on_kill:
            return
        deadline = time.time() + STOP_DEADLINE  # the connection lookup counts too

        async def stop() -> dict[str, Any]:
            async with shared_client(self.kore_conn_id) as client:
                return await client.stop_campaign(
                    self.campaign_id, campaign_type=self.campaign_type, stream_id=self.stream_id, deadline=deadline
                )

        try:
            # The engine gives a last attempt a moment past the deadline; Airflow allows 30 s in all.
            answer = await asyncio.wait_for(stop(), STOP_DEADLINE + LAST_ATTEMPT_TIMEOUT)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            text = str(exc) if isinstance(exc, KoreError) else redact(f"{type(exc).__name__}: {exc}")
            self.log.warning("Could not stop Kore.ai campaign %s after the task was killed: %s", self.campaign_id, text)
            return
        self.log.info(
            "Stopped Kore.ai campaign %s after the task was killed: %s",
            self.campaign_id,
            answer.get("message") or answer.get("status"),
        )


def _about(campaign_id: str, exc: KoreError) -> str:
    """The error's message, naming the campaign if it does not already."""
    text = str(exc)
    return text if repr(campaign_id) in text else f"Kore.ai campaign {campaign_id!r}: {text}"


class _Progress:
    """What one run of the trigger has seen so far; turned into the event payload."""

    __slots__ = ("budget", "campaign_id", "counters", "data", "pauses_before", "polls", "started", "status")

    def __init__(self, campaign_id: str) -> None:
        self.campaign_id = campaign_id
        self.started = time.monotonic()
        self.polls = 0
        self.status: str | None = None
        self.data: dict[str, Any] | None = None
        self.counters = WaitCounters()
        self.budget: pacing.Budget | None = None
        self.pauses_before = 0

    def event(self, outcome: str, message: str) -> dict[str, Any]:
        """The one payload shape every event of this trigger has."""
        return {
            "status": outcome,
            "campaign_id": self.campaign_id,
            "campaign_status": self.status,
            "data": self.data,
            "message": message,
            "polls": self.polls,
            "elapsed": round(time.monotonic() - self.started, 3),
            "counters": {
                "requests": self.counters.requests,
                "coalesced": self.counters.coalesced,
                "rate_limited": self.counters.rate_limited,
                "pauses": 0 if self.budget is None else self.budget.pauses - self.pauses_before,
            },
        }


__all__ = ["CLASSPATH", "COALESCE_FRACTION", "EVENT_STATUSES", "MIN_FIRST_READ_DELAY", "KoreCampaignStatusTrigger"]
