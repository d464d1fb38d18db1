"""Shared test fixtures: a ``kore_default`` connection in the environment, and a task context.

The simulator fixtures (``kore_simulator``, ``kore_connection``) come from the provider's
pytest plugin, ``airflow_provider_kore.testing.pytest_plugin``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from types import SimpleNamespace
from typing import Any

import pytest


@dataclass(frozen=True)
class KoreTestConnection:
    """What ``kore_env_connection`` put in the environment (the secret is known, to look for leaks)."""

    conn_id: str = "kore_default"
    base_url: str = "https://kore.test"
    client_id: str = "cs-unit-test-app"
    client_secret: str = "unit-test-client-secret-4f9a1c2e7b5d"
    account_id: str = "acc-1"
    stream_id: str = "st-1"

    def as_json(self) -> str:
        return json.dumps(
            {
                "conn_type": "kore",
                "host": self.base_url,
                "login": self.client_id,
                "password": self.client_secret,
                # No retries: a test that wants an error gets it at once, without backoff sleeps.
                "extra": {"account_id": self.account_id, "stream_id": self.stream_id, "max_retries": 0},
            }
        )


@pytest.fixture
def kore_env_connection(monkeypatch: pytest.MonkeyPatch) -> KoreTestConnection:
    """A ``kore_default`` connection (``AIRFLOW_CONN_KORE_DEFAULT``) pointing at ``https://kore.test``."""
    conn = KoreTestConnection()
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn.conn_id.upper()}", conn.as_json())
    return conn


#: When the DAG run of :func:`airflow_context` began, unless a test says otherwise.
RUN_START = datetime(2026, 1, 5, 13, 0, tzinfo=timezone.utc)


@pytest.fixture
def airflow_context() -> Callable[..., dict[str, Any]]:
    """Build the parts of an Airflow task context the provider reads: ``ti``, ``dag_run``, ``params``."""

    def build(
        *,
        try_number: int = 1,
        run_start: datetime | None = RUN_START,
        params: dict[str, Any] | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        return {
            "ti": SimpleNamespace(try_number=try_number, task_id="task", dag_id="dag", map_index=-1),
            "dag_run": SimpleNamespace(start_date=run_start, run_id="manual__2026-01-05", dag_id="dag"),
            "params": dict(params or {}),
            "run_id": "manual__2026-01-05",
            "ds": "2026-01-05",
            **extra,
        }

    return build
