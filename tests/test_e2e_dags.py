"""The example DAGs, run for real by Airflow (``airflow dags test``) against the Kore.ai simulator.

Every scenario is one DAG run by Airflow's own ``dags test`` command (``dag.test()``: the DAG
is parsed from ``example_dags/``, synced to a SQLite metadata DB, its tasks run through the
in-process execution API, deferred tasks run their trigger in line) against a
:class:`KoreSimulator` started here, in this test process.

To stay within the time budget (two cores, both Airflow versions in CI), the runs are not one
process each: two long-lived *drivers* (one with ``[operators] default_deferrable = False``, one
with ``True``), each on its own throwaway ``AIRFLOW_HOME`` (a copy of the session's migrated
DB), call Airflow's CLI entry point (``airflow.__main__.main``) once per scenario, exactly as
``airflow dags test DAG_ID`` does, with ``AIRFLOW_CONN_KORE_DEFAULT`` pointing at that
scenario's own simulator. Each run starts without the request pacing an earlier run in the process may have learned
(the provider keeps one pacer per process and connection, as a fresh worker would have none).
The two drivers and the demo script run at the same time; the tests
below then assert on what each scenario left behind: task instance states and tries in the
metadata DB, XCom values, rendered template fields, the simulator's request log, and the
captured output of Airflow (every task log line goes to the driver's output under
``dag.test()``; files under ``AIRFLOW_HOME/logs`` are scanned too).

The secret scan covers the driver output, every file under each ``AIRFLOW_HOME/logs``, and the
raw bytes of each metadata DB. On Airflow 3.0 only, ``dag.test()`` prints its own debug lines
``Sending request msg=MaskSecret(value='...')`` that echo each value handed to the secrets
masker (the connection password and the provider's JWTs included): that is Airflow's output,
not the provider's, and those lines alone are left out of the scan there.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import airflow
import pytest

from airflow_provider_kore.testing import KoreSimulator
from airflow_provider_kore.testing.simulator import OPERATIONS, RequestRecord

pytestmark = pytest.mark.e2e

AIRFLOW_VERSION = tuple(int(part) for part in airflow.__version__.split(".")[:2])
REPO = Path(__file__).resolve().parent.parent
EXAMPLE_DAGS = REPO / "example_dags"
DEMO = REPO / "scripts" / "demo.py"
JWT = re.compile(r"eyJ[\w-]+\.[\w-]+\.[\w-]*")
#: Airflow 3.0's dag.test() echoes what it hands to the masker (its own debug output).
AIRFLOW_30_MASKER_ECHO = re.compile(r"(Sending request|Received message from task runner).*MaskSecret\(value=")
#: A line inside the locals panel of a rich traceback (Airflow 3.0's dag.test() console output).
RICH_LOCALS_LINE = "\u2502 \u2502"
#: Seconds between status reads in the example DAGs (they read KORE_DEMO_POLL_INTERVAL).
POLL_SECONDS = "0.2"
#: What one scenario may take at most, driver start-up included, before the driver is killed.
SCENARIO_TIMEOUT = 150.0
MARK = "@@KORE-E2E"

SMS = "cd-sms-welcome-0001"
VOICE = "cd-voice-renewal-0001"
FOLLOW_UP = "cd-sms-followup-0002"
PIPELINE_RETRIES = 2
START_FAILED = {
    "start_sms_campaign": "failed",
    "wait_for_sms_completed": "upstream_failed",
    "stop_voice_campaign": "upstream_failed",
}  # example_dags/kore_campaign_pipeline.py: start_sms_campaign retries=2

# The driver: Airflow's CLI entry point, once per command read from stdin, in one process.
DRIVER = f"""
import json, os, sys, traceback
import airflow.__main__ as cli
if {AIRFLOW_VERSION < (3, 1)}:
    # Airflow 3.0's dag.test() syncs the DAG but not its assets (the producer's outlet would be
    # "inactive"): parse the folder once as the DAG processor would, assets included.
    sys.argv = ["airflow", "dags", "reserialize"]
    cli.main()
print("{MARK} ready", flush=True)
for line in sys.stdin:
    cmd = json.loads(line)
    # Start each run as a fresh worker process would: no request pacing learned by an earlier run.
    try:
        from airflow_provider_kore import pacing
        getattr(pacing, "_sync_pacers", {{}}).clear()
    except ImportError:
        pass
    os.environ["AIRFLOW_CONN_KORE_DEFAULT"] = cmd["conn"]
    print("{MARK} begin " + cmd["name"], flush=True)
    sys.argv = ["airflow", "dags", "test", cmd["dag_id"]]
    code = 0
    try:
        cli.main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
        code = 2
    sys.stdout.flush()
    sys.stderr.flush()
    print("{MARK} end " + cmd["name"] + " " + str(code), flush=True)
"""


# ---------------------------------------------------------------------------------------------
# Scenarios.


def _no_setup(sim: KoreSimulator) -> None:
    return None


@dataclass
class Scenario:
    name: str
    dag_id: str
    deferrable: bool
    #: Prepares the scenario's simulator (faults, statuses, callbacks) before the run.
    setup: Callable[[KoreSimulator], None] = _no_setup
    #: Give the connection a wrong client secret (the simulator answers 401).
    wrong_secret: bool = False
    #: Prepares the driver's AIRFLOW_HOME (input files) before the run.
    prepare_home: Callable[[Path], None] | None = None


@dataclass
class Outcome:
    scenario: Scenario
    sim: KoreSimulator
    exit_code: int | None
    run_id: str | None
    run_state: str | None
    #: task_id -> (state, try_number, duration seconds)
    tasks: dict[str, tuple[str | None, int, float | None]]
    xcoms: dict[str, Any]
    rendered: dict[str, Any]
    output: str
    seconds: float
    #: task ids that deferred (a trigger row or "running trigger in line" for them).
    trigger_rows: int = 0
    asset_events: list[tuple[str, str]] = field(default_factory=list)
    #: The wrong secret the connection carried, if the scenario used one.
    wrong_secret: str | None = None

    def state(self, task_id: str) -> str | None:
        return self.tasks[task_id][0] if task_id in self.tasks else None

    def records(self, operation: str | None = None, campaign_id: str | None = None) -> list[RequestRecord]:
        return [
            r
            for r in self.sim.requests
            if (operation is None or r.operation == operation) and (campaign_id is None or r.campaign_id == campaign_id)
        ]

    def describe(self) -> str:
        ops = [(r.operation, r.campaign_id, r.status_code) for r in self.sim.requests]
        return (
            f"scenario {self.scenario.name}: exit {self.exit_code}, run {self.run_state}, tasks {self.tasks}\n"
            f"requests {ops}\n--- output tail ---\n{self.output[-6000:]}"
        )


def _stop_after_start(sim: KoreSimulator) -> None:
    """Someone stops the SMS campaign in Kore right after the DAG started it."""

    def on_request(record: RequestRecord) -> None:
        if record.operation == "start_campaign" and record.status_code == 200:
            sim.set_status(record.campaign_id or "", "Stopped")

    sim.on_request = on_request


def _stop_after_first_status_read(sim: KoreSimulator) -> None:
    """The campaign is stopped in Kore after the worker's first poke: the trigger sees it."""

    def on_request(record: RequestRecord) -> None:
        if record.operation == "get_campaign_status" and record.status_code == 200:
            sim.on_request = None
            sim.set_status(record.campaign_id or "", "Stopped")

    sim.on_request = on_request


def _voice_running(sim: KoreSimulator) -> None:
    sim.set_status(VOICE, "Active")  # something for stop_voice_campaign to stop


def _tolerable_faults_sync(sim: KoreSimulator) -> None:
    _voice_running(sim)
    # A 429 makes the provider pace the connection (about one request per 6 s at first): the
    # campaign completes at its first answered read, so few requests follow the 429.
    sim.complete_after_polls = 1
    sim.inject_fault("start_campaign", status=503, retry_after=1)
    sim.inject_fault("get_campaign_status", status=429)
    sim.inject_fault("get_campaign_status", delay=1.5)  # answered late, still well within the timeout


def _tolerable_faults_deferred(sim: KoreSimulator) -> None:
    _voice_running(sim)
    sim.inject_fault("start_campaign", status=503, retry_after=1)
    # The first read is the sensor's poke in the worker; the others reach the trigger.
    sim.inject_fault("get_campaign_status", delay=1.0)
    sim.inject_fault("get_campaign_status", status=429)
    sim.inject_fault("get_campaign_status", status=503, retry_after=1)
    sim.inject_fault("get_campaign_status", delay=1.5)


def _start_refused_400(sim: KoreSimulator) -> None:
    _voice_running(sim)
    refusal = {"errors": [{"msg": "Invalid campaign state", "code": 400}]}
    sim.inject_fault("start_campaign", status=400, body=refusal, times=None)


#: The simulator serves the pipeline calls (branch sim): the nightly example runs end to end.
SIM_HAS_PIPELINE = "add_contacts" in OPERATIONS
NIGHTLY_LIST = "Policy Renewal Nightly"
NIGHTLY_CONTACTS = 7
NIGHTLY_OUTCOMES = 250  # three pages of contact outcomes


def _nightly_sim(sim: KoreSimulator) -> None:
    sim.add_contact_list(NIGHTLY_LIST)  # the list the campaign dials exists in Kore
    sim.set_contact_outcomes(VOICE, NIGHTLY_OUTCOMES)


def _nightly_home(home: Path) -> None:
    """Tonight's CSV for any ds the run may get (dag.test's logical date is now, in UTC)."""
    from datetime import date, timedelta

    rows = "".join(f"+1555000{i:04d},First{i},Last{i}\n" for i in range(NIGHTLY_CONTACTS))
    for days in (-1, 0, 1):
        folder = home / "kore" / "contacts" / (date.today() + timedelta(days=days)).isoformat()
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "tonight.csv").write_text("phoneNumber,firstName,lastName\n" + rows, encoding="utf-8")


SYNC_SCENARIOS = [
    Scenario("pipeline-sync-faults", "kore_campaign_pipeline", False, _tolerable_faults_sync),
    Scenario("chained-sync", "kore_chained_campaigns", False),
    Scenario("producer-sync", "kore_campaign_assets_producer", False),
    Scenario("consumer-sync", "kore_campaign_assets_consumer", False),
    Scenario("failfast-sync", "kore_campaign_pipeline", False, _stop_after_start),
    Scenario("auth-401-sync", "kore_campaign_pipeline", False, _voice_running, wrong_secret=True),
    Scenario("start-400-sync", "kore_campaign_pipeline", False, _start_refused_400),
]
DEFERRABLE_SCENARIOS = [
    Scenario("pipeline-deferred-faults", "kore_campaign_pipeline", True, _tolerable_faults_deferred),
    Scenario("chained-deferred", "kore_chained_campaigns", True),
    Scenario("producer-deferred", "kore_campaign_assets_producer", True),
    Scenario("failfast-deferred", "kore_campaign_pipeline", True, _stop_after_first_status_read),
]
if SIM_HAS_PIPELINE:
    DEFERRABLE_SCENARIOS.append(
        Scenario("nightly-deferred", "kore_nightly_outreach", True, _nightly_sim, prepare_home=_nightly_home)
    )


# ---------------------------------------------------------------------------------------------
# The driver process and the metadata DB.


class Driver:
    """One Airflow process running ``airflow dags test`` for each scenario sent to it."""

    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.home = home
        self.log_path = home / "driver-output.log"
        self._log = self.log_path.open("w", encoding="utf-8", errors="replace")
        self.process = subprocess.Popen(
            [sys.executable, "-c", DRIVER],
            env=env,
            cwd=home,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,
        )
        self._read_until(f"{MARK} ready", SCENARIO_TIMEOUT)

    def _read_until(self, marker: str, timeout: float) -> tuple[str, str]:
        """Lines up to ``marker`` (the marker line itself returned separately); kill on timeout."""
        assert self.process.stdout is not None
        timer = threading.Timer(timeout, self.kill)
        timer.start()
        lines: list[str] = []
        try:
            for line in self.process.stdout:
                self._log.write(line)
                if line.startswith(marker):
                    self._log.flush()
                    return "".join(lines), line.strip()
                lines.append(line)
        finally:
            timer.cancel()
        self._log.flush()
        raise AssertionError(f"the dag.test driver ended before {marker!r}:\n{''.join(lines)[-5000:]}")

    def run(self, name: str, dag_id: str, conn: str) -> tuple[int, str]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"name": name, "dag_id": dag_id, "conn": conn}) + "\n")
        self.process.stdin.flush()
        output, end = self._read_until(f"{MARK} end {name} ", SCENARIO_TIMEOUT)
        return int(end.rsplit(" ", 1)[1]), output

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, 9)

    def close(self) -> None:
        if self.process.stdin is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()
            self.process.wait(timeout=10)
        self._log.close()


def _query(db: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)) as conn:
        return conn.execute(sql, params).fetchall()


def _json(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode()
    try:
        return json.loads(value)
    except (TypeError, ValueError):
        return value


def _seconds(start: Any, end: Any) -> float | None:
    from datetime import datetime

    if not start or not end:
        return None
    parse = datetime.fromisoformat
    return (parse(str(end)) - parse(str(start))).total_seconds()


def _collect(db: Path, scenario: Scenario, sim: KoreSimulator, code: int, output: str, seconds: float) -> Outcome:
    runs = _query(db, "SELECT run_id, state FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1", scenario.dag_id)
    run_id, run_state = runs[0] if runs else (None, None)
    tasks = {
        task_id: (state, int(try_number or 0), _seconds(start, end))
        for task_id, state, try_number, start, end in _query(
            db,
            "SELECT task_id, state, try_number, start_date, end_date FROM task_instance "
            "WHERE run_id = ? AND dag_id = ?",
            run_id,
            scenario.dag_id,
        )
    }
    xcoms = {
        task_id: _json(value)
        for task_id, value in _query(
            db, "SELECT task_id, value FROM xcom WHERE run_id = ? AND key = 'return_value'", run_id
        )
    }
    rendered = {
        task_id: _json(value)
        for task_id, value in _query(
            db, "SELECT task_id, rendered_fields FROM rendered_task_instance_fields WHERE run_id = ?", run_id
        )
    }
    (trigger_rows,) = _query(
        db, "SELECT count(*) FROM task_instance WHERE run_id = ? AND trigger_id IS NOT NULL", run_id
    )[0]
    assets = _query(db, "SELECT source_dag_id, source_run_id FROM asset_event WHERE source_run_id = ?", run_id)
    return Outcome(
        scenario=scenario,
        sim=sim,
        exit_code=code,
        run_id=run_id,
        run_state=run_state,
        tasks=tasks,
        xcoms=xcoms,
        rendered=rendered,
        output=output,
        seconds=seconds,
        trigger_rows=int(trigger_rows),
        asset_events=[tuple(row) for row in assets],  # type: ignore[misc]
    )


def _run_all(driver: Driver, scenarios: list[Scenario]) -> dict[str, Outcome]:
    outcomes: dict[str, Outcome] = {}
    db = driver.home / "airflow.db"
    for scenario in scenarios:
        # Each scenario its own simulator, with its own random secret to look for afterwards.
        sim = KoreSimulator(client_secret=f"e2e-secret-{secrets.token_hex(12)}", complete_after_polls=3)
        sim.start()
        try:
            scenario.setup(sim)
            if scenario.prepare_home is not None:
                scenario.prepare_home(driver.home)
            conn = json.loads(sim.airflow_conn_json())
            wrong = f"wrong-secret-{secrets.token_hex(12)}" if scenario.wrong_secret else None
            if wrong is not None:
                conn["password"] = wrong
            started = time.monotonic()
            code, output = driver.run(scenario.name, scenario.dag_id, json.dumps(conn))
            outcome = _collect(db, scenario, sim, code, output, time.monotonic() - started)
            outcome.wrong_secret = wrong
            outcomes[scenario.name] = outcome
        finally:
            sim.on_request = None
            sim.stop()
    return outcomes


@dataclass
class E2ERuns:
    outcomes: dict[str, Outcome]
    homes: list[Path]
    drivers: list[Driver]
    demo: subprocess.CompletedProcess[str] | None
    demo_seconds: float
    demo_home: Path

    def __getitem__(self, name: str) -> Outcome:
        assert name in self.outcomes, f"scenario {name} did not run"
        return self.outcomes[name]


def _run_demo(home: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_", "KORE_"))}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(DEMO), "--home", str(home)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return done, time.monotonic() - started


@pytest.fixture(scope="module")
def runs(e2e_airflow: Any, tmp_path_factory: pytest.TempPathFactory) -> E2ERuns:
    """Run every scenario (sync and deferrable drivers, and the demo) at once; yield what they left."""
    common = {"KORE_DEMO_POLL_INTERVAL": POLL_SECONDS, "AIRFLOW__CORE__DEFAULT_TASK_RETRY_DELAY": "1"}
    demo_home = tmp_path_factory.mktemp("demo_home")
    drivers: list[Driver] = []
    homes: list[Path] = []
    with ThreadPoolExecutor(max_workers=3) as pool:
        demo_future = pool.submit(_run_demo, demo_home)
        futures: list[Future[dict[str, Outcome]]] = []
        for mode, scenarios in (("sync", SYNC_SCENARIOS), ("deferrable", DEFERRABLE_SCENARIOS)):
            home = e2e_airflow.new_home(f"dags-{mode}")
            homes.append(home)
            env = e2e_airflow.env(
                home,
                EXAMPLE_DAGS,
                AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE=str(mode == "deferrable"),
                **common,
            )

            def start_and_run(home: Path = home, env: dict[str, str] = env, scenarios: list[Scenario] = scenarios):
                driver = Driver(home, env)
                drivers.append(driver)
                return _run_all(driver, scenarios)

            futures.append(pool.submit(start_and_run))
        outcomes: dict[str, Outcome] = {}
        errors: list[str] = []
        for future in futures:
            try:
                outcomes.update(future.result())
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
        demo, demo_seconds = demo_future.result()
    for driver in drivers:
        driver.close()
    timings = {name: round(o.seconds, 1) for name, o in outcomes.items()}
    print(f"\ne2e dag.test scenario seconds: {timings}; demo {demo_seconds:.1f}s", file=sys.stderr)
    if errors and not outcomes:
        pytest.fail("the dag.test drivers failed:\n" + "\n".join(errors))
    return E2ERuns(outcomes, homes, drivers, demo, demo_seconds, demo_home)


# ---------------------------------------------------------------------------------------------
# Helpers for the assertions.


def _ops(outcome: Outcome, campaign_id: str | None = None) -> list[tuple[str | None, int]]:
    return [(r.operation, r.status_code) for r in outcome.records(campaign_id=campaign_id)]


def _assert_tasks(outcome: Outcome, expected: dict[str, str]) -> None:
    states = {task_id: outcome.state(task_id) for task_id in expected}
    assert states == expected, outcome.describe()


def _assert_start_then_reads_then_stop(outcome: Outcome) -> None:
    """Pipeline order: the SMS start, then its status reads, then the voice stop, nothing after."""
    ops = [(r.operation, r.campaign_id, r.status_code) for r in outcome.sim.requests]
    good_start = ops.index(("start_campaign", SMS, 200))
    reads = [i for i, op in enumerate(ops) if op[0] == "get_campaign_status"]
    stops = [i for i, op in enumerate(ops) if op[0] == "stop_campaign"]
    assert reads, outcome.describe()
    assert good_start < min(reads), outcome.describe()
    assert all(op[1] == SMS for op in ops if op[0] in ("start_campaign", "get_campaign_status")), ops
    assert stops == [len(ops) - 1], outcome.describe()
    assert ops[-1] == ("stop_campaign", VOICE, 200)
    assert outcome.records("get_campaign_status")[-1].status_code == 200
    assert outcome.sim.status_of(SMS) == "Completed"
    assert outcome.sim.status_of(VOICE) == "Stopped"
    assert outcome.sim.campaign_info(SMS)["runs"] == 1  # started once, whatever the faults


# ---------------------------------------------------------------------------------------------
# The example DAGs, sync and deferrable.


@pytest.mark.parametrize("name", ["pipeline-sync-faults", "pipeline-deferred-faults"])
def test_pipeline_succeeds_through_tolerable_faults(runs: E2ERuns, name: str) -> None:
    """503 + Retry-After on the start, 429 / 503 / a late answer on status reads: the run still succeeds."""
    outcome = runs[name]
    assert outcome.exit_code == 0, outcome.describe()
    assert outcome.run_state == "success", outcome.describe()
    _assert_tasks(
        outcome,
        {"start_sms_campaign": "success", "wait_for_sms_completed": "success", "stop_voice_campaign": "success"},
    )
    # The start's 503 was a refusal, retried by the hook inside the same try: no Airflow retry.
    assert outcome.tasks["start_sms_campaign"][1] == 1
    assert [r.status_code for r in outcome.records("start_campaign")] == [503, 200]
    assert {429} <= {r.status_code for r in outcome.records("get_campaign_status")}
    assert outcome.sim.pending_faults == 0, "every injected fault was met"
    _assert_start_then_reads_then_stop(outcome)
    assert outcome.xcoms["wait_for_sms_completed"]["status"] == "Completed"
    assert outcome.xcoms["start_sms_campaign"]["campaign_id"] == SMS
    assert outcome.xcoms["stop_voice_campaign"]["stopped"] is True
    assert outcome.rendered["start_sms_campaign"]["campaign_id"] == SMS  # the param template rendered
    if outcome.scenario.deferrable:
        assert "running trigger in line" in outcome.output
        assert "Deferring the wait on Kore.ai campaign" in outcome.output
        # The trigger polled (worker poke + trigger reads): more than one read reached Kore.
        assert len(outcome.records("get_campaign_status")) >= 3
    else:
        assert "running trigger in line" not in outcome.output


@pytest.mark.skipif(not SIM_HAS_PIPELINE, reason="the simulator does not serve the pipeline calls yet (branch sim)")
def test_nightly_outreach_loads_runs_by_name_and_exports(runs: E2ERuns) -> None:
    """CSV -> contact list, the voice campaign started by name, waited on deferred, outcomes to a file, an Asset."""
    outcome = runs["nightly-deferred"]
    assert outcome.exit_code == 0, outcome.describe()
    tasks = ("load_contacts", "start_renewal", "wait_for_renewal", "export_outcomes")
    _assert_tasks(outcome, dict.fromkeys(tasks, "success"))
    load = outcome.xcoms["load_contacts"]
    assert (load["rows"], load["sent"], load["skipped"]) == (NIGHTLY_CONTACTS, NIGHTLY_CONTACTS, 0)
    assert [c["phoneNumber"] for c in outcome.sim.contact_list(NIGHTLY_LIST)] == [
        f"+1555000{i:04d}" for i in range(NIGHTLY_CONTACTS)
    ]
    ops = [r.operation for r in outcome.sim.requests]
    assert ops.index("add_contacts") < ops.index("list_campaigns") < ops.index("start_campaign"), ops
    assert outcome.xcoms["start_renewal"]["campaign_id"] == VOICE  # found by its name
    assert outcome.records("start_campaign")[0].campaign_id == VOICE
    assert "running trigger in line" in outcome.output
    export = outcome.xcoms["export_outcomes"]
    assert export["rows"] == NIGHTLY_OUTCOMES
    assert len(outcome.records("get_campaign_contacts")) == 3
    path = Path(export["path"].removeprefix("file://"))
    assert path.is_relative_to(runs.homes[1] / "kore" / "results")
    assert len(path.read_text(encoding="utf-8").splitlines()) == NIGHTLY_OUTCOMES + 1
    assert [p.name for p in path.parent.iterdir()] == ["renewal.csv"]  # no temporary file left
    assert outcome.asset_events, outcome.describe()


@pytest.mark.parametrize("name", ["chained-sync", "chained-deferred"])
def test_chained_campaigns(runs: E2ERuns, name: str) -> None:
    """The welcome campaign runs to Completed, then the follow-up starts on the bot read from XCom."""
    outcome = runs[name]
    assert outcome.exit_code == 0, outcome.describe()
    _assert_tasks(outcome, {"start_welcome": "success", "pick_follow_up": "success", "start_follow_up": "success"})
    welcome = _ops(outcome, SMS)
    assert welcome[0] == ("start_campaign", 200)
    assert {op for op, _ in welcome[1:]} == {"get_campaign_status"}, welcome
    assert welcome[-1] == ("get_campaign_status", 200)
    ops = [(r.operation, r.campaign_id) for r in outcome.sim.requests]
    assert ops[-1] == ("start_campaign", FOLLOW_UP), ops  # only after the welcome campaign completed
    assert outcome.sim.status_of(SMS) == "Completed"
    assert outcome.sim.status_of(FOLLOW_UP) == "Active"
    assert outcome.xcoms["start_welcome"]["status"] == "Completed"
    if outcome.scenario.deferrable:
        # dag.test() resumes a deferred task with only the event (it drops the defer() kwargs that
        # carry the start answer; a real triggerer keeps them): the start's own status is lost there.
        assert outcome.xcoms["start_welcome"].get("start_status") in ("Active", None)
    else:
        assert outcome.xcoms["start_welcome"]["start_status"] == "Active"
    assert outcome.xcoms["pick_follow_up"] == FOLLOW_UP
    assert outcome.xcoms["start_follow_up"]["campaign_id"] == FOLLOW_UP
    # stream_id came from start_welcome's XCom through a template, and reached the request path.
    assert outcome.rendered["start_follow_up"]["stream_id"] == outcome.sim.stream_id
    assert outcome.records("start_campaign", FOLLOW_UP)[0].path.split("/")[5] == outcome.sim.stream_id
    assert ("running trigger in line" in outcome.output) is outcome.scenario.deferrable
    if not outcome.scenario.deferrable:
        assert outcome.trigger_rows == 0


@pytest.mark.parametrize("name", ["producer-sync", "producer-deferred"])
def test_assets_producer_emits_the_completion_event(runs: E2ERuns, name: str) -> None:
    outcome = runs[name]
    assert outcome.exit_code == 0, outcome.describe()
    _assert_tasks(outcome, {"start_welcome": "success", "wait_for_welcome_completed": "success"})
    assert _ops(outcome)[0] == ("start_campaign", 200)
    assert {op for op, _ in _ops(outcome)[1:]} == {"get_campaign_status"}
    assert outcome.sim.status_of(SMS) == "Completed"
    assert outcome.asset_events == [("kore_campaign_assets_producer", outcome.run_id)]
    assert outcome.xcoms["wait_for_welcome_completed"]["status"] == "Completed"


def test_assets_consumer_starts_the_follow_up(runs: E2ERuns) -> None:
    outcome = runs["consumer-sync"]
    assert outcome.exit_code == 0, outcome.describe()
    _assert_tasks(outcome, {"start_follow_up": "success"})
    assert _ops(outcome) == [("start_campaign", 200)]
    assert outcome.records()[0].campaign_id == FOLLOW_UP
    assert outcome.sim.status_of(FOLLOW_UP) == "Active"
    assert outcome.rendered["start_follow_up"]["campaign_id"] == FOLLOW_UP


# ---------------------------------------------------------------------------------------------
# Failing fast, failing cleanly.


@pytest.mark.parametrize("name", ["failfast-sync", "failfast-deferred"])
def test_sensor_fails_fast_on_a_stopped_campaign(runs: E2ERuns, name: str) -> None:
    """A campaign stopped while the DAG waits for Completed fails the wait at once, naming the status."""
    outcome = runs[name]
    assert outcome.exit_code != 0, outcome.describe()
    assert outcome.run_state == "failed"
    _assert_tasks(
        outcome,
        {"start_sms_campaign": "success", "wait_for_sms_completed": "failed", "stop_voice_campaign": "upstream_failed"},
    )
    _, tries, duration = outcome.tasks["wait_for_sms_completed"]
    assert tries == 1  # a status the wait must not end in is not retried
    assert duration is not None
    assert duration < 30, f"failed after {duration}s, not within a poke or two"
    reads = outcome.records("get_campaign_status", SMS)
    assert 1 <= len(reads) <= 2, outcome.describe()
    assert outcome.sim.status_of(SMS) == "Stopped"
    assert not outcome.records("stop_campaign")
    assert "KoreCampaignStatusError" in outcome.output
    assert re.search(r"cd-sms-welcome-0001.*'?Stopped'?", outcome.output), outcome.describe()
    if outcome.scenario.deferrable:  # the first poke saw Active and deferred; the trigger saw Stopped
        assert "running trigger in line" in outcome.output
        assert len(reads) == 2


def test_wrong_secret_fails_with_a_clear_auth_error(runs: E2ERuns) -> None:
    """401 on every call: each try signs one new token then gives up; Airflow's own retries only."""
    outcome = runs["auth-401-sync"]
    assert outcome.exit_code != 0
    _assert_tasks(outcome, START_FAILED)
    tries = outcome.tasks["start_sms_campaign"][1]
    assert tries == PIPELINE_RETRIES + 1, outcome.describe()
    assert {r.status_code for r in outcome.records()} == {401}
    # Each call is sent once more with a freshly signed token (the engine's rule), then given up
    # after the connection is read again and found unchanged. Try 1 sends the start; a retry try
    # first reads the campaign's status (never starting it twice), refused the same way.
    assert len(outcome.records("start_campaign")) == 2, outcome.describe()
    assert len(outcome.records("get_campaign_status")) == 2 * (tries - 1), outcome.describe()
    assert not outcome.records("get_campaign")
    assert not outcome.records("stop_campaign")
    assert "KoreAuthError" in outcome.output
    assert "401" in outcome.output
    assert outcome.sim.status_of(SMS) == "Ready"


def test_start_refused_with_400_fails_cleanly(runs: E2ERuns) -> None:
    """A 400 is not retried by the hook; each Airflow try sends exactly one start; Kore's message is shown."""
    outcome = runs["start-400-sync"]
    assert outcome.exit_code != 0
    _assert_tasks(outcome, START_FAILED)
    tries = outcome.tasks["start_sms_campaign"][1]
    assert tries == PIPELINE_RETRIES + 1
    assert [r.status_code for r in outcome.records("start_campaign")] == [400] * tries
    # Each retry try reads the status first (Ready: it starts again); the first try does not.
    assert len(outcome.records("get_campaign_status")) == tries - 1
    assert not outcome.records("stop_campaign")
    assert "Invalid campaign state" in outcome.output
    assert "400" in outcome.output
    assert outcome.sim.status_of(SMS) == "Ready"
    assert outcome.sim.status_of(VOICE) == "Active"


# ---------------------------------------------------------------------------------------------
# No secret anywhere.


def _scrub_airflow_30_echo(text: str) -> str:
    """Airflow 3.0 only: drop its masker echo lines and the locals panels of rich tracebacks.

    The locals panels are checked on their own, by :func:`test_failed_task_tracebacks_show_no_secret`.
    """
    if AIRFLOW_VERSION >= (3, 1):
        return text
    return "\n".join(line for line in _drop_masker_echo(text).splitlines() if not line.startswith(RICH_LOCALS_LINE))


def _drop_masker_echo(text: str) -> str:
    """Airflow 3.0 only: drop the debug lines in which it echoes each value handed to its masker."""
    if AIRFLOW_VERSION >= (3, 1):
        return text
    return "\n".join(line for line in text.splitlines() if not AIRFLOW_30_MASKER_ECHO.search(line))


def _leaks(text: str, secret_values: list[str]) -> list[str]:
    found = [f"secret {value[:10]}..." for value in secret_values if value and value in text]
    found += [f"JWT {match[:16]}..." for match in JWT.findall(text)]
    return found


def test_no_secret_or_jwt_in_any_log_xcom_or_rendered_field(runs: E2ERuns) -> None:
    outcomes = list(runs.outcomes.values())
    assert len(outcomes) == len(SYNC_SCENARIOS) + len(DEFERRABLE_SCENARIOS)
    secret_values = [o.sim.client_secret for o in outcomes] + [o.wrong_secret for o in outcomes if o.wrong_secret]
    tokens = {r.headers["auth"] for o in outcomes for r in o.sim.requests if r.headers.get("auth")}
    assert tokens, "the simulator saw signed requests"
    problems: dict[str, list[str]] = {}
    for home in runs.homes:
        texts = {"driver output": (home / "driver-output.log").read_text(errors="replace")}
        texts.update(
            {str(path): path.read_text(errors="replace") for path in (home / "logs").rglob("*") if path.is_file()}
        )
        for where, text in texts.items():
            text = _scrub_airflow_30_echo(text)
            found = _leaks(text, secret_values) + [f"token {t[:16]}..." for t in tokens if t in text]
            if found:
                problems[f"{home.name}: {where}"] = found
        # The metadata DB, raw: XCom, rendered fields, trigger kwargs, DAG run conf, audit log...
        for db_file in home.glob("airflow.db*"):
            raw = db_file.read_bytes().decode("latin-1")
            found = _leaks(raw, secret_values) + [f"token {t[:16]}..." for t in tokens if t in raw]
            if found:
                problems[f"{home.name}: {db_file.name}"] = found
    for outcome in outcomes:
        for what, value in (("xcom", outcome.xcoms), ("rendered fields", outcome.rendered)):
            found = _leaks(json.dumps(value), secret_values)
            if found:
                problems[f"{outcome.scenario.name}: {what}"] = found
    assert problems == {}


def test_failed_task_tracebacks_show_no_secret(runs: E2ERuns) -> None:
    """The 401 and 400 runs fail with tracebacks: their frames' locals must not hold the secret."""
    failing = [runs["auth-401-sync"], runs["start-400-sync"]]
    assert all("Traceback" in o.output or "\u2502" in o.output for o in failing)
    leaks = {
        o.scenario.name: found
        for o in failing
        if (found := _leaks(_drop_masker_echo(o.output), [o.sim.client_secret, o.wrong_secret or ""]))
    }
    assert leaks == {}


def test_task_output_is_really_captured(runs: E2ERuns) -> None:
    """The leak scan is only worth something if the task logs are in what it scanned."""
    outcome = runs["pipeline-sync-faults"]
    assert "Started Kore.ai sms campaign cd-sms-welcome-0001" in outcome.output
    assert "Kore.ai campaign cd-sms-welcome-0001 is Completed" in outcome.output
    assert "Stopped Kore.ai voice campaign cd-voice-renewal-0001" in outcome.output


# ---------------------------------------------------------------------------------------------
# The demo (``python3 run.py demo``), cold: its own ``airflow db migrate`` included.


def test_demo_script_runs_the_pipeline(runs: E2ERuns) -> None:
    demo = runs.demo
    assert demo is not None
    out = demo.stdout
    assert demo.returncode == 0, out + demo.stderr[-5000:]
    assert "DAG run kore_campaign_pipeline: success" in out
    assert "task start_sms_campaign: success" in out
    assert "task wait_for_sms_completed: success" in out
    assert "task stop_voice_campaign: success" in out
    assert re.search(r"cd-sms-welcome-0001 \(sms\): Ready -> Completed .*1 start", out), out
    assert re.search(r"cd-voice-renewal-0001 \(voice\): Active -> Stopped .*1 stop", out), out
    assert "Secrets in Airflow's output: NONE" in out
    # It ran the wait in deferrable mode, through the real trigger.
    assert "running trigger in line" in (runs.demo_home / "airflow.log").read_text(errors="replace")
    print(f"\ndemo wall time (cold, db migrate included): {runs.demo_seconds:.1f}s")
