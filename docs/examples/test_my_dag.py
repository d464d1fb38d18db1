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
