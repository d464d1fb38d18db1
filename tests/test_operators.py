"""Start / stop operators with a mocked hook: XCom, templating, validation, retries, waiting, kill."""

from __future__ import annotations

import json
import time as real_time
from datetime import datetime, timedelta, timezone
from unittest import mock

import pytest

from airflow_provider_kore._compat import AirflowSensorTimeout

try:
    from airflow.sdk.exceptions import TaskDeferred
except ImportError:  # Airflow 3.0
    from airflow.exceptions import TaskDeferred
from airflow_provider_kore.config import KoreConnectionConfig
from airflow_provider_kore.exceptions import (
    KoreApiError,
    KoreAuthError,
    KoreBadResponseError,
    KoreCampaignStatusError,
    KoreCampaignTimeoutError,
    KoreConfigurationError,
    KoreError,
    KoreNotFoundError,
    KoreRateLimitError,
    KoreServerError,
)
from airflow_provider_kore.hooks.kore import KoreHook
from airflow_provider_kore.operators import campaign as opmod
from airflow_provider_kore.operators.campaign import (
    KoreStartCampaignOperator,
    KoreStartSmsCampaignOperator,
    KoreStopCampaignOperator,
    KoreStopVoiceCampaignOperator,
)
from airflow_provider_kore.waiting import POKE_GRACE

START_ANSWER = {"status": "Active", "message": "Campaign Started", "updatedAt": "2026-01-05T13:05:23.765Z"}
STOP_ANSWER = {
    "status": "Stopped",
    "message": "Campaign Stopped",
    "updatedAt": "2026-01-05T14:01:35.312Z",
    "campaignInstanceId": "cid-1",
}


def fake_hook(statuses=(), stream_id="st-conn"):
    """A KoreHook spec'd mock: start/stop answers as documented; status reads return ``statuses`` in turn.

    ``create_autospec``: a call the real hook would refuse (a wrong name or argument) fails here too.
    """
    hook = mock.create_autospec(KoreHook, instance=True)
    hook.config = KoreConnectionConfig(
        base_url="https://kore.test", client_id="cs-1", client_secret="s" * 20, account_id="acc-1", stream_id=stream_id
    )
    hook.start_campaign.return_value = dict(START_ANSWER)
    hook.stop_campaign.return_value = dict(STOP_ANSWER)
    hook.get_campaign_status.side_effect = [
        s if isinstance(s, BaseException) else {"id": "cd-1", "status": s, "name": "Welcome"} for s in statuses
    ]
    return hook


def start_op(hook=None, **kwargs):
    kwargs.setdefault("task_id", "start")
    kwargs.setdefault("campaign_id", "cd-1")
    op = KoreStartCampaignOperator(**kwargs)
    if hook is not None:
        op.hook = hook  # the cached property's slot: no connection is looked up
    return op


def stop_op(hook=None, **kwargs):
    kwargs.setdefault("task_id", "stop")
    kwargs.setdefault("campaign_id", "cd-1")
    op = KoreStopCampaignOperator(**kwargs)
    if hook is not None:
        op.hook = hook
    return op


class FakeTime:
    """Stands in for the operator module's ``time``: sleeping advances the clock instantly."""

    def __init__(self):
        self.now = 1000.0
        self.epoch = real_time.time() - self.now
        self.sleeps = []

    def monotonic(self):
        return self.now

    def time(self):
        return self.epoch + self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def clock(monkeypatch):
    fake = FakeTime()
    monkeypatch.setattr(opmod, "time", fake)
    return fake


def logged(caplog, capsys):
    """Log text, wherever this Airflow sends task logs (structlog to stdout, or stdlib logging)."""
    captured = capsys.readouterr()
    return caplog.text or captured.out + captured.err  # Airflow 3.0 writes to both: read one


def api_error(cls=KoreApiError, status=400, text="Campaign is not active"):
    return cls(
        f"Kore.ai stop campaign for campaign 'cd-1' failed: HTTP {status}: {text}",
        status_code=status,
        kore_message=text,
    )


# -- start: result, templating, validation ------------------------------------------------------


def test_start_returns_documented_xcom(airflow_context):
    hook = fake_hook()
    result = start_op(hook).execute(airflow_context())

    hook.start_campaign.assert_called_once_with("cd-1", campaign_type="sms", stream_id=None)
    hook.get_campaign_status.assert_not_called()  # a first try just starts
    hook.list_campaigns.assert_not_called()
    assert result == {
        "campaign_id": "cd-1",
        "campaign_type": "sms",
        "stream_id": "st-conn",
        "status": "Active",
        "message": "Campaign Started",
        "updated_at": "2026-01-05T13:05:23.765Z",
        "started": True,
    }
    assert json.loads(json.dumps(result)) == result


def test_start_with_stream_and_instance_id(airflow_context):
    hook = fake_hook()
    hook.start_campaign.return_value = {**START_ANSWER, "campaignInstanceId": "ci-9"}
    result = start_op(hook, stream_id="st-task", campaign_type="VOICE").execute(airflow_context())

    hook.start_campaign.assert_called_once_with("cd-1", campaign_type="voice", stream_id="st-task")
    assert result["stream_id"] == "st-task"
    assert result["campaign_type"] == "voice"
    assert result["campaign_instance_id"] == "ci-9"


def test_stream_id_is_none_when_unresolvable(airflow_context):
    hook = fake_hook()
    type(hook).config = mock.PropertyMock(side_effect=KoreConfigurationError("no stream"))
    assert start_op(hook).execute(airflow_context())["stream_id"] is None


def test_sms_operator_fixes_campaign_type(airflow_context):
    hook = fake_hook()
    op = KoreStartSmsCampaignOperator(task_id="sms", campaign_id="cd-1")
    op.hook = hook
    op.execute(airflow_context())
    assert op.campaign_type == "sms"
    hook.start_campaign.assert_called_once_with("cd-1", campaign_type="sms", stream_id=None)
    with pytest.raises(TypeError, match="campaign_type"):
        KoreStartSmsCampaignOperator(task_id="sms2", campaign_id="cd-1", campaign_type="voice")


def test_template_fields_render(airflow_context):
    op = start_op(
        campaign_id="{{ params.cid }}",
        stream_id="{{ params.sid }}",
        target_statuses=["{{ params.target }}", "Stopped"],
        failure_statuses="{{ params.bad }}",
    )
    fields = {"campaign_id", "campaign_name", "stream_id", "target_statuses", "failure_statuses"}
    assert set(op.template_fields) == fields
    op.render_template_fields(
        airflow_context(params={"cid": "cd-42", "sid": "st-7", "target": "Completed", "bad": "Failed"})
    )

    assert op.campaign_id == "cd-42"
    assert op.stream_id == "st-7"
    assert list(op.target_statuses) == ["Completed", "Stopped"]
    assert op.failure_statuses == "Failed"


def test_rendered_values_are_validated_before_any_call(airflow_context):
    hook = fake_hook()
    op = start_op(hook, campaign_id="{{ params.cid }}")
    op.render_template_fields(airflow_context(params={"cid": "cd/../../admin"}))
    with pytest.raises(KoreConfigurationError, match="campaign_id"):
        op.execute(airflow_context())
    hook.start_campaign.assert_not_called()


def test_rendered_overlapping_statuses_are_refused(airflow_context):
    hook = fake_hook()
    op = start_op(hook, target_statuses="{{ params.t }}", failure_statuses=["Completed"])
    op.render_template_fields(airflow_context(params={"t": "completed"}))
    with pytest.raises(KoreConfigurationError, match="cannot be both"):
        op.execute(airflow_context())
    hook.start_campaign.assert_not_called()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"campaign_type": "email"}, "campaign_type"),
        ({"target_statuses": []}, "target_statuses"),
        ({"target_statuses": ["Completed"], "failure_statuses": ["COMPLETED"]}, "cannot be both"),
        ({"campaign_id": "cd 1"}, "campaign_id"),
        ({"campaign_id": ""}, "campaign_id"),
        ({"stream_id": "st/1"}, "stream_id"),
        ({"poll_interval": 0}, "poll_interval"),
        ({"poll_interval": -5}, "poll_interval"),
        ({"poll_interval": True}, "poll_interval"),
        ({"timeout": -1}, "timeout"),
    ],
)
def test_start_refuses_bad_arguments_at_parse_time(kwargs, match):
    with pytest.raises(KoreConfigurationError, match=match):
        start_op(**kwargs)


def test_templates_and_xcomargs_are_checked_later_not_at_parse_time():
    from airflow.sdk import DAG, task

    with DAG("xcom_ids", schedule=None):

        @task
        def pick() -> str:
            return "cd-1"

        op = start_op(campaign_id=pick(), stream_id="{{ var.value.stream }}", target_statuses="{{ params.t }}")
        templated = start_op(task_id="templated", campaign_id="{{ params.cid }}")
    assert op.upstream_task_ids == {"pick"}
    assert templated.campaign_id == "{{ params.cid }}"


def test_accepts_timedelta_intervals():
    op = start_op(poll_interval=timedelta(seconds=5), timeout=timedelta(minutes=2))
    assert (op.poll_interval, op.timeout) == (5.0, 120.0)


def test_stop_refuses_bad_arguments_at_parse_time():
    with pytest.raises(KoreConfigurationError, match="campaign_type"):
        stop_op(campaign_type="fax")
    with pytest.raises(KoreConfigurationError, match="campaign_id"):
        stop_op(campaign_id="cd?x=1")
    with pytest.raises(TypeError, match="campaign_type"):
        KoreStopVoiceCampaignOperator(task_id="v", campaign_id="cd-1", campaign_type="sms")


# -- retries ------------------------------------------------------------------------------------


def retry_hook(status, instance_updated=None, *, updated_at="2026-01-05T13:30:00.000Z", listed=True):
    """A hook for a retry: the campaign shows ``status``; Kore's list row says when its last run changed.

    ``updatedAt`` is the definition's last update (Kore's pages): set after the run began here, it
    must never be taken as evidence of a start.
    """
    hook = fake_hook(statuses=[status])
    row = {"id": "cd-1", "name": "Welcome", "status": status, "updatedAt": updated_at}
    if instance_updated is not None:
        row["campaignInstanceUpdatedAt"] = instance_updated
    other = {"id": "cd-other", "name": "Other", "campaignInstanceUpdatedAt": "2026-01-05T13:40:00Z"}
    hook.list_campaigns.side_effect = lambda *a, **k: iter([other, row] if listed else [other])
    return hook


@pytest.mark.parametrize("status", ["Active", "Scheduled", "Paused", "Preparing", "Dispatching", "active"])
def test_retry_with_a_running_or_unknown_status_does_not_start_again(airflow_context, status):
    hook = retry_hook(status)
    result = start_op(hook).execute(airflow_context(try_number=2))

    hook.start_campaign.assert_not_called()
    hook.get_campaign_status.assert_called_once_with("cd-1", stream_id=None)
    hook.list_campaigns.assert_not_called()  # the status alone is the evidence
    assert result["started"] is False
    assert result["status"] == status
    assert "not started again" in result["message"]


def test_retry_with_a_ready_campaign_starts_it(airflow_context):
    hook = retry_hook("Ready", "2026-01-05T13:20:00Z")
    result = start_op(hook).execute(airflow_context(try_number=2))
    hook.start_campaign.assert_called_once_with("cd-1", campaign_type="sms", stream_id=None)
    hook.list_campaigns.assert_not_called()
    assert result["started"] is True


@pytest.mark.parametrize("status", ["Completed", "Stopped", "completed", "Failed"])
def test_retry_after_this_run_started_it_does_not_start_again(airflow_context, status):
    hook = retry_hook(status, "2026-01-05T13:20:00.123Z")  # after RUN_START (13:00Z)
    result = start_op(hook, stream_id="st-4").execute(airflow_context(try_number=3))

    hook.start_campaign.assert_not_called()
    hook.list_campaigns.assert_called_once_with("sms", stream_id="st-4")
    assert result["started"] is False
    assert result["status"] == status
    assert "2026-01-05T13:20:00.123" in result["message"]


def test_retry_with_campaign_finished_before_this_run_starts_it(airflow_context):
    hook = retry_hook("Completed", "2026-01-04T08:00:00.000Z")  # yesterday's run
    result = start_op(hook).execute(airflow_context(try_number=2))

    hook.start_campaign.assert_called_once()
    assert result["started"] is True


def test_retry_never_takes_updated_at_for_evidence(airflow_context):
    # updatedAt moved after the run began (someone edited the definition), the last run is old.
    hook = retry_hook("Completed", "2026-01-04T08:00:00Z", updated_at="2026-01-05T13:50:00Z")
    start_op(hook).execute(airflow_context(try_number=2))
    hook.start_campaign.assert_called_once()


def test_retry_with_offset_timestamp_compares_instants(airflow_context):
    # 08:30-05:00 is 13:30Z: after the run began at 13:00Z.
    hook = retry_hook("Completed", "2026-01-05T08:30:00-05:00")
    start_op(hook).execute(airflow_context(try_number=2))
    hook.start_campaign.assert_not_called()


@pytest.mark.parametrize(
    ("instance_updated", "listed", "run_start"),
    [
        ("not a date", True, datetime(2026, 1, 5, 13, tzinfo=timezone.utc)),
        ("2026-13-05T13:20:00Z", True, datetime(2026, 1, 5, 13, tzinfo=timezone.utc)),
        (None, True, datetime(2026, 1, 5, 13, tzinfo=timezone.utc)),
        ("2026-01-05T13:20:00Z", False, datetime(2026, 1, 5, 13, tzinfo=timezone.utc)),
        ("2026-01-05T13:20:00Z", True, None),
    ],
    ids=["unreadable", "impossible date", "no instance time", "not in the list", "no run start"],
)
def test_retry_of_a_terminal_campaign_starts_when_no_earlier_start_is_proven(
    airflow_context, instance_updated, listed, run_start
):
    hook = retry_hook("Completed", instance_updated, listed=listed)
    start_op(hook).execute(airflow_context(try_number=2, run_start=run_start))
    hook.start_campaign.assert_called_once()


def test_retry_compares_against_naive_run_start_as_utc(airflow_context):
    hook = retry_hook("Completed", "2026-01-05T13:20:00Z")
    start_op(hook).execute(airflow_context(try_number=2, run_start=datetime(2026, 1, 5, 13, 0)))
    hook.start_campaign.assert_not_called()


# -- stop ---------------------------------------------------------------------------------------


def test_stop_returns_documented_xcom(airflow_context):
    hook = fake_hook()
    result = stop_op(hook).execute(airflow_context())

    hook.stop_campaign.assert_called_once_with(
        "cd-1", campaign_type="voice", stream_id=None, deadline=None, priority=False
    )
    assert result == {
        "campaign_id": "cd-1",
        "campaign_type": "voice",
        "stream_id": "st-conn",
        "status": "Stopped",
        "message": "Campaign Stopped",
        "updated_at": "2026-01-05T14:01:35.312Z",
        "campaign_instance_id": "cid-1",
        "stopped": True,
    }
    assert json.loads(json.dumps(result)) == result


def test_stop_voice_operator_and_sms_stop(airflow_context):
    hook = fake_hook()
    op = KoreStopVoiceCampaignOperator(task_id="v", campaign_id="cd-1", stream_id="st-2")
    op.hook = hook
    op.execute(airflow_context())
    hook.stop_campaign.assert_called_once_with(
        "cd-1", campaign_type="voice", stream_id="st-2", deadline=None, priority=False
    )
    hook2 = fake_hook()
    stop_op(hook2, campaign_type="sms").execute(airflow_context())
    hook2.stop_campaign.assert_called_once_with(
        "cd-1", campaign_type="sms", stream_id=None, deadline=None, priority=False
    )


@pytest.mark.parametrize("status", ["Stopped", "Completed", "FAILED"])
def test_stop_of_an_ended_campaign_succeeds_quietly(airflow_context, caplog, capsys, status):
    hook = fake_hook(statuses=[status])
    hook.stop_campaign.side_effect = api_error()
    with caplog.at_level("INFO"):
        result = stop_op(hook).execute(airflow_context())

    assert result["status"] == status
    assert result["stopped"] is False
    assert "nothing to stop" in result["message"]
    assert f"already {status}" in logged(caplog, capsys)


@pytest.mark.parametrize("error_cls", [KoreApiError, KoreBadResponseError])
def test_stop_refused_for_a_running_campaign_is_raised(airflow_context, error_cls):
    hook = fake_hook(statuses=["Active"])
    hook.stop_campaign.side_effect = api_error(error_cls)
    with pytest.raises(error_cls):
        stop_op(hook).execute(airflow_context())


@pytest.mark.parametrize(
    "error",
    [
        api_error(KoreAuthError, 401, "Invalid token"),
        api_error(KoreServerError, 503, "Unavailable"),
    ],
)
def test_stop_auth_and_transient_errors_are_raised_without_a_status_read(airflow_context, error):
    hook = fake_hook(statuses=["Stopped"])
    hook.stop_campaign.side_effect = error
    with pytest.raises(type(error)):
        stop_op(hook).execute(airflow_context())
    hook.get_campaign_status.assert_not_called()


def test_stop_raises_the_stop_error_when_the_status_cannot_be_read(airflow_context):
    hook = fake_hook(statuses=[KoreNotFoundError("Kore.ai get campaign status for campaign 'cd-1' failed: HTTP 404")])
    hook.stop_campaign.side_effect = api_error(KoreNotFoundError, 404, "Campaign not found")
    with pytest.raises(KoreNotFoundError, match="stop campaign"):
        stop_op(hook).execute(airflow_context())


# -- the hook's deadline -------------------------------------------------------------------------


@pytest.mark.parametrize("make", [start_op, stop_op])
def test_the_hook_gives_up_at_the_tasks_execution_timeout(make):
    before = real_time.time()
    hook = make(execution_timeout=timedelta(minutes=10)).hook
    assert isinstance(hook, KoreHook)
    assert before + 600 <= hook.deadline <= real_time.time() + 600
    assert make(task_id="no_limit").hook.deadline is None


# -- wait_for_completion, synchronous -----------------------------------------------------------


def test_wait_sync_until_completed(airflow_context, clock):
    hook = fake_hook(statuses=["Active", "Active", "Completed"])
    result = start_op(hook, wait_for_completion=True, deferrable=False, poll_interval=10).execute(airflow_context())

    assert result["status"] == "Completed"
    assert result["start_status"] == "Active"
    assert result["started"] is True
    assert clock.sleeps == [10, 10]
    assert hook.get_campaign_status.call_count == 3
    assert json.loads(json.dumps(result)) == result


def test_wait_sync_bounds_each_read_by_the_interval_plus_the_grace(airflow_context, clock):
    hook = fake_hook(statuses=["Active", "Completed"])
    start_op(hook, wait_for_completion=True, deferrable=False, poll_interval=10).execute(airflow_context())
    first, second = hook.get_campaign_status.call_args_list
    assert first == mock.call("cd-1", stream_id=None, deadline=clock.epoch + 1000 + 10 + POKE_GRACE)
    assert second.kwargs["deadline"] == clock.epoch + 1010 + 10 + POKE_GRACE


def test_wait_sync_fails_fast_on_a_non_target_terminal_status(airflow_context, clock):
    hook = fake_hook(statuses=["Active", "Stopped"])
    op = start_op(hook, wait_for_completion=True, deferrable=False, poll_interval=10)
    with pytest.raises(KoreCampaignStatusError, match="'Stopped'") as err:
        op.execute(airflow_context())
    assert err.value.status == "Stopped"
    assert hook.get_campaign_status.call_count == 2


def test_wait_sync_custom_target_and_failure_statuses(airflow_context, clock):
    hook = fake_hook(statuses=["Scheduled", "Paused"])
    op = start_op(
        hook, wait_for_completion=True, deferrable=False, target_statuses="Active", failure_statuses=["paused"]
    )
    with pytest.raises(KoreCampaignStatusError, match="failure status"):
        op.execute(airflow_context())


@pytest.mark.parametrize("stop_on_kill", [False, True])
def test_wait_sync_timeout(airflow_context, clock, stop_on_kill):
    hook = fake_hook(statuses=["Active"] * 10)
    op = start_op(
        hook, wait_for_completion=True, deferrable=False, poll_interval=10, timeout=25, stop_on_kill=stop_on_kill
    )
    with pytest.raises(KoreCampaignTimeoutError, match="within 25s") as err:
        op.execute(airflow_context())

    assert isinstance(err.value, AirflowSensorTimeout)
    assert clock.sleeps == [10, 10, 5]  # the last read is made at the deadline
    assert hook.get_campaign_status.call_count == 4
    if stop_on_kill:
        hook.stop_campaign.assert_called_once_with(
            "cd-1", campaign_type="sms", stream_id=None, deadline=clock.time() + 25, priority=True
        )
    else:
        hook.stop_campaign.assert_not_called()


def test_wait_sync_tolerates_a_few_transient_errors(airflow_context, clock):
    flaky = KoreServerError("Kore.ai get campaign status for campaign 'cd-1' failed: HTTP 503", status_code=503)
    hook = fake_hook(statuses=[flaky, flaky, "Completed"])
    result = start_op(hook, wait_for_completion=True, deferrable=False).execute(airflow_context())
    assert result["status"] == "Completed"


def test_wait_sync_rides_out_an_outage_until_its_timeout(airflow_context, clock):
    flaky = KoreServerError("Kore.ai get campaign status for campaign 'cd-1' failed: HTTP 503", status_code=503)
    limited = KoreRateLimitError("Kore.ai get campaign status: no turn before the deadline")
    hook = fake_hook(statuses=[flaky, limited] * 4)
    op = start_op(hook, wait_for_completion=True, deferrable=False, poll_interval=10, timeout=70)
    with pytest.raises(KoreCampaignTimeoutError, match="last status None"):
        op.execute(airflow_context())
    assert hook.get_campaign_status.call_count == 8  # a transient failure is "not yet", not the end


def test_wait_sync_raises_a_non_transient_error_at_once(airflow_context, clock):
    hook = fake_hook(statuses=["Active", KoreNotFoundError("HTTP 404: Campaign not found", status_code=404)])
    with pytest.raises(KoreNotFoundError):
        start_op(hook, wait_for_completion=True, deferrable=False).execute(airflow_context())
    assert hook.get_campaign_status.call_count == 2


# -- wait_for_completion, deferrable ------------------------------------------------------------


def test_deferrable_wait_defers_to_the_trigger(airflow_context):
    hook = fake_hook()
    op = start_op(
        hook,
        stream_id="st-9",
        wait_for_completion=True,
        deferrable=True,
        poll_interval=15,
        timeout=600,
        stop_on_kill=True,
        target_statuses=["Completed"],
        failure_statuses=["Failed", "Stopped"],
    )
    before = real_time.time()
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(airflow_context())
    after = real_time.time()

    hook.start_campaign.assert_called_once()  # the start happens before deferring
    exc = deferred.value
    classpath, kwargs = exc.trigger.serialize()
    assert classpath == "airflow_provider_kore.triggers.campaign.KoreCampaignStatusTrigger"
    end_time = kwargs.pop("end_time")
    last_read_at = kwargs.pop("last_read_at")  # when the worker's read ended: the trigger's first read waits
    assert before <= last_read_at <= after
    assert kwargs == {
        "campaign_id": "cd-1",
        "kore_conn_id": "kore_default",
        "target_statuses": ["Completed"],
        "failure_statuses": ["Failed", "Stopped"],
        "stream_id": "st-9",
        "poll_interval": 15.0,
        "stop_on_kill": True,
        "campaign_type": "sms",
        "max_consecutive_errors": None,  # a Kore outage shorter than the time left fails no wait
    }
    assert before + 600 <= end_time <= after + 600
    # Airflow's own deferral limit ends later than the trigger's, so the trigger's timeout event wins.
    assert isinstance(exc.timeout, timedelta)
    assert before + exc.timeout.total_seconds() > end_time
    assert exc.method_name == "execute_complete"
    assert exc.kwargs["start_result"]["campaign_id"] == "cd-1"
    assert exc.kwargs["start_result"]["status"] == "Active"
    json.dumps(exc.kwargs)  # next_kwargs are serialised


def test_deferrable_wait_without_timeout(airflow_context):
    op = start_op(fake_hook(), wait_for_completion=True, deferrable=True)
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(airflow_context())
    assert deferred.value.trigger.serialize()[1]["end_time"] is None
    assert deferred.value.timeout is None


def test_deferrable_retry_that_finds_it_active_still_waits(airflow_context):
    hook = retry_hook("Active")
    op = start_op(hook, wait_for_completion=True, deferrable=True)
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(airflow_context(try_number=2))
    hook.start_campaign.assert_not_called()
    assert deferred.value.kwargs["start_result"]["started"] is False


def test_deferrable_defaults_to_the_airflow_setting(monkeypatch):
    monkeypatch.setenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", "True")
    assert start_op(task_id="a").deferrable is True
    monkeypatch.setenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", "False")
    assert start_op(task_id="b").deferrable is False
    assert start_op(task_id="c", deferrable=True).deferrable is True


def event(status, campaign_status=None, **extra):
    return {
        "status": status,
        "campaign_id": "cd-1",
        "campaign_status": campaign_status,
        "data": None if campaign_status is None else {"id": "cd-1", "status": campaign_status, "name": "Welcome"},
        "message": extra.pop("message", f"campaign 'cd-1' {status}"),
        "polls": 3,
        "elapsed": 61.5,
        **extra,
    }


START_RESULT = {
    "campaign_id": "cd-1",
    "campaign_type": "sms",
    "stream_id": "st-conn",
    "status": "Active",
    "message": "Campaign Started",
    "updated_at": "2026-01-05T13:05:23.765Z",
    "started": True,
}


def test_execute_complete_success_merges_the_start_result(airflow_context):
    op = start_op(fake_hook(), wait_for_completion=True, deferrable=True)
    result = op.execute_complete(airflow_context(), event("success", "Completed"), start_result=dict(START_RESULT))
    assert result == {**START_RESULT, "status": "Completed", "start_status": "Active"}


def test_execute_complete_success_without_start_result(airflow_context):
    op = start_op(fake_hook(), wait_for_completion=True, deferrable=True)
    result = op.execute_complete(airflow_context(), event("success", "Completed"))
    assert result["status"] == "Completed"
    assert result["campaign_id"] == "cd-1"


def test_execute_complete_failure(airflow_context):
    op = start_op(fake_hook(), wait_for_completion=True, deferrable=True)
    with pytest.raises(KoreCampaignStatusError, match="Stopped") as err:
        op.execute_complete(airflow_context(), event("failure", "Stopped", message="campaign 'cd-1' is 'Stopped'"))
    assert err.value.status == "Stopped"


@pytest.mark.parametrize("stop_on_kill", [False, True])
def test_execute_complete_timeout(airflow_context, stop_on_kill):
    hook = fake_hook()
    op = start_op(hook, wait_for_completion=True, deferrable=True, timeout=60, stop_on_kill=stop_on_kill)
    before = real_time.time()
    with pytest.raises(KoreCampaignTimeoutError, match="did not reach"):
        op.execute_complete(airflow_context(), event("timeout", "Active", message="campaign 'cd-1' did not reach it"))
    if stop_on_kill:
        hook.stop_campaign.assert_called_once_with(
            "cd-1", campaign_type="sms", stream_id=None, deadline=mock.ANY, priority=True
        )
        deadline = hook.stop_campaign.call_args.kwargs["deadline"]
        assert before + 25 <= deadline <= real_time.time() + 25
    else:
        hook.stop_campaign.assert_not_called()


def test_execute_complete_timeout_stop_failure_still_raises_the_timeout(airflow_context):
    hook = fake_hook()
    hook.stop_campaign.side_effect = KoreServerError("HTTP 503", status_code=503)
    op = start_op(hook, wait_for_completion=True, deferrable=True, stop_on_kill=True)
    with pytest.raises(KoreCampaignTimeoutError):
        op.execute_complete(airflow_context(), event("timeout", "Active"))


@pytest.mark.parametrize(
    ("bad_event", "match"),
    [
        (event("error", None, message="Kore.ai campaign 'cd-1': HTTP 401 Invalid token"), "Invalid token"),
        (event("succeeded", "Completed"), "unknown trigger event status"),
        ({"campaign_id": "cd-1", "campaign_status": "Completed"}, "unknown trigger event status"),
        (None, "without a trigger event"),
        ("success", "without a trigger event"),
        (event("success", "Active"), "not one of Completed"),
        (event("success", None), "not one of Completed"),
        ({**event("success", "Completed"), "campaign_id": "cd-2"}, "cd-2"),
    ],
)
def test_execute_complete_fails_closed(airflow_context, bad_event, match):
    op = start_op(fake_hook(), wait_for_completion=True, deferrable=True)
    with pytest.raises(KoreError, match=match) as err:
        op.execute_complete(airflow_context(), bad_event, start_result=dict(START_RESULT))
    assert not isinstance(err.value, KoreCampaignStatusError)


def test_execute_complete_validates_rendered_fields(airflow_context):
    op = start_op(fake_hook(), campaign_id="{{ params.cid }}", wait_for_completion=True, deferrable=True)
    op.render_template_fields(airflow_context(params={"cid": "cd-1"}))
    assert op.execute_complete(airflow_context(), event("success", "Completed"))["status"] == "Completed"


# -- on_kill ------------------------------------------------------------------------------------


def test_on_kill_stops_a_campaign_this_process_started(airflow_context):
    hook = fake_hook()
    op = start_op(hook, stop_on_kill=True, stream_id="st-5")
    op.execute(airflow_context())
    before = real_time.time()
    op.on_kill()
    # A stop outranks reads (priority) and is bounded: on_kill must return within Airflow's limit.
    hook.stop_campaign.assert_called_once_with(
        "cd-1", campaign_type="sms", stream_id="st-5", deadline=mock.ANY, priority=True
    )
    assert before + 25 <= hook.stop_campaign.call_args.kwargs["deadline"] <= real_time.time() + 25


@pytest.mark.parametrize(
    ("stop_on_kill", "try_number", "execute"),
    [(False, 1, True), (True, 1, False), (True, 2, True)],
    ids=["stop_on_kill off", "nothing started yet", "a retry found it already started"],
)
def test_on_kill_leaves_campaigns_it_did_not_start(airflow_context, stop_on_kill, try_number, execute):
    hook = retry_hook("Active")
    op = start_op(hook, stop_on_kill=stop_on_kill)
    if execute:
        op.execute(airflow_context(try_number=try_number))
    op.on_kill()
    hook.stop_campaign.assert_not_called()


def test_on_kill_swallows_stop_errors(airflow_context, caplog, capsys):
    hook = fake_hook()
    hook.stop_campaign.side_effect = KoreServerError("Kore.ai stop campaign failed: HTTP 502", status_code=502)
    op = start_op(hook, stop_on_kill=True)
    op.execute(airflow_context())
    op.on_kill()  # must not raise
    assert "Could not stop Kore.ai campaign cd-1" in logged(caplog, capsys)


def test_on_kill_after_a_quiet_stop_of_an_ended_campaign(airflow_context):
    hook = fake_hook(statuses=["Completed"])
    hook.stop_campaign.side_effect = api_error()
    op = start_op(hook, stop_on_kill=True)
    op.execute(airflow_context())
    op.on_kill()
    hook.get_campaign_status.assert_called_once()


# -- secrets ------------------------------------------------------------------------------------


BASE = "https://kore.test"
START_URL = f"{BASE}/campaign/api/v2/public/st-1/campaign/cd-1?campaignType=sms&trigger=play"
STATUS_URL = f"{BASE}/campaign/api/v2/public/st-1/campaign/cd-1/status?accountId=acc-1&view=status"
STOP_URL = f"{BASE}/api/v2/public/st-1/campaign/trigger/cd-1?accountId=acc-1&campaignType=voice&trigger=stop"


def test_no_secret_in_xcom_or_rendered_fields(kore_env_connection, airflow_context, requests_mock, clock):
    requests_mock.post(START_URL, json=START_ANSWER)
    requests_mock.post(STATUS_URL, json={"status": "success", "data": {"id": "cd-1", "status": "Completed"}})
    requests_mock.post(STOP_URL, json=STOP_ANSWER)
    context = airflow_context(params={"cid": "cd-1"})
    start = start_op(campaign_id="{{ params.cid }}", wait_for_completion=True, deferrable=False)
    stop = stop_op(campaign_id="{{ params.cid }}")
    results = []
    for op in (start, stop):
        op.render_template_fields(context)
        results.append(op.execute(context))
        rendered = json.dumps({field: getattr(op, field) for field in op.template_fields}, default=str)
        assert kore_env_connection.client_secret not in rendered

    tokens = [r.headers["auth"] for r in requests_mock.request_history]
    assert tokens, "the operators made authenticated calls"
    dumped = json.dumps(results)
    assert results[0]["status"] == "Completed"
    assert results[1]["status"] == "Stopped"
    assert results[0]["stream_id"] == "st-1"
    assert kore_env_connection.client_secret not in dumped
    assert not any(token in dumped for token in tokens)
    assert "eyJ" not in dumped


def test_no_secret_in_errors_raised_to_airflow(kore_env_connection, airflow_context, requests_mock):
    secret = kore_env_connection.client_secret
    requests_mock.post(START_URL, status_code=400, json={"errors": [{"msg": f"bad app secret {secret}"}]})
    with pytest.raises(KoreApiError) as err:
        start_op().execute(airflow_context())
    assert secret not in str(err.value)
    assert secret not in (err.value.kore_message or "")
