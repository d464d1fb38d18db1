"""``KoreLoadContactsOperator``: a call list (a CSV / JSON Lines file, or a list) into a Kore.ai contact list.

The file is streamed twice, never held: once to check every row, once to send the good ones.
The hook, the API module and ``ObjectStoragePath`` are imported when the task runs.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow_provider_kore import ids
from airflow_provider_kore._compat import BaseOperator
from airflow_provider_kore.exceptions import KoreConfigurationError, KoreError
from airflow_provider_kore.waiting import is_template, rendered_optional_id, validate_id_unless_template

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_kore.hooks.kore import KoreHook

#: Bad rows named in the error or warning (every one is counted).
MAX_BAD_ROWS_SHOWN = 20
FORMATS = ("csv", "jsonl")
_FORMAT_BY_SUFFIX = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
_KEY_NOISE = re.compile(r"[\s_-]")

Rows = Callable[[], Iterator[tuple[str, object]]]


def file_uri(name: str, value: object) -> str:
    """A non-empty string (what ``ObjectStoragePath`` makes of it is seen when the task runs)."""
    if not isinstance(value, str) or not value.strip():
        raise KoreConfigurationError(f"{name} must be a file URI; got {value!r}")
    return value


def given_format(name: str, value: str) -> str:
    """``value`` if it is one of :data:`FORMATS` (shared with the results export)."""
    if value not in FORMATS:
        raise KoreConfigurationError(f"{name} must be one of {', '.join(FORMATS)}; got {value!r}")
    return value


def format_of(source: str, source_format: str | None) -> str:
    """``"csv"`` or ``"jsonl"``: as given, else from the file's extension."""
    if source_format is not None:
        return given_format("source_format", source_format)
    suffix = "." + source.rsplit(".", 1)[-1].lower() if "." in source.rsplit("/", 1)[-1] else ""
    if suffix not in _FORMAT_BY_SUFFIX:
        raise KoreConfigurationError(f"cannot tell the format of {source!r} from its extension: pass source_format=")
    return _FORMAT_BY_SUFFIX[suffix]


class KoreLoadContactsOperator(BaseOperator):
    """Load contacts into a Kore.ai contact list, optionally creating the list first.

    Each row needs a usable ``phoneNumber`` (5 to 15 digits, optionally after a ``+``; spaces,
    dots, dashes and brackets are dropped); ``firstName``, ``lastName``, ``timeZone``,
    ``uniqueId`` and ``contactPriority`` are sent too, others ignored (names match ignoring case,
    spaces, ``_`` and ``-``: ``phone_number`` works).

    Not idempotent: a retry sends every row again (``allow_duplicates=False`` drops repeats).
    The XCom value is ``{"contact_list_name", "source", "rows", "sent", "skipped",
    "created_list", "contact_list_id"}``.

    :param contact_list_name: The contact list (templated); at most 48 characters.
    :param source: An ``ObjectStoragePath`` URI (templated): ``file:///...``, ``s3://...`` (with
        its provider installed). A CSV with a header row, or JSON Lines (one object per line).
    :param contacts: Instead of ``source``: a list of contact dicts (templated; e.g. an ``XComArg``).
    :param source_format: ``"csv"`` or ``"jsonl"``; None: from the extension (``.csv``, ``.jsonl``, ``.ndjson``).
    :param create_list: Create the list before loading it (it must not exist yet).
    :param description: The new list's description (templated; at most 256 characters).
    :param allow_duplicates: Whether the new list keeps repeated phone numbers.
    :param on_bad_rows: ``"fail"`` (default): one bad row fails the task before anything is sent,
        naming the bad rows by line number. ``"skip"``: bad rows are left out and counted.
    :param batch_size: Contacts per request. Default 500.
    :param stream_id: The bot (stream) id (templated); None uses the connection's.
    :param kore_conn_id: The ``kore`` connection. Default ``kore_default``.
    """

    template_fields: Sequence[str] = ("contact_list_name", "source", "contacts", "description", "stream_id")
    ui_color = "#dcebf7"

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
        stream_id: str | None = None,
        kore_conn_id: str = ids.DEFAULT_CONN_ID,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if (source is None) == (contacts is None):
            raise KoreConfigurationError("pass exactly one of source= (a file URI) or contacts= (a list)")
        if on_bad_rows not in ("fail", "skip"):
            raise KoreConfigurationError(f"on_bad_rows must be 'fail' or 'skip'; got {on_bad_rows!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise KoreConfigurationError(f"batch_size must be an integer >= 1; got {batch_size!r}")
        self.contact_list_name = contact_list_name
        self.source = source
        self.contacts = contacts
        self.source_format = source_format
        self.create_list = bool(create_list)
        self.description = description
        self.allow_duplicates = bool(allow_duplicates)
        self.on_bad_rows = on_bad_rows
        self.batch_size = batch_size
        self.stream_id = stream_id
        self.kore_conn_id = kore_conn_id
        # Refuse what can be refused at DAG-parse time; templates are checked again after rendering.
        if not is_template(contact_list_name):
            ids.validate_text("contact_list_name", contact_list_name, ids.MAX_LIST_NAME_LENGTH)
        if description is not None and not is_template(description):
            ids.validate_text("description", description, ids.MAX_LIST_DESCRIPTION_LENGTH)
        if source is not None and not is_template(source):
            format_of(file_uri("source", source), source_format)
        elif source_format is not None:
            given_format("source_format", source_format)
        validate_id_unless_template("stream_id", stream_id, optional=True)

    @cached_property
    def hook(self) -> KoreHook:
        """The ``KoreHook`` for ``kore_conn_id`` (created on first use, in the worker)."""
        from airflow_provider_kore.hooks.kore import KoreHook

        return KoreHook(kore_conn_id=self.kore_conn_id)

    def execute(self, context: Context) -> dict[str, Any]:
        """Check every row, create the list if asked, then send the good rows in batches."""
        from airflow_provider_kore import api

        name = ids.validate_text("contact_list_name", self.contact_list_name, ids.MAX_LIST_NAME_LENGTH)
        stream_id = rendered_optional_id("stream_id", self.stream_id)
        rows, where = self._rows()
        fields = {_KEY_NOISE.sub("", field).lower(): field for field in api.CONTACT_FIELDS}
        columns: dict[object, str | None] = {}

        def contact(row: object) -> dict[str, Any]:
            if isinstance(row, Exception):
                raise row
            if not isinstance(row, Mapping):
                raise KoreConfigurationError(f"not an object ({type(row).__name__})")
            if None in row:  # csv.DictReader's key for fields beyond the header's
                raise KoreConfigurationError("more fields than the header row has columns")
            mapped: dict[str, Any] = {}
            for key, value in row.items():
                if key not in columns:  # a file has few distinct columns: match each name once
                    columns[key] = fields.get(_KEY_NOISE.sub("", str(key)).lower())
                if (field := columns[key]) is not None:
                    mapped[field] = value
            return api.contact_payload(mapped)

        total, bad, shown = 0, 0, list[str]()
        for label, row in rows():
            total += 1
            try:
                contact(row)
            except KoreConfigurationError as exc:
                bad += 1
                if len(shown) < MAX_BAD_ROWS_SHOWN:
                    shown.append(f"{label}: {exc}")
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

        def good() -> Iterator[dict[str, Any]]:
            for _, row in rows():
                try:
                    yield contact(row)
                except KoreConfigurationError:
                    continue

        sent = self.hook.add_contacts(name, good(), batch_size=self.batch_size, stream_id=stream_id)
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

    def _rows(self) -> tuple[Rows, str]:
        """A way to read the rows (again), each with its line or item label, and what they come from."""
        if self.source is None:
            contacts = self.contacts
            if not isinstance(contacts, (list, tuple)):
                raise KoreConfigurationError(
                    f"contacts must be a list of dicts; got {type(contacts).__name__} (a Jinja template renders "
                    "text: pass an XComArg such as task.output, or set render_template_as_native_obj=True)"
                )
            return (lambda: ((f"item {n}", row) for n, row in enumerate(contacts, start=1))), "contacts"
        from airflow_provider_kore._compat import object_storage_path

        fmt = format_of(file_uri("source", self.source), self.source_format)
        path = object_storage_path(self.source)
        return (lambda: _read(path, fmt)), str(path)


def _read(path: Any, fmt: str) -> Iterator[tuple[str, object]]:
    """Rows of a CSV (after its header) or JSON Lines file, as ``("line N", row)``; streamed."""
    with path.open("rb") as raw, io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as text:
        line = 0
        try:
            if fmt == "jsonl":
                for line, record in enumerate(text, start=1):
                    if record.strip():
                        yield f"line {line}", _json_object(record)
                return
            reader = csv.DictReader(text)
            header = reader.fieldnames or []
            if not any(_KEY_NOISE.sub("", key).lower() == "phonenumber" for key in header):
                raise KoreConfigurationError(f"{path}: the header row has no phoneNumber column (columns: {header})")
            for row in reader:
                line = reader.line_num
                yield f"line {line}", row
        except (UnicodeDecodeError, csv.Error) as exc:
            raise KoreConfigurationError(f"{path}: cannot read the file after line {line}: {exc}") from None


def _json_object(text: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        return KoreConfigurationError(f"not valid JSON ({exc.msg})")


__all__ = ["KoreLoadContactsOperator"]
