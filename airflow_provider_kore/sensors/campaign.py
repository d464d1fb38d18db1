"""``KoreCampaignStatusSensor``; the hook and the trigger are imported only when a task runs (cheap DAG parsing)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import PokeReturnValue

from airflow_provider_kore import ids, waiting
from airflow_provider_kore._compat import (
    AirflowFailException,
    AirflowSensorTimeout,
    AirflowSkipException,
    BaseSensorOperator,
    default_deferrable,
)
from airflow_provider_kore.operators._base import KoreOperatorBase
from airflow_provider_kore.status import DEFAULT_TARGET_STATUSES, StatusRule

if TYPE_CHECKING:
    from airflow.sdk import Context


class KoreCampaignStatusSensor(KoreOperatorBase, BaseSensorOperator):
    """Wait until a Kore.ai campaign reaches one of ``target_statuses``.

    The status data ``{"id", "status", "name"}`` is the XCom value. A failure status, or a terminal
    non-target one, fails the task without retries; any other status, or a transient API failure, is
    waited on. A poke holds the worker at most ``poke_interval`` + ``waiting.POKE_GRACE`` seconds.

    :param campaign_id: The campaign to watch (templated). Or:
    :param campaign_name: The campaign's exact name (templated), looked up when the task runs; with
    :param campaign_type: ``"sms"`` or ``"voice"`` (only with ``campaign_name``).
    :param target_statuses: Status name(s) that end the wait well (templated, case-insensitive). Default: Completed.
    :param failure_statuses: Status name(s) that fail the task (templated). None: ``("Failed",)`` unless a target.
    :param stream_id: The bot (stream) id (templated); None uses the connection's ``stream_id`` extra.
    :param kore_conn_id: The ``kore`` connection. Default ``kore_default``.
    :param deferrable: Wait in the triggerer instead of a worker slot. None: ``[operators] default_deferrable``.
    :param max_consecutive_errors: None (default): a transient failure (429, 5xx, network) is "not yet"
        while ``timeout`` allows. A number: fail at one more failed read in a row (the count restarts
        at each ``reschedule``; deferred, the triggerer counts).

    ``BaseSensorOperator``'s arguments apply: ``poke_interval`` (positive), ``timeout`` (a timeout
    fails without retry, or skips with ``soft_fail=True``), ``mode``...
    """

    template_fields = ("campaign_id", "campaign_name", "stream_id", "target_statuses", "failure_statuses")
    ui_color = "#e3f1e8"
    # Each poke passes its own deadline to its read (which wins over the hook's); only a campaign_name lookup
    # would feel a hook deadline, and the sensor's hook has never had one.
    _hook_until_execution_timeout = False

    def __init__(
        self,
        *,
        campaign_id: str | None = None,
        campaign_name: str | None = None,
        campaign_type: str | None = None,
        target_statuses: str | Iterable[str] = DEFAULT_TARGET_STATUSES,
        failure_statuses: str | Iterable[str] | None = None,
        deferrable: bool | None = None,
        max_consecutive_errors: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.campaign_id = campaign_id
        self.campaign_name = campaign_name
        self.campaign_type = campaign_type
        self.target_statuses = target_statuses
        self.failure_statuses = failure_statuses
        self.deferrable = default_deferrable() if deferrable is None else bool(deferrable)
        self.max_consecutive_errors = waiting.max_errors(max_consecutive_errors)
        waiting.positive_seconds("poke_interval", self.poke_interval)
        waiting.check_campaign_choice(campaign_id, campaign_name, campaign_type)
        waiting.status_rule_unless_template(target_statuses, failure_statuses)

    @cached_property
    def _watch(self) -> waiting.CampaignStatusWatch:
        # Built on the first poke, after rendering, so the rendered values are what is validated.
        stream_id = waiting.rendered_optional_id("stream_id", self.stream_id)
        return waiting.CampaignStatusWatch(
            waiting.campaign_id_for(
                self.hook, self.campaign_id, self.campaign_name, self.campaign_type, stream_id, self.log
            ),
            StatusRule.build(self.target_statuses, self.failure_statuses),
            stream_id=stream_id,
            max_consecutive_errors=self.max_consecutive_errors,
            log=self.log,
        )

    def poke(self, context: Context) -> bool | PokeReturnValue:
        """Read the status once: done on a target, raise on a failure, else keep waiting."""
        # A poke returns "not yet" rather than wait out Kore's rate limit or an outage in the worker.
        verdict, data = self._watch.check(self.hook, deadline=time.time() + self.poke_interval + waiting.POKE_GRACE)
        return PokeReturnValue(is_done=True, xcom_value=data) if verdict == "success" else False

    def execute(self, context: Context) -> Any:
        """Poke in the worker; if deferrable and not done at the first poke, defer to the trigger."""
        if not self.deferrable:
            return super().execute(context)
        try:
            done = self.poke(context)
        except (AirflowFailException, AirflowSensorTimeout) as exc:  # as BaseSensorOperator.execute treats them
            if self.soft_fail or getattr(self, "never_fail", False):
                raise AirflowSkipException(f"Skipping (soft_fail): {exc}") from exc
            raise
        if isinstance(done, PokeReturnValue) and done:
            return done.xcom_value
        watch = self._watch
        waiting.defer_wait(
            self,
            kore_conn_id=self.kore_conn_id,
            campaign_id=watch.campaign_id,
            rule=watch.rule,
            stream_id=watch.stream_id,
            poll_interval=float(self.poke_interval),
            timeout=float(self.timeout),
            kwargs={"campaign_id": watch.campaign_id},  # a campaign_name is not looked up again
            max_consecutive_errors=self.max_consecutive_errors,
        )

    def execute_complete(self, context: Context, event: Any = None, campaign_id: str | None = None) -> dict[str, Any]:
        """Resume after the trigger: the status data on success; raise on anything else (fail closed)."""
        campaign_id = ids.validate_id("campaign_id", campaign_id or self.campaign_id)
        rule = StatusRule.build(self.target_statuses, self.failure_statuses)
        payload = waiting.check_trigger_event(event, campaign_id, rule)
        status = payload.get("campaign_status")
        self.log.info(
            "Kore.ai campaign %s is %s (%s polls in the triggerer)", campaign_id, status, payload.get("polls")
        )
        data = payload.get("data")
        return dict(data) if isinstance(data, Mapping) else {"id": campaign_id, "status": status}


# What a DAG file gets from `import *`: the classes, not this module's own imports.
__all__ = ["KoreCampaignStatusSensor"]
