"""A DAG of your own, as ``docs/examples/test_my_dag.py`` tests it offline against the simulator."""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, chain

from airflow_provider_kore.operators.campaign import KoreStartSmsCampaignOperator
from airflow_provider_kore.sensors.campaign import KoreCampaignStatusSensor

with DAG(
    dag_id="my_campaign_dag",
    schedule="0 8 * * 1-5",
    start_date=pendulum.datetime(2026, 1, 1, tz="America/New_York"),
    catchup=False,
    params={"sms_campaign_id": "cd-my-campaign"},
):
    start = KoreStartSmsCampaignOperator(task_id="start_sms", campaign_id="{{ params.sms_campaign_id }}")
    wait = KoreCampaignStatusSensor(
        task_id="wait_completed",
        campaign_id="{{ params.sms_campaign_id }}",
        target_statuses=["Completed"],
        poke_interval=1,
        timeout=120,
    )
    chain(start, wait)
