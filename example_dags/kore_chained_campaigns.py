"""Two SMS campaigns in a row: a follow-up starts only once the welcome campaign has completed.

Shows the start operator waiting by itself (``wait_for_completion=True``) and campaigns chained
through XCom: ``start_welcome`` returns ``{"campaign_id", "status", "stream_id", ...}``;
``pick_follow_up`` reads it and returns the follow-up's id, which ``start_follow_up`` takes
as its ``campaign_id``. The follow-up is sent on the same bot (``stream_id``) as the welcome
campaign, through a template reading the first task's XCom.

Runs on weekday mornings at 09:30 London time; the default ids are the simulator's.
"""

from __future__ import annotations

import os
from typing import Any

import pendulum
from airflow.sdk import DAG, chain, task

from airflow_provider_kore.operators.campaign import KoreStartSmsCampaignOperator

POLL_SECONDS = float(os.environ.get("KORE_DEMO_POLL_INTERVAL", "30"))

with DAG(
    dag_id="kore_chained_campaigns",
    description="Welcome SMS campaign, then a follow-up once it has completed",
    schedule="30 9 * * 1-5",
    start_date=pendulum.datetime(2026, 1, 1, tz="Europe/London"),
    catchup=False,
    max_active_runs=1,
    params={"welcome_campaign_id": "cd-sms-welcome-0001", "follow_up_campaign_id": "cd-sms-followup-0002"},
    tags=["kore", "example"],
    doc_md=__doc__,
):
    start_welcome = KoreStartSmsCampaignOperator(
        task_id="start_welcome",
        campaign_id="{{ params.welcome_campaign_id }}",
        wait_for_completion=True,
        poll_interval=POLL_SECONDS,
        timeout=2 * 60 * 60,
        stop_on_kill=True,  # do not leave it running if the wait times out or the task is killed
    )

    @task
    def pick_follow_up(welcome: dict[str, Any], params: dict[str, Any] | None = None) -> str:
        """Log how the welcome campaign ended and name the campaign to start next."""
        print(f"Welcome campaign {welcome['campaign_id']} ended {welcome['status']} on bot {welcome['stream_id']}")
        return str((params or {})["follow_up_campaign_id"])

    start_follow_up = KoreStartSmsCampaignOperator(
        task_id="start_follow_up",
        campaign_id=pick_follow_up(start_welcome.output),
        stream_id="{{ ti.xcom_pull(task_ids='start_welcome')['stream_id'] }}",
    )

    chain(start_welcome, start_follow_up)
