"""Shared test fixtures: a ``kore_default`` connection in the environment, and a task context.

The simulator fixtures (``kore_simulator``, ``kore_connection``) come from the provider's
pytest plugin, ``airflow_provider_kore.testing.pytest_plugin``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
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


# ---------------------------------------------------------------------------------------------
# End-to-end runs through real Airflow (tests/test_e2e_*.py): one migrated SQLite metadata DB
# per session, copied into a throwaway AIRFLOW_HOME per deployment.


@dataclass
class E2EAirflow:
    """Builds throwaway Airflow homes from one ``airflow db migrate`` done per test session."""

    root: Path
    template_db: Path
    migrate_seconds: float

    def new_home(self, name: str) -> Path:
        """A fresh AIRFLOW_HOME holding a copy of the migrated metadata DB."""
        home = self.root / name
        home.mkdir(parents=True)
        shutil.copyfile(self.template_db, home / "airflow.db")
        return home

    @staticmethod
    def env(home: Path, dags_folder: Path, **overrides: str) -> dict[str, str]:
        """The environment of an Airflow process on ``home``: SQLite, no examples, no inherited config."""
        return e2e_airflow_env(home, dags_folder, **overrides)


def e2e_airflow_env(home: Path, dags_folder: Path, **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_", "KORE_"))}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__DAGS_FOLDER=str(dags_folder),
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home / 'airflow.db'}",
        AIRFLOW__CORE__UNIT_TEST_MODE="False",
        PYTHONWARNINGS="ignore",
        PYTHONUNBUFFERED="1",
    )
    env.update(overrides)
    return env


@pytest.fixture(scope="session")
def e2e_airflow(tmp_path_factory: pytest.TempPathFactory) -> E2EAirflow:
    """``airflow db migrate`` once per session (a few seconds on SQLite); homes copy the result."""
    root = tmp_path_factory.mktemp("e2e_airflow")
    template = root / "template"
    template.mkdir()
    env = e2e_airflow_env(template, template / "dags")
    started = time.monotonic()
    migrated = subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert migrated.returncode == 0, migrated.stdout[-3000:] + migrated.stderr[-3000:]
    return E2EAirflow(root=root, template_db=template / "airflow.db", migrate_seconds=time.monotonic() - started)


# ---------------------------------------------------------------------------------------------
# Parallel runs: ``python3 run.py test`` passes ``-n 4 --dist loadfile`` to pytest-xdist. Most of the
# suite's time is real time (Airflow processes starting, pacing scenarios) that workers overlap. A
# file's tests stay on one worker: they share module fixtures (a deployment, a scenario run), and
# test_e2e_scheduler.py's real deployments must not run side by side. Longest files first, so they
# start at once and the short ones fill in around them.
LONGEST_FIRST = ("test_e2e_scheduler.py", "test_pacing.py", "test_e2e_dags.py", "test_run_dag.py", "test_ui.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: each file's tests stay together and in order
