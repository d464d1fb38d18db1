"""Campaign completion as an Airflow Asset: a downstream DAG runs when a campaign completes.

* ``kore_campaign_assets_producer`` starts the welcome SMS campaign and waits for it; its wait
  task has the Asset ``kore://campaigns/cd-sms-welcome-0001/completed`` as an outlet, so Airflow
  records an asset event when the campaign reaches ``Completed``.
* ``kore_campaign_assets_consumer`` is scheduled on that Asset: each completion starts the
  follow-up SMS campaign, with no sensor and no cross-DAG polling.

The Asset stands for one campaign, so the producer's campaign id is fixed here rather than a
param (a run on another id would emit a false event); the consumer's follow-up id is a param.
The producer runs on weekday mornings at 07:00 Berlin time; the ids are the simulator's.
"""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import DAG, Asset, chain

from airflow_provider_kore.operators.campaign import KoreStartSmsCampaignOperator
from airflow_provider_kore.sensors.campaign import KoreCampaignStatusSensor

POLL_SECONDS = float(os.environ.get("KORE_DEMO_POLL_INTERVAL", "30"))
WELCOME_CAMPAIGN_ID = "cd-sms-welcome-0001"
WELCOME_COMPLETED = Asset(
    uri=f"kore://campaigns/{WELCOME_CAMPAIGN_ID}/completed",
    name="kore_welcome_campaign_completed",
)

with DAG(
    dag_id="kore_campaign_assets_producer",
    description="Start the welcome SMS campaign; emit an asset event when it completes",
    schedule="0 7 * * 1-5",
    start_date=pendulum.datetime(2026, 1, 1, tz="Europe/Berlin"),
    catchup=False,
    max_active_runs=1,
    tags=["kore", "example"],
    doc_md=__doc__,
):
    start_welcome = KoreStartSmsCampaignOperator(task_id="start_welcome", campaign_id=WELCOME_CAMPAIGN_ID)
    welcome_completed = KoreCampaignStatusSensor(
        task_id="wait_for_welcome_completed",
        campaign_id=WELCOME_CAMPAIGN_ID,
        target_statuses=["Completed"],
        poke_interval=POLL_SECONDS,
        timeout=4 * 60 * 60,
        outlets=[WELCOME_COMPLETED],
    )
    chain(start_welcome, welcome_completed)

with DAG(
    dag_id="kore_campaign_assets_consumer",
    description="Start the follow-up SMS campaign whenever the welcome campaign completes",
    schedule=[WELCOME_COMPLETED],
    start_date=pendulum.datetime(2026, 1, 1, tz="Europe/Berlin"),
    catchup=False,
    params={"follow_up_campaign_id": "cd-sms-followup-0002"},
    tags=["kore", "example"],
    doc_md=__doc__,
):
    KoreStartSmsCampaignOperator(task_id="start_follow_up", campaign_id="{{ params.follow_up_campaign_id }}")
