"""``KoreExportCampaignResultsOperator``: every contact's outcome of a campaign, into a CSV or JSON Lines file."""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow_provider_kore._compat import object_storage_path
from airflow_provider_kore.operators._base import KoreCampaignOperatorBase, file_format, file_uri
from airflow_provider_kore.waiting import is_template

if TYPE_CHECKING:
    from airflow.sdk import Context

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


def _cell(value: object) -> object:
    """A CSV cell: lists joined with "; " (disposition codes), objects as JSON."""
    if isinstance(value, (list, tuple)):
        return "; ".join(str(item) for item in value)
    return json.dumps(value, sort_keys=True) if isinstance(value, dict) else value


class KoreExportCampaignResultsOperator(KoreCampaignOperatorBase):
    """Export the outcome of every contact of a campaign (``status?view=contacts``) to a file.

    Streamed into a temporary file beside the destination, then moved into place: a reader never sees
    half a file. CSV has the :data:`RESULT_FIELDS` as columns; JSON Lines keeps each record whole. XCom:
    ``{"path", "campaign_id", "rows", "by_dialer_outcome", "by_outbound_status"}`` (``"(empty)"`` counts none yet).

    :param destination: An ``ObjectStoragePath`` URI (templated); local folders are created, a file replaced.
    :param campaign_id: The campaign (templated). Or:
    :param campaign_name: The campaign's exact name (templated), looked up when the task runs; with
    :param campaign_type: ``"voice"`` or ``"sms"``.
    :param format: ``"csv"`` or ``"jsonl"``; None: from the destination's extension, else CSV.
    :param stream_id: The bot (stream) id (templated); None uses the connection's.
    :param kore_conn_id: The ``kore`` connection. Default ``kore_default``.
    """

    template_fields: Sequence[str] = ("campaign_id", "campaign_name", "destination", "stream_id")
    ui_color = "#e3f1e8"

    def __init__(self, *, destination: str, format: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not is_template(destination):
            file_uri("destination", destination)
        file_format("format", destination if isinstance(destination, str) else "", format, "csv")
        self.destination = destination
        self.format = format

    def execute(self, context: Context) -> dict[str, Any]:
        """Write every contact outcome to a temporary file beside the destination, then move it there."""
        fmt = file_format("format", file_uri("destination", self.destination), self.format, "csv")
        campaign_id, stream_id = self._campaign()
        rows = self.hook.iter_campaign_contacts(campaign_id, stream_id=stream_id)
        destination = object_storage_path(self.destination)
        if destination.protocol in ("", "file", "local"):
            destination.parent.mkdir(parents=True, exist_ok=True)
        # Hidden, unique, in the same folder: moving it into place is a rename on a local disk (on an
        # object store, fsspec's mv copies it, then deletes the temporary object).
        temporary = destination.parent / f".{destination.name}.{uuid.uuid4().hex[:12]}.tmp"
        outcomes, statuses = Counter[str](), Counter[str]()
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


# What a DAG file gets from `import *`: the classes, not this module's own imports.
__all__ = ["KoreExportCampaignResultsOperator"]
