"""What every Kore operator (and the sensor) shares: the connection, the lazy hook, the stream, the campaign
choice and file URIs. Cheap to import (DAG-parse time)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow_provider_kore import ids, waiting
from airflow_provider_kore._compat import BaseOperator
from airflow_provider_kore.exceptions import KoreConfigurationError

if TYPE_CHECKING:
    from airflow_provider_kore.hooks.kore import KoreHook

_FORMAT_BY_SUFFIX = {"csv": "csv", "jsonl": "jsonl", "ndjson": "jsonl"}


def file_uri(name: str, value: object) -> str:
    """A non-empty string (what ``ObjectStoragePath`` makes of it is seen when the task runs)."""
    if not isinstance(value, str) or not value.strip():
        raise KoreConfigurationError(f"{name} must be a file URI; got {value!r}")
    return value


def file_format(name: str, uri: str, given: str | None, fallback: str | None = None) -> str:
    """``"csv"`` or ``"jsonl"``: ``given`` (the argument ``name``), else from the extension, else ``fallback``."""
    if given is not None:
        if given not in ("csv", "jsonl"):
            raise KoreConfigurationError(f"{name} must be one of csv, jsonl; got {given!r}")
        return given
    base = uri.rsplit("/", 1)[-1].lower()
    found = _FORMAT_BY_SUFFIX.get(base.rsplit(".", 1)[-1] if "." in base else "", fallback)
    if found is None:
        raise KoreConfigurationError(f"cannot tell the format of {uri!r} from its extension: pass {name}=")
    return found


class KoreOperatorBase(BaseOperator):
    """The ``kore`` connection, its lazy hook and the bot (stream) id (the sensor's too)."""

    template_fields: Sequence[str] = ("stream_id",)
    ui_color = "#dcebf7"
    #: Whether the hook's waits on Kore end by ``execution_timeout`` (not the sensor's: each poke bounds its own).
    _hook_until_execution_timeout = True

    def __init__(self, *, stream_id: str | None = None, kore_conn_id: str = ids.DEFAULT_CONN_ID, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stream_id = stream_id
        self.kore_conn_id = kore_conn_id
        # Every operator refuses what it can at DAG-parse time; templates are checked again after rendering.
        waiting.validate_id_unless_template("stream_id", stream_id, optional=True)

    @cached_property
    def hook(self) -> KoreHook:
        """The ``KoreHook`` (built in the worker); its waits on Kore end by ``execution_timeout``, if set."""
        from airflow_provider_kore.hooks.kore import KoreHook

        limit = self.execution_timeout if self._hook_until_execution_timeout else None
        deadline = None if limit is None else time.time() + limit.total_seconds()
        return KoreHook(kore_conn_id=self.kore_conn_id, deadline=deadline)


class KoreCampaignOperatorBase(KoreOperatorBase):
    """A Kore operator on one campaign, by id or by name (with its type)."""

    template_fields: Sequence[str] = ("campaign_id", "campaign_name", "stream_id")

    def __init__(
        self,
        *,
        campaign_id: str | None = None,
        campaign_name: str | None = None,
        campaign_type: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        waiting.check_campaign_choice(campaign_id, campaign_name, campaign_type)
        self.campaign_id = campaign_id
        self.campaign_name = campaign_name
        self.campaign_type = None if campaign_type is None else ids.validate_campaign_type(campaign_type)

    def _campaign(self) -> tuple[str, str | None]:
        """The rendered ``(campaign_id, stream_id)``; a ``campaign_name`` is looked up."""
        stream_id = waiting.rendered_optional_id("stream_id", self.stream_id)
        found = waiting.campaign_id_for(
            self.hook, self.campaign_id, self.campaign_name, self.campaign_type, stream_id, self.log
        )
        return found, stream_id
