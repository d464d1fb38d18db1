"""Test helpers for the Kore.ai provider: a local simulator of Kore.ai's campaign API.

Nothing in the provider's runtime code imports this package. Use :class:`KoreSimulator`
directly, the ``kore_simulator`` / ``kore_connection`` pytest fixtures (registered through the
``pytest11`` entry point, see :mod:`airflow_provider_kore.testing.pytest_plugin`), or the
``kore-simulator`` command (``python -m airflow_provider_kore.testing``). :func:`run_dag`
runs one of your DAGs through real Airflow against it and raises if any task failed.
"""

from __future__ import annotations

from airflow_provider_kore.testing.dag_run import DagRunFailed, DagRunResult, run_dag
from airflow_provider_kore.testing.simulator import (
    DEFAULT_CAMPAIGNS,
    DROPPED,
    OPERATIONS,
    RATE_LIMIT_MESSAGE,
    Fault,
    KoreSimulator,
    RequestLog,
    RequestRecord,
)

__all__ = [
    "DEFAULT_CAMPAIGNS",
    "DROPPED",
    "OPERATIONS",
    "RATE_LIMIT_MESSAGE",
    "DagRunFailed",
    "DagRunResult",
    "Fault",
    "KoreSimulator",
    "RequestLog",
    "RequestRecord",
    "run_dag",
]
