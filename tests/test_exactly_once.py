"""A campaign is started exactly once, whatever the network does to the start's answer.

The whole matrix: every way of losing the answer x every status the campaign can show after
the start, through the hook alone and through the start operator with a task retry. Kore's
``updatedAt`` never changes on start here (its pages call it the definition's last update),
so the retry rule cannot lean on it.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
import requests
from conftest import RUN_START

from airflow_provider_kore.exceptions import KoreOutcomeUnknownError
from airflow_provider_kore.hooks.kore import KoreHook
from airflow_provider_kore.operators.campaign import KoreStartCampaignOperator

BASE = "https://kore.test/campaign/api/v2/public/st-1/campaign"
START_URL = f"{BASE}/cd-1?campaignType=sms&trigger=play"
STATUS_URL = f"{BASE}/cd-1/status?accountId=acc-1&view=status"
LIST_URL = f"{BASE}/getAllCampaignDetails?accountId=acc-1"
DEFINITION_UPDATED = "2025-11-01T09:00:00.000Z"  # long before the run; never changes on start

#: Ways the answer to a start can be lost after Kore may have acted on it.
LOST = {
    "500": {"status_code": 500, "json": {"errors": [{"msg": "Internal error"}]}},
    "502": {"status_code": 502, "text": "<html>Bad gateway</html>"},
    "504": {"status_code": 504, "text": "<html>Gateway timeout</html>"},
    "read-timeout": {"exc": requests.exceptions.ReadTimeout},
    "dropped": {"exc": requests.exceptions.ConnectionError("('Connection aborted.', RemoteDisconnected())")},
}
#: What the campaign shows after a start that took effect.
AFTER_START = ["Active", "Completed", "Scheduled", "Paused", "Preparing", "Dispatching"]


@pytest.fixture
def hook(kore_env_connection):
    hook = KoreHook()
    hook._sleep = lambda seconds: None
    return hook


def status_answer(status: str) -> dict:
    return {"json": {"status": "success", "data": {"id": "cd-1", "status": status, "name": "Welcome"}}}


def list_answer(instance_updated: str | None) -> dict:
    row = {"id": "cd-1", "name": "Welcome", "status": "Completed", "updatedAt": DEFINITION_UPDATED}
    if instance_updated is not None:
        row["campaignInstanceUpdatedAt"] = instance_updated
    return {"json": {"status": "success", "data": {"results": [row], "hasMore": False, "totalPages": 1}}}


def starts(requests_mock) -> int:
    return sum(1 for r in requests_mock.request_history if r.method == "POST" and "trigger=play" in r.url)


@pytest.mark.parametrize("status", AFTER_START)
@pytest.mark.parametrize("way", LOST)
def test_the_hook_never_resends_a_start_whose_answer_was_lost(hook, requests_mock, way, status):
    requests_mock.post(START_URL, **LOST[way])
    requests_mock.post(STATUS_URL, **status_answer(status))
    with pytest.raises(KoreOutcomeUnknownError) as caught:
        hook.start_campaign("cd-1", campaign_type="sms")
    assert starts(requests_mock) == 1
    assert caught.value.status == status
    assert repr(status) in str(caught.value)  # the error names what the campaign shows now


@pytest.mark.parametrize("status", AFTER_START)
@pytest.mark.parametrize("way", LOST)
def test_a_task_retry_after_a_lost_start_that_took_effect_does_not_start_again(
    requests_mock, kore_env_connection, airflow_context, way, status
):
    requests_mock.post(START_URL, [LOST[way], {"json": {"status": "Active", "message": "Campaign Started"}}])
    requests_mock.post(STATUS_URL, **status_answer(status))
    # The campaign's last execution was updated after the DAG run began: the lost start ran.
    requests_mock.post(LIST_URL, **list_answer((RUN_START + timedelta(minutes=3)).isoformat()))
    operator = KoreStartCampaignOperator(task_id="start", campaign_id="cd-1", campaign_type="sms")
    with pytest.raises(KoreOutcomeUnknownError):
        operator.execute(airflow_context(try_number=1))

    retry = KoreStartCampaignOperator(task_id="start", campaign_id="cd-1", campaign_type="sms")
    result = retry.execute(airflow_context(try_number=2))
    assert starts(requests_mock) == 1
    assert result["started"] is False
    assert result["status"] == status


@pytest.mark.parametrize("way", ["502-before-acting", "dropped-before-read"])
def test_a_start_kore_never_acted_on_is_made_by_the_retry(requests_mock, kore_env_connection, airflow_context, way):
    lost = LOST["502"] if way == "502-before-acting" else LOST["dropped"]
    requests_mock.post(START_URL, [lost, {"json": {"status": "Active", "message": "Campaign Started"}}])
    requests_mock.post(STATUS_URL, **status_answer("Ready"))
    operator = KoreStartCampaignOperator(task_id="start", campaign_id="cd-1", campaign_type="sms")
    with pytest.raises(KoreOutcomeUnknownError):
        operator.execute(airflow_context(try_number=1))
    result = KoreStartCampaignOperator(task_id="start", campaign_id="cd-1", campaign_type="sms").execute(
        airflow_context(try_number=2)
    )
    assert starts(requests_mock) == 2  # the lost one (never acted on) and the retry's
    assert result["started"] is True


@pytest.mark.parametrize("answer", [{"status_code": 503}, {"exc": requests.exceptions.ConnectTimeout}])
def test_a_start_kore_refused_is_sent_again_by_the_hook(kore_env_connection, requests_mock, answer):
    hook = KoreHook(max_retries=2)
    hook._sleep = lambda seconds: None
    requests_mock.post(START_URL, [answer, {"json": {"status": "Active", "message": "Campaign Started"}}])
    assert hook.start_campaign("cd-1", campaign_type="sms")["status"] == "Active"
    assert starts(requests_mock) == 2


@pytest.mark.parametrize(
    "instance_updated",
    [(RUN_START - timedelta(days=1)).isoformat(), None],
    ids=["last-ran-yesterday", "no-execution-time"],
)
def test_a_retry_starts_a_campaign_that_only_finished_before_this_run(
    requests_mock, kore_env_connection, airflow_context, instance_updated
):
    """Yesterday's run left it Completed; this run's first start was never acted on (a 502)."""
    requests_mock.post(START_URL, json={"status": "Active", "message": "Campaign Started"})
    requests_mock.post(STATUS_URL, **status_answer("Completed"))
    requests_mock.post(LIST_URL, **list_answer(instance_updated))
    result = KoreStartCampaignOperator(task_id="start", campaign_id="cd-1", campaign_type="sms").execute(
        airflow_context(try_number=2)
    )
    assert result["started"] is True
    assert starts(requests_mock) == 1
