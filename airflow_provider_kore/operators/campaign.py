"""Operators that start and stop Kore.ai campaigns.

Thin on purpose: they turn Airflow's world (templated fields, the task context, retries, XCom,
deferral) into :class:`~airflow_provider_kore.hooks.kore.KoreHook` calls. URLs, headers, tokens
and HTTP retries live in the hook and :mod:`airflow_provider_kore.api`; the waiting logic is
shared with the sensor (:mod:`airflow_provider_kore.sensors.campaign`). The hook and the trigger
are imported only when a task runs, so a DAG file importing this module stays cheap to parse.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from functools import cached_property
from typing import TYPE_CHECKING, Any, NoReturn

from airflow_provider_kore import ids
from airflow_provider_kore._compat import BaseOperator, default_deferrable
from airflow_provider_kore.exceptions import (
    KoreApiError,
    KoreAuthError,
    KoreCampaignTimeoutError,
    KoreError,
)
from airflow_provider_kore.sensors.campaign import (
    DEFAULT_MAX_CONSECUTIVE_ERRORS,
    DEFER_TIMEOUT_MARGIN,
    CampaignStatusWatch,
    check_trigger_event,
    non_negative_seconds,
    positive_seconds,
    rendered_id,
    rendered_optional_id,
    status_rule_unless_template,
    validate_id_unless_template,
)
from airflow_provider_kore.status import DEFAULT_TARGET_STATUSES, RUNNING_STATUSES, StatusRule, is_terminal

if TYPE_CHECKING:
    import logging

    from airflow.sdk import Context

    from airflow_provider_kore.hooks.kore import KoreHook

_ISO_TIMESTAMP = re.compile(r"^(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}(?::\d{2})?)(?:\.(\d+))?\s*(Z|z|[+-]\d{2}:?\d{2})?$")


def parse_kore_timestamp(value: object) -> datetime | None:
    """An aware datetime from Kore's ISO 8601 text (``2025-12-08T05:32:10.977Z``); None if unreadable.

    A timestamp without a zone is taken as UTC, as Kore writes them.
    """
    if not isinstance(value, str):
        return None
    match = _ISO_TIMESTAMP.match(value.strip())
    if not match:
        return None
    day, clock, fraction, zone = match.groups()
    if clock.count(":") == 1:
        clock += ":00"
    micro = (fraction or "0")[:6].ljust(6, "0")
    if zone is None or zone in ("Z", "z"):
        zone = "+00:00"
    elif ":" not in zone:
        zone = f"{zone[:3]}:{zone[3:]}"
    try:  # Python 3.10's fromisoformat needs exactly this shape
        return datetime.fromisoformat(f"{day}T{clock}.{micro}{zone}")
    except ValueError:
        return None


def _aware(moment: object) -> datetime | None:
    if not isinstance(moment, datetime):
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def _plain(value: object) -> str | int | float | bool | None:
    """A JSON-safe scalar for XCom: Kore's answers are strings, but do not trust their shape."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def stop_campaign_quietly(
    hook: KoreHook,
    campaign_id: str,
    *,
    campaign_type: str,
    stream_id: str | None,
    log: logging.Logger | Any,
) -> tuple[dict[str, Any], bool]:
    """Stop a campaign; a campaign that has already ended counts as stopped.

    Returns Kore's answer and whether this call stopped it. When Kore refuses the stop with a
    non-transient error other than an auth error, the status is read: a terminal status
    (``Stopped``, ``Completed``...) is logged and returned; otherwise the refusal is raised.
    """
    try:
        return hook.stop_campaign(campaign_id, campaign_type=campaign_type, stream_id=stream_id), True
    except KoreApiError as exc:
        if exc.transient or isinstance(exc, KoreAuthError):
            raise
        try:
            status = str(hook.get_campaign_status(campaign_id, stream_id=stream_id).get("status", ""))
        except KoreError:
            raise exc from None
        if not is_terminal(status):
            raise
        log.info(
            "Kore.ai campaign %s is already %s: nothing to stop (the stop answered HTTP %s: %s)",
            campaign_id,
            status,
            exc.http_status,
            exc.kore_message or "no error text",
        )
        return {"status": status, "message": f"Campaign already {status}; nothing to stop", "updatedAt": None}, False


class _KoreCampaignOperator(BaseOperator):
    """What the start and stop operators share: the connection, the lazy hook, the XCom shape."""

    ui_color = "#dcebf7"

    def __init__(self, *, kore_conn_id: str = ids.DEFAULT_CONN_ID, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.kore_conn_id = kore_conn_id

    @cached_property
    def hook(self) -> KoreHook:
        """The ``KoreHook`` for ``kore_conn_id`` (created on first use, in the worker)."""
        from airflow_provider_kore.hooks.kore import KoreHook

        return KoreHook(kore_conn_id=self.kore_conn_id)

    def _resolved_stream_id(self, stream_id: str | None) -> str | None:
        if stream_id is not None:
            return stream_id
        try:
            return self.hook.config.stream_id
        except KoreError:
            return None

    def _result(
        self, campaign_id: str, campaign_type: str, stream_id: str | None, answer: Mapping[str, Any], **extra: Any
    ) -> dict[str, Any]:
        """The XCom value: ids and Kore's answer, nothing secret."""
        result: dict[str, Any] = {
            "campaign_id": campaign_id,
            "campaign_type": campaign_type,
            "stream_id": self._resolved_stream_id(stream_id),
            "status": _plain(answer.get("status")),
            "message": _plain(answer.get("message")),
            "updated_at": _plain(answer.get("updatedAt")),
        }
        if answer.get("campaignInstanceId"):
            result["campaign_instance_id"] = _plain(answer["campaignInstanceId"])
        result.update(extra)
        return result


class KoreStartCampaignOperator(_KoreCampaignOperator):
    """Start (play) a Kore.ai campaign, and optionally wait until it completes.

    Safe under Airflow retries: on a retry the campaign is read first, and it is not started
    again if it is ``Active``, or if it reached a terminal status (``Completed``, ``Stopped``)
    after this DAG run began (an earlier try of this run started it). The first try just starts;
    the hook itself checks the status before re-sending a start whose answer never came.

    The XCom value is ``{"campaign_id", "campaign_type", "stream_id", "status", "message",
    "updated_at", "started"}`` (``started`` is False when a retry found the campaign already
    started), plus ``campaign_instance_id`` when Kore returns one. With ``wait_for_completion``,
    ``status`` is the final campaign status and ``start_status`` what the start answered.

    :param campaign_id: The campaign to start (templated), e.g. ``cd-469cba4-...``.
    :param campaign_type: ``"sms"`` (default) or ``"voice"``.
    :param stream_id: The bot (stream) id (templated); None uses the connection's ``stream_id`` extra.
    :param kore_conn_id: The ``kore`` connection. Default ``kore_default``.
    :param wait_for_completion: After starting, wait until the campaign reaches one of
        ``target_statuses`` (fail on ``failure_statuses`` or a terminal non-target status).
    :param target_statuses: Status name(s) that end the wait successfully (templated). Default ``("Completed",)``.
    :param failure_statuses: Status name(s) that fail the wait (templated). None: ``("Failed",)``.
    :param poll_interval: Seconds between status reads while waiting. Default 30.
    :param timeout: Seconds to wait at most (None: no limit). A timeout fails the task without
        retry (:class:`~airflow_provider_kore.exceptions.KoreCampaignTimeoutError`).
    :param deferrable: Wait in the triggerer instead of a worker slot. None (default) follows
        ``[operators] default_deferrable``.
    :param stop_on_kill: Stop the campaign when the task is killed after starting it (marked
        failed or cleared while it runs; see :meth:`on_kill` for a deferred task) or when its
        wait times out, so the campaign does not run on unobserved.
    """

    template_fields: Sequence[str] = ("campaign_id", "stream_id", "target_statuses", "failure_statuses")

    def __init__(
        self,
        *,
        campaign_id: str,
        campaign_type: str = "sms",
        stream_id: str | None = None,
        kore_conn_id: str = ids.DEFAULT_CONN_ID,
        wait_for_completion: bool = False,
        target_statuses: str | Iterable[str] = DEFAULT_TARGET_STATUSES,
        failure_statuses: str | Iterable[str] | None = None,
        poll_interval: float | timedelta = 30,
        timeout: float | timedelta | None = None,
        deferrable: bool | None = None,
        stop_on_kill: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(kore_conn_id=kore_conn_id, **kwargs)
        self.campaign_id = campaign_id
        self.campaign_type = ids.validate_campaign_type(campaign_type)
        self.stream_id = stream_id
        self.wait_for_completion = bool(wait_for_completion)
        self.target_statuses = target_statuses
        self.failure_statuses = failure_statuses
        self.poll_interval = positive_seconds("poll_interval", poll_interval)
        self.timeout = non_negative_seconds("timeout", timeout)
        self.deferrable = default_deferrable() if deferrable is None else bool(deferrable)
        self.stop_on_kill = bool(stop_on_kill)
        # Refuse what can be refused at DAG-parse time; templates are checked again after rendering.
        validate_id_unless_template("campaign_id", campaign_id)
        validate_id_unless_template("stream_id", stream_id, optional=True)
        status_rule_unless_template(target_statuses, failure_statuses)
        #: (campaign_id, stream_id) once this process has sent a start, for on_kill.
        self._started_here: tuple[str, str | None] | None = None

    def execute(self, context: Context) -> dict[str, Any]:
        """Start the campaign (unless a retry finds it already started); wait if asked."""
        campaign_id = rendered_id("campaign_id", self.campaign_id)
        stream_id = rendered_optional_id("stream_id", self.stream_id)
        rule = StatusRule.build(self.target_statuses, self.failure_statuses)

        result = self._start(context, campaign_id, stream_id)
        if not self.wait_for_completion:
            return result
        if self.deferrable:
            self._defer(campaign_id, stream_id, rule, result)
        return self._wait(campaign_id, stream_id, rule, result)

    # -- start ---------------------------------------------------------------------------------

    def _start(self, context: Context, campaign_id: str, stream_id: str | None) -> dict[str, Any]:
        ti = context.get("ti")
        try_number = getattr(ti, "try_number", None) or 1
        if try_number > 1:
            earlier = self._started_earlier(context, campaign_id, stream_id, try_number)
            if earlier is not None:
                return earlier
        answer = self.hook.start_campaign(campaign_id, campaign_type=self.campaign_type, stream_id=stream_id)
        self._started_here = (campaign_id, stream_id)
        self.log.info(
            "Started Kore.ai %s campaign %s: %s (%s)",
            self.campaign_type,
            campaign_id,
            answer.get("status"),
            answer.get("message"),
        )
        return self._result(campaign_id, self.campaign_type, stream_id, answer, started=True)

    def _started_earlier(
        self, context: Context, campaign_id: str, stream_id: str | None, try_number: int
    ) -> dict[str, Any] | None:
        """On a retry: the result to return if the campaign must not be started again, else None."""
        data = self.hook.get_campaign(campaign_id, stream_id=stream_id)
        status = str(data.get("status") or "")
        updated_raw = data.get("updatedAt")
        reason = None
        if status.lower() in RUNNING_STATUSES:
            reason = f"Campaign already {status}; not started again"
        elif is_terminal(status):
            updated = parse_kore_timestamp(updated_raw)
            run_start = _aware(getattr(context.get("dag_run"), "start_date", None))
            if updated is not None and run_start is not None and updated >= run_start:
                reason = f"Campaign already {status} since {updated_raw}, after this DAG run began; not started again"
        if reason is None:
            self.log.info(
                "Try %d: Kore.ai campaign %s is %s (updated %s): starting it",
                try_number,
                campaign_id,
                status,
                updated_raw,
            )
            return None
        self.log.info("Try %d: Kore.ai campaign %s: %s", try_number, campaign_id, reason)
        answer = {"status": status, "message": reason, "updatedAt": updated_raw}
        return self._result(campaign_id, self.campaign_type, stream_id, answer, started=False)

    # -- wait ----------------------------------------------------------------------------------

    def _defer(self, campaign_id: str, stream_id: str | None, rule: StatusRule, result: dict[str, Any]) -> NoReturn:
        from airflow_provider_kore.triggers.campaign import KoreCampaignStatusTrigger

        timeout = self.timeout
        self.log.info(
            "Deferring the wait on Kore.ai campaign %s (poll every %gs, timeout %s)",
            campaign_id,
            self.poll_interval,
            "none" if timeout is None else f"{timeout:g}s",
        )
        self.defer(
            trigger=KoreCampaignStatusTrigger(
                campaign_id=campaign_id,
                kore_conn_id=self.kore_conn_id,
                target_statuses=tuple(rule.target_statuses),
                failure_statuses=tuple(rule.failure_statuses),
                stream_id=stream_id,
                poll_interval=self.poll_interval,
                end_time=None if timeout is None else time.time() + timeout,
                stop_on_kill=self.stop_on_kill,
                campaign_type=self.campaign_type,
                last_read_at=time.time(),  # the start's answer just came: the trigger's first read comes later
            ),
            method_name="execute_complete",
            kwargs={"start_result": result},
            # Longer than the trigger's own limit, so its timeout event (which can stop the campaign) wins.
            timeout=None if timeout is None else timedelta(seconds=timeout + self.poll_interval + DEFER_TIMEOUT_MARGIN),
        )

    def _wait(
        self, campaign_id: str, stream_id: str | None, rule: StatusRule, result: dict[str, Any]
    ) -> dict[str, Any]:
        watch = CampaignStatusWatch(
            campaign_id,
            rule,
            stream_id=stream_id,
            max_consecutive_errors=DEFAULT_MAX_CONSECUTIVE_ERRORS,
            log=self.log,
        )
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while True:
            verdict, data = watch.check(self.hook)
            if verdict == "success" and data is not None:
                return self._finished(result, data.get("status"))
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                last = None if data is None else data.get("status")
                self._after_timeout(campaign_id, stream_id)
                raise KoreCampaignTimeoutError(
                    f"Kore.ai campaign {campaign_id!r} did not reach {', '.join(rule.target_statuses)} "
                    f"within {self.timeout:g}s (last status {last!r})",
                    campaign_id=campaign_id,
                    status=None if last is None else str(last),
                )
            time.sleep(self.poll_interval if deadline is None else max(0.0, min(self.poll_interval, deadline - now)))

    def execute_complete(
        self, context: Context, event: Any = None, start_result: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Resume after the trigger: the start result with the final status; raise on anything else.

        Fails closed: only a ``success`` event returns. A ``timeout`` stops the campaign first
        when ``stop_on_kill`` is set, then raises
        :class:`~airflow_provider_kore.exceptions.KoreCampaignTimeoutError`.
        """
        campaign_id = rendered_id("campaign_id", self.campaign_id)
        stream_id = rendered_optional_id("stream_id", self.stream_id)
        rule = StatusRule.build(self.target_statuses, self.failure_statuses)
        try:
            payload = check_trigger_event(event, campaign_id, rule)
        except KoreCampaignTimeoutError:
            self._after_timeout(campaign_id, stream_id)
            raise
        if not isinstance(start_result, Mapping):
            start_result = self._result(campaign_id, self.campaign_type, stream_id, {})
        return self._finished(dict(start_result), payload.get("campaign_status"))

    def _finished(self, result: dict[str, Any], final_status: object) -> dict[str, Any]:
        result["start_status"] = result.get("status")
        result["status"] = _plain(final_status)
        return result

    # -- kill / timeout ------------------------------------------------------------------------

    def _after_timeout(self, campaign_id: str, stream_id: str | None) -> None:
        # A wait that gives up must not leave the campaign running unobserved (dbt Cloud's deferred
        # timeout leaves its remote job running): stop it when the user asked for that.
        if not self.stop_on_kill:
            return
        self.log.warning("The wait on Kore.ai campaign %s timed out; stopping it (stop_on_kill)", campaign_id)
        self._stop_best_effort(campaign_id, stream_id)

    def _stop_best_effort(self, campaign_id: str, stream_id: str | None) -> None:
        try:
            answer, _ = stop_campaign_quietly(
                self.hook, campaign_id, campaign_type=self.campaign_type, stream_id=stream_id, log=self.log
            )
        except Exception as exc:  # stopping is a courtesy; the task's own outcome must stand
            self.log.error("Could not stop Kore.ai campaign %s: %s: %s", campaign_id, type(exc).__name__, exc)
            return
        self.log.info("Kore.ai campaign %s: %s", campaign_id, answer.get("message") or answer.get("status"))

    def on_kill(self) -> None:
        """Stop the campaign if ``stop_on_kill`` is set and this process started it.

        This covers a task killed while it starts or waits in a worker. While the task is
        deferred, no worker holds it: Airflow 3.3 calls the trigger's ``on_kill`` (marking the
        task failed or success, or clearing it), and the trigger stops the campaign when
        ``stop_on_kill`` is set; Airflow 3.0 to 3.2 just cancel the trigger, and the campaign
        keeps running.
        """
        if not self.stop_on_kill or self._started_here is None:
            return
        campaign_id, stream_id = self._started_here
        self.log.warning("Task killed; stopping Kore.ai campaign %s (stop_on_kill)", campaign_id)
        self._stop_best_effort(campaign_id, stream_id)


class KoreStartSmsCampaignOperator(KoreStartCampaignOperator):
    """Start (play) a Kore.ai SMS campaign: :class:`KoreStartCampaignOperator` with ``campaign_type="sms"``.

    Takes every argument of :class:`KoreStartCampaignOperator` except ``campaign_type``.

    :param campaign_id: The SMS campaign to start (templated).
    """

    def __init__(self, *, campaign_id: str, **kwargs: Any) -> None:
        if "campaign_type" in kwargs:
            raise TypeError("KoreStartSmsCampaignOperator always starts an sms campaign; do not pass campaign_type")
        super().__init__(campaign_id=campaign_id, campaign_type="sms", **kwargs)


class KoreStopCampaignOperator(_KoreCampaignOperator):
    """Stop a Kore.ai campaign.

    Stopping a campaign that has already ended succeeds quietly: if Kore refuses the stop (with
    an error that is neither transient nor an auth error) and the campaign's status is terminal
    (``Stopped``, ``Completed``...), the task logs it and succeeds with that status.

    The XCom value is ``{"campaign_id", "campaign_type", "stream_id", "status", "message",
    "updated_at", "stopped"}`` plus ``campaign_instance_id`` when Kore returns one; ``stopped``
    is False when the campaign had already ended.

    :param campaign_id: The campaign to stop (templated).
    :param campaign_type: ``"voice"`` (default) or ``"sms"``.
    :param stream_id: The bot (stream) id (templated); None uses the connection's ``stream_id`` extra.
    :param kore_conn_id: The ``kore`` connection. Default ``kore_default``.
    """

    template_fields: Sequence[str] = ("campaign_id", "stream_id")

    def __init__(
        self,
        *,
        campaign_id: str,
        campaign_type: str = "voice",
        stream_id: str | None = None,
        kore_conn_id: str = ids.DEFAULT_CONN_ID,
        **kwargs: Any,
    ) -> None:
        super().__init__(kore_conn_id=kore_conn_id, **kwargs)
        self.campaign_id = campaign_id
        self.campaign_type = ids.validate_campaign_type(campaign_type)
        self.stream_id = stream_id
        validate_id_unless_template("campaign_id", campaign_id)
        validate_id_unless_template("stream_id", stream_id, optional=True)

    def execute(self, context: Context) -> dict[str, Any]:
        """Stop the campaign; an already-ended campaign is not an error."""
        campaign_id = rendered_id("campaign_id", self.campaign_id)
        stream_id = rendered_optional_id("stream_id", self.stream_id)
        answer, stopped = stop_campaign_quietly(
            self.hook, campaign_id, campaign_type=self.campaign_type, stream_id=stream_id, log=self.log
        )
        if stopped:
            self.log.info(
                "Stopped Kore.ai %s campaign %s: %s (%s)",
                self.campaign_type,
                campaign_id,
                answer.get("status"),
                answer.get("message"),
            )
        return self._result(campaign_id, self.campaign_type, stream_id, answer, stopped=stopped)


class KoreStopVoiceCampaignOperator(KoreStopCampaignOperator):
    """Stop a Kore.ai voice campaign: :class:`KoreStopCampaignOperator` with ``campaign_type="voice"``.

    Takes every argument of :class:`KoreStopCampaignOperator` except ``campaign_type``.

    :param campaign_id: The voice campaign to stop (templated).
    """

    def __init__(self, *, campaign_id: str, **kwargs: Any) -> None:
        if "campaign_type" in kwargs:
            raise TypeError("KoreStopVoiceCampaignOperator always stops a voice campaign; do not pass campaign_type")
        super().__init__(campaign_id=campaign_id, campaign_type="voice", **kwargs)


__all__ = [
    "KoreStartCampaignOperator",
    "KoreStartSmsCampaignOperator",
    "KoreStopCampaignOperator",
    "KoreStopVoiceCampaignOperator",
    "parse_kore_timestamp",
    "stop_campaign_quietly",
]
