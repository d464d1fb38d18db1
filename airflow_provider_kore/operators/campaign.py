"""Operators that start and stop Kore.ai campaigns through :class:`~airflow_provider_kore.hooks.kore.KoreHook`.

The hook and the trigger are imported only when a task runs: DAG files stay cheap to parse.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from airflow_provider_kore import ids
from airflow_provider_kore._compat import default_deferrable
from airflow_provider_kore.exceptions import KoreCampaignTimeoutError
from airflow_provider_kore.operators._base import KoreCampaignOperatorBase, plain, stop_campaign_quietly
from airflow_provider_kore.status import DEFAULT_TARGET_STATUSES, StatusRule, is_terminal
from airflow_provider_kore.waiting import (
    POKE_GRACE,
    CampaignStatusWatch,
    check_trigger_event,
    defer_wait,
    non_negative_seconds,
    positive_seconds,
    rendered_optional_id,
    status_rule_unless_template,
)

if TYPE_CHECKING:
    from airflow.sdk import Context


#: ``on_kill`` gives the stop this long in all (Airflow allows a trigger's on_kill 30 s).
STOP_ON_KILL_BUDGET = 25.0
_TIMED_OUT = "The wait on Kore.ai campaign %s timed out; stopping it (stop_on_kill)"


class KoreStartCampaignOperator(KoreCampaignOperatorBase):
    """Start (play) a Kore.ai campaign, and optionally wait until it completes.

    Safe under Airflow retries: a retry reads the campaign first and does not start it again if
    an earlier try's start took effect (see :meth:`_started_earlier`).

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
    :param stop_on_kill: Stop the campaign when the task is killed after starting it (see
        :meth:`on_kill`) or when its wait times out, so it does not run on unobserved.
    """

    template_fields: Sequence[str] = (*KoreCampaignOperatorBase.template_fields, "target_statuses", "failure_statuses")

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
        super().__init__(
            campaign_id=campaign_id,
            campaign_name=campaign_name,
            campaign_type=campaign_type,
            stream_id=stream_id,
            kore_conn_id=kore_conn_id,
            **kwargs,
        )
        self.wait_for_completion = bool(wait_for_completion)
        self.target_statuses = target_statuses
        self.failure_statuses = failure_statuses
        self.poll_interval = positive_seconds("poll_interval", poll_interval)
        self.timeout = non_negative_seconds("timeout", timeout)
        self.deferrable = default_deferrable() if deferrable is None else bool(deferrable)
        self.stop_on_kill = bool(stop_on_kill)
        status_rule_unless_template(target_statuses, failure_statuses)
        #: (campaign_id, stream_id) once this process has sent a start, for on_kill.
        self._started_here: tuple[str, str | None] | None = None

    def execute(self, context: Context) -> dict[str, Any]:
        """Start the campaign (unless a retry finds it already started); wait if asked."""
        campaign_id, stream_id = self._campaign()
        rule = StatusRule.build(self.target_statuses, self.failure_statuses)
        result = self._start(context, campaign_id, stream_id)
        if not self.wait_for_completion:
            return result
        if self.deferrable:
            defer_wait(
                self,
                kore_conn_id=self.kore_conn_id,
                campaign_id=campaign_id,
                rule=rule,
                stream_id=stream_id,
                poll_interval=self.poll_interval,
                timeout=self.timeout,
                kwargs={"start_result": result},
                stop_on_kill=self.stop_on_kill,
                campaign_type=self.campaign_type,
            )
        return self._wait(campaign_id, stream_id, rule, result)

    def _start(self, context: Context, campaign_id: str, stream_id: str | None) -> dict[str, Any]:
        try_number = getattr(context.get("ti"), "try_number", None) or 1
        if try_number > 1:
            earlier = self._started_earlier(context, campaign_id, stream_id, try_number)
            if earlier is not None:
                return earlier
        answer = self.hook.start_campaign(campaign_id, campaign_type=self.campaign_type, stream_id=stream_id)
        self._started_here = (campaign_id, stream_id)
        self._log_answer("Started", campaign_id, answer)
        return self._result(campaign_id, stream_id, answer, started=True)

    def _started_earlier(
        self, context: Context, campaign_id: str, stream_id: str | None, try_number: int
    ) -> dict[str, Any] | None:
        """On a retry: the result to return if an earlier try's start took effect, else None.

        The earlier answer may be lost, so the campaign is the evidence: ``Ready``: nothing ran;
        another non-terminal status: a start took effect; a terminal one: only if its last
        execution (``campaignInstanceUpdatedAt``; ``updatedAt`` is the definition's) is newer
        than this DAG run.
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
        return self._result(campaign_id, stream_id, {"status": status, "message": reason}, started=False)

    def _last_execution(self, campaign_id: str, stream_id: str | None) -> datetime | None:
        """When Kore last updated the campaign's execution (its list row), or None if it does not say."""
        import pendulum

        for row in self.hook.list_campaigns(self.campaign_type, stream_id=stream_id):
            if row.get("id") == campaign_id:
                text = row.get("campaignInstanceUpdatedAt")  # ISO 8601: 2025-12-08T05:32:10.977Z
                try:
                    parsed = pendulum.parse(text.strip()) if isinstance(text, str) else None
                except (ValueError, TypeError):  # pendulum's ParserError is a ValueError
                    return None
                return parsed if isinstance(parsed, datetime) else None
        return None

    def _wait(
        self, campaign_id: str, stream_id: str | None, rule: StatusRule, result: dict[str, Any]
    ) -> dict[str, Any]:
        watch = CampaignStatusWatch(campaign_id, rule, stream_id=stream_id, log=self.log)
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while True:
            verdict, data = watch.check(self.hook, deadline=time.time() + self.poll_interval + POKE_GRACE)
            if verdict == "success" and data is not None:
                return {**result, "start_status": result.get("status"), "status": plain(data.get("status"))}
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                last = None if data is None else data.get("status")
                self._stop_if_asked(campaign_id, stream_id, _TIMED_OUT)
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
        """Resume after the trigger: the start result with the final status; raise on anything else."""
        named = start_result.get("campaign_id") if isinstance(start_result, Mapping) else None
        campaign_id = ids.validate_id("campaign_id", self.campaign_id if self.campaign_id is not None else named)
        stream_id = rendered_optional_id("stream_id", self.stream_id)
        rule = StatusRule.build(self.target_statuses, self.failure_statuses)
        try:
            payload = check_trigger_event(event, campaign_id, rule)
        except KoreCampaignTimeoutError:
            self._stop_if_asked(campaign_id, stream_id, _TIMED_OUT)
            raise
        if not isinstance(start_result, Mapping):
            start_result = self._result(campaign_id, stream_id, {})
        final = plain(payload.get("campaign_status"))
        return {**start_result, "start_status": start_result.get("status"), "status": final}

    def _stop_if_asked(self, campaign_id: str, stream_id: str | None, why: str) -> None:
        # A wait that gives up or a killed task must not leave the campaign running unobserved
        # (dbt Cloud's deferred timeout leaves its remote job running) when the user said so.
        if not self.stop_on_kill:
            return
        self.log.warning(why, campaign_id)
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
        """Stop the campaign if ``stop_on_kill`` is set and this process started it (a deferred task
        is the trigger's to stop, on Airflow 3.3+)."""
        if self._started_here is not None:
            self._stop_if_asked(*self._started_here, "Task killed; stopping Kore.ai campaign %s (stop_on_kill)")


class KoreStartSmsCampaignOperator(KoreStartCampaignOperator):
    """:class:`KoreStartCampaignOperator` for SMS campaigns: every argument but ``campaign_type``.

    :param campaign_id: The SMS campaign to start (templated).
    """

    def __init__(self, *, campaign_id: str | None = None, **kwargs: Any) -> None:
        if "campaign_type" in kwargs:
            raise TypeError("KoreStartSmsCampaignOperator always starts an sms campaign; do not pass campaign_type")
        super().__init__(campaign_id=campaign_id, campaign_type="sms", **kwargs)


class KoreStopCampaignOperator(KoreCampaignOperatorBase):
    """Stop a Kore.ai campaign; stopping one that has already ended succeeds (see :func:`stop_campaign_quietly`).

    The XCom value is ``{"campaign_id", "campaign_type", "stream_id", "status", "message",
    "updated_at", "stopped"}`` plus ``campaign_instance_id`` when Kore returns one; ``stopped``
    is False when the campaign had already ended.

    :param campaign_id: The campaign to stop (templated). Or:
    :param campaign_name: The campaign's exact name (templated), looked up when the task runs.
    :param campaign_type: ``"voice"`` (default) or ``"sms"``.
    :param stream_id: The bot (stream) id (templated); None uses the connection's ``stream_id`` extra.
    :param kore_conn_id: The ``kore`` connection. Default ``kore_default``.
    """

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
        super().__init__(
            campaign_id=campaign_id,
            campaign_name=campaign_name,
            campaign_type=campaign_type,
            stream_id=stream_id,
            kore_conn_id=kore_conn_id,
            **kwargs,
        )

    def execute(self, context: Context) -> dict[str, Any]:
        """Stop the campaign; an already-ended campaign is not an error."""
        campaign_id, stream_id = self._campaign()
        answer, stopped = stop_campaign_quietly(
            self.hook, campaign_id, campaign_type=self.campaign_type, stream_id=stream_id, log=self.log
        )
        if stopped:
            self._log_answer("Stopped", campaign_id, answer)
        return self._result(campaign_id, stream_id, answer, stopped=stopped)


class KoreStopVoiceCampaignOperator(KoreStopCampaignOperator):
    """:class:`KoreStopCampaignOperator` for voice campaigns: every argument but ``campaign_type``.

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
