"""The example DAGs parse in a DagBag, carry real schedules, and are wired task to task as documented.

Running them end to end against the simulator is the end-to-end suite's job.
"""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pendulum
import pytest

from airflow_provider_kore.operators.campaign import (
    KoreStartCampaignOperator,
    KoreStartSmsCampaignOperator,
    KoreStopVoiceCampaignOperator,
)
from airflow_provider_kore.operators.contacts import KoreLoadContactsOperator
from airflow_provider_kore.operators.results import KoreExportCampaignResultsOperator
from airflow_provider_kore.sensors.campaign import KoreCampaignStatusSensor
from airflow_provider_kore.testing.simulator import DEFAULT_CAMPAIGNS

EXAMPLE_DAGS = Path(__file__).resolve().parent.parent / "example_dags"
SEEDED_IDS = {campaign_id for campaign_id, _, _ in DEFAULT_CAMPAIGNS}
SEEDED_NAMES = {name for _, _, name in DEFAULT_CAMPAIGNS}
CRON_DAGS = {
    "kore_campaign_pipeline": ("0 8 * * 1-5", "America/New_York"),
    "kore_chained_campaigns": ("30 9 * * 1-5", "Europe/London"),
    "kore_campaign_assets_producer": ("0 7 * * 1-5", "Europe/Berlin"),
    "kore_nightly_outreach": ("0 19 * * *", "America/New_York"),
}
ASSET_URI = "kore://campaigns/cd-sms-welcome-0001/completed"


@pytest.fixture(scope="module")
def dagbag():
    try:  # Airflow 3.1+
        from airflow.dag_processing.dagbag import DagBag
    except ImportError:  # Airflow 3.0
        from airflow.models import DagBag  # type: ignore[no-redef,attr-defined,unused-ignore]

    kwargs = {"include_examples": False} if "include_examples" in inspect.signature(DagBag).parameters else {}
    return DagBag(dag_folder=str(EXAMPLE_DAGS), **kwargs)


def test_every_example_dag_imports_without_errors(dagbag):
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) == {*CRON_DAGS, "kore_campaign_assets_consumer"}
    assert {Path(dag.fileloc).name for dag in dagbag.dags.values()} == {p.name for p in EXAMPLE_DAGS.glob("*.py")}


@pytest.mark.parametrize(("dag_id", "expected"), sorted(CRON_DAGS.items()))
def test_cron_schedule_in_a_named_timezone(dagbag, dag_id, expected):
    dag = dagbag.dags[dag_id]
    cron, zone = expected
    assert dag.schedule == cron
    assert type(dag.timetable).__name__ == "CronTriggerTimetable"
    assert str(dag.timezone) == zone
    assert dag.start_date == pendulum.datetime(2026, 1, 1, tz=zone)
    assert dag.catchup is False


def test_consumer_is_scheduled_on_the_completion_asset(dagbag):
    consumer = dagbag.dags["kore_campaign_assets_consumer"]
    assert [asset.uri for asset in consumer.schedule] == [ASSET_URI]
    producer_sensor = dagbag.dags["kore_campaign_assets_producer"].get_task("wait_for_welcome_completed")
    assert isinstance(producer_sensor, KoreCampaignStatusSensor)
    assert [asset.uri for asset in producer_sensor.outlets] == [ASSET_URI]


def edges(dag):
    return {(task.task_id, down) for task in dag.tasks for down in task.downstream_task_ids}


def test_pipeline_tasks_and_order(dagbag):
    dag = dagbag.dags["kore_campaign_pipeline"]
    start, wait, stop = (
        dag.get_task(t) for t in ("start_sms_campaign", "wait_for_sms_completed", "stop_voice_campaign")
    )
    assert isinstance(start, KoreStartSmsCampaignOperator)
    assert start.campaign_type == "sms"
    assert isinstance(wait, KoreCampaignStatusSensor)
    assert list(wait.target_statuses) == ["Completed"]
    assert isinstance(stop, KoreStopVoiceCampaignOperator)
    assert stop.campaign_type == "voice"
    assert edges(dag) == {
        ("start_sms_campaign", "wait_for_sms_completed"),
        ("wait_for_sms_completed", "stop_voice_campaign"),
    }
    assert start.retries > 0  # the start is retry-safe, so the example lets Airflow retry it


def test_chained_campaigns_tasks_and_order(dagbag):
    dag = dagbag.dags["kore_chained_campaigns"]
    welcome = dag.get_task("start_welcome")
    assert isinstance(welcome, KoreStartCampaignOperator)
    assert welcome.wait_for_completion is True
    assert welcome.stop_on_kill is True
    assert "xcom_pull(task_ids='start_welcome')" in dag.get_task("start_follow_up").stream_id
    assert edges(dag) == {
        ("start_welcome", "pick_follow_up"),
        ("start_welcome", "start_follow_up"),
        ("pick_follow_up", "start_follow_up"),
    }


def test_assets_dags_tasks_and_order(dagbag):
    assert edges(dagbag.dags["kore_campaign_assets_producer"]) == {("start_welcome", "wait_for_welcome_completed")}
    assert [t.task_id for t in dagbag.dags["kore_campaign_assets_consumer"].tasks] == ["start_follow_up"]


def test_default_campaign_ids_are_the_simulators(dagbag):
    """With their default params, the examples run against the simulator's seeded campaigns."""
    seen = set()
    for dag in dagbag.dags.values():
        params = {key: dag.params[key] for key in dag.params}
        for key, value in params.items():
            if key.endswith("campaign_id"):
                assert value in SEEDED_IDS, (dag.dag_id, key)
        for task in dag.tasks:
            campaign_id = getattr(task, "campaign_id", None)
            if getattr(task, "campaign_name", None) is not None:
                assert task.campaign_name in SEEDED_NAMES, (dag.dag_id, task.task_id)
            if isinstance(campaign_id, str) and "xcom_pull" not in campaign_id:
                rendered = task.render_template(campaign_id, {"params": params})
                assert rendered in SEEDED_IDS, (dag.dag_id, task.task_id)
                seen.add(rendered)
    assert seen == SEEDED_IDS


def test_dags_serialize_for_the_scheduler(dagbag):
    import airflow.serialization.serialized_objects as serialized

    serializer = getattr(serialized, "DagSerialization", None) or serialized.SerializedDAG
    for dag in dagbag.dags.values():
        restored = serializer.from_dict(serializer.to_dict(dag))
        assert set(restored.task_dict) == set(dag.task_dict)


def test_parsing_the_examples_loads_no_http_or_jwt_library():
    """DAG files are parsed over and over: the provider must not import its heavy clients there."""
    # Airflow's own first operator loads modules of its own (3.0 pulls in its API server, with
    # jwt and aiohttp): build one plain task first, so only what the examples add is counted.
    code = (
        "import runpy, sys, airflow.sdk\n"
        "with airflow.sdk.DAG('warm_up', schedule=None):\n"
        "    airflow.sdk.BaseOperator(task_id='plain')\n"
        "before = set(sys.modules)\n"
        f"for path in sorted(__import__('pathlib').Path({str(EXAMPLE_DAGS)!r}).glob('*.py')):\n"
        "    runpy.run_path(str(path))\n"
        "heavy = ('requests', 'jwt', 'aiohttp', 'airflow.triggers.base', 'airflow_provider_kore.hooks')\n"
        "print(sorted(m for m in set(sys.modules) - before if m.split('.')[0] in heavy or m.startswith(heavy)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_nightly_outreach_tasks_and_order(dagbag):
    dag = dagbag.dags["kore_nightly_outreach"]
    load, start, wait, export = (
        dag.get_task(t) for t in ("load_contacts", "start_renewal", "wait_for_renewal", "export_outcomes")
    )
    assert isinstance(load, KoreLoadContactsOperator)
    assert load.source.startswith("file://")
    assert load.source.endswith("/kore/contacts/{{ ds }}/tonight.csv")
    assert isinstance(start, KoreStartCampaignOperator)
    assert (start.campaign_id, start.campaign_type) == (None, "voice")
    assert isinstance(wait, KoreCampaignStatusSensor)
    assert wait.deferrable is True
    assert "xcom_pull(task_ids='start_renewal')" in wait.campaign_id
    assert isinstance(export, KoreExportCampaignResultsOperator)
    assert export.destination.endswith("/kore/results/{{ ds }}/renewal.csv")
    assert [asset.uri for asset in export.outlets] == ["kore://campaigns/policy-renewal/outcomes"]
    assert edges(dag) == {
        ("load_contacts", "start_renewal"),
        ("start_renewal", "wait_for_renewal"),
        ("wait_for_renewal", "export_outcomes"),
    }
