"""Start an SMS campaign, wait until it completes, then stop a voice campaign.

The provider's main example (``python3 run.py demo`` runs it against the bundled simulator):

1. ``start_sms_campaign`` starts (plays) the SMS campaign named by the ``sms_campaign_id`` param;
2. ``wait_for_sms_completed`` waits until that campaign is ``Completed``; a campaign that is
   ``Stopped`` or ``Failed`` instead fails the task at once. With
   ``[operators] default_deferrable = True`` (the demo sets it) the wait runs in the triggerer
   and holds no worker slot;
3. ``stop_voice_campaign`` stops the voice campaign named by ``voice_campaign_id`` (one that has
   already ended counts as stopped).

Runs on weekday mornings at 08:00 New York time. The default ids are the simulator's seeded
campaigns; pass your own with ``airflow dags trigger -c '{"sms_campaign_id": "cd-..."}'``.
"""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import DAG, chain

from airflow_provider_kore.operators.campaign import KoreStartSmsCampaignOperator, KoreStopVoiceCampaignOperator
from airflow_provider_kore.sensors.campaign import KoreCampaignStatusSensor

# Seconds between status reads; the demo shortens it (Kore counts every read against a rate limit).
POLL_SECONDS = float(os.environ.get("KORE_DEMO_POLL_INTERVAL", "30"))

with DAG(
    dag_id="kore_campaign_pipeline",
    description="Start an SMS campaign, wait for Completed, stop a voice campaign",
    schedule="0 8 * * 1-5",
    start_date=pendulum.datetime(2026, 1, 1, tz="America/New_York"),
    catchup=False,
    max_active_runs=1,
    params={"sms_campaign_id": "cd-sms-welcome-0001", "voice_campaign_id": "cd-voice-renewal-0001"},
    tags=["kore", "example"],
    doc_md=__doc__,
):
    start_sms = KoreStartSmsCampaignOperator(
        task_id="start_sms_campaign",
        campaign_id="{{ params.sms_campaign_id }}",
        retries=2,  # safe: a retry reads the campaign first and never starts it twice
    )
    wait_for_completed = KoreCampaignStatusSensor(
        task_id="wait_for_sms_completed",
        campaign_id="{{ params.sms_campaign_id }}",
        target_statuses=["Completed"],
        poke_interval=POLL_SECONDS,
        timeout=4 * 60 * 60,
    )
    stop_voice = KoreStopVoiceCampaignOperator(
        task_id="stop_voice_campaign",
        campaign_id="{{ params.voice_campaign_id }}",
    )

    chain(start_sms, wait_for_completed, stop_voice)
