"""Nightly outreach: tonight's contacts in, the voice campaign run by name, every contact's outcome out.

1. ``load_contacts`` loads ``$AIRFLOW_HOME/kore/contacts/<ds>/tonight.csv`` (a warehouse export
   with a header row: ``phoneNumber``, ``firstName``, ``lastName``, ...) into the contact list
   the campaign dials. Every row is checked before any is sent; a row without a usable phone
   number fails the task, naming its line (``on_bad_rows="skip"`` would leave it out instead).
2. ``start_renewal`` starts the voice campaign found by its name, so the DAG survives the
   campaign being recreated in Kore.ai with a new id; its XCom carries the id.
3. ``wait_for_renewal`` waits in the triggerer (deferrable) until the campaign is ``Completed``.
4. ``export_outcomes`` writes each contact's outcome to
   ``$AIRFLOW_HOME/kore/results/<ds>/renewal.csv`` (written aside, then moved into place) and
   emits the ``kore_policy_renewal_outcomes`` Asset for the warehouse load downstream.

Runs nightly at 19:00 New York time. The names are the simulator's (``python3 run.py demo``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pendulum
from airflow.sdk import DAG, Asset, chain

from airflow_provider_kore.operators.campaign import KoreStartCampaignOperator
from airflow_provider_kore.operators.contacts import KoreLoadContactsOperator
from airflow_provider_kore.operators.results import KoreExportCampaignResultsOperator
from airflow_provider_kore.sensors.campaign import KoreCampaignStatusSensor

POLL_SECONDS = float(os.environ.get("KORE_DEMO_POLL_INTERVAL", "30"))
KORE_FILES = Path(os.environ.get("AIRFLOW_HOME") or Path.home() / "airflow") / "kore"
CAMPAIGN_NAME = "Policy Renewal Voice Campaign"
CONTACT_LIST = "Policy Renewal Nightly"
OUTCOMES = Asset(uri="kore://campaigns/policy-renewal/outcomes", name="kore_policy_renewal_outcomes")
CAMPAIGN_ID = "{{ ti.xcom_pull(task_ids='start_renewal')['campaign_id'] }}"

with DAG(
    dag_id="kore_nightly_outreach",
    description="Load tonight's contacts, run the renewal campaign by name, export every outcome",
    schedule="0 19 * * *",
    start_date=pendulum.datetime(2026, 1, 1, tz="America/New_York"),
    catchup=False,
    max_active_runs=1,
    tags=["kore", "example"],
    doc_md=__doc__,
):
    load_contacts = KoreLoadContactsOperator(
        task_id="load_contacts",
        contact_list_name=CONTACT_LIST,
        source=f"file://{KORE_FILES}/contacts/{{{{ ds }}}}/tonight.csv",
    )
    start_renewal = KoreStartCampaignOperator(
        task_id="start_renewal",
        campaign_name=CAMPAIGN_NAME,
        campaign_type="voice",
        retries=2,  # safe: a retry reads the campaign first and never starts it twice
    )
    wait_for_renewal = KoreCampaignStatusSensor(
        task_id="wait_for_renewal",
        campaign_id=CAMPAIGN_ID,  # the id the start resolved: no second lookup by name
        target_statuses=["Completed"],
        poke_interval=POLL_SECONDS,
        timeout=6 * 60 * 60,
        deferrable=True,
    )
    export_outcomes = KoreExportCampaignResultsOperator(
        task_id="export_outcomes",
        campaign_id=CAMPAIGN_ID,
        destination=f"file://{KORE_FILES}/results/{{{{ ds }}}}/renewal.csv",
        outlets=[OUTCOMES],
    )

    chain(load_contacts, start_renewal, wait_for_renewal, export_outcomes)
