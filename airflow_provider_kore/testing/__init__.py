"""Test helpers for the Kore.ai provider: a local simulator of Kore.ai's campaign API.

Nothing in the provider's runtime code imports this package. Use :class:`KoreSimulator`
directly, the ``kore_simulator`` / ``kore_connection`` pytest fixtures (registered through the
``pytest11`` entry point, see :mod:`airflow_provider_kore.testing.pytest_plugin`), or the
``kore-simulator`` command (``python -m airflow_provider_kore.testing``).
"""

from __future__ import annotations

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
    "Fault",
    "KoreSimulator",
    "RequestLog",
    "RequestRecord",
]
