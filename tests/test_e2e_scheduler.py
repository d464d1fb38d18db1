"""A real Airflow deployment: deferred Kore waits run in ONE ``airflow triggerer``, many at once.

One throwaway ``AIRFLOW_HOME`` (a copy of the session's migrated SQLite DB; Airflow 3 runs the
``LocalExecutor`` on SQLite), and four processes: ``airflow api-server`` (REST API and the
execution API the workers talk to), ``airflow scheduler``, ``airflow dag-processor`` and one
``airflow triggerer``, with ``tests/e2e_dags/`` as the DAGs folder and ``kore_default`` pointing
at a :class:`KoreSimulator` in this test process.

``kore_e2e_fanout`` maps :data:`WAITS` deferrable ``KoreCampaignStatusSensor`` tasks over as
many Active simulator campaigns. The campaigns complete only once every wait is deferred and
assigned to the triggerer (the test watches the ``trigger`` table), so all of them are waiting
in that one triggerer's event loop at the same time. A deferrable start operator in the same DAG
checks that its start answer survives a real deferral (``dag.test()`` drops it).

On Airflow 3.3 (``BaseTrigger.on_kill``), ``kore_e2e_kill`` checks ``stop_on_kill`` while
deferred: the task is marked failed through the REST API and the trigger stops the campaign.

``kore_e2e_quick`` (:func:`test_quick_waits_are_not_failed_by_the_defer_race`) is Airflow's defer
race (apache/airflow#66374, #71580, #72716): :data:`QUICK_WAITS` mapped waits polling every
2 s on campaigns done by the trigger's first read, released as they defer, not held back.
It runs on SQLite (``airflow standalone``'s database; the runs are staged by a low
``parallelism``) and on a throwaway PostgreSQL 15 cluster (skipped when the server binaries or
the psycopg2/asyncpg drivers are missing). ``KORE_E2E_DB=sqlite`` or ``postgres`` runs only
one; ``scripts/e2e_race_loop.sh`` runs it many times in a row, with the CPUs loaded.
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
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import airflow
import postgres_cluster
import pytest
import requests
from airflow.triggers.base import BaseTrigger
from processes import free_port, stop_process_group

from airflow_provider_kore.testing import KoreSimulator
from airflow_provider_kore.triggers.campaign import MIN_FIRST_READ_DELAY

pytestmark = pytest.mark.e2e

AIRFLOW_VERSION = tuple(int(part) for part in airflow.__version__.split(".")[:2])
E2E_DAGS = Path(__file__).resolve().parent / "e2e_dags"
JWT = re.compile(r"eyJ[\w-]+\.[\w-]+\.[\w-]*")
WAITS = 40
POLL = "1"
WAIT_IDS = [f"cd-e2e-wait-{i:04d}" for i in range(WAITS)]
START_ID = "cd-e2e-start-0001"
KILL_ID = "cd-e2e-kill-0001"
#: The scheduler's log line for a task process that ended (here: after deferring).
EXECUTOR_SUCCESS = re.compile(
    r"executor event with state success .*dag_id='kore_e2e_fanout', task_id='(\w+)'.*map_index=(-?\d+)\)"
)
#: Bounds, in seconds.
READY_TIMEOUT = 120.0
RUN_TIMEOUT = 180.0

#: The defer-race scenario: waits polling every QUICK_POLL s on campaigns done at the trigger's first read.
QUICK_WAITS = 16
QUICK_POLL = 2
QUICK_IDS = [f"cd-e2e-quick-{i:04d}" for i in range(QUICK_WAITS)]
QUICK_START_ID = "cd-e2e-quick-start"
#: Task processes at once: SQLite (one writer) is not asked for dozens of them at a time.
QUICK_PARALLELISM = {"sqlite": 4, "postgres": 8}
READ_OR_START = ("get_campaign_status", "start_campaign")
#: Seconds past MIN_FIRST_READ_DELAY a trigger may take to start and read on a loaded machine.
QUICK_LATE_SLACK = 20.0
#: What Airflow's scheduler logs when it fails a task on the defer race.
DEFER_RACE = re.compile(r".*finished with state success, but the task instance's state attribute is \w+.*")


@dataclass
class Deployment:
    home: Path
    url: str
    sim: KoreSimulator
    session: requests.Session
    #: The metadata DB: SQLite in ``home`` unless a PostgreSQL cluster is given.
    postgres: postgres_cluster.Cluster | None = None
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    fanout_run: dict[str, Any] = field(default_factory=dict)
    fanout_tis: list[dict[str, Any]] = field(default_factory=list)
    #: Most trigger rows seen at once, and the triggerer ids they were assigned to.
    peak_triggers: int = 0
    triggerer_ids: set[int] = field(default_factory=set)
    #: Simulator connections opened once every wait had deferred (the workers' pokes are done).
    connections_before_release: int = 0
    requests_before_release: int = 0
    seconds_to_success: float = 0.0
    kill: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return self.session.request(method, f"{self.url}/api/v2{path}", timeout=30, **kwargs)

    def output(self, name: str) -> str:
        return (self.home / f"{name}.out").read_text(errors="replace")

    def tails(self) -> str:
        return "\n".join(f"--- {name} ---\n{self.output(name)[-3000:]}" for name in self.processes)

    def db(self, sql: str) -> list[tuple[Any, ...]]:
        if self.postgres is not None:
            with contextlib.closing(self.postgres.connect()) as pg:
                cursor = pg.cursor()  # type: ignore[attr-defined]
                cursor.execute(sql)
                return [tuple(row) for row in cursor.fetchall()]
        with contextlib.closing(
            sqlite3.connect(f"file:{self.home / 'airflow.db'}?mode=ro", uri=True, timeout=30)
        ) as conn:
            return conn.execute(sql).fetchall()


def _env(e2e_airflow: Any, home: Path, port: int, sim: KoreSimulator, **overrides: str) -> dict[str, str]:
    from cryptography.fernet import Fernet

    return e2e_airflow.env(
        home,
        E2E_DAGS,
        AIRFLOW__CORE__EXECUTOR="LocalExecutor",
        AIRFLOW__CORE__PARALLELISM=overrides.pop("parallelism", "8"),
        AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"http://127.0.0.1:{port}/execution/",
        AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="False",
        AIRFLOW__CORE__FERNET_KEY=Fernet.generate_key().decode(),
        AIRFLOW__CORE__AUTH_MANAGER="airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS="True",
        AIRFLOW__API_AUTH__JWT_SECRET=secrets.token_hex(32),
        AIRFLOW__API_AUTH__JWT_ISSUER="airflow-provider-kore-tests",
        AIRFLOW__API__BASE_URL=f"http://127.0.0.1:{port}",
        AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC="1",
        AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="600",
        AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC="1",
        AIRFLOW_CONN_KORE_DEFAULT=sim.airflow_conn_json(),
        KORE_E2E_WAITS=str(WAITS),
        KORE_E2E_POLL=POLL,
        KORE_E2E_QUICK_WAITS=str(QUICK_WAITS),
        KORE_E2E_QUICK_POLL=str(QUICK_POLL),
        **overrides,
    )


#: What Airflow 3.3's triggerer logs when the trigger runner's event loop stops answering.
TRIGGERER_DEADLOCK = "event loop appears deadlocked"


def _wait_for(what: str, check: Any, timeout: float, deployment: Deployment, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        for name, process in deployment.processes.items():
            assert process.poll() is None, f"airflow {name} exited while waiting for {what}:\n{deployment.tails()}"
        # Fail at once rather than at the timeout: a blocked event loop never finishes a wait.
        assert TRIGGERER_DEADLOCK not in deployment.output("triggerer"), (
            f"the triggerer's event loop blocked while waiting for {what} (a blocking call in a trigger: "
            f"see the report on mask_secret in the event loop):\n{deployment.output('triggerer')[-3000:]}"
        )
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{deployment.tails()}"
        time.sleep(interval)


def _ok(response_fn: Any) -> Any:
    with contextlib.suppress(requests.RequestException):
        response = response_fn()
        if response.status_code == 200:
            return response.json()
    return None


def _trigger_run(deployment: Deployment, dag_id: str) -> str:
    answer = deployment.api("POST", f"/dags/{dag_id}/dagRuns", json={"logical_date": None})
    assert answer.status_code == 200, answer.text
    return str(answer.json()["dag_run_id"])


#: The Airflow processes of a deployment, by name.
COMMANDS = {
    "api-server": ["api-server", "--host", "127.0.0.1", "--workers", "1"],
    "scheduler": ["scheduler"],
    "dag-processor": ["dag-processor"],
    "triggerer": ["triggerer"],
}


@contextlib.contextmanager
def _running(deployment: Deployment, env: dict[str, str], port: int, dag_ids: list[str]) -> Iterator[Deployment]:
    """Start the four Airflow processes; yield once the API answers and ``dag_ids`` are parsed; stop them."""
    home = deployment.home
    try:
        for name, args in COMMANDS.items():
            if name == "api-server":
                args = [*args, "--port", str(port)]
            with (home / f"{name}.out").open("wb") as out:
                deployment.processes[name] = subprocess.Popen(
                    [sys.executable, "-m", "airflow", *args],
                    env=env,
                    cwd=home,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        session = deployment.session
        _wait_for(
            "the api-server",
            lambda: _ok(lambda: session.get(f"{deployment.url}/api/v2/monitor/health", timeout=5)),
            READY_TIMEOUT,
            deployment,
        )
        token = session.get(f"{deployment.url}/auth/token", timeout=30)
        assert token.status_code in (200, 201), token.text
        session.headers["Authorization"] = f"Bearer {token.json()['access_token']}"
        for dag_id in dag_ids:
            _wait_for(
                f"{dag_id} to be parsed",
                lambda d=dag_id: _ok(lambda: deployment.api("GET", f"/dags/{d}")),
                READY_TIMEOUT,
                deployment,
            )
        yield deployment
    finally:
        for process in deployment.processes.values():
            stop_process_group(process)
        deployment.session.close()


@pytest.fixture(scope="module")
def deployment(e2e_airflow: Any) -> Iterator[Deployment]:
    campaigns: dict[str, Any] = {
        cid: {"status": "Active", "complete_after_polls": None, "complete_after_seconds": None} for cid in WAIT_IDS
    }
    # Completes when the test releases it, with the waits (see executor_events_taken).
    campaigns[START_ID] = {"complete_after_polls": None, "complete_after_seconds": None}
    campaigns[KILL_ID] = {"complete_after_polls": None, "complete_after_seconds": None}
    sim = KoreSimulator(client_secret=f"e2e-secret-{secrets.token_hex(12)}", campaigns=campaigns)
    sim.start()
    home = e2e_airflow.new_home("deployment")
    port = free_port()
    env = _env(e2e_airflow, home, port, sim)
    deployment = Deployment(home=home, url=f"http://127.0.0.1:{port}", sim=sim, session=requests.Session())
    with contextlib.ExitStack() as stack:
        stack.callback(sim.stop)
        stack.enter_context(_running(deployment, env, port, ["kore_e2e_fanout", "kore_e2e_kill"]))
        started = time.monotonic()
        fanout_run = _trigger_run(deployment, "kore_e2e_fanout")
        kill_run = _trigger_run(deployment, "kore_e2e_kill") if hasattr(BaseTrigger, "on_kill") else None

        # Every wait deferred and taken by a triggerer: only then do the campaigns complete, so
        # all of them were waiting in the triggerer at the same time.
        expected = {("kore_e2e_fanout", "wait"): WAITS, ("kore_e2e_fanout", "start_and_wait"): 1}
        if kill_run is not None:
            expected[("kore_e2e_kill", "start_and_wait")] = 1

        def all_assigned() -> bool:
            rows = deployment.db("SELECT triggerer_id FROM trigger")
            deployment.peak_triggers = max(deployment.peak_triggers, len(rows))
            deployment.triggerer_ids |= {row[0] for row in rows if row[0] is not None}
            assigned = deployment.db(
                "SELECT ti.dag_id, ti.task_id, count(*) FROM task_instance ti JOIN trigger t ON ti.trigger_id = t.id "
                "WHERE ti.state = 'deferred' AND t.triggerer_id IS NOT NULL GROUP BY ti.dag_id, ti.task_id"
            )
            counts = {(dag_id, task_id): n for dag_id, task_id, n in assigned}
            failed = deployment.db("SELECT task_id, map_index FROM task_instance WHERE state = 'failed'")
            if failed and (failed != [("start_and_wait", -1)] or kill_run is None):
                logs = sorted((deployment.home / "logs").rglob("*.log"))
                errors = [line for p in logs for line in p.read_text(errors="replace").splitlines() if "error" in line]
                raise AssertionError(f"tasks failed before the campaigns completed: {failed[:5]}...\n{errors[:3]}")
            return all(counts.get(key, 0) >= n for key, n in expected.items())

        _wait_for("every wait to be deferred to the triggerer", all_assigned, RUN_TIMEOUT, deployment)

        # Airflow 3.0's scheduler fails a task whose trigger fired before it took in the executor's
        # "success" for the process that deferred it ("finished with state success, but the task
        # instance's state attribute is scheduled"): Airflow's race, not the provider's, and only
        # with waits that end seconds after deferring. Let the scheduler catch up first.
        def executor_events_taken() -> bool:
            text = (deployment.home / "scheduler.out").read_text(errors="replace")
            taken = set(EXECUTOR_SUCCESS.findall(text))
            return len(taken) >= WAITS + 1  # every wait, and the deferrable start

        _wait_for("the scheduler to take in every deferral", executor_events_taken, RUN_TIMEOUT, deployment)
        deployment.connections_before_release = sim.connections_opened
        deployment.requests_before_release = len(sim.requests)
        # A couple of polls from every trigger while all are waiting (the first comes
        # MIN_FIRST_READ_DELAY after the trigger started).
        time.sleep(MIN_FIRST_READ_DELAY + 2 * float(POLL))
        for cid in [*WAIT_IDS, START_ID]:
            sim.set_status(cid, "Completed")

        if kill_run is not None:
            path = f"/dags/kore_e2e_kill/dagRuns/{kill_run}/taskInstances/start_and_wait"
            killed = deployment.api("PATCH", path, json={"new_state": "failed"})
            deployment.kill = {"run_id": kill_run, "patch_status": killed.status_code, "patch_body": killed.text}
            _wait_for(
                "the trigger's on_kill to stop the campaign",
                lambda: sim.count("stop_campaign") > 0,
                60.0,
                deployment,
            )

        def fanout_done() -> dict[str, Any] | None:
            run = _ok(lambda: deployment.api("GET", f"/dags/kore_e2e_fanout/dagRuns/{fanout_run}"))
            return run if run and run["state"] in ("success", "failed") else None

        deployment.fanout_run = _wait_for("the fan-out run to finish", fanout_done, RUN_TIMEOUT, deployment)
        deployment.seconds_to_success = time.monotonic() - started
        tis = deployment.api("GET", f"/dags/kore_e2e_fanout/dagRuns/{fanout_run}/taskInstances?limit=100")
        deployment.fanout_tis = tis.json()["task_instances"]
        if kill_run is not None:
            ti = deployment.api("GET", f"/dags/kore_e2e_kill/dagRuns/{kill_run}/taskInstances/start_and_wait")
            deployment.kill["ti"] = ti.json()
        yield deployment


# ---------------------------------------------------------------------------------------------
# Airflow's defer race. Defined before the fan-out tests: pytest keeps a module fixture up until
# the module ends, and this deployment should not share the machine with that one.


def _databases() -> list[Any]:
    chosen = os.environ.get("KORE_E2E_DB", "").strip().lower()
    assert chosen in ("", "sqlite", "postgres"), f"KORE_E2E_DB must be sqlite or postgres, not {chosen!r}"
    return [pytest.param(db, id=db) for db in ("sqlite", "postgres") if chosen in ("", db)]


@contextlib.contextmanager
def _metadata_db(db: str, e2e_airflow: Any, home: Path) -> Iterator[postgres_cluster.Cluster | None]:
    """Nothing for SQLite (``home`` holds a copy of the session's migrated DB); a migrated PostgreSQL cluster."""
    if db == "sqlite":
        yield None
        return
    reason = postgres_cluster.unavailable()
    if reason:
        pytest.skip(f"PostgreSQL: {reason}")
    with postgres_cluster.cluster() as cluster:
        env = e2e_airflow.env(home, E2E_DAGS, AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=cluster.url)
        migrated = subprocess.run(
            [sys.executable, "-m", "airflow", "db", "migrate"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert migrated.returncode == 0, migrated.stdout[-3000:] + migrated.stderr[-3000:]
        yield cluster


@pytest.mark.parametrize("db", _databases())
def test_quick_waits_are_not_failed_by_the_defer_race(e2e_airflow: Any, db: str) -> None:
    """Waits whose campaign is done at the trigger's first read all succeed, each soon after deferring.

    Airflow's scheduler fails a deferred task whose trigger fires within seconds of the deferral
    ("finished with state success, but the task instance's state attribute is queued";
    apache/airflow#66374, #71580, #72716). The trigger's first read comes one poll interval
    after the worker's and at least MIN_FIRST_READ_DELAY after the trigger started, each wait
    on its own clock: the waits complete while others are still deferring.
    """
    campaigns: dict[str, Any] = {
        cid: {"status": "Active", "complete_after_polls": 2, "complete_after_seconds": None} for cid in QUICK_IDS
    }
    # Ready; Active once started, Completed at the trigger's first read.
    campaigns[QUICK_START_ID] = {"complete_after_polls": 1, "complete_after_seconds": None}
    home = e2e_airflow.new_home(f"quick-{db}")
    port = free_port()
    with contextlib.ExitStack() as stack:
        sim = stack.enter_context(
            KoreSimulator(client_secret=f"e2e-secret-{secrets.token_hex(12)}", campaigns=campaigns)
        )
        cluster = stack.enter_context(_metadata_db(db, e2e_airflow, home))
        overrides = {"parallelism": str(QUICK_PARALLELISM[db])}
        if cluster is not None:
            overrides["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = cluster.url
        env = _env(e2e_airflow, home, port, sim, **overrides)
        deployment = Deployment(
            home=home, url=f"http://127.0.0.1:{port}", sim=sim, session=requests.Session(), postgres=cluster
        )
        stack.enter_context(_running(deployment, env, port, ["kore_e2e_quick"]))
        started = time.monotonic()
        run_id = _trigger_run(deployment, "kore_e2e_quick")

        def done() -> dict[str, Any] | None:
            run = _ok(lambda: deployment.api("GET", f"/dags/kore_e2e_quick/dagRuns/{run_id}"))
            return run if run and run["state"] in ("success", "failed") else None

        run = _wait_for("the quick run to finish", done, RUN_TIMEOUT, deployment)
        seconds = time.monotonic() - started
        tis = deployment.api("GET", f"/dags/kore_e2e_quick/dagRuns/{run_id}/taskInstances?limit=100")
        tis = tis.json()["task_instances"]
        races = DEFER_RACE.findall(deployment.output("scheduler"))

    failed = sorted((ti["task_id"], ti["map_index"]) for ti in tis if ti["state"] != "success")
    assert not races, f"DEFER RACE on {db}: {len(races)} task(s) failed by the scheduler:\n" + "\n".join(races)
    assert not failed, f"tasks not successful on {db}: {failed}\n{deployment.tails()}"
    assert run["state"] == "success", deployment.tails()
    assert len(tis) == QUICK_WAITS + 1
    assert all(ti["try_number"] == 1 for ti in tis)

    # Each wait: its worker read, then the trigger's one read, at least MIN_FIRST_READ_DELAY later.
    gaps, worker_reads = {}, []
    for cid in [*QUICK_IDS, QUICK_START_ID]:
        ops = [r for r in sim.requests if r.campaign_id == cid and r.operation in READ_OR_START]
        assert len(ops) == 2, (cid, [(r.operation, r.status_code) for r in ops])
        gaps[cid] = ops[1].time - ops[0].time
        worker_reads.append(ops[0].time)
    early = {cid: round(gap, 2) for cid, gap in gaps.items() if gap < MIN_FIRST_READ_DELAY - 0.5}
    assert not early, f"trigger reads within {MIN_FIRST_READ_DELAY}s of the worker's read: {early}"
    # Each wait ends soon after its own deferral, not held back to one shared moment.
    late = {cid: round(gap, 2) for cid, gap in gaps.items() if gap > MIN_FIRST_READ_DELAY + QUICK_LATE_SLACK}
    assert not late, f"trigger reads more than {MIN_FIRST_READ_DELAY + QUICK_LATE_SLACK}s after the worker's: {late}"
    print(
        f"\nquick waits on {db}: {QUICK_WAITS}+1 deferred waits done {seconds:.1f}s after the trigger; "
        f"worker-to-trigger read {min(gaps.values()):.1f}-{max(gaps.values()):.1f}s; "
        f"worker reads over {max(worker_reads) - min(worker_reads):.1f}s"
    )


# ---------------------------------------------------------------------------------------------


def test_fanout_run_succeeds(deployment: Deployment) -> None:
    assert deployment.fanout_run["state"] == "success", deployment.tails()
    waits = [ti for ti in deployment.fanout_tis if ti["task_id"] == "wait"]
    assert len(waits) == WAITS
    assert {ti["state"] for ti in deployment.fanout_tis} == {"success"}
    assert all(ti["try_number"] == 1 for ti in deployment.fanout_tis)  # resumed, never retried
    assert all(deployment.sim.status_of(cid) == "Completed" for cid in WAIT_IDS)
    print(f"\nfan-out of {WAITS} deferred waits: success {deployment.seconds_to_success:.1f}s after the trigger")


def test_every_wait_deferred_to_the_one_triggerer(deployment: Deployment) -> None:
    assert deployment.peak_triggers >= WAITS  # every wait in the trigger table at once
    assert len(deployment.triggerer_ids) == 1, deployment.triggerer_ids
    (triggerer_id,) = deployment.triggerer_ids
    jobs = deployment.db("SELECT id, job_type FROM job WHERE job_type = 'TriggererJob'")
    assert [row[0] for row in jobs] == [triggerer_id]
    # Each wait: one status read in the worker (the first poke), then reads from the triggerer.
    for cid in WAIT_IDS:
        reads = [r for r in deployment.sim.requests if r.campaign_id == cid and r.operation == "get_campaign_status"]
        assert len(reads) >= 3, (cid, len(reads))
        assert reads[-1].status_code == 200


def test_triggerer_polls_over_few_connections(deployment: Deployment) -> None:
    """The triggerer's waits share one aiohttp session: a handful of connections, not one per trigger."""
    sim = deployment.sim
    # Once every wait had deferred, only the triggerer talks to Kore (the kill stop aside).
    later_requests = len(sim.requests) - deployment.requests_before_release
    later_connections = sim.connections_opened - deployment.connections_before_release
    assert later_requests >= WAITS, later_requests
    # A session per trigger would open at least one connection per wait, a connection per request one per
    # read. A shared pool opens as many as reads overlap: a few, more on a loaded machine (seen: 1 to 27, the
    # same before and after the request engine), never one per wait.
    assert later_connections < WAITS, f"{later_connections} connections for {later_requests} triggerer requests"
    print(f"\ntriggerer: {later_requests} requests over {later_connections} new connection(s)")


def test_start_answer_survives_a_real_deferral(deployment: Deployment) -> None:
    xcom = deployment.api(
        "GET",
        f"/dags/kore_e2e_fanout/dagRuns/{deployment.fanout_run['dag_run_id']}/taskInstances/start_and_wait"
        "/xcomEntries/return_value",
    )
    assert xcom.status_code == 200, xcom.text
    value = xcom.json()["value"]
    value = json.loads(value) if isinstance(value, str) else value
    assert value["status"] == "Completed"
    assert value["start_status"] == "Active"  # carried through defer(kwargs=...) by the real triggerer
    assert deployment.sim.status_of(START_ID) == "Completed"


def test_trigger_on_kill_stops_the_campaign(deployment: Deployment) -> None:
    if not hasattr(BaseTrigger, "on_kill"):
        pytest.skip(
            f"Airflow {airflow.__version__} has no BaseTrigger.on_kill: a killed deferred task's campaign runs on"
        )
    kill = deployment.kill
    assert kill["patch_status"] == 200, kill["patch_body"]
    assert kill["ti"]["state"] == "failed"
    stops = [r for r in deployment.sim.requests if r.operation == "stop_campaign"]
    assert [(r.campaign_id, r.status_code) for r in stops] == [(KILL_ID, 200)]
    assert deployment.sim.status_of(KILL_ID) == "Stopped"


def test_no_secret_or_jwt_in_any_log(deployment: Deployment) -> None:
    secret = deployment.sim.client_secret
    tokens = {r.headers["auth"] for r in deployment.sim.requests if r.headers.get("auth")}
    files = [p for p in (deployment.home / "logs").rglob("*") if p.is_file()]
    files += list(deployment.home.glob("*.out"))
    task_logs = [p for p in files if "dag_id=kore_e2e_fanout" in str(p)]
    assert len(task_logs) >= WAITS, "the task logs were written where expected"
    joined = "\n".join(p.read_text(errors="replace") for p in task_logs)
    assert "Deferring the wait on Kore.ai campaign" in joined
    assert "Kore.ai campaign cd-e2e-wait-0000 is Completed" in joined  # the trigger's own log line
    leaks: dict[str, list[str]] = {}
    for path in files:
        text = path.read_text(errors="replace")
        found = [what for what, hit in (("client secret", secret in text),) if hit]
        found += [f"JWT {m[:16]}..." for m in JWT.findall(text)]
        found += [f"token {t[:16]}..." for t in tokens if t in text]
        if found:
            leaks[str(path.relative_to(deployment.home))] = found
    assert leaks == {}
