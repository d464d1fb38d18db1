"""The pipeline operators, and campaigns by name, with an autospecced KoreHook and real temporary files."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from unittest import mock

import pytest

try:
    from airflow.sdk.exceptions import TaskDeferred
except ImportError:  # Airflow 3.0
    from airflow.exceptions import TaskDeferred
from airflow_provider_kore.exceptions import (
    KoreCampaignNotFoundError,
    KoreConfigurationError,
    KoreError,
    KoreServerError,
)
from airflow_provider_kore.hooks.kore import KoreHook
from airflow_provider_kore.operators.campaign import KoreStartCampaignOperator, KoreStopCampaignOperator
from airflow_provider_kore.operators.contacts import KoreLoadContactsOperator
from airflow_provider_kore.operators.results import KoreExportCampaignResultsOperator
from airflow_provider_kore.sensors.campaign import KoreCampaignStatusSensor


def autospec_hook():
    hook = mock.create_autospec(KoreHook, instance=True)
    hook.config = mock.Mock(stream_id="st-conn")
    hook.find_campaign.return_value = "cd-found"
    hook.create_contact_list.return_value = {"_id": "cl-1", "name": "Nightly", "status": "Ready"}
    hook.sent = []

    def add_contacts(name, contacts, batch_size=500, stream_id=None):
        rows = list(contacts)
        hook.sent.append((name, rows, batch_size))
        return len(rows)

    hook.add_contacts.side_effect = add_contacts
    return hook


def with_hook(op, hook):
    op.hook = hook  # the cached property's slot: no connection is looked up
    return op


def load_op(hook, **kwargs):
    kwargs.setdefault("task_id", "load")
    kwargs.setdefault("contact_list_name", "Nightly")
    return with_hook(KoreLoadContactsOperator(**kwargs), hook)


def write(path: Path, text: str, encoding: str = "utf-8") -> str:
    path.write_text(text, encoding=encoding)
    return f"file://{path}"


# -- load contacts: parse time -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({}, "exactly one of source"),
        ({"source": "file:///x.csv", "contacts": []}, "exactly one of source"),
        ({"source": "file:///x.txt"}, "source_format"),
        ({"source": "file:///x.csv", "source_format": "xlsx"}, "source_format"),
        ({"source": "file:///x.csv", "on_bad_rows": "ignore"}, "on_bad_rows"),
        ({"source": "file:///x.csv", "batch_size": 0}, "batch_size"),
        ({"source": "file:///x.csv", "contact_list_name": "n" * 49}, "at most 48"),
        ({"source": "file:///x.csv", "description": "d" * 257}, "at most 256"),
        ({"source": "file:///x.csv", "stream_id": "st/1"}, "stream_id"),
        ({"source": ""}, "file URI"),
    ],
)
def test_load_refuses_bad_arguments_at_parse_time(kwargs, fragment):
    kwargs.setdefault("contact_list_name", "Nightly")
    with pytest.raises(KoreConfigurationError, match=fragment):
        KoreLoadContactsOperator(task_id="load", **kwargs)


def test_load_templates_are_checked_after_rendering(airflow_context):
    op = load_op(autospec_hook(), contact_list_name="{{ params.name }}", source="{{ params.uri }}")
    assert {"contact_list_name", "source", "contacts", "description", "stream_id"} <= set(op.template_fields)
    op.contact_list_name = "n" * 60  # as rendered
    with pytest.raises(KoreConfigurationError, match="at most 48"):
        op.execute(airflow_context())


def test_operator_modules_import_nothing_heavy():
    """Beyond what ``airflow.sdk`` (which every DAG file imports) already loads."""
    code = (
        "import sys, airflow.sdk; before = set(sys.modules);"
        "import airflow_provider_kore.operators.contacts, airflow_provider_kore.operators.results;"
        "print(sorted(m for m in set(sys.modules) - before if m.split('.')[0] in "
        "('requests', 'aiohttp', 'jwt', 'fsspec', 'upath', 'urllib3') or m in "
        "('airflow_provider_kore.api', 'airflow_provider_kore.hooks.kore')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]"


# -- load contacts: files ------------------------------------------------------------------------


def test_csv_with_bom_quotes_and_loose_header_names(tmp_path, airflow_context):
    source = write(
        tmp_path / "tonight.csv",
        '\ufeffPhone Number,first_name,LastName,notes\n"+1 (555) 000-0001","Ann, Jr.",Lee,"said ""hi""\nlater"\n'
        "5550002,Bob,,\n",
    )
    hook = autospec_hook()
    result = load_op(hook, source=source, batch_size=50).execute(airflow_context())
    assert result == {
        "contact_list_name": "Nightly",
        "source": source,
        "rows": 2,
        "sent": 2,
        "skipped": 0,
        "created_list": False,
        "contact_list_id": None,
    }
    ((name, rows, batch_size),) = hook.sent
    assert (name, batch_size) == ("Nightly", 50)
    assert rows == [
        {"phoneNumber": "+15550000001", "firstName": "Ann, Jr.", "lastName": "Lee"},
        {"phoneNumber": "5550002", "firstName": "Bob"},
    ]
    hook.create_contact_list.assert_not_called()


def test_jsonl_by_extension_and_blank_lines(tmp_path, airflow_context):
    lines = [json.dumps({"phoneNumber": "5550001", "uniqueId": "u1", "contactPriority": 2}), "", "  "]
    lines.append(json.dumps({"phoneNumber": 5550002, "timeZone": "America/New_York", "extra": "x"}))
    source = write(tmp_path / "tonight.jsonl", "\n".join(lines) + "\n")
    hook = autospec_hook()
    assert load_op(hook, source=source).execute(airflow_context())["sent"] == 2
    assert hook.sent[0][1] == [
        {"phoneNumber": "5550001", "uniqueId": "u1", "contactPriority": 2},
        {"phoneNumber": "5550002", "timeZone": "America/New_York"},
    ]


def test_bad_rows_fail_before_anything_is_sent_naming_their_lines(tmp_path, airflow_context):
    source = write(
        tmp_path / "tonight.csv",
        'phoneNumber,firstName\n5550001,A\n,B\n"","C\nD"\nnot a phone,D\n5550005,E,extra\n5550006,F\n',
    )
    hook = autospec_hook()
    with pytest.raises(KoreConfigurationError) as err:
        load_op(hook, source=source, create_list=True).execute(airflow_context())
    message = str(err.value)
    assert "4 of 6 rows" in message
    assert "line 3: no usable phoneNumber" in message
    assert "line 5: no usable phoneNumber" in message  # the quoted name spans lines 4-5
    assert "line 6: no usable phoneNumber" in message
    assert "line 7: more fields than the header" in message
    assert "Nothing was sent" in message
    hook.create_contact_list.assert_not_called()
    hook.add_contacts.assert_not_called()


def test_bad_jsonl_lines_are_named(tmp_path, airflow_context):
    source = write(tmp_path / "t.ndjson", '{"phoneNumber": "5550001"}\n{oops\n[1, 2]\n{"firstName": "A"}\n')
    with pytest.raises(KoreConfigurationError) as err:
        load_op(autospec_hook(), source=source).execute(airflow_context())
    message = str(err.value)
    assert "line 2: not valid JSON" in message
    assert "line 3: not an object" in message
    assert "line 4: no usable phoneNumber" in message


def test_skip_mode_sends_the_good_rows_and_counts_the_rest(tmp_path, airflow_context):
    source = write(tmp_path / "tonight.csv", "phone,name\n5550001,A\nnope,B\n5550003,C\n")
    # 'phone' is not phoneNumber: the header check names the missing column.
    with pytest.raises(KoreConfigurationError, match="no phoneNumber column"):
        load_op(autospec_hook(), source=source, on_bad_rows="skip").execute(airflow_context())
    source = write(tmp_path / "tonight.csv", "phoneNumber,firstName\n5550001,A\nnope,B\n5550003,C\n")
    hook = autospec_hook()
    result = load_op(hook, source=source, on_bad_rows="skip").execute(airflow_context())
    assert (result["rows"], result["sent"], result["skipped"]) == (3, 2, 1)
    assert [row["phoneNumber"] for row in hook.sent[0][1]] == ["5550001", "5550003"]


def test_create_list_first_with_its_description(tmp_path, airflow_context):
    source = write(tmp_path / "tonight.csv", "phoneNumber\n5550001\n")
    hook = autospec_hook()
    result = load_op(
        hook, source=source, create_list=True, description="Tonight", allow_duplicates=True, stream_id="st-9"
    ).execute(airflow_context())
    hook.create_contact_list.assert_called_once_with("Nightly", "Tonight", True, "st-9")
    assert (result["created_list"], result["contact_list_id"]) == (True, "cl-1")
    assert hook.method_calls[0][0] == "create_contact_list"


def test_the_file_is_streamed_not_held(tmp_path, airflow_context):
    """The hook receives a lazy iterator: no list of rows is built by the operator."""
    source = write(tmp_path / "big.csv", "phoneNumber\n" + "".join(f"555{i:07d}\n" for i in range(2000)))
    hook = autospec_hook()
    seen = {}

    def add_contacts(name, contacts, batch_size=500, stream_id=None):
        seen["type"] = type(contacts).__name__
        return sum(1 for _ in contacts)

    hook.add_contacts.side_effect = add_contacts
    assert load_op(hook, source=source).execute(airflow_context())["sent"] == 2000
    assert seen["type"] == "generator"


def test_a_file_that_changed_between_the_passes_is_reported(tmp_path, airflow_context):
    path = tmp_path / "tonight.csv"
    source = write(path, "phoneNumber\n5550001\n5550002\n")
    hook = autospec_hook()

    def add_contacts(name, contacts, batch_size=500, stream_id=None):
        path.write_text("phoneNumber\n5550001\n")
        return sum(1 for _ in contacts)

    hook.add_contacts.side_effect = add_contacts
    with pytest.raises(KoreError, match="changed while it was loaded"):
        load_op(hook, source=source).execute(airflow_context())


def test_contacts_from_a_list(airflow_context):
    hook = autospec_hook()
    rows = [{"phone_number": "5550001", "first_name": "A"}, {"phoneNumber": "x"}]
    with pytest.raises(KoreConfigurationError, match="item 2: no usable phoneNumber"):
        load_op(hook, contacts=rows).execute(airflow_context())
    result = load_op(hook, contacts=rows, on_bad_rows="skip").execute(airflow_context())
    assert (result["source"], result["sent"], result["skipped"]) == (None, 1, 1)
    assert hook.sent[0][1] == [{"phoneNumber": "5550001", "firstName": "A"}]


def test_contacts_rendered_to_text_are_refused_with_a_hint(airflow_context):
    op = load_op(autospec_hook(), contacts="{{ ti.xcom_pull('rows') }}")
    op.contacts = "[{'phoneNumber': '1'}]"  # what Jinja renders
    with pytest.raises(KoreConfigurationError, match="XComArg"):
        op.execute(airflow_context())


# -- export results ------------------------------------------------------------------------------

OUTCOMES = [
    {
        "phoneNumber": "+15550001",
        "uniqueId": "u1",
        "dialerOutcome": "completed",
        "numberOfAttemptsSoFar": 1,
        "botSessionId": "bs-1",
        "agentDispositionCodes": ["System Generated", "Callback"],
        "botOutboundStatus": "userHangUp",
        "botOutboundStatusDetail": "user_hangup",
        "undocumented": "kept in JSON Lines only",
    },
    {"phoneNumber": "+15550002", "dialerOutcome": "", "agentDispositionCodes": [], "botOutboundStatus": "agentHangUp"},
    {"phoneNumber": "+15550003", "dialerOutcome": "completed", "botOutboundStatus": "userHangUp"},
]


def export_op(hook, **kwargs):
    kwargs.setdefault("task_id", "export")
    if "campaign_name" not in kwargs:
        kwargs.setdefault("campaign_id", "cd-1")
    return with_hook(KoreExportCampaignResultsOperator(**kwargs), hook)


def test_export_csv_streams_to_a_new_folder_and_counts(tmp_path, airflow_context):
    hook = autospec_hook()
    hook.iter_campaign_contacts.return_value = iter(OUTCOMES)
    destination = tmp_path / "kore" / "2026-01-05" / "results.csv"
    result = export_op(hook, destination=f"file://{destination}").execute(airflow_context())
    assert result == {
        "path": f"file://{destination}",
        "campaign_id": "cd-1",
        "rows": 3,
        "by_dialer_outcome": {"completed": 2, "(empty)": 1},
        "by_outbound_status": {"userHangUp": 2, "agentHangUp": 1},
    }
    hook.iter_campaign_contacts.assert_called_once_with("cd-1", stream_id=None)
    with destination.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["agentDispositionCodes"] == "System Generated; Callback"
    assert rows[0]["numberOfAttemptsSoFar"] == "1"
    assert "undocumented" not in rows[0]
    assert rows[1]["uniqueId"] == ""
    assert list(destination.parent.iterdir()) == [destination]  # no temporary file left


def test_export_jsonl_by_extension_keeps_every_field(tmp_path, airflow_context):
    hook = autospec_hook()
    hook.iter_campaign_contacts.return_value = iter(OUTCOMES)
    destination = tmp_path / "results.jsonl"
    assert export_op(hook, destination=str(destination)).execute(airflow_context())["rows"] == 3
    lines = destination.read_text().splitlines()
    assert [json.loads(line) for line in lines] == OUTCOMES


def test_a_failed_export_leaves_no_partial_file_and_keeps_the_old_one(tmp_path, airflow_context):
    destination = tmp_path / "results.csv"
    destination.write_text("yesterday's complete file\n")

    def pages():
        yield from OUTCOMES
        raise KoreServerError("Kore.ai get campaign contacts for campaign 'cd-1' failed: HTTP 500")

    hook = autospec_hook()
    hook.iter_campaign_contacts.return_value = pages()
    with pytest.raises(KoreServerError):
        export_op(hook, destination=f"file://{destination}").execute(airflow_context())
    assert destination.read_text() == "yesterday's complete file\n"
    assert list(tmp_path.iterdir()) == [destination]


def test_export_by_name_resolves_the_id(tmp_path, airflow_context):
    hook = autospec_hook()
    hook.iter_campaign_contacts.return_value = iter([])
    op = export_op(hook, campaign_name="Renewal", campaign_type="voice", destination=str(tmp_path / "r.csv"))
    result = op.execute(airflow_context())
    hook.find_campaign.assert_called_once_with("Renewal", "voice", stream_id=None)
    assert (result["campaign_id"], result["rows"]) == ("cd-found", 0)
    assert (tmp_path / "r.csv").read_text().startswith("phoneNumber,uniqueId,dialerOutcome")


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"campaign_id": "cd-1", "campaign_name": "A", "campaign_type": "voice"}, "exactly one"),
        ({}, "exactly one"),
        ({"campaign_name": "A"}, "campaign_type"),
        ({"campaign_name": "A", "campaign_type": "fax"}, "campaign_type"),
        ({"campaign_name": " ", "campaign_type": "sms"}, "campaign_name"),
        ({"campaign_id": "cd/1"}, "campaign_id"),
        ({"campaign_id": "cd-1", "format": "parquet"}, "format"),
        ({"campaign_id": "cd-1", "destination": ""}, "destination"),
    ],
)
def test_export_refuses_bad_arguments_at_parse_time(kwargs, fragment):
    kwargs.setdefault("destination", "file:///tmp/r.csv")
    with pytest.raises(KoreConfigurationError, match=fragment):
        KoreExportCampaignResultsOperator(task_id="export", **kwargs)


def test_export_destination_is_templated():
    op = KoreExportCampaignResultsOperator(
        task_id="export", campaign_name="{{ params.name }}", campaign_type="voice", destination="file:///d/{{ ds }}.csv"
    )
    assert {"campaign_id", "campaign_name", "destination", "stream_id"} <= set(op.template_fields)


def test_load_and_export_hooks_give_up_at_the_tasks_execution_timeout(tmp_path):
    """Like the start and stop operators' hooks: a wait on Kore ends when the task's time is up."""
    load = KoreLoadContactsOperator(
        task_id="load", contact_list_name="Nightly", contacts=[], execution_timeout=timedelta(minutes=10)
    )
    export = KoreExportCampaignResultsOperator(
        task_id="export", campaign_id="cd-1", destination=str(tmp_path / "r.csv"), execution_timeout=timedelta(hours=1)
    )
    before = time.time()
    assert isinstance(load.hook, KoreHook)
    assert before + 600 <= load.hook.deadline <= time.time() + 600
    assert before + 3600 <= export.hook.deadline <= time.time() + 3600
    assert KoreLoadContactsOperator(task_id="no_limit", contact_list_name="N", contacts=[]).hook.deadline is None


# -- start / stop / sensor by name ------------------------------------------------------------------


def test_start_by_name_resolves_at_run_time_and_returns_the_id(airflow_context):
    hook = autospec_hook()
    hook.start_campaign.return_value = {"status": "Active", "message": "Campaign Started", "updatedAt": None}
    op = with_hook(KoreStartCampaignOperator(task_id="s", campaign_name="Renewal", campaign_type="voice"), hook)
    hook.find_campaign.assert_not_called()  # not at parse time
    result = op.execute(airflow_context())
    hook.find_campaign.assert_called_once_with("Renewal", "voice", stream_id=None)
    hook.start_campaign.assert_called_once_with("cd-found", campaign_type="voice", stream_id=None)
    assert result["campaign_id"] == "cd-found"


def test_start_by_name_deferred_resumes_with_the_id(airflow_context):
    hook = autospec_hook()
    hook.start_campaign.return_value = {"status": "Active", "message": "Campaign Started", "updatedAt": None}
    op = KoreStartCampaignOperator(
        task_id="s", campaign_name="Renewal", campaign_type="voice", wait_for_completion=True, deferrable=True
    )
    with_hook(op, hook)
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(airflow_context())
    start_result = deferred.value.kwargs["start_result"]
    event = {"status": "success", "campaign_id": "cd-found", "campaign_status": "Completed"}
    result = op.execute_complete(airflow_context(), event=event, start_result=start_result)
    assert (result["campaign_id"], result["status"]) == ("cd-found", "Completed")
    assert hook.find_campaign.call_count == 1


def test_stop_by_name(airflow_context):
    hook = autospec_hook()
    hook.stop_campaign.return_value = {"status": "Stopped", "message": "Campaign Stopped", "updatedAt": None}
    op = with_hook(KoreStopCampaignOperator(task_id="s", campaign_name="Renewal"), hook)  # voice by default
    assert op.execute(airflow_context())["campaign_id"] == "cd-found"
    hook.stop_campaign.assert_called_once_with(
        "cd-found", campaign_type="voice", stream_id=None, deadline=None, priority=False
    )


def test_a_name_no_campaign_has_fails_the_task(airflow_context):
    hook = autospec_hook()
    hook.find_campaign.side_effect = KoreCampaignNotFoundError("Kore.ai has no voice campaign named 'Renewal'")
    op = with_hook(KoreStopCampaignOperator(task_id="s", campaign_name="Renewal"), hook)
    with pytest.raises(KoreCampaignNotFoundError, match="'Renewal'"):
        op.execute(airflow_context())
    hook.stop_campaign.assert_not_called()


@pytest.mark.parametrize("cls", [KoreStartCampaignOperator, KoreStopCampaignOperator, KoreCampaignStatusSensor])
def test_exactly_one_of_id_and_name_at_parse_time(cls):
    with pytest.raises(KoreConfigurationError, match="exactly one"):
        cls(task_id="t", campaign_id="cd-1", campaign_name="Renewal", campaign_type="voice")
    with pytest.raises(KoreConfigurationError, match="exactly one"):
        cls(task_id="t")


def test_sensor_by_name_needs_a_type_and_resolves_once_per_wait(airflow_context):
    with pytest.raises(KoreConfigurationError, match="campaign_type"):
        KoreCampaignStatusSensor(task_id="w", campaign_name="Renewal")
    hook = autospec_hook()
    hook.get_campaign_status.return_value = {"id": "cd-found", "status": "Active", "name": "Renewal"}
    sensor = KoreCampaignStatusSensor(
        task_id="w", campaign_name="{{ params.name }}", campaign_type="voice", deferrable=True, poke_interval=5
    )
    with_hook(sensor, hook)
    sensor.campaign_name = "Renewal"  # as rendered
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute(airflow_context())
    assert deferred.value.kwargs == {"campaign_id": "cd-found"}
    hook.get_campaign_status.assert_called_once_with("cd-found", stream_id=None, deadline=mock.ANY)
    event = {"status": "success", "campaign_id": "cd-found", "campaign_status": "Completed", "data": None}
    assert sensor.execute_complete(airflow_context(), event=event, campaign_id="cd-found") == {
        "id": "cd-found",
        "status": "Completed",
    }
    assert hook.find_campaign.call_count == 1
