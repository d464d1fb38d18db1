"""What the operators and the sensor share: argument checks that tell a template from a value, one
status read judged, the hand-over to the trigger and reading its event. DAG files import this: keep it cheap."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import KW_ONLY, dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, NoReturn

from airflow_provider_kore import ids
from airflow_provider_kore.exceptions import (
    KoreCampaignStatusError,
    KoreCampaignTimeoutError,
    KoreConfigurationError,
    KoreError,
    redact,
)
from airflow_provider_kore.status import StatusRule, Verdict, is_known

if TYPE_CHECKING:
    from airflow_provider_kore._compat import BaseOperator
    from airflow_provider_kore.hooks.kore import KoreHook

#: Extra seconds on Airflow's own deferral timeout, so the trigger's timeout event (which names
#: the campaign's last status and lets the operator stop it) arrives before Airflow gives up.
DEFER_TIMEOUT_MARGIN = 60.0
#: A poke waits at most this long past its ``poke_interval`` for Kore (a 429 pause, an outage).
POKE_GRACE = 15.0
_LOG = logging.getLogger(__name__)


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
    if not ((value is None and optional) or is_template(value)):
        ids.validate_id(name, value)


def rendered_optional_id(name: str, value: object) -> str | None:
    """An optional id (None stays None) after rendering, validated."""
    return None if value is None else ids.validate_id(name, value)


def status_rule_unless_template(target_statuses: object, failure_statuses: object) -> StatusRule | None:
    """Validate the status sets at DAG-parse time, unless one of them is rendered at run time."""
    if is_template(target_statuses) or is_template(failure_statuses):
        return None
    return StatusRule.build(target_statuses, failure_statuses)


def _seconds(name: str, value: object, ok: Callable[[float], bool], expected: str) -> float:
    """Seconds from a number or a ``timedelta`` (never a bool, never NaN) that ``ok`` accepts."""
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not ok(seconds):
        raise KoreConfigurationError(f"{name} must be {expected}; got {value!r}")
    return float(seconds)


def positive_seconds(name: str, value: object) -> float:
    """A positive number of seconds from a number or a ``timedelta``."""
    return _seconds(name, value, lambda seconds: seconds > 0, "a positive number of seconds")


def non_negative_seconds(name: str, value: object) -> float | None:
    """None, or a number of seconds >= 0 from a number or a ``timedelta``."""
    return None if value is None else _seconds(name, value, lambda s: s >= 0, "None or a number of seconds >= 0")


def max_errors(value: object) -> int | None:
    """None (no limit while the time allows), or a count of tolerated consecutive errors >= 0."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise KoreConfigurationError(f"max_consecutive_errors must be None or an integer >= 0; got {value!r}")
    return value


def check_campaign_choice(campaign_id: object, campaign_name: object, campaign_type: object) -> None:
    """Exactly one of ``campaign_id`` / ``campaign_name`` (with a ``campaign_type``); each checked unless templated."""
    if (campaign_id is None) == (campaign_name is None):
        raise KoreConfigurationError("pass exactly one of campaign_id= or campaign_name=")
    if campaign_id is not None:
        validate_id_unless_template("campaign_id", campaign_id)
        return
    if campaign_type is None:
        raise KoreConfigurationError("campaign_name= needs campaign_type= ('sms' or 'voice')")
    ids.validate_campaign_type(campaign_type)
    if not is_template(campaign_name):
        ids.validate_campaign_name(campaign_name)


def campaign_id_for(
    hook: KoreHook,
    campaign_id: object,
    campaign_name: object,
    campaign_type: str | None,
    stream_id: str | None,
    log: Any,
) -> str:
    """The (rendered) id, or the id of the one campaign with the (rendered) name."""
    if campaign_id is not None:
        return ids.validate_id("campaign_id", campaign_id)
    kind = ids.validate_campaign_type(campaign_type)
    found = hook.find_campaign(ids.validate_campaign_name(campaign_name), kind, stream_id=stream_id)
    log.info("Kore.ai %s campaign %r is %s", campaign_type, campaign_name, found)
    return found


@dataclass
class CampaignStatusWatch:
    """Reads a campaign's status and judges it: the step a sensor poke and a synchronous wait share.

    ``max_consecutive_errors``: None: a transient failure (429, 5xx, network) is "not yet"; a
    number: one more transient failure in a row than this is raised.
    """

    campaign_id: str
    rule: StatusRule
    _: KW_ONLY
    stream_id: str | None = None
    max_consecutive_errors: int | None = None
    log: Any = _LOG
    consecutive_errors: int = field(default=0, init=False)
    _started: float = field(default_factory=time.monotonic, init=False)
    _unknown_seen: set[str] = field(default_factory=set, init=False)

    def check(self, hook: KoreHook, *, deadline: float | None = None) -> tuple[Verdict, dict[str, Any] | None]:
        """Read the status once, by ``deadline`` (epoch seconds; running out of time is "not yet"):
        ``("success", data)`` or ``("waiting", data or None)``; raise :class:`KoreCampaignStatusError`
        on a failure status and any :class:`KoreError` that is not transient.
        """
        campaign = self.campaign_id
        try:
            data = hook.get_campaign_status(campaign, stream_id=self.stream_id, deadline=deadline)
        except KoreError as exc:
            if not exc.transient:
                raise
            self.consecutive_errors += 1
            limit = self.max_consecutive_errors
            if limit is not None and self.consecutive_errors > limit:
                self.log.error("Kore.ai campaign %s: %d status reads in a row failed", campaign, limit + 1)
                raise
            self.log.warning("Kore.ai campaign %s: not yet, Kore.ai is unavailable (%s)", campaign, exc)
            return "waiting", None
        self.consecutive_errors = 0
        status = str(data.get("status", ""))
        verdict = self.rule.verdict(status)
        if verdict == "failure":
            why = self.rule.explain_failure(campaign, status)
            raise KoreCampaignStatusError(why, campaign_id=campaign, status=status)
        if verdict == "waiting" and not is_known(status) and status.lower() not in self._unknown_seen:
            self._unknown_seen.add(status.lower())
            unknown = "Kore.ai campaign %s reports status %r, which this provider does not know: waiting on it"
            self.log.warning(unknown, campaign, status)
        waiting_for = "" if verdict == "success" else f"; waiting for {', '.join(self.rule.target_statuses)}"
        elapsed = time.monotonic() - self._started
        self.log.info("Kore.ai campaign %s is %s after %.0fs%s", campaign, status, elapsed, waiting_for)
        return verdict, data


def defer_wait(
    task: BaseOperator,
    *,
    kore_conn_id: str,
    campaign_id: str,
    rule: StatusRule,
    stream_id: str | None,
    poll_interval: float,
    timeout: float | None,
    kwargs: dict[str, Any],
    **trigger_args: Any,
) -> NoReturn:
    """Hand the wait to the trigger, right after the task's own read; it resumes in ``execute_complete(**kwargs)``."""
    from airflow_provider_kore.triggers.campaign import KoreCampaignStatusTrigger

    shown = "none" if timeout is None else f"{timeout:g}s"
    task.log.info(
        "Deferring the wait on Kore.ai campaign %s (poll every %gs, timeout %s)", campaign_id, poll_interval, shown
    )
    now = time.time()
    task.defer(
        trigger=KoreCampaignStatusTrigger(
            campaign_id=campaign_id,
            kore_conn_id=kore_conn_id,
            target_statuses=tuple(rule.target_statuses),
            failure_statuses=tuple(rule.failure_statuses),
            stream_id=stream_id,
            poll_interval=poll_interval,
            end_time=None if timeout is None else now + timeout,
            last_read_at=now,  # the trigger's first read comes one interval after the task's
            **trigger_args,
        ),
        method_name="execute_complete",
        kwargs=kwargs,
        timeout=None if timeout is None else timedelta(seconds=timeout + poll_interval + DEFER_TIMEOUT_MARGIN),
    )


def check_trigger_event(event: object, campaign_id: str, rule: StatusRule | None = None) -> dict[str, Any]:
    """Return the trigger's event if it reports success; raise for anything else (fail closed):
    ``failure`` :class:`KoreCampaignStatusError`, ``timeout`` :class:`KoreCampaignTimeoutError` (an
    ``AirflowSensorTimeout``), anything else (``error``, a malformed or foreign event) :class:`KoreError`.
    """
    where = f"Kore.ai campaign {campaign_id!r}"
    if not isinstance(event, Mapping):
        raise KoreError(f"{where}: the wait ended without a trigger event ({type(event).__name__}); failing closed")
    kind = event.get("status")
    status = None if event.get("campaign_status") is None else str(event["campaign_status"])
    message = redact(str(event.get("message") or "")) or None
    if event.get("campaign_id") not in (None, campaign_id):
        raise KoreError(f"{where}: the trigger reported on campaign {event.get('campaign_id')!r}; failing closed")
    if kind == "success" and rule is not None and rule.verdict(status) != "success":
        targets = ", ".join(rule.target_statuses)
        raise KoreError(
            f"{where}: the trigger reported success with status {status!r}, not one of {targets}; failing closed"
        )
    if kind == "success":
        return dict(event)
    if kind == "failure":
        why = message or f"{where} is {status!r}, a status the wait must not end in"
        raise KoreCampaignStatusError(why, campaign_id=campaign_id, status=status or "")
    if kind == "timeout":
        why = message or f"{where} did not reach the target status in time (last status {status!r})"
        raise KoreCampaignTimeoutError(why, campaign_id=campaign_id, status=status)
    if kind == "error":
        raise KoreError(message or f"{where}: the wait failed with an error the trigger did not describe")
    raise KoreError(f"{where}: unknown trigger event status {kind!r} (expected success, failure, timeout or error)")
