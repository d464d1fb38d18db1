"""Operators that start and stop Kore.ai campaigns.

Thin on purpose: they turn Airflow's world (templated fields, the task context, retries, XCom,
deferral) into :class:`~airflow_provider_kore.hooks.kore.KoreHook` calls. URLs, headers, tokens
and HTTP retries live in the hook and :mod:`airflow_provider_kore.api`; the waiting logic is
shared with the sensor (:mod:`airflow_provider_kore.sensors.campaign`). The hook and the trigger
are imported only when a task runs, so a DAG file importing this module stays cheap to parse.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from functools import cached_property
from typing import TYPE_CHECKING, Any, NoReturn

from airflow_provider_kore import ids
from airflow_provider_kore._compat import BaseOperator, default_deferrable
from airflow_provider_kore.exceptions import KoreApiError, KoreAuthError, KoreCampaignTimeoutError, KoreError
from airflow_provider_kore.status import DEFAULT_TARGET_STATUSES, StatusRule, is_terminal
from airflow_provider_kore.waiting import (
    DEFER_TIMEOUT_MARGIN,
    POKE_GRACE,
    CampaignStatusWatch,
    campaign_id_for,
    check_campaign_choice,
    check_trigger_event,
    non_negative_seconds,
    positive_seconds,
    rendered_id,
    rendered_optional_id,
    status_rule_unless_template,
    validate_id_unless_template,
)

if TYPE_CHECKING:
    import logging

    from airflow.sdk import Context

    from airflow_provider_kore.hooks.kore import KoreHook

#: ``on_kill`` gives the stop this long in all (Airflow allows a trigger's on_kill 30 s).
STOP_ON_KILL_BUDGET = 25.0


def _timestamp(value: object) -> datetime | None:
    """An aware datetime from Kore's ISO 8601 text (``2025-12-08T05:32:10.977Z``); None if unreadable."""
    if not isinstance(value, str) or not value.strip():
        return None
    import pendulum

    try:
        parsed = pendulum.parse(value.strip())
    except (ValueError, TypeError, pendulum.parsing.exceptions.ParserError):
        return None
    return parsed if isinstance(parsed, datetime) else None


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
    deadline: float | None = None,
    priority: bool = False,
) -> tuple[dict[str, Any], bool]:
    """Stop a campaign; a campaign that has already ended counts as stopped.

    Returns Kore's answer and whether this call stopped it. When Kore refuses the stop with a
    non-transient error other than an auth error, the status is read: a terminal status
    (``Stopped``, ``Completed``...) is logged and returned; otherwise the refusal is raised.
    """
    try:
        answer = hook.stop_campaign(
            campaign_id, campaign_type=campaign_type, stream_id=stream_id, deadline=deadline, priority=priority
        )
        return answer, True
    except KoreApiError as exc:
        if exc.transient or isinstance(exc, KoreAuthError):
            raise
        try:
            status = str(hook.get_campaign_status(campaign_id, stream_id=stream_id, deadline=deadline).get("status"))
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
        """The ``KoreHook`` for ``kore_conn_id`` (created on first use, in the worker).

        A call waiting on Kore (its rate limit, an outage) gives up at the task's
        ``execution_timeout`` when set, else after :data:`~airflow_provider_kore.pacing.RATE_LIMIT_PATIENCE`.
        """
        from airflow_provider_kore.hooks.kore import KoreHook

        limit = self.execution_timeout
        deadline = None if limit is None else time.time() + limit.total_seconds()
        return KoreHook(kore_conn_id=self.kore_conn_id, deadline=deadline)

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

    :param campaign_id: The campaign to start (templated), e.g. ``cd-469cba4-...``. Or:
    :param campaign_name: The campaign's exact name (templated), looked up when the task runs
        (among ``campaign_type`` campaigns); the XCom value carries the id.
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

    template_fields: Sequence[str] = (
        "campaign_id",
        "campaign_name",
        "stream_id",
        "target_statuses",
        "failure_statuses",
    )

    def __init__(
        self,
        *,
        campaign_id: str | None = None,
        campaign_name: str | None = None,
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
        self.campaign_name = campaign_name
        # Refuse what can be refused at DAG-parse time; templates are checked again after rendering.
        check_campaign_choice(campaign_id, campaign_name, campaign_type)
        validate_id_unless_template("stream_id", stream_id, optional=True)
        status_rule_unless_template(target_statuses, failure_statuses)
        #: (campaign_id, stream_id) once this process has sent a start, for on_kill.
        self._started_here: tuple[str, str | None] | None = None

    def execute(self, context: Context) -> dict[str, Any]:
        """Start the campaign (unless a retry finds it already started); wait if asked."""
        stream_id = rendered_optional_id("stream_id", self.stream_id)
        campaign_id = campaign_id_for(
            self.hook, self.campaign_id, self.campaign_name, self.campaign_type, stream_id, self.log
        )
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
        """On a retry: the result to return if an earlier try's start took effect, else None.

        The evidence, since the earlier try's answer may have been lost (the hook never re-sends
        a start whose outcome is unknown):

        * ``Ready``: nothing ran; start it.
        * any other status that is not terminal (``Active``, ``Scheduled``, ``Paused``,
          ``Preparing``, or one this provider does not know): a start took effect; do not start.
        * a terminal status (``Completed``, ``Stopped``...): the campaign ran since this DAG run
          began if Kore's campaign list says its last execution was updated
          (``campaignInstanceUpdatedAt``) after the run's start. ``updatedAt`` is not evidence:
          Kore documents it as the definition's last update, not the last run.
        """
        status = str(self.hook.get_campaign_status(campaign_id, stream_id=stream_id).get("status") or "")
        reason = None
        if status.lower() == "ready":
            pass
        elif not is_terminal(status):
            reason = f"Campaign is {status}: an earlier try's start took effect; not started again"
        else:
            ran_at = self._last_execution(campaign_id, stream_id)
            run_start = getattr(context.get("dag_run"), "start_date", None)
            if isinstance(run_start, datetime) and run_start.tzinfo is None:
                run_start = run_start.replace(tzinfo=timezone.utc)  # Airflow keeps times in UTC
            if ran_at is not None and isinstance(run_start, datetime) and ran_at >= run_start:
                reason = f"Campaign is {status} after an execution at {ran_at.isoformat()}, since this DAG run began"
        if reason is None:
            self.log.info("Try %d: Kore.ai campaign %s is %s: starting it", try_number, campaign_id, status)
            return None
        self.log.info("Try %d: Kore.ai campaign %s: %s", try_number, campaign_id, reason)
        answer = {"status": status, "message": reason}
        return self._result(campaign_id, self.campaign_type, stream_id, answer, started=False)

    def _last_execution(self, campaign_id: str, stream_id: str | None) -> datetime | None:
        """When Kore last updated the campaign's execution (its list row), or None if it does not say."""
        for row in self.hook.list_campaigns(self.campaign_type, stream_id=stream_id):
            if row.get("id") == campaign_id:
                return _timestamp(row.get("campaignInstanceUpdatedAt"))
        return None

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
            log=self.log,
        )
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while True:
            verdict, data = watch.check(self.hook, deadline=time.time() + self.poll_interval + POKE_GRACE)
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
        named = start_result.get("campaign_id") if isinstance(start_result, Mapping) else None
        campaign_id = rendered_id("campaign_id", self.campaign_id if self.campaign_id is not None else named)
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
                self.hook,
                campaign_id,
                campaign_type=self.campaign_type,
                stream_id=stream_id,
                log=self.log,
                deadline=time.time() + STOP_ON_KILL_BUDGET,
                priority=True,
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

    def __init__(self, *, campaign_id: str | None = None, **kwargs: Any) -> None:
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

    :param campaign_id: The campaign to stop (templated). Or:
    :param campaign_name: The campaign's exact name (templated), looked up when the task runs.
    :param campaign_type: ``"voice"`` (default) or ``"sms"``.
    :param stream_id: The bot (stream) id (templated); None uses the connection's ``stream_id`` extra.
    :param kore_conn_id: The ``kore`` connection. Default ``kore_default``.
    """

    template_fields: Sequence[str] = ("campaign_id", "campaign_name", "stream_id")

    def __init__(
        self,
        *,
        campaign_id: str | None = None,
        campaign_name: str | None = None,
        campaign_type: str = "voice",
        stream_id: str | None = None,
        kore_conn_id: str = ids.DEFAULT_CONN_ID,
        **kwargs: Any,
    ) -> None:
        super().__init__(kore_conn_id=kore_conn_id, **kwargs)
        self.campaign_id = campaign_id
        self.campaign_type = ids.validate_campaign_type(campaign_type)
        self.stream_id = stream_id
        self.campaign_name = campaign_name
        check_campaign_choice(campaign_id, campaign_name, campaign_type)
        validate_id_unless_template("stream_id", stream_id, optional=True)

    def execute(self, context: Context) -> dict[str, Any]:
        """Stop the campaign; an already-ended campaign is not an error."""
        stream_id = rendered_optional_id("stream_id", self.stream_id)
        campaign_id = campaign_id_for(
            self.hook, self.campaign_id, self.campaign_name, self.campaign_type, stream_id, self.log
        )
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

    def __init__(self, *, campaign_id: str | None = None, **kwargs: Any) -> None:
        if "campaign_type" in kwargs:
            raise TypeError("KoreStopVoiceCampaignOperator always stops a voice campaign; do not pass campaign_type")
        super().__init__(campaign_id=campaign_id, campaign_type="voice", **kwargs)


__all__ = [
    "KoreStartCampaignOperator",
    "KoreStartSmsCampaignOperator",
    "KoreStopCampaignOperator",
    "KoreStopVoiceCampaignOperator",
    "stop_campaign_quietly",
]
