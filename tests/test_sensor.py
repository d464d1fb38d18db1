"""KoreCampaignStatusSensor with a mocked hook: pokes, fail-fast, transient errors, deferral, events."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from unittest import mock

import pytest
from airflow.sdk import PokeReturnValue

from airflow_provider_kore._compat import AirflowException, AirflowSensorTimeout, AirflowSkipException

try:
    from airflow.sdk.exceptions import TaskDeferred
except ImportError:  # Airflow 3.0
    from airflow.exceptions import TaskDeferred
from airflow_provider_kore.exceptions import (
    KoreAuthError,
    KoreCampaignStatusError,
    KoreCampaignTimeoutError,
    KoreConfigurationError,
    KoreConnectionError,
    KoreError,
    KoreNotFoundError,
    KoreRateLimitError,
)
from airflow_provider_kore.hooks.kore import KoreHook
from airflow_provider_kore.sensors.campaign import KoreCampaignStatusSensor
from airflow_provider_kore.status import StatusRule
from airflow_provider_kore.waiting import POKE_GRACE, check_trigger_event


def status_data(status):
    return {"id": "cd-1", "status": status, "name": "Welcome"}


def fake_hook(*statuses):
    hook = mock.create_autospec(KoreHook, instance=True)
    hook.get_campaign_status.side_effect = [s if isinstance(s, BaseException) else status_data(s) for s in statuses]
    return hook


def sensor(*statuses, **kwargs):
    kwargs.setdefault("task_id", "wait")
    kwargs.setdefault("campaign_id", "cd-1")
    kwargs.setdefault("deferrable", False)
    s = KoreCampaignStatusSensor(**kwargs)
    s.hook = fake_hook(*statuses)
    return s


def logged(caplog, capsys):
    """Log text, wherever this Airflow sends task logs (structlog to stdout, or stdlib logging)."""
    captured = capsys.readouterr()
    return caplog.text or captured.out + captured.err  # Airflow 3.0 writes to both: read one


def transient(n=1):
    return [KoreRateLimitError("Kore.ai get campaign status for campaign 'cd-1' failed: HTTP 429") for _ in range(n)]


# -- poke ---------------------------------------------------------------------------------------


def test_poke_done_on_target_returns_the_status_data(airflow_context):
    s = sensor("completed")
    result = s.poke(airflow_context())
    assert isinstance(result, PokeReturnValue)
    assert result.is_done
    assert result.xcom_value == status_data("completed")
    s.hook.get_campaign_status.assert_called_once_with("cd-1", stream_id=None, deadline=mock.ANY)


def test_a_poke_is_bounded_by_its_interval_plus_the_grace(airflow_context):
    s = sensor("Active", poke_interval=40)
    before = time.time()
    s.poke(airflow_context())
    after = time.time()
    deadline = s.hook.get_campaign_status.call_args.kwargs["deadline"]
    assert before + 40 + POKE_GRACE <= deadline <= after + 40 + POKE_GRACE


def test_poke_waits_on_a_running_campaign(airflow_context, caplog, capsys):
    s = sensor("Active")
    assert s.poke(airflow_context()) is False
    text = logged(caplog, capsys)
    assert "cd-1 is Active" in text
    assert "waiting for Completed" in text


@pytest.mark.parametrize(("status", "why"), [("Failed", "a failure status"), ("Stopped", "not a target")])
def test_poke_fails_fast_on_failure_or_non_target_terminal(airflow_context, status, why):
    s = sensor(status)
    with pytest.raises(KoreCampaignStatusError, match=why) as err:
        s.poke(airflow_context())
    assert err.value.status == status
    assert err.value.campaign_id == "cd-1"


def test_a_stopped_campaign_fails_the_sensor_at_the_first_poke_without_waiting(airflow_context, monkeypatch):
    sleeps = []
    monkeypatch.setattr(time, "sleep", sleeps.append)
    s = sensor("Stopped", timeout=3600, poke_interval=60)
    with pytest.raises(KoreCampaignStatusError):
        s.execute(airflow_context())
    assert sleeps == []
    assert s.hook.get_campaign_status.call_count == 1


def test_custom_failure_statuses(airflow_context):
    s = sensor("Paused", target_statuses=["Completed"], failure_statuses=["Paused"])
    with pytest.raises(KoreCampaignStatusError, match="Paused"):
        s.poke(airflow_context())


def test_unknown_status_is_logged_once_and_waited_on(airflow_context, caplog, capsys):
    s = sensor("Archiving", "Archiving", "Completed")
    assert s.poke(airflow_context()) is False
    assert s.poke(airflow_context()) is False
    assert s.poke(airflow_context())
    assert logged(caplog, capsys).count("does not know") == 1


def test_by_default_transient_errors_are_not_yet_for_as_long_as_the_timeout_allows(airflow_context, caplog, capsys):
    s = sensor(*transient(20), "Completed")
    results = [s.poke(airflow_context()) for _ in range(21)]
    assert [bool(r) for r in results] == [False] * 20 + [True]
    assert "Kore.ai is unavailable" in logged(caplog, capsys)


def test_transient_errors_are_tolerated_up_to_the_bound(airflow_context):
    s = sensor(*transient(2), "Active", *transient(2), "Completed", max_consecutive_errors=2)
    results = [s.poke(airflow_context()) for _ in range(6)]
    assert [bool(r) for r in results] == [False, False, False, False, False, True]


def test_transient_errors_beyond_the_bound_raise_the_cause(airflow_context):
    s = sensor(*transient(3), max_consecutive_errors=2)
    assert s.poke(airflow_context()) is False
    assert s.poke(airflow_context()) is False
    with pytest.raises(KoreRateLimitError, match="HTTP 429"):
        s.poke(airflow_context())


def test_zero_tolerance_raises_the_first_transient_error(airflow_context):
    s = sensor(KoreConnectionError("Kore.ai could not be reached"), max_consecutive_errors=0)
    with pytest.raises(KoreConnectionError):
        s.poke(airflow_context())


@pytest.mark.parametrize(
    "error",
    [
        KoreAuthError("HTTP 401: Invalid token", status_code=401),
        KoreNotFoundError("HTTP 404: Campaign not found", status_code=404),
    ],
)
def test_non_transient_errors_raise_at_once(airflow_context, error):
    s = sensor(error, "Completed", max_consecutive_errors=5)
    with pytest.raises(type(error)):
        s.poke(airflow_context())


def test_poke_mode_execute_waits_then_returns_the_data(airflow_context, monkeypatch):
    sleeps = []
    monkeypatch.setattr(time, "sleep", sleeps.append)
    s = sensor("Ready", "Active", "Completed", poke_interval=5, timeout=3600)
    assert s.execute(airflow_context()) == status_data("Completed")
    assert sleeps == [5, 5]


def test_stream_id_is_passed(airflow_context):
    s = sensor("Completed", stream_id="st-9")
    s.poke(airflow_context())
    s.hook.get_campaign_status.assert_called_once_with("cd-1", stream_id="st-9", deadline=mock.ANY)


# -- construction and templating ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"target_statuses": []}, "target_statuses"),
        ({"target_statuses": [""]}, "target_statuses"),
        ({"target_statuses": ["Completed"], "failure_statuses": ["completed", "Failed"]}, "cannot be both"),
        ({"campaign_id": "cd/1"}, "campaign_id"),
        ({"stream_id": ""}, "stream_id"),
        ({"poke_interval": 0}, "poke_interval"),
        ({"max_consecutive_errors": -1}, "max_consecutive_errors"),
        ({"max_consecutive_errors": 1.5}, "max_consecutive_errors"),
    ],
)
def test_bad_arguments_fail_at_parse_time(kwargs, match):
    with pytest.raises(KoreConfigurationError, match=match):
        KoreCampaignStatusSensor(task_id="w", **{"campaign_id": "cd-1", **kwargs})


def test_negative_poke_interval_is_refused():
    # Airflow refuses it itself: a ValueError on 3.3, an AirflowException on 3.0.
    with pytest.raises((ValueError, AirflowException), match="poke_interval"):
        KoreCampaignStatusSensor(task_id="w", campaign_id="cd-1", poke_interval=-1)


def test_templated_fields_render_and_are_validated_at_the_first_poke(airflow_context):
    s = sensor(
        "Active",
        campaign_id="{{ params.cid }}",
        stream_id="{{ params.sid }}",
        target_statuses=["{{ params.target }}"],
        failure_statuses="{{ params.bad }}",
    )
    s.render_template_fields(
        airflow_context(params={"cid": "cd-7", "sid": "st-7", "target": "Active", "bad": "Stopped"})
    )
    assert (s.campaign_id, s.stream_id, list(s.target_statuses), s.failure_statuses) == (
        "cd-7",
        "st-7",
        ["Active"],
        "Stopped",
    )
    assert s.poke(airflow_context())
    s.hook.get_campaign_status.assert_called_once_with("cd-7", stream_id="st-7", deadline=mock.ANY)


def test_a_templated_status_list_that_rendered_to_text_is_read_as_a_list(airflow_context):
    s = sensor("Stopped", target_statuses="{{ params.targets }}")
    s.render_template_fields(airflow_context(params={"targets": ["Completed", "Stopped"]}))
    assert s.target_statuses == "['Completed', 'Stopped']"  # Jinja renders the list to its text
    result = s.poke(airflow_context())  # "Stopped" is a target, not a terminal non-target
    assert result
    assert result.xcom_value == status_data("Stopped")


def test_a_template_rendering_to_a_bad_id_is_refused_before_any_call(airflow_context):
    s = sensor("Completed", campaign_id="{{ params.cid }}")
    s.render_template_fields(airflow_context(params={"cid": "cd-1?admin=1"}))
    with pytest.raises(KoreConfigurationError, match="campaign_id"):
        s.poke(airflow_context())
    s.hook.get_campaign_status.assert_not_called()


# -- deferrable ---------------------------------------------------------------------------------


def test_deferrable_first_poke_done_returns_without_deferring(airflow_context):
    s = sensor("Completed", deferrable=True)
    assert s.execute(airflow_context()) == status_data("Completed")


def test_deferrable_first_poke_failure_fails_without_deferring(airflow_context):
    s = sensor("Stopped", deferrable=True)
    with pytest.raises(KoreCampaignStatusError):
        s.execute(airflow_context())


def test_deferrable_first_poke_failure_with_soft_fail_skips(airflow_context):
    s = sensor("Stopped", deferrable=True, soft_fail=True)
    with pytest.raises(AirflowSkipException):
        s.execute(airflow_context())


def test_deferrable_defers_to_the_trigger_when_not_done(airflow_context):
    s = sensor(
        "Active",
        deferrable=True,
        poke_interval=20,
        timeout=timedelta(hours=2),
        stream_id="st-3",
        target_statuses="Completed",
        max_consecutive_errors=5,
    )
    before = time.time()
    with pytest.raises(TaskDeferred) as deferred:
        s.execute(airflow_context())
    after = time.time()

    exc = deferred.value
    classpath, kwargs = exc.trigger.serialize()
    assert classpath.endswith("triggers.campaign.KoreCampaignStatusTrigger")
    end_time = kwargs.pop("end_time")
    last_read_at = kwargs.pop("last_read_at")  # when the worker's read ended: the trigger's first read waits
    assert before <= last_read_at <= after
    assert kwargs == {
        "campaign_id": "cd-1",
        "kore_conn_id": "kore_default",
        "target_statuses": ["Completed"],
        "failure_statuses": ["Failed"],
        "stream_id": "st-3",
        "poll_interval": 20.0,
        "stop_on_kill": False,
        "campaign_type": "voice",
        "max_consecutive_errors": 5,
    }
    assert before + 7200 <= end_time <= after + 7200
    assert before + exc.timeout.total_seconds() > end_time
    assert exc.method_name == "execute_complete"


def test_deferrable_defers_after_a_tolerated_transient_error(airflow_context):
    s = sensor(*transient(1), deferrable=True)
    with pytest.raises(TaskDeferred):
        s.execute(airflow_context())


def test_deferrable_follows_the_airflow_setting(monkeypatch):
    monkeypatch.setenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", "true")
    assert KoreCampaignStatusSensor(task_id="a", campaign_id="cd-1").deferrable is True
    monkeypatch.setenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", "false")
    assert KoreCampaignStatusSensor(task_id="b", campaign_id="cd-1").deferrable is False


def event(status, campaign_status=None, **extra):
    return {
        "status": status,
        "campaign_id": "cd-1",
        "campaign_status": campaign_status,
        "data": None if campaign_status is None else status_data(campaign_status),
        "message": extra.pop("message", f"Kore.ai campaign 'cd-1': {status}"),
        "polls": 4,
        "elapsed": 90.0,
        **extra,
    }


def test_execute_complete_success_returns_the_status_data(airflow_context):
    s = sensor(deferrable=True)
    result = s.execute_complete(airflow_context(), event("success", "Completed"))
    assert result == status_data("Completed")
    assert json.loads(json.dumps(result)) == result


def test_execute_complete_success_without_data(airflow_context):
    s = sensor(deferrable=True)
    payload = {**event("success", "Completed"), "data": None}
    assert s.execute_complete(airflow_context(), payload) == {"id": "cd-1", "status": "Completed"}


def test_execute_complete_failure(airflow_context):
    s = sensor(deferrable=True)
    with pytest.raises(KoreCampaignStatusError, match="Stopped"):
        s.execute_complete(
            airflow_context(), event("failure", "Stopped", message="Kore.ai campaign 'cd-1' is 'Stopped'")
        )


def test_execute_complete_timeout_is_a_sensor_timeout(airflow_context):
    s = sensor(deferrable=True)
    with pytest.raises(AirflowSensorTimeout, match="did not reach"):
        s.execute_complete(airflow_context(), event("timeout", "Active", message="campaign 'cd-1' did not reach it"))


def test_timeout_event_with_soft_fail_skips_through_airflow_resume(airflow_context):
    s = sensor(deferrable=True, soft_fail=True)
    with pytest.raises(AirflowSkipException):
        s.resume_execution("execute_complete", {"event": event("timeout", "Active")}, airflow_context())
    strict = sensor(deferrable=True)
    with pytest.raises(AirflowSensorTimeout):
        strict.resume_execution("execute_complete", {"event": event("timeout", "Active")}, airflow_context())


@pytest.mark.parametrize(
    ("bad_event", "match"),
    [
        (event("error", None, message="Kore.ai campaign 'cd-1': HTTP 401: Invalid token"), "Invalid token"),
        (event("error", None, message=""), "did not describe"),
        (event("done", "Completed"), "unknown trigger event status"),
        ({k: v for k, v in event("success", "Completed").items() if k != "status"}, "unknown trigger event status"),
        (None, "without a trigger event"),
        (["success"], "without a trigger event"),
        (event("success", "Active"), "not one of Completed"),
        ({**event("success", "Completed"), "campaign_id": "cd-other"}, "cd-other"),
    ],
)
def test_execute_complete_fails_closed(airflow_context, bad_event, match):
    s = sensor(deferrable=True)
    with pytest.raises(KoreError, match=match) as err:
        s.execute_complete(airflow_context(), bad_event)
    assert not isinstance(err.value, (KoreCampaignStatusError, KoreCampaignTimeoutError))


def test_event_messages_are_redacted():
    jwt_like = "eyJhbGciOiJIUzI1NiJ9.eyJhcHBJZCI6ImNzLTEifQ.c2lnbmF0dXJlc2lnbmF0dXJl"
    with pytest.raises(KoreError) as err:
        check_trigger_event(
            event("error", None, message=f"refused token {jwt_like}"), "cd-1", StatusRule.build("Completed")
        )
    assert jwt_like not in str(err.value)


def test_the_sensors_hook_has_no_deadline_of_its_own():
    """Each poke bounds its own read with its own deadline; the hook itself keeps none (as it always has)."""
    hook = KoreCampaignStatusSensor(task_id="wait", campaign_id="cd-1", timeout=600, poke_interval=5).hook
    assert isinstance(hook, KoreHook)
    assert hook.deadline is None


def test_a_poke_under_persistent_429s_returns_not_yet_within_its_bound(
    kore_env_connection, requests_mock, monkeypatch, airflow_context, caplog, capsys
):
    """Kore keeps refusing: the poke gives up waiting for a turn and says "not yet" (issue 12 §3)."""
    from airflow_provider_kore import pacing

    waited = []
    start = pacing.clock()
    monkeypatch.setattr(pacing, "clock", lambda: start + sum(waited))
    pacing.reset_sync_pacers()
    url = "https://kore.test/campaign/api/v2/public/st-1/campaign/cd-1/status?accountId=acc-1&view=status"
    requests_mock.post(url, status_code=429, json={"errors": [{"msg": "Rate limit reached"}]})
    s = KoreCampaignStatusSensor(task_id="wait", campaign_id="cd-1", poke_interval=30, deferrable=False)
    s.hook._sleep = waited.append
    try:
        assert s.poke(airflow_context()) is False
    finally:
        pacing.reset_sync_pacers()
    assert requests_mock.call_count >= 2  # it did wait out pauses and ask again
    assert sum(waited) <= 30 + POKE_GRACE
    captured = capsys.readouterr()
    assert "not yet" in caplog.text + captured.out + captured.err
