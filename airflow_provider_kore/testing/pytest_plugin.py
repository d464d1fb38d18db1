"""Pytest fixtures that run the Kore.ai simulator for your tests.

Installed with the provider, this plugin is loaded through the ``pytest11`` entry point, so the
fixtures are available in any test without imports (without the installed package, load it
with ``pytest -p airflow_provider_kore.testing.pytest_plugin``).

* ``kore_simulator`` - a started :class:`~airflow_provider_kore.testing.KoreSimulator` on a
  free ``127.0.0.1`` port, stopped after the test.
* ``kore_connection`` - the same simulator, with ``AIRFLOW_CONN_KORE_DEFAULT`` pointing at it
  for the duration of the test, so ``kore_default`` resolves to the simulator.

Example, testing your own DAG::

    from airflow.models import DagBag


    def test_my_campaign_dag_completes(kore_connection):
        sim = kore_connection
        sim.complete_after_polls = 2
        dag = DagBag("dags/", include_examples=False).get_dag("my_campaign_dag")
        dag.test()
        assert sim.status_of("cd-sms-welcome-0001") == "Completed"
        assert sim.count("start_campaign", status_code=200) == 1


    def test_my_task_survives_a_503(kore_connection):
        kore_connection.inject_fault("get_campaign_status", status=503, retry_after=0)
        ...

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
