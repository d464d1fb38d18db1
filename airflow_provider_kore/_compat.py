"""Every "this moved between Airflow 3.0 and 3.3" answer, in one place.

Feature detection, never version parsing: each name is looked up where the newest Airflow
keeps it and falls back to where Airflow 3.0 kept it. Only cheap modules are imported here
(``airflow.sdk`` is already loaded by any DAG file), so importing this costs nothing at
DAG-parse time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

try:  # Airflow 3.1+
    from airflow.sdk.exceptions import AirflowException, AirflowFailException
except ImportError:  # Airflow 3.0
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

from airflow.sdk import BaseOperator, BaseSensorOperator

T = TypeVar("T")

if TYPE_CHECKING:
    from airflow.sdk import Connection, ObjectStoragePath


def default_deferrable() -> bool:
    """The ``[operators] default_deferrable`` setting, as Airflow's own operators read it."""
    try:
        from airflow.sdk.configuration import conf
    except ImportError:  # Airflow 3.0
        from airflow.configuration import conf  # type: ignore[no-redef,unused-ignore]
    try:
        return bool(conf.getboolean("operators", "default_deferrable", fallback=False))
    except Exception:  # an unreadable config must not break DAG parsing
        return False


def mask_secret(value: str) -> None:
    """Register a value with Airflow's secrets masker so it never shows in task logs."""
    try:
        from airflow.sdk.log import mask_secret as mask
    except ImportError:  # Airflow 3.0
        try:
            from airflow.sdk.execution_time.secrets_masker import (  # type: ignore[no-redef,unused-ignore]
                mask_secret as mask,
            )
        except ImportError:
            return
    try:
        mask(value)
    except Exception:  # masking is best effort outside a task (e.g. a bare script)
        return


def get_connection(conn_id: str) -> Connection:
    """Look a connection up synchronously (workers, the API server's Test button)."""
    return BaseHook.get_connection(conn_id)


async def run_sync(func: Callable[..., T], *args: Any) -> T:
    """Run a synchronous Airflow call (a connection lookup, masking) off the event loop.

    Such calls may block on the task supervisor; in a worker thread that is safe on every Airflow 3
    release (``asgiref`` routes the supervisor message back through the loop), on the loop it is not.
    """
    from asgiref.sync import sync_to_async

    return await sync_to_async(func)(*args)


def object_storage_path(uri: str) -> ObjectStoragePath:
    """``ObjectStoragePath(uri)``, also where Airflow 3.0 cannot parse the URI itself.

    Airflow 3.0's ``ObjectStoragePath`` with universal_pathlib 0.3 refuses every ``scheme://`` URI
    (``_IncompatibleProtocolError``, a ``TypeError``) but accepts the same path with ``protocol=``.
    Imported here, when a task runs: fsspec and upath are too heavy for DAG parsing.
    """
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


__all__ = [
    "AirflowException",
    "AirflowFailException",
    "AirflowSensorTimeout",
    "AirflowSkipException",
    "BaseHook",
    "BaseOperator",
    "BaseSensorOperator",
    "default_deferrable",
    "get_connection",
    "mask_secret",
    "object_storage_path",
    "run_sync",
]
