"""What the start and stop operators share: the campaign choice, the lazy hook, the XCom shape,
and a stop that treats an already-ended campaign as stopped. Cheap to import (DAG-parse time).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow_provider_kore import ids
from airflow_provider_kore._compat import BaseOperator
from airflow_provider_kore.exceptions import KoreApiError, KoreAuthError, KoreError
from airflow_provider_kore.status import is_terminal
from airflow_provider_kore.waiting import (
    campaign_id_for,
    check_campaign_choice,
    rendered_optional_id,
    validate_id_unless_template,
)

if TYPE_CHECKING:
    import logging

    from airflow_provider_kore.hooks.kore import KoreHook


def plain(value: object) -> str | int | float | bool | None:
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
    """Stop a campaign; one that has already ended counts as stopped.

    Returns Kore's answer and whether this call stopped it. When Kore refuses the stop with an
    error that is neither transient nor an auth error, the status is read: a terminal one is
    logged and returned, anything else re-raises the refusal.
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
        why = f"HTTP {exc.http_status}: {exc.kore_message or 'no error text'}"
        log.info("Kore.ai campaign %s is already %s: nothing to stop (the stop answered %s)", campaign_id, status, why)
        return {"status": status, "message": f"Campaign already {status}; nothing to stop", "updatedAt": None}, False


class KoreCampaignOperatorBase(BaseOperator):
    """What the start and stop operators share: the campaign choice, the lazy hook, the XCom shape."""

    template_fields: Sequence[str] = ("campaign_id", "campaign_name", "stream_id")
    ui_color = "#dcebf7"

    def __init__(
        self,
        *,
        campaign_id: str | None = None,
        campaign_name: str | None = None,
        campaign_type: str = "sms",
        stream_id: str | None = None,
        kore_conn_id: str = ids.DEFAULT_CONN_ID,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.campaign_id = campaign_id
        self.campaign_name = campaign_name
        self.campaign_type = ids.validate_campaign_type(campaign_type)
        self.stream_id = stream_id
        self.kore_conn_id = kore_conn_id
        # Refuse what can be refused at DAG-parse time; templates are checked again after rendering.
        check_campaign_choice(campaign_id, campaign_name, campaign_type)
        validate_id_unless_template("stream_id", stream_id, optional=True)

    @cached_property
    def hook(self) -> KoreHook:
        """The ``KoreHook`` (built in the worker); its waits on Kore end by ``execution_timeout``, if set."""
        from airflow_provider_kore.hooks.kore import KoreHook

        limit = self.execution_timeout
        deadline = None if limit is None else time.time() + limit.total_seconds()
        return KoreHook(kore_conn_id=self.kore_conn_id, deadline=deadline)

    def _campaign(self) -> tuple[str, str | None]:
        """The rendered ``(campaign_id, stream_id)``; a ``campaign_name`` is looked up."""
        stream_id = rendered_optional_id("stream_id", self.stream_id)
        found = campaign_id_for(
            self.hook, self.campaign_id, self.campaign_name, self.campaign_type, stream_id, self.log
        )
        return found, stream_id

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
