"""Pytest fixtures that run the Kore.ai simulator for your tests.

Installed with the provider, this plugin is loaded through the ``pytest11`` entry point, so the
fixtures are available in any test without imports (without the installed package, load it
with ``pytest -p airflow_provider_kore.testing.pytest_plugin``).

* ``kore_simulator`` - a started :class:`~airflow_provider_kore.testing.KoreSimulator` on a
  free ``127.0.0.1`` port, stopped after the test.
* ``kore_connection`` - the same simulator, with ``AIRFLOW_CONN_KORE_DEFAULT`` pointing at it
  for the duration of the test, so ``kore_default`` resolves to the simulator.

Example, testing your own DAG (``dags/my_campaign_dag.py`` next to the test file) with
:func:`~airflow_provider_kore.testing.run_dag`, which runs it through real Airflow on a throwaway
``AIRFLOW_HOME`` and raises if the run or any task failed (the repository's
``docs/examples/test_my_dag.py``)::

    from pathlib import Path

    from airflow_provider_kore.testing import run_dag

    DAGS = Path(__file__).parent / "dags"  # the folder that holds my_campaign_dag.py


    def test_my_dag(kore_connection):  # the simulator, with AIRFLOW_CONN_KORE_DEFAULT pointing at it
        sim = kore_connection
        sim.add_campaign("cd-my-campaign", campaign_type="sms")  # every campaign the DAG uses
        sim.inject_fault("get_campaign_status", status=503, retry_after=0, times=1)
        run = run_dag(DAGS, "my_campaign_dag", run_conf={"sms_campaign_id": "cd-my-campaign"})
        assert run.tasks == {"start_sms": "success", "wait_completed": "success"}
        assert sim.status_of("cd-my-campaign") == "Completed"
        assert sim.count("start_campaign", status_code=200) == 1

Seed your own campaigns with ``kore_simulator.add_campaign("cd-my-id", campaign_type="voice")``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from airflow_provider_kore.testing.simulator import KoreSimulator


@pytest.fixture
def kore_simulator() -> Iterator[KoreSimulator]:
    """A started Kore.ai simulator with the default campaigns, stopped after the test."""
    with KoreSimulator() as simulator:
        yield simulator


@pytest.fixture
def kore_connection(kore_simulator: KoreSimulator, monkeypatch: pytest.MonkeyPatch) -> KoreSimulator:
    """The ``kore_simulator``, with ``AIRFLOW_CONN_KORE_DEFAULT`` set to its connection JSON."""
    monkeypatch.setenv("AIRFLOW_CONN_KORE_DEFAULT", kore_simulator.airflow_conn_json())
    return kore_simulator
