"""Test-only DAGs for tests/test_e2e_scheduler.py: many deferred waits in one triggerer, and a kill.

* ``kore_e2e_fanout``: ``KORE_E2E_WAITS`` mapped deferrable ``KoreCampaignStatusSensor`` tasks,
  one per simulator campaign ``cd-e2e-wait-0000``..., plus one deferrable start operator that
  waits for its own campaign (its start answer must survive the deferral).
* ``kore_e2e_kill``: a deferrable start operator with ``stop_on_kill`` on a campaign that never
  completes, for the test to mark failed while it is deferred.
* ``kore_e2e_quick``: ``KORE_E2E_QUICK_WAITS`` mapped deferrable sensors (``cd-e2e-quick-0000``...)
  polling every ``KORE_E2E_QUICK_POLL`` seconds, plus a deferrable start operator
  (``cd-e2e-quick-start``), on campaigns done by the trigger's first read: waits that end
  seconds after deferring (Airflow's defer race).
"""

from __future__ import annotations

import os

from airflow.sdk import DAG

from airflow_provider_kore.operators.campaign import KoreStartSmsCampaignOperator
from airflow_provider_kore.sensors.campaign import KoreCampaignStatusSensor

WAITS = int(os.environ.get("KORE_E2E_WAITS", "40"))
POLL = float(os.environ.get("KORE_E2E_POLL", "1"))
QUICK_WAITS = int(os.environ.get("KORE_E2E_QUICK_WAITS", "16"))
QUICK_POLL = float(os.environ.get("KORE_E2E_QUICK_POLL", "2"))

with DAG(dag_id="kore_e2e_fanout", schedule=None, catchup=False, tags=["kore", "e2e"]):
    KoreCampaignStatusSensor.partial(
        task_id="wait",
        deferrable=True,
        poke_interval=POLL,
        timeout=300,
    ).expand(campaign_id=[f"cd-e2e-wait-{i:04d}" for i in range(WAITS)])
    KoreStartSmsCampaignOperator(
        task_id="start_and_wait",
        campaign_id="cd-e2e-start-0001",
        wait_for_completion=True,
        deferrable=True,
        poll_interval=POLL,
        timeout=300,
    )

with DAG(dag_id="kore_e2e_kill", schedule=None, catchup=False, tags=["kore", "e2e"]):
    KoreStartSmsCampaignOperator(
        task_id="start_and_wait",
        campaign_id="cd-e2e-kill-0001",
        wait_for_completion=True,
        deferrable=True,
        poll_interval=POLL,
        timeout=300,
        stop_on_kill=True,
    )

with DAG(dag_id="kore_e2e_quick", schedule=None, catchup=False, tags=["kore", "e2e"]):
    KoreCampaignStatusSensor.partial(
        task_id="wait",
        deferrable=True,
        poke_interval=QUICK_POLL,
        timeout=300,
    ).expand(campaign_id=[f"cd-e2e-quick-{i:04d}" for i in range(QUICK_WAITS)])
    KoreStartSmsCampaignOperator(
        task_id="start_and_wait",
        campaign_id="cd-e2e-quick-start",
        wait_for_completion=True,
        deferrable=True,
        poll_interval=QUICK_POLL,
        timeout=300,
    )
