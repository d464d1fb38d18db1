"""``KoreCampaignStatusSensor``: wait until a Kore.ai campaign reaches a status.

This module also holds the waiting logic the start operator's ``wait_for_completion`` reuses:
:class:`CampaignStatusWatch` (one status read turned into a verdict, with a bound on
consecutive transient errors) and :func:`check_trigger_event` (the fail-closed reading of the
trigger's event). Only cheap modules are imported here; the hook and the trigger are imported
when a task runs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any, NoReturn

from airflow.sdk import PokeReturnValue

from airflow_provider_kore import ids
from airflow_provider_kore._compat import (
    AirflowFailException,
    AirflowSensorTimeout,
    AirflowSkipException,
    BaseSensorOperator,
    default_deferrable,
)
from airflow_provider_kore.exceptions import (
    KoreCampaignStatusError,
    KoreCampaignTimeoutError,
    KoreConfigurationError,
    KoreError,
    redact,
)
from airflow_provider_kore.status import DEFAULT_TARGET_STATUSES, StatusRule, Verdict, is_known

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_kore.hooks.kore import KoreHook

#: Extra seconds on Airflow's own deferral timeout, so the trigger's timeout event (which names
#: the campaign's last status and lets the operator stop it) arrives before Airflow gives up.
DEFER_TIMEOUT_MARGIN = 60.0
#: Consecutive transient errors (429, 5xx, network, each already retried by the hook) a wait tolerates.
DEFAULT_MAX_CONSECUTIVE_ERRORS = 3


# ---------------------------------------------------------------------------------------------
# Shared by the sensor and the operators.


def is_template(value: object) -> bool:
    """True for a value Airflow renders or resolves only at run time (Jinja text, an ``XComArg``)."""
    if isinstance(value, str):
        return "{{" in value or "{%" in value
    if isinstance(value, (list, tuple, set, frozenset)):
        return any(is_template(item) for item in value)
    # XComArg and Airflow's other run-time references resolve themselves; they are not data yet.
    return value is not None and not isinstance(value, (bytes, Mapping)) and hasattr(value, "resolve")


def validate_id_unless_template(name: str, value: object, *, optional: bool = False) -> None:
    """Check an id at DAG-parse time, unless it is only known at run time (then it is checked in ``execute``)."""
    if (value is None and optional) or is_template(value):
        return
    ids.validate_id(name, value)


def rendered_id(name: str, value: object) -> str:
    """The id after rendering, validated (a template that rendered to garbage is refused here)."""
    return ids.validate_id(name, value)


def rendered_optional_id(name: str, value: object) -> str | None:
    """An optional id (None stays None) after rendering, validated."""
    return None if value is None else ids.validate_id(name, value)


def status_rule_unless_template(target_statuses: object, failure_statuses: object) -> StatusRule | None:
    """Validate the status sets at DAG-parse time, unless one of them is rendered at run time."""
    if is_template(target_statuses) or is_template(failure_statuses):
        return None
    return StatusRule.build(target_statuses, failure_statuses)


def positive_seconds(name: str, value: object) -> float:
    """A positive number of seconds from a number or a ``timedelta``."""
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
        raise KoreConfigurationError(f"{name} must be a positive number of seconds; got {value!r}")
    return float(seconds)


def non_negative_seconds(name: str, value: object) -> float | None:
    """None, or a number of seconds >= 0 from a number or a ``timedelta``."""
    if value is None:
        return None
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds >= 0:
        raise KoreConfigurationError(f"{name} must be None or a number of seconds >= 0; got {value!r}")
    return float(seconds)


def max_errors(value: object) -> int:
    """A count of tolerated consecutive errors: an int >= 0."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise KoreConfigurationError(f"max_consecutive_errors must be an integer >= 0; got {value!r}")
    return value


class CampaignStatusWatch:
    """Reads a campaign's status and judges it: the step a sensor poke and a synchronous wait share.

    :param campaign_id: The campaign to watch (already rendered and validated).
    :param rule: Which statuses end the wait well, and which badly.
    :param stream_id: The bot (stream) id; None uses the connection's.
    :param max_consecutive_errors: Transient errors (429, 5xx, network; each already retried by
        the hook) tolerated in a row; the next one is raised.
    :param log: Where progress is logged.
    """

    def __init__(
        self,
        campaign_id: str,
        rule: StatusRule,
        *,
        stream_id: str | None = None,
        max_consecutive_errors: int = DEFAULT_MAX_CONSECUTIVE_ERRORS,
        log: logging.Logger | Any = None,
    ) -> None:
        self.campaign_id = campaign_id
        self.rule = rule
        self.stream_id = stream_id
        self.max_consecutive_errors = max_consecutive_errors
        self.log = log or logging.getLogger(__name__)
        self.consecutive_errors = 0
        self.polls = 0
        self._started = time.monotonic()
        self._unknown_seen: set[str] = set()

    @property
    def elapsed(self) -> float:
        """Seconds since the watch began (in this process)."""
        return time.monotonic() - self._started

    def check(self, hook: KoreHook) -> tuple[Verdict, dict[str, Any] | None]:
        """Read the status once: ``("success", data)``, ``("waiting", data or None)``, or raise.

        Raises :class:`KoreCampaignStatusError` on a failure status (or a terminal status that is
        not a target), a non-transient :class:`KoreError` at once, and a transient one once more
        than ``max_consecutive_errors`` came in a row.
        """
        self.polls += 1
        try:
            data = hook.get_campaign_status(self.campaign_id, stream_id=self.stream_id)
        except KoreError as exc:
            if not exc.transient:
                raise
            self.consecutive_errors += 1
            if self.consecutive_errors > self.max_consecutive_errors:
                self.log.error(
                    "Kore.ai campaign %s: %d status reads in a row failed; giving up",
                    self.campaign_id,
                    self.consecutive_errors,
                )
                raise
            self.log.warning(
                "Kore.ai campaign %s: status read failed (%s); tolerated %d/%d, waiting on",
                self.campaign_id,
                exc,
                self.consecutive_errors,
                self.max_consecutive_errors,
            )
            return "waiting", None
        self.consecutive_errors = 0
        status = str(data.get("status", ""))
        verdict = self.rule.verdict(status)
        if verdict == "failure":
            raise KoreCampaignStatusError(
                self.rule.explain_failure(self.campaign_id, status), campaign_id=self.campaign_id, status=status
            )
        if verdict == "success":
            self.log.info("Kore.ai campaign %s is %s after %.0fs", self.campaign_id, status, self.elapsed)
            return verdict, data
        if not is_known(status) and status.lower() not in self._unknown_seen:
            self._unknown_seen.add(status.lower())
            self.log.warning(
                "Kore.ai campaign %s reports status %r, which this provider does not know: "
                "waiting on it (an unknown status is never taken for success)",
                self.campaign_id,
                status,
            )
        self.log.info(
            "Kore.ai campaign %s is %s after %.0fs; waiting for %s",
            self.campaign_id,
            status,
            self.elapsed,
            ", ".join(self.rule.target_statuses),
        )
        return verdict, data


_EVENT_KINDS = ("success", "failure", "timeout", "error")


def check_trigger_event(event: object, campaign_id: str, rule: StatusRule | None = None) -> dict[str, Any]:
    """Return the trigger's event if it reports success; raise for anything else (fail closed).

    ``failure`` raises :class:`KoreCampaignStatusError`, ``timeout`` raises
    :class:`KoreCampaignTimeoutError` (an ``AirflowSensorTimeout``), ``error`` raises
    :class:`KoreError`; a missing event, an unknown kind, an event for another campaign, or a
    "success" whose status is not a target under ``rule`` raises :class:`KoreError` too.
    """
    where = f"Kore.ai campaign {campaign_id!r}"
    if not isinstance(event, Mapping):
        raise KoreError(f"{where}: the wait ended without a trigger event ({type(event).__name__}); failing closed")
    kind = event.get("status")
    status = event.get("campaign_status")
    status_text = None if status is None else str(status)
    message = redact(str(event.get("message") or "")) or None
    if event.get("campaign_id") not in (None, campaign_id):
        raise KoreError(f"{where}: the trigger reported on campaign {event.get('campaign_id')!r}; failing closed")
    if kind == "success":
        if rule is not None and rule.verdict(status_text) != "success":
            raise KoreError(
                f"{where}: the trigger reported success with status {status_text!r}, "
                f"which is not one of {', '.join(rule.target_statuses)}; failing closed"
            )
        return dict(event)
    if kind == "failure":
        raise KoreCampaignStatusError(
            message or f"{where} is {status_text!r}, a status the wait must not end in",
            campaign_id=campaign_id,
            status=status_text or "",
        )
    if kind == "timeout":
        raise KoreCampaignTimeoutError(
            message or f"{where} did not reach the target status in time (last status {status_text!r})",
            campaign_id=campaign_id,
            status=status_text,
        )
    if kind == "error":
        raise KoreError(message or f"{where}: the wait failed with an error the trigger did not describe")
    raise KoreError(f"{where}: unknown trigger event status {kind!r} (expected one of {_EVENT_KINDS}); failing closed")


# ---------------------------------------------------------------------------------------------
# The sensor.


class KoreCampaignStatusSensor(BaseSensorOperator):
    """Wait until a Kore.ai campaign reaches one of ``target_statuses``.

    Each poke reads the campaign's status. A target status ends the wait (the status data
    ``{"id", "status", "name"}`` becomes the XCom value); a failure status, or a terminal status
    that is not a target (a ``Stopped`` campaign while waiting for ``Completed``), fails the task
    at once without retries; any other status, including one this provider does not know, is
    waited on. Transient API errors are tolerated for ``max_consecutive_errors`` pokes in a row.

    With ``deferrable=True`` the sensor pokes once in the worker (a campaign already done never
    defers) and otherwise hands the wait to :class:`~airflow_provider_kore.triggers.campaign.KoreCampaignStatusTrigger`
    in the triggerer, polling every ``poke_interval`` seconds until ``timeout``.

    :param campaign_id: The campaign to watch (templated).
    :param target_statuses: Status name(s) that end the wait successfully (templated;
        case-insensitive). Default ``("Completed",)``.
    :param failure_statuses: Status name(s) that fail the task (templated). None: ``("Failed",)``
        unless that is a target. Terminal statuses that are not targets fail anyway.
    :param stream_id: The bot (stream) id (templated); None uses the connection's ``stream_id`` extra.
    :param kore_conn_id: The ``kore`` connection. Default ``kore_default``.
    :param deferrable: Wait in the triggerer instead of a worker slot. None (default) follows
        ``[operators] default_deferrable``.
    :param max_consecutive_errors: Transient API errors (429, 5xx, network; each already
        retried by the hook) tolerated in consecutive pokes before the task fails. Default 3.
        In ``reschedule`` mode the count starts again at each reschedule.

    Every ``BaseSensorOperator`` argument applies: ``poke_interval`` (seconds between reads,
    must be positive), ``timeout`` (seconds in all; a timeout fails without retry, or skips
    with ``soft_fail=True``), ``mode``, ``soft_fail``...
    """

    template_fields: Sequence[str] = ("campaign_id", "stream_id", "target_statuses", "failure_statuses")
    ui_color = "#e3f1e8"

    def __init__(
        self,
        *,
        campaign_id: str,
        target_statuses: str | Iterable[str] = DEFAULT_TARGET_STATUSES,
        failure_statuses: str | Iterable[str] | None = None,
        stream_id: str | None = None,
        kore_conn_id: str = ids.DEFAULT_CONN_ID,
        deferrable: bool | None = None,
        max_consecutive_errors: int = DEFAULT_MAX_CONSECUTIVE_ERRORS,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.campaign_id = campaign_id
        self.target_statuses = target_statuses
        self.failure_statuses = failure_statuses
        self.stream_id = stream_id
        self.kore_conn_id = kore_conn_id
        self.deferrable = default_deferrable() if deferrable is None else bool(deferrable)
        self.max_consecutive_errors = max_errors(max_consecutive_errors)
        # Refuse what can be refused at DAG-parse time; templates are checked again after rendering.
        positive_seconds("poke_interval", self.poke_interval)
        validate_id_unless_template("campaign_id", campaign_id)
        validate_id_unless_template("stream_id", stream_id, optional=True)
        status_rule_unless_template(target_statuses, failure_statuses)

    @cached_property
    def hook(self) -> KoreHook:
        """The ``KoreHook`` for ``kore_conn_id`` (created on first use, in the worker).

        A request waiting for its turn under Kore's rate limit (see the connection's request
        budget) gives up when the sensor's own ``timeout`` would have run out, not later.
        """
        from airflow_provider_kore.hooks.kore import KoreHook

        return KoreHook(kore_conn_id=self.kore_conn_id, deadline=time.time() + float(self.timeout))

    @cached_property
    def _watch(self) -> CampaignStatusWatch:
        # Built on the first poke, after rendering, so the rendered values are what is validated.
        return CampaignStatusWatch(
            rendered_id("campaign_id", self.campaign_id),
            StatusRule.build(self.target_statuses, self.failure_statuses),
            stream_id=rendered_optional_id("stream_id", self.stream_id),
            max_consecutive_errors=self.max_consecutive_errors,
            log=self.log,
        )

    def poke(self, context: Context) -> bool | PokeReturnValue:
        """Read the status once: done on a target, raise on a failure, else keep waiting."""
        verdict, data = self._watch.check(self.hook)
        if verdict == "success":
            return PokeReturnValue(is_done=True, xcom_value=data)
        return False

    def execute(self, context: Context) -> Any:
        """Poke in the worker; if deferrable and not done at the first poke, defer to the trigger."""
        if not self.deferrable:
            return super().execute(context)
        try:
            done = self.poke(context)
        except (AirflowFailException, AirflowSensorTimeout) as exc:
            # As BaseSensorOperator.execute treats a failing poke.
            if self.soft_fail or getattr(self, "never_fail", False):
                raise AirflowSkipException(f"Skipping (soft_fail): {exc}") from exc
            raise
        if isinstance(done, PokeReturnValue) and done:
            return done.xcom_value
        self._defer()

    def _defer(self) -> NoReturn:
        from airflow_provider_kore.triggers.campaign import KoreCampaignStatusTrigger

        watch = self._watch
        self.log.info(
            "Deferring the wait on Kore.ai campaign %s (poll every %gs, timeout %gs)",
            watch.campaign_id,
            self.poke_interval,
            self.timeout,
        )
        self.defer(
            trigger=KoreCampaignStatusTrigger(
                campaign_id=watch.campaign_id,
                kore_conn_id=self.kore_conn_id,
                target_statuses=tuple(watch.rule.target_statuses),
                failure_statuses=tuple(watch.rule.failure_statuses),
                stream_id=watch.stream_id,
                poll_interval=float(self.poke_interval),
                end_time=time.time() + float(self.timeout),
                max_consecutive_errors=self.max_consecutive_errors,
                last_read_at=time.time(),  # the first poke's read just ended: the trigger's first comes later
            ),
            method_name="execute_complete",
            timeout=timedelta(seconds=float(self.timeout) + float(self.poke_interval) + DEFER_TIMEOUT_MARGIN),
        )

    def execute_complete(self, context: Context, event: Any = None) -> dict[str, Any]:
        """Resume after the trigger: the status data on success; raise on anything else (fail closed).

        A timeout raises :class:`~airflow_provider_kore.exceptions.KoreCampaignTimeoutError`, an
        ``AirflowSensorTimeout``: the task fails without retry, or is skipped with ``soft_fail``.
        """
        campaign_id = rendered_id("campaign_id", self.campaign_id)
        rule = StatusRule.build(self.target_statuses, self.failure_statuses)
        payload = check_trigger_event(event, campaign_id, rule)
        data = payload.get("data")
        self.log.info(
            "Kore.ai campaign %s is %s (%s polls in the triggerer)",
            campaign_id,
            payload.get("campaign_status"),
            payload.get("polls"),
        )
        if isinstance(data, Mapping):
            return dict(data)
        return {"id": campaign_id, "status": payload.get("campaign_status")}


__all__ = [
    "CampaignStatusWatch",
    "KoreCampaignStatusSensor",
    "check_trigger_event",
]
