"""Every "this moved between Airflow 3.0 and 3.3" answer, in one place: feature detection, never
version parsing, and only modules a DAG file has loaded anyway (heavy ones are imported inside)."""

# ruff: noqa: F401  (the imports are re-exports)

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from airflow.sdk import BaseOperator, BaseSensorOperator

try:  # Airflow 3.2+
    from airflow.sdk.exceptions import AirflowException, AirflowFailException
except ImportError:  # Airflow 3.0 and 3.1
    from airflow.exceptions import AirflowException, AirflowFailException  # type: ignore[no-redef,unused-ignore]
try:  # Airflow 3.1+
    from airflow.sdk import BaseHook
except ImportError:  # Airflow 3.0
    from airflow.hooks.base import BaseHook  # type: ignore[no-redef,attr-defined,unused-ignore]
# Each name on its own: the task runner catches the class where its release keeps it (3.3:
# airflow.sdk.exceptions, and it warns on the old names; 3.0: airflow.exceptions).
try:
    from airflow.sdk.exceptions import AirflowSensorTimeout
except ImportError:  # Airflow 3.0
    from airflow.exceptions import AirflowSensorTimeout  # type: ignore[no-redef,attr-defined,unused-ignore]
try:
    from airflow.sdk.exceptions import AirflowSkipException
except ImportError:  # Airflow 3.0
    from airflow.exceptions import AirflowSkipException  # type: ignore[no-redef,attr-defined,unused-ignore]

T = TypeVar("T")

if TYPE_CHECKING:
    from airflow.sdk import Connection, ObjectStoragePath


def default_deferrable() -> bool:
    """The ``[operators] default_deferrable`` setting, as Airflow's own operators read it."""
    try:
        from airflow.sdk.configuration import conf
    except ImportError:  # Airflow 3.0
        from airflow.configuration import conf  # type: ignore[no-redef,unused-ignore]
    with contextlib.suppress(Exception):  # an unreadable config must not break DAG parsing
        return bool(conf.getboolean("operators", "default_deferrable", fallback=False))
    return False


def mask_secret(value: str) -> None:
    """Register a value with Airflow's secrets masker (best effort: a bare script has none)."""
    with contextlib.suppress(Exception):
        try:
            from airflow.sdk.log import mask_secret as mask
        except ImportError:  # Airflow 3.0
            from airflow.sdk.execution_time.secrets_masker import (  # type: ignore[no-redef,unused-ignore]
                mask_secret as mask,
            )
        mask(value)


def get_connection(conn_id: str) -> Connection:
    return BaseHook.get_connection(conn_id)


async def run_sync(func: Callable[..., T], *args: Any) -> T:
    """Run a sync Airflow call off the event loop: it may block on the task supervisor, which is safe
    in a worker thread on every Airflow 3 release (``asgiref`` routes the reply through the loop)."""
    from asgiref.sync import sync_to_async

    return await sync_to_async(func)(*args)


def object_storage_path(uri: str) -> ObjectStoragePath:
    """``ObjectStoragePath(uri)``; Airflow 3.0 with universal_pathlib 0.3 refuses every ``scheme://``
    URI (a ``TypeError``) but takes the same path with ``protocol=``. Imported late: fsspec is heavy."""
    from airflow.sdk import ObjectStoragePath

    try:
        return ObjectStoragePath(uri)
    except TypeError:
        scheme, found, rest = uri.partition("://")
        if not found:
            raise
        netloc, _, path = rest.partition("/")
        conn_id, _, netloc = netloc.rpartition("@")
        return ObjectStoragePath(f"{netloc}/{path}", protocol=scheme, conn_id=conn_id or None)
