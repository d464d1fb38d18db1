"""Operators that start and stop Kore.ai campaigns (the hook and trigger are imported when a task runs)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow_provider_kore import ids, waiting
from airflow_provider_kore._compat import default_deferrable
from airflow_provider_kore.exceptions import KoreApiError, KoreAuthError, KoreCampaignTimeoutError, KoreError
from airflow_provider_kore.operators._base import KoreCampaignOperatorBase
from airflow_provider_kore.status import DEFAULT_TARGET_STATUSES, StatusRule, is_terminal

if TYPE_CHECKING:
    from airflow.sdk import Context

#: ``on_kill`` gives the stop this long in all (Airflow allows a trigger's on_kill 30 s).
STOP_ON_KILL_BUDGET = 25.0
_TIMED_OUT = "The wait on Kore.ai campaign %s timed out; stopping it (stop_on_kill)"


def plain(value: object) -> str | int | float | bool | None:
    """A JSON-safe scalar for XCom: Kore's answers are strings, but do not trust their shape."""
    return value if value is None or isinstance(value, (str, int, float, bool)) else str(value)


class _CampaignCall(KoreCampaignOperatorBase):
    """What start and stop share: a campaign type is always known, the XCom shape, the quiet stop."""

    campaign_type: str

    def _result(
        self, campaign_id: str, stream_id: str | None, answer: Mapping[str, Any], **extra: Any
    ) -> dict[str, Any]:
        """The XCom value: ids and Kore's answer, nothing secret."""
        if stream_id is None:
            with contextlib.suppress(KoreError):  # the connection's stream, if it can be read
                stream_id = self.hook.config.stream_id
        result: dict[str, Any] = {
            "campaign_id": campaign_id,
            "campaign_type": self.campaign_type,
            "stream_id": stream_id,
            "status": plain(answer.get("status")),
            "message": plain(answer.get("message")),
            "updated_at": plain(answer.get("updatedAt")),
        }
        if answer.get("campaignInstanceId"):
            result["campaign_instance_id"] = plain(answer["campaignInstanceId"])
        return {**result, **extra}

    def _log_answer(self, verb: str, campaign_id: str, answer: Mapping[str, Any]) -> None:
        status, message = answer.get("status"), answer.get("message")
        self.log.info("%s Kore.ai %s campaign %s: %s (%s)", verb, self.campaign_type, campaign_id, status, message)

    def _stop_quietly(
        self, campaign_id: str, stream_id: str | None, deadline: float | None = None, priority: bool = False
    ) -> tuple[dict[str, Any], bool]:
        """Kore's answer to a stop, and whether this call stopped the campaign: a refusal (neither
        transient nor auth) of a campaign whose status is terminal means it had already ended."""
        try:
            answer = self.hook.stop_campaign(
                campaign_id, campaign_type=self.campaign_type, stream_id=stream_id, deadline=deadline, priority=priority
            )
            return answer, True
        except KoreApiError as exc:
            if exc.transient or isinstance(exc, KoreAuthError):
                raise
            refusal = exc
        try:
            read = self.hook.get_campaign_status(campaign_id, stream_id=stream_id, deadline=deadline)
        except KoreError:
            raise refusal from None
        status = str(read.get("status"))
        if not is_terminal(status):
            raise refusal
        why = f"HTTP {refusal.http_status}: {refusal.kore_message or 'no error text'}"
        self.log.info(
            "Kore.ai campaign %s is already %s: nothing to stop (the stop answered %s)", campaign_id, status, why
        )
        return {"status": status, "message": f"Campaign already {status}; nothing to stop", "updatedAt": None}, False


class KoreStartCampaignOperator(_CampaignCall):
    """Start (play) a Kore.ai campaign, at most once per DAG run (see :meth:`_started_earlier`); optionally wait.

    XCom: ``{"campaign_id", "campaign_type", "stream_id", "status", "message", "updated_at", "started"}``
    (``started`` False: a retry found it started), ``campaign_instance_id`` when Kore sends one; with
    ``wait_for_completion``, ``status`` is the final status and ``start_status`` what the start answered.

    :param campaign_id: The campaign to start (templated), e.g. ``cd-469cba4-...``. Or:
    :param campaign_name: The campaign's exact name (templated), looked up when the task runs.
    :param campaign_type: ``"sms"`` (default) or ``"voice"``.
    :param stream_id: The bot (stream) id (templated); None uses the connection's ``stream_id`` extra.
    :param kore_conn_id: The ``kore`` connection. Default ``kore_default``.
    :param wait_for_completion: After starting, wait until the campaign reaches a target status.
    :param target_statuses: Status name(s) that end the wait well (templated). Default ``("Completed",)``.
    :param failure_statuses: Status name(s) that fail the wait (templated). None: ``("Failed",)``.
    :param poll_interval: Seconds between status reads while waiting. Default 30.
    :param timeout: Seconds to wait at most (None: no limit); fails without retry (``KoreCampaignTimeoutError``).
    :param deferrable: Wait in the triggerer. None (default) follows ``[operators] default_deferrable``.
    :param stop_on_kill: Stop the campaign when the task is killed after starting it, or its wait times out.
    """

    template_fields: Sequence[str] = (*KoreCampaignOperatorBase.template_fields, "target_statuses", "failure_statuses")

    def __init__(
        self,
        *,
        campaign_type: str = "sms",
        wait_for_completion: bool = False,
        target_statuses: str | Iterable[str] = DEFAULT_TARGET_STATUSES,
        failure_statuses: str | Iterable[str] | None = None,
        poll_interval: float | timedelta = 30,
        timeout: float | timedelta | None = None,
        deferrable: bool | None = None,
        stop_on_kill: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(campaign_type=campaign_type, **kwargs)
        self.wait_for_completion = bool(wait_for_completion)
        self.target_statuses = target_statuses
        self.failure_statuses = failure_statuses
        self.poll_interval = waiting.positive_seconds("poll_interval", poll_interval)
        self.timeout = waiting.non_negative_seconds("timeout", timeout)
        self.deferrable = default_deferrable() if deferrable is None else bool(deferrable)
        self.stop_on_kill = bool(stop_on_kill)
        waiting.status_rule_unless_template(target_statuses, failure_statuses)
        #: (campaign_id, stream_id) once this process has sent a start, for on_kill.
        self._started_here: tuple[str, str | None] | None = None

    def execute(self, context: Context) -> dict[str, Any]:
        """Start the campaign (unless a retry finds it already started); wait if asked."""
        campaign_id, stream_id = self._campaign()
        rule = StatusRule.build(self.target_statuses, self.failure_statuses)
        result = self._started_earlier(context, campaign_id, stream_id)
        if result is None:
            answer = self.hook.start_campaign(campaign_id, campaign_type=self.campaign_type, stream_id=stream_id)
            self._started_here = (campaign_id, stream_id)
            self._log_answer("Started", campaign_id, answer)
            result = self._result(campaign_id, stream_id, answer, started=True)
        if not self.wait_for_completion:
            return result
        if self.deferrable:
            waiting.defer_wait(
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

    def _started_earlier(self, context: Context, campaign_id: str, stream_id: str | None) -> dict[str, Any] | None:
        """On a retry, the result if an earlier try's start took effect (its answer may be lost), else None:
        not ``Ready`` nor terminal means it did; terminal, only if the campaign list row's last execution
        (``campaignInstanceUpdatedAt``; ``updatedAt`` is the definition's) is newer than this DAG run."""
        try_number = getattr(context.get("ti"), "try_number", None) or 1
        if try_number <= 1:
            return None
        status = str(self.hook.get_campaign_status(campaign_id, stream_id=stream_id).get("status") or "")
        reason = None
        if is_terminal(status):
            import pendulum

            rows = self.hook.list_campaigns(self.campaign_type, stream_id=stream_id)
            text = next((row.get("campaignInstanceUpdatedAt") for row in rows if row.get("id") == campaign_id), None)
            try:  # ISO 8601: 2025-12-08T05:32:10.977Z
                ran_at = pendulum.parse(text.strip()) if isinstance(text, str) else None
            except (ValueError, TypeError):  # pendulum's ParserError is a ValueError
                ran_at = None
            started = getattr(context.get("dag_run"), "start_date", None)
            run_start = pendulum.instance(started) if isinstance(started, datetime) else None  # naive is UTC
            if isinstance(ran_at, datetime) and run_start is not None and ran_at >= run_start:
                reason = f"Campaign is {status} after an execution at {ran_at.isoformat()}, since this DAG run began"
        elif status.lower() != "ready":
            reason = f"Campaign is {status}: an earlier try's start took effect; not started again"
        if reason is None:
            self.log.info("Try %d: Kore.ai campaign %s is %s: starting it", try_number, campaign_id, status)
            return None
        self.log.info("Try %d: Kore.ai campaign %s: %s", try_number, campaign_id, reason)
        return self._result(campaign_id, stream_id, {"status": status, "message": reason}, started=False)

    def _wait(self, campaign_id: str, stream_id: str | None, rule: StatusRule, start: dict[str, Any]) -> dict[str, Any]:
        watch = waiting.CampaignStatusWatch(campaign_id, rule, stream_id=stream_id, log=self.log)
        deadline = time.monotonic() + (float("inf") if self.timeout is None else self.timeout)
        while True:
            verdict, data = watch.check(self.hook, deadline=time.time() + self.poll_interval + waiting.POKE_GRACE)
            if verdict == "success" and data is not None:
                return {**start, "start_status": start.get("status"), "status": plain(data.get("status"))}
            now = time.monotonic()
            if now >= deadline:
                last = None if data is None else data.get("status")
                self._stop_if_asked(campaign_id, stream_id, _TIMED_OUT)
                raise KoreCampaignTimeoutError(
                    f"Kore.ai campaign {campaign_id!r} did not reach {', '.join(rule.target_statuses)} "
                    f"within {self.timeout:g}s (last status {last!r})",
                    campaign_id=campaign_id,
                    status=None if last is None else str(last),
                )
            time.sleep(min(self.poll_interval, deadline - now))

    def execute_complete(
        self, context: Context, event: Any = None, start_result: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Resume after the trigger: the start result with the final status; raise on anything else."""
        named = start_result.get("campaign_id") if isinstance(start_result, Mapping) else None
        campaign_id = ids.validate_id("campaign_id", self.campaign_id if self.campaign_id is not None else named)
        stream_id = waiting.rendered_optional_id("stream_id", self.stream_id)
        rule = StatusRule.build(self.target_statuses, self.failure_statuses)
        try:
            payload = waiting.check_trigger_event(event, campaign_id, rule)
        except KoreCampaignTimeoutError:
            self._stop_if_asked(campaign_id, stream_id, _TIMED_OUT)
            raise
        if not isinstance(start_result, Mapping):
            start_result = self._result(campaign_id, stream_id, {})
        final = plain(payload.get("campaign_status"))
        return {**start_result, "start_status": start_result.get("status"), "status": final}

    def _stop_if_asked(self, campaign_id: str, stream_id: str | None, why: str) -> None:
        # A wait that gives up or a killed task must not leave the campaign running unobserved, if asked.
        if not self.stop_on_kill:
            return
        self.log.warning(why, campaign_id)
        try:
            answer, _ = self._stop_quietly(campaign_id, stream_id, time.time() + STOP_ON_KILL_BUDGET, priority=True)
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
    """:class:`KoreStartCampaignOperator` for SMS campaigns: every argument but ``campaign_type``."""

    def __init__(self, **kwargs: Any) -> None:
        if "campaign_type" in kwargs:
            raise TypeError("KoreStartSmsCampaignOperator always starts an sms campaign; do not pass campaign_type")
        super().__init__(campaign_type="sms", **kwargs)


class KoreStopCampaignOperator(_CampaignCall):
    """Stop a Kore.ai campaign; stopping one that has already ended succeeds (XCom ``stopped`` False).

    XCom: ``{"campaign_id", "campaign_type", "stream_id", "status", "message", "updated_at", "stopped"}``,
    ``campaign_instance_id`` when Kore sends one.

    :param campaign_id: The campaign to stop (templated). Or:
    :param campaign_name: The campaign's exact name (templated), looked up when the task runs.
    :param campaign_type: ``"voice"`` (default) or ``"sms"``.
    :param stream_id: The bot (stream) id (templated); None uses the connection's ``stream_id`` extra.
    :param kore_conn_id: The ``kore`` connection. Default ``kore_default``.
    """

    def __init__(self, *, campaign_type: str = "voice", **kwargs: Any) -> None:
        super().__init__(campaign_type=campaign_type, **kwargs)

    def execute(self, context: Context) -> dict[str, Any]:
        """Stop the campaign; an already-ended campaign is not an error."""
        campaign_id, stream_id = self._campaign()
        answer, stopped = self._stop_quietly(campaign_id, stream_id)
        if stopped:
            self._log_answer("Stopped", campaign_id, answer)
        return self._result(campaign_id, stream_id, answer, stopped=stopped)


class KoreStopVoiceCampaignOperator(KoreStopCampaignOperator):
    """:class:`KoreStopCampaignOperator` for voice campaigns: every argument but ``campaign_type``."""

    def __init__(self, **kwargs: Any) -> None:
        if "campaign_type" in kwargs:
            raise TypeError("KoreStopVoiceCampaignOperator always stops a voice campaign; do not pass campaign_type")
        super().__init__(campaign_type="voice", **kwargs)


# What a DAG file gets from `import *`: the classes, not this module's own imports.
__all__ = [
    "KoreStartCampaignOperator",
    "KoreStartSmsCampaignOperator",
    "KoreStopCampaignOperator",
    "KoreStopVoiceCampaignOperator",
]
