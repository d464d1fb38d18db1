"""``KoreCampaignStatusTrigger``: wait in the triggerer for a Kore.ai campaign to reach a status.

Waits on one connection share the event loop's client (one lookup, session and JWT), its request
budget and 429 pauses (a 429 never ends a wait); waits on one campaign share their status reads.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_kore import ids, pacing
from airflow_provider_kore.aio import KoreAsyncClient, WaitCounters
from airflow_provider_kore.engine import LAST_ATTEMPT_TIMEOUT
from airflow_provider_kore.exceptions import KoreConfigurationError, KoreError, redact
from airflow_provider_kore.shared import SharedClient, shared_client
from airflow_provider_kore.status import StatusRule, is_known
from airflow_provider_kore.waiting import max_errors, non_negative_seconds, positive_seconds, rendered_optional_id

#: What ``serialize()`` names; the triggerer imports the class from it.
CLASSPATH = "airflow_provider_kore.triggers.campaign.KoreCampaignStatusTrigger"
#: A status answer another wait on the same campaign got less than this fraction of the poll
#: interval ago is reused; the next read is then due one interval after that answer, so waits
#: that started at different times fall into step and share one request per interval.
COALESCE_FRACTION = 0.5
#: ``on_kill`` returns within this many seconds (Airflow 3.3 gives it 30: ``[triggerer] on_kill_timeout``).
STOP_DEADLINE = 25.0
#: The first read after a deferral comes at least this long after the trigger started: Airflow's
#: scheduler can fail a task whose trigger fires within seconds of the deferral (apache/airflow#66374,
#: #71580, #72716, open on 3.3); 6 s kept out of that window in every run tried.
MIN_FIRST_READ_DELAY = 6.0

_sleep = asyncio.sleep  # the wait between status reads; tests replace it


class KoreCampaignStatusTrigger(BaseTrigger):
    """Polls a Kore.ai campaign's status until it reaches a target, a failure, or ``end_time``.

    :param campaign_id: The campaign to watch (``cd-...``).
    :param kore_conn_id: The ``kore`` connection.
    :param target_statuses: Statuses that end the wait well (case-insensitive). Default ``("Completed",)``.
    :param failure_statuses: Statuses that end it badly (and any terminal non-target). Default ``("Failed",)``.
    :param stream_id: The stream (bot) id; default: the connection's ``stream_id`` extra.
    :param poll_interval: Seconds between status reads.
    :param end_time: Epoch seconds when the wait ends with a ``timeout`` event, after a last read. None: no limit.
    :param stop_on_kill: Stop the campaign in :meth:`on_kill` (Airflow 3.3+: the deferred task was killed).
    :param campaign_type: ``"voice"`` or ``"sms"``: the type the stop request names.
    :param max_consecutive_errors: None: a transient failure never ends the wait while ``end_time``
        allows. A number: failed reads in a row tolerated; one more ends it with an ``error`` event.
    :param last_read_at: Epoch seconds of the deferring task's own read (see :meth:`first_read_due`).
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
        self.stream_id = rendered_optional_id("stream_id", stream_id)
        self.poll_interval = positive_seconds("poll_interval", poll_interval)
        self.end_time = non_negative_seconds("end_time", end_time)
        self.stop_on_kill = bool(stop_on_kill)
        self.campaign_type = ids.validate_campaign_type(campaign_type)
        self.max_consecutive_errors = max_errors(max_consecutive_errors)
        self.last_read_at = non_negative_seconds("last_read_at", last_read_at)
        self._lease: SharedClient | None = None

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """The class path and plain-JSON kwargs (each constructor parameter, validated) to rebuild it from."""
        rule = self.rule
        statuses = {"target_statuses": list(rule.target_statuses), "failure_statuses": list(rule.failure_statuses)}
        names = inspect.signature(KoreCampaignStatusTrigger).parameters
        return CLASSPATH, {name: statuses[name] if name in statuses else getattr(self, name) for name in names}

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Poll until the campaign's status decides the wait, then fire one event."""
        # The shared client is released before the event is yielded: the triggerer may drop
        # this generator right after the event without ever resuming it.
        yield TriggerEvent(await self._wait())

    async def _wait(self) -> dict[str, Any]:
        state = _Progress(self.campaign_id)
        where = f"Kore.ai campaign {self.campaign_id!r}"
        secret: str | None = None
        self._lease = shared_client(self.kore_conn_id)
        try:
            async with self._lease as client:
                secret = client.config.client_secret
                state.budget = client.pacing.budget
                state.pauses_before = state.budget.pauses
                return await self._poll(client, state, where)
        except KoreError as exc:  # auth, not found, bad answer, configuration: polling cannot help
            return state.event("error", str(exc) if repr(self.campaign_id) in str(exc) else f"{where}: {exc}")
        except Exception as exc:  # fail closed: an event the task reads as an error, never a hang
            text = redact(f"{type(exc).__name__}: {exc}", secret)
            if secret is None:  # the connection could not be looked up (e.g. it does not exist)
                return state.event("error", f"{where}: cannot use connection {self.kore_conn_id!r}: {text}")
            # The text is redacted; the traceback (which repeats the raw text) only at debug level.
            self.log.error("Unexpected error while waiting on Kore.ai campaign %s: %s", self.campaign_id, text)
            self.log.debug("Traceback of the unexpected error", exc_info=True)
            return state.event("error", f"{where}: unexpected {text}")
        finally:
            self._lease = None

    async def _poll(self, client: KoreAsyncClient, state: _Progress, where: str) -> dict[str, Any]:
        campaign = self.campaign_id
        limit = self.max_consecutive_errors
        errors = 0
        last_error = ""
        due = self.first_read_due(state.started_at) or time.time()
        while True:
            if self.end_time is not None:
                due = min(due, self.end_time)  # a read due after end_time is made at end_time, the last
            await _sleep_until(due)
            state.polls += 1
            read_before = state.counters.seen_at
            try:
                data = await client.get_campaign_status(
                    campaign,
                    stream_id=self.stream_id,
                    max_age=COALESCE_FRACTION * self.poll_interval,
                    deadline=self.end_time,
                    wait=state.counters,
                    patient=limit is None,
                )
            except KoreError as exc:
                if not exc.transient:
                    raise
                # The client waited a transient failure (429, 5xx, network) out until end_time or,
                # with a limit, retried it; a read that ran out of time ends the wait as a timeout.
                errors += 1
                last_error = str(exc)
                if self.end_time is not None and (exc.deadline_reached or time.time() >= self.end_time):
                    due = self.end_time
                    await _sleep_until(due)  # no turn before end_time: the wait lasts until then
                elif limit is not None and errors > limit:
                    return state.event("error", f"{where}: {errors} status reads in a row failed; last: {last_error}")
                else:
                    self.log.warning(
                        "Kore.ai campaign %s: status read failed (%d in a row): %s", campaign, errors, last_error
                    )
            else:
                errors = 0
                status = data["status"]
                verdict = self.rule.verdict(status)
                # Info when a wait goes on in a new status; a read that ends the wait is told by its
                # event (the task logs it), so a thousand waits ending write no extra lines.
                level = logging.INFO if verdict == "waiting" and status != state.status else logging.DEBUG
                unknown = "" if is_known(status) else f"; {status!r} is a status this provider does not know"
                self.log.log(level, "Kore.ai campaign %s is %s (poll %d)%s", campaign, status, state.polls, unknown)
                state.status, state.data = status, data
                if verdict == "success":
                    return state.event(verdict, f"{where} reached {status!r} after {state.polls} poll(s)")
                if verdict == "failure":
                    return state.event(verdict, self.rule.explain_failure(campaign, status))
            if self.end_time is not None and max(due, time.time()) >= self.end_time:
                last = "no status read" if state.status is None else f"last status {state.status!r}"
                failed = f"; last read failed: {last_error}" if errors else ""
                targets = ", ".join(self.rule.target_statuses)
                why = f"{where} did not reach {targets} before the end time ({last}{failed}, {state.polls} poll(s))"
                return state.event("timeout", why)
            delay = self.poll_interval
            if state.counters.seen_at > read_before:
                # The next read is due one interval after the answer was asked for (it may be
                # another wait's, a little older): waits on one campaign fall into step.
                delay = max(0.0, min(delay, state.counters.seen_at + delay - pacing.clock()))
            due = time.time() + delay

    def first_read_due(self, started_at: float) -> float | None:
        """Epoch seconds of the first read of a run started at ``started_at`` (None: at once; ``end_time`` may
        come first): one poll after ``last_read_at``, never within :data:`MIN_FIRST_READ_DELAY` of the start."""
        if self.last_read_at is None:
            return None
        return max(self.last_read_at + self.poll_interval, started_at + MIN_FIRST_READ_DELAY)

    async def cleanup(self) -> None:
        """Release the shared client if a cancelled wait still holds it (normally a no-op)."""
        lease, self._lease = self._lease, None
        if lease is not None:
            await lease.release()

    async def on_kill(self) -> None:
        """With ``stop_on_kill``, stop the campaign (Airflow 3.3+: the deferred task was killed); errors are logged."""
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
        except Exception as exc:
            text = str(exc) if isinstance(exc, KoreError) else redact(f"{type(exc).__name__}: {exc}")
            self.log.warning("Could not stop Kore.ai campaign %s after the task was killed: %s", self.campaign_id, text)
            return
        said = answer.get("message") or answer.get("status")
        self.log.info("Stopped Kore.ai campaign %s after the task was killed: %s", self.campaign_id, said)


async def _sleep_until(when: float) -> None:
    delay = when - time.time()
    if delay > 0:
        await _sleep(delay)


@dataclass(slots=True)
class _Progress:
    """What one run of the trigger has seen so far; turned into the event payload."""

    campaign_id: str
    started_at: float = field(default_factory=time.time)  # epoch seconds, for the first read
    started: float = field(default_factory=time.monotonic)  # for "elapsed"
    polls: int = 0
    status: str | None = None
    data: dict[str, Any] | None = None
    counters: WaitCounters = field(default_factory=WaitCounters)
    budget: pacing.Budget | None = None  # the connection's: its 429 pauses while this wait ran are counted
    pauses_before: int = 0

    def event(self, outcome: str, message: str) -> dict[str, Any]:
        """The one payload shape every event of this trigger has (``status``: success, failure, timeout or error)."""
        return {
            "status": outcome,
            "campaign_id": self.campaign_id,
            "campaign_status": self.status,  # the last status read, and its ``data`` object
            "data": self.data,
            "message": message,  # never a secret
            "polls": self.polls,
            "elapsed": round(time.monotonic() - self.started, 3),
            "counters": {
                "requests": self.counters.requests,  # sent for this wait's reads, retries included
                "coalesced": self.counters.coalesced,  # reads answered by another wait's request or answer
                "rate_limited": self.counters.rate_limited,  # 429s to this wait's requests
                "pauses": 0 if self.budget is None else self.budget.pauses - self.pauses_before,
            },
        }


# What a DAG file gets from `import *`: the classes, not this module's own imports.
__all__ = ["KoreCampaignStatusTrigger"]
