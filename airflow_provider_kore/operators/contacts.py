"""``KoreLoadContactsOperator``: a call list (a CSV / JSON Lines file, or a list) into a Kore.ai contact list.
The file is streamed twice, never held: once to check every row, once to send the good ones."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow_provider_kore import ids
from airflow_provider_kore._compat import object_storage_path
from airflow_provider_kore.exceptions import KoreConfigurationError, KoreError
from airflow_provider_kore.operators._base import KoreOperatorBase, file_format, file_uri
from airflow_provider_kore.waiting import is_template, rendered_optional_id

if TYPE_CHECKING:
    from airflow.sdk import Context

#: Bad rows named in the error or warning (every one is counted).
MAX_BAD_ROWS_SHOWN = 20
_KEY_NOISE = re.compile(r"[\s_-]")


def _key(name: object) -> str:
    """A column name as matched to Kore's fields: ignoring case, spaces, ``_`` and ``-``."""
    return _KEY_NOISE.sub("", str(name)).lower()


class KoreLoadContactsOperator(KoreOperatorBase):
    """Load contacts into a Kore.ai contact list, optionally creating the list first.

    Each row needs a usable ``phoneNumber``; ``firstName``, ``lastName``, ``timeZone``, ``uniqueId`` and
    ``contactPriority`` are sent too, others ignored (names match ignoring case, spaces, ``_`` and ``-``).
    Not idempotent: a retry sends every row again. XCom: ``{"contact_list_name", "source", "rows",
    "sent", "skipped", "created_list", "contact_list_id"}``.

    :param contact_list_name: The contact list (templated); at most 48 characters.
    :param source: An ``ObjectStoragePath`` URI (templated): a CSV with a header row, or JSON Lines.
    :param contacts: Instead of ``source``: a list of contact dicts (templated; e.g. an ``XComArg``).
    :param source_format: ``"csv"`` or ``"jsonl"``; None: from the extension (``.csv``, ``.jsonl``, ``.ndjson``).
    :param create_list: Create the list before loading it (it must not exist yet).
    :param description: The new list's description (templated; at most 256 characters).
    :param allow_duplicates: Whether the new list keeps repeated phone numbers.
    :param on_bad_rows: ``"fail"`` (default): fail before sending, naming bad rows by line; ``"skip"``: leave them out.
    :param batch_size: Contacts per request. Default 500.
    :param stream_id: The bot (stream) id (templated); None uses the connection's.
    :param kore_conn_id: The ``kore`` connection. Default ``kore_default``.
    """

    template_fields: Sequence[str] = ("contact_list_name", "source", "contacts", "description", "stream_id")

    def __init__(
        self,
        *,
        contact_list_name: str,
        source: str | None = None,
        contacts: Any = None,
        source_format: str | None = None,
        create_list: bool = False,
        description: str | None = None,
        allow_duplicates: bool = False,
        on_bad_rows: str = "fail",
        batch_size: int = 500,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if (source is None) == (contacts is None):
            raise KoreConfigurationError("pass exactly one of source= (a file URI) or contacts= (a list)")
        if on_bad_rows not in ("fail", "skip"):
            raise KoreConfigurationError(f"on_bad_rows must be 'fail' or 'skip'; got {on_bad_rows!r}")
        ids.validate_batch_size(batch_size)
        self.contact_list_name = contact_list_name
        self.source = source
        self.contacts = contacts
        self.source_format = source_format
        self.create_list = bool(create_list)
        self.description = description
        self.allow_duplicates = bool(allow_duplicates)
        self.on_bad_rows = on_bad_rows
        self.batch_size = batch_size
        if not is_template(contact_list_name):
            ids.validate_text("contact_list_name", contact_list_name, ids.MAX_LIST_NAME_LENGTH)
        if description is not None and not is_template(description):
            ids.validate_text("description", description, ids.MAX_LIST_DESCRIPTION_LENGTH)
        if source is not None and not is_template(source):
            file_format("source_format", file_uri("source", source), source_format)
        elif source_format is not None:
            file_format("source_format", "", source_format)

    def execute(self, context: Context) -> dict[str, Any]:
        """Check every row, create the list if asked, then send the good rows in batches."""
        name = ids.validate_text("contact_list_name", self.contact_list_name, ids.MAX_LIST_NAME_LENGTH)
        stream_id = rendered_optional_id("stream_id", self.stream_id)
        rows, where = self._rows()
        total, bad, shown = 0, 0, list[str]()
        for label, item in _contacts(rows()):
            total += 1
            if isinstance(item, KoreConfigurationError):
                bad += 1
                if len(shown) < MAX_BAD_ROWS_SHOWN:
                    shown.append(f"{label}: {item}")
        if bad:
            more = f" (and {bad - len(shown)} more)" if bad > len(shown) else ""
            summary = f"{bad} of {total} rows in {where} are bad: " + "; ".join(shown) + more
            if self.on_bad_rows == "fail":
                raise KoreConfigurationError(summary + ". Nothing was sent (on_bad_rows='skip' leaves them out)")
            self.log.warning("Skipping %s", summary)
        created: dict[str, Any] | None = None
        if self.create_list:
            description = self.description or f"Loaded by Airflow: {self.dag_id}.{self.task_id}"[:256]
            created = self.hook.create_contact_list(name, description, self.allow_duplicates, stream_id)
            self.log.info("Created Kore.ai contact list %r (%s)", name, created.get("_id"))
        good = (item for _, item in _contacts(rows()) if not isinstance(item, KoreConfigurationError))
        sent = self.hook.add_contacts(name, good, batch_size=self.batch_size, stream_id=stream_id)
        if sent != total - bad:
            raise KoreError(f"{where} changed while it was loaded: {total - bad} good rows were checked, {sent} sent")
        self.log.info("Sent %d contacts to Kore.ai contact list %r (%d bad rows skipped)", sent, name, bad)
        return {
            "contact_list_name": name,
            "source": where if self.source is not None else None,
            "rows": total,
            "sent": sent,
            "skipped": bad,
            "created_list": created is not None,
            "contact_list_id": None if created is None else created.get("_id"),
        }

    def _rows(self) -> tuple[Callable[[], Iterator[tuple[str, object]]], str]:
        """A way to read the rows (again), each with its line or item label, and what they come from."""
        if self.source is None:
            contacts = self.contacts
            if not isinstance(contacts, (list, tuple)):
                raise KoreConfigurationError(
                    f"contacts must be a list of dicts; got {type(contacts).__name__} (a Jinja template renders "
                    "text: pass an XComArg such as task.output, or set render_template_as_native_obj=True)"
                )
            return (lambda: ((f"item {n}", row) for n, row in enumerate(contacts, start=1))), "contacts"
        fmt = file_format("source_format", file_uri("source", self.source), self.source_format)
        path = object_storage_path(self.source)
        return (lambda: _read(path, fmt)), str(path)


def _contacts(rows: Iterable[tuple[str, object]]) -> Iterator[tuple[str, dict[str, Any] | KoreConfigurationError]]:
    """Each row's label with its contact for Kore, or with why it is bad."""
    from airflow_provider_kore import api

    fields = {_key(field): field for field in api.CONTACT_FIELDS}
    columns: dict[object, str | None] = {}
    for label, row in rows:
        try:
            if isinstance(row, Exception):
                raise row
            if not isinstance(row, Mapping):
                raise KoreConfigurationError(f"not an object ({type(row).__name__})")
            if None in row:  # csv.DictReader's key for fields beyond the header's
                raise KoreConfigurationError("more fields than the header row has columns")
            mapped: dict[str, Any] = {}
            for key, value in row.items():
                if key not in columns:  # a file has few distinct columns: match each name once
                    columns[key] = fields.get(_key(key))
                if (field := columns[key]) is not None:
                    mapped[field] = value
            yield label, api.contact_payload(mapped)
        except KoreConfigurationError as exc:
            yield label, exc


def _read(path: Any, fmt: str) -> Iterator[tuple[str, object]]:
    """Rows of a CSV (after its header) or JSON Lines file, as ``("line N", row)``; streamed.

    A JSON line that does not parse is yielded as its error, so the check can name its line."""
    with path.open("rb") as raw, io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as text:
        line = 0
        try:
            if fmt == "jsonl":
                for line, record in enumerate(text, start=1):
                    if record.strip():
                        try:
                            row: object = json.loads(record)
                        except json.JSONDecodeError as exc:
                            row = KoreConfigurationError(f"not valid JSON ({exc.msg})")
                        yield f"line {line}", row
                return
            reader = csv.DictReader(text)
            header = reader.fieldnames or []
            if "phonenumber" not in map(_key, header):
                raise KoreConfigurationError(f"{path}: the header row has no phoneNumber column (columns: {header})")
            for row in reader:
                line = reader.line_num
                yield f"line {line}", row
        except (UnicodeDecodeError, csv.Error) as exc:
            raise KoreConfigurationError(f"{path}: cannot read the file after line {line}: {exc}") from None


# What a DAG file gets from `import *`: the classes, not this module's own imports.
__all__ = ["KoreLoadContactsOperator"]
