"""``airflow_provider_kore.testing.run_dag``: the README's offline DAG test, run as a reader runs it.

The example (``docs/examples/test_my_dag.py``, shown verbatim in the README) runs with pytest in
a child process, as ``pytest docs/examples/test_my_dag.py`` would; the failing run is made here,
on a copy of the session's migrated metadata DB.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_provider_kore.testing import DagRunFailed, KoreSimulator, run_dag

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "docs" / "examples"


def test_readme_example_passes_under_pytest() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_"))}
    # This checkout's provider, not another installed copy (as the parent test process imports it).
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", str(EXAMPLES / "test_my_dag.py"), "-q", "-p", "no:cacheprovider"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert "1 passed" in done.stdout


def test_run_dag_raises_naming_the_task_and_the_404(kore_connection: KoreSimulator, e2e_airflow) -> None:
    """The DAG's campaign was not seeded: the start gets a 404, and the helper says so."""
    with pytest.raises(DagRunFailed) as failed:
        run_dag(
            EXAMPLES / "dags" / "my_campaign_dag.py",
            "my_campaign_dag",
            run_conf={"sms_campaign_id": "cd-not-seeded"},
            airflow_home=e2e_airflow.new_home("run_dag_404"),
        )
    result = failed.value.result
    assert result.state == "failed"
    assert result.tasks == {"start_sms": "failed", "wait_completed": "upstream_failed"}
    assert "KoreNotFoundError" in result.errors["start_sms"]
    assert "404" in result.errors["start_sms"]
    assert "cd-not-seeded" in result.errors["start_sms"]
    message = str(failed.value)
    assert "start_sms (failed)" in message
    assert result.errors["start_sms"] in message
    assert kore_connection.count("start_campaign", status_code=404) == 1
