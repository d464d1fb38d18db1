"""``KoreExportCampaignResultsOperator``: every contact's outcome of a campaign, into a CSV or JSON Lines file.

The hook and ``ObjectStoragePath`` are imported when the task runs, not when the DAG is parsed.
"""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections import Counter
from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow_provider_kore import ids
from airflow_provider_kore._compat import BaseOperator
from airflow_provider_kore.operators.contacts import file_uri, given_format
from airflow_provider_kore.waiting import (
    campaign_id_for,
    check_campaign_choice,
    is_template,
    rendered_optional_id,
    validate_id_unless_template,
)

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_kore.hooks.kore import KoreHook

#: The documented fields of a contact outcome: the CSV's columns, in this order.
RESULT_FIELDS = (
    "phoneNumber",
    "uniqueId",
    "dialerOutcome",
    "numberOfAttemptsSoFar",
    "botSessionId",
    "agentDispositionCodes",
    "botOutboundStatus",
    "botOutboundStatusDetail",
)
#: The count key for an empty outcome (the dialer has not finished with the number).
EMPTY = "(empty)"
_LOCAL = ("", "file", "local")


def _format(destination: str, given: str | None) -> str:
    if given is not None:
        return given_format("format", given)
    return "jsonl" if destination.lower().endswith((".jsonl", ".ndjson")) else "csv"


def _cell(value: object) -> object:
    """A CSV cell: lists joined with "; " (disposition codes), objects as JSON."""
    if isinstance(value, (list, tuple)):
        return "; ".join(str(item) for item in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return value


class KoreExportCampaignResultsOperator(BaseOperator):
    """Export the outcome of every contact of a campaign (``status?view=contacts``) to a file.

    Streamed page by page into a temporary file beside the destination, then moved into place:
    a reader never sees a half-written file. CSV has the :data:`RESULT_FIELDS` as columns
    (``agentDispositionCodes`` joined with "; "); JSON Lines keeps each record as Kore sent it.

    The XCom value is ``{"path", "campaign_id", "rows", "by_dialer_outcome", "by_outbound_status"}``
    (counts keyed by Kore's values, ``"(empty)"`` for none yet).

    :param destination: An ``ObjectStoragePath`` URI (templated), e.g.
        ``file:///data/kore/{{ ds }}/results.csv`` or ``s3://bucket/kore/{{ ds }}.jsonl``. Local
        folders are created; an existing file is replaced.
    :param campaign_id: The campaign (templated). Or:
    :param campaign_name: The campaign's exact name (templated), looked up when the task runs; with
    :param campaign_type: ``"voice"`` or ``"sms"``.
    :param format: ``"csv"`` or ``"jsonl"``; None: from the destination's extension, else CSV.
    :param stream_id: The bot (stream) id (templated); None uses the connection's.
    :param kore_conn_id: The ``kore`` connection. Default ``kore_default``.
    """

    template_fields: Sequence[str] = ("campaign_id", "campaign_name", "destination", "stream_id")
    ui_color = "#e3f1e8"

    def __init__(
        self,
        *,
        destination: str,
        campaign_id: str | None = None,
        campaign_name: str | None = None,
        campaign_type: str | None = None,
        format: str | None = None,
        stream_id: str | None = None,
        kore_conn_id: str = ids.DEFAULT_CONN_ID,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_campaign_choice(campaign_id, campaign_name, campaign_type)
        if not is_template(destination):
            file_uri("destination", destination)
        _format(destination if isinstance(destination, str) else "", format)
        validate_id_unless_template("stream_id", stream_id, optional=True)
        self.destination = destination
        self.campaign_id = campaign_id
        self.campaign_name = campaign_name
        self.campaign_type = None if campaign_type is None else ids.validate_campaign_type(campaign_type)
        self.format = format
        self.stream_id = stream_id
        self.kore_conn_id = kore_conn_id

    @cached_property
    def hook(self) -> KoreHook:
        """The ``KoreHook`` for ``kore_conn_id`` (created on first use, in the worker)."""
        from airflow_provider_kore.hooks.kore import KoreHook

        return KoreHook(kore_conn_id=self.kore_conn_id)

    def execute(self, context: Context) -> dict[str, Any]:
        """Write every contact outcome to a temporary file beside the destination, then move it there."""
        from airflow_provider_kore._compat import object_storage_path

        stream_id = rendered_optional_id("stream_id", self.stream_id)
        fmt = _format(file_uri("destination", self.destination), self.format)
        campaign_id = campaign_id_for(
            self.hook, self.campaign_id, self.campaign_name, self.campaign_type, stream_id, self.log
        )
        rows = self.hook.iter_campaign_contacts(campaign_id, stream_id=stream_id)
        destination = object_storage_path(file_uri("destination", self.destination))
        if destination.protocol in _LOCAL:
            destination.parent.mkdir(parents=True, exist_ok=True)
        # Hidden, unique, in the same folder: the final move is a rename on a local disk.
        temporary = destination.parent / f".{destination.name}.{uuid.uuid4().hex[:12]}.tmp"
        outcomes: Counter[str] = Counter()
        statuses: Counter[str] = Counter()
        try:
            with temporary.open("wb") as raw, io.TextIOWrapper(raw, encoding="utf-8", newline="") as out:
                writer = csv.DictWriter(out, RESULT_FIELDS, extrasaction="ignore") if fmt == "csv" else None
                if writer is not None:
                    writer.writeheader()
                for row in rows:
                    outcomes[str(row.get("dialerOutcome") or EMPTY)] += 1
                    statuses[str(row.get("botOutboundStatus") or EMPTY)] += 1
                    if writer is not None:
                        writer.writerow({key: _cell(value) for key, value in row.items()})
                    else:
                        out.write(json.dumps(row, ensure_ascii=False) + "\n")
            # A rename on a local disk; object stores (fsspec's mv) copy, then delete the temporary object.
            temporary.rename(destination)
        except BaseException:
            try:
                temporary.unlink(missing_ok=True)
            except Exception as exc:  # the export's own error is the one to report
                self.log.warning("Could not remove the temporary file %s: %s", temporary, exc)
            raise
        total = sum(outcomes.values())
        self.log.info("Wrote %d contact outcomes of Kore.ai campaign %s to %s", total, campaign_id, destination)
        return {
            "path": str(destination),
            "campaign_id": campaign_id,
            "rows": total,
            "by_dialer_outcome": dict(outcomes),
            "by_outbound_status": dict(statuses),
        }


__all__ = ["KoreExportCampaignResultsOperator"]
