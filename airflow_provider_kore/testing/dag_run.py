"""Run one of your DAGs through real Airflow, offline, and fail loudly if any part of it failed.

:func:`run_dag` is what ``airflow dags test`` does, made safe to call from a test:

* it runs in a child process on a throwaway ``AIRFLOW_HOME`` (SQLite, no example DAGs, none of
  your shell's ``AIRFLOW__*`` settings), so it works whether or not your test process has
  already imported and configured Airflow;
* the metadata database is migrated once per test process (``airflow db migrate``, a few
  seconds) and copied into each new home;
* ``[core] dags_folder`` points at your DAG folder, so Airflow parses and serializes the DAG
  before it runs it (Airflow 3.1+ refuses to run a DAG it has not serialized);
* the run is checked: a DAG run that did not end ``success``, or any task that ``failed`` (or
  was ``upstream_failed``), raises :class:`DagRunFailed` naming the task and the error it
  failed with, e.g. the ``KoreNotFoundError`` of a campaign the simulator was not given.

The child inherits the test's environment otherwise, ``AIRFLOW_CONN_*`` included, so the
``kore_connection`` fixture's ``AIRFLOW_CONN_KORE_DEFAULT`` reaches the DAG. Example::

    from pathlib import Path

    from airflow_provider_kore.testing import run_dag


    def test_my_dag(kore_connection):
        kore_connection.add_campaign("cd-my-campaign", campaign_type="sms")
        run = run_dag(Path(__file__).parent / "dags", "my_campaign_dag")
        assert run.tasks == {"start_sms": "success", "wait_completed": "success"}

Test tooling: nothing in the provider's runtime code imports this module, and it imports
nothing from Airflow itself (the child process does).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

__all__ = ["DagRunFailed", "DagRunResult", "run_dag"]

#: Task states that make :func:`run_dag` raise.
FAILED_TASK_STATES = frozenset({"failed", "upstream_failed"})

# What the child runs: Airflow's own CLI, as ``airflow dags test`` would, in one process. Airflow
# 3.0's dag.test() does not register a DAG's assets, so the folder is reserialized first there.
_CHILD = """
import sys
import airflow
import airflow.__main__ as cli

command = sys.argv[1:]

def call(*argv):
    sys.argv = ["airflow", *argv]
    try:
        cli.main()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0

if tuple(int(p) for p in airflow.__version__.split(".")[:2]) < (3, 1):
    call("dags", "reserialize")
sys.exit(call(*command))
"""

_LOG_LINE = re.compile(r"^\[?\d{4}-\d\d-\d\d[ T]\d\d:\d\d")
_TASK_START = re.compile(r"\[DAG TEST\] starting task_id=(?P<task_id>\S+) map_index=(?P<map_index>-?\d+)")
_CHAIN = ("During handling of the above exception", "The above exception was the direct cause")

_lock = threading.Lock()
_scratch: tempfile.TemporaryDirectory[str] | None = None
_templates: dict[str, Path] = {}


@dataclass
class DagRunResult:
    """What a :func:`run_dag` run left behind (read from its metadata database)."""

    dag_id: str
    run_id: str | None
    #: The DAG run's final state: ``"success"`` or ``"failed"`` (None if no run was created).
    state: str | None
    #: ``task_id`` (``task_id[i]`` for a mapped task) -> final state.
    tasks: dict[str, str | None]
    #: ``task_id`` -> tries it took.
    tries: dict[str, int]
    #: ``task_id`` -> the error it failed with, as Airflow logged it (failed tasks only).
    errors: dict[str, str]
    #: Everything ``airflow dags test`` printed (task logs included).
    output: str
    #: The child's exit code.
    exit_code: int
    airflow_home: Path = field(repr=False)

    def describe(self) -> str:
        lines = [f"DAG {self.dag_id!r} run {self.run_id!r}: {self.state or 'not created'} (exit {self.exit_code})"]
        for key, state in self.tasks.items():
            lines.append(f"  task {key}: {state}" + (f" - {self.errors[key]}" if key in self.errors else ""))
        return "\n".join(lines)


class DagRunFailed(AssertionError):
    """The DAG run did not succeed, or a task in it failed. ``.result`` holds the whole run."""

    def __init__(self, message: str, result: DagRunResult) -> None:
        super().__init__(message)
        self.result = result


def run_dag(
    dags: str | os.PathLike[str],
    dag_id: str,
    *,
    run_conf: Mapping[str, Any] | None = None,
    logical_date: datetime | str | None = None,
    env: Mapping[str, str] | None = None,
    airflow_home: str | os.PathLike[str] | None = None,
    timeout: float = 600.0,
) -> DagRunResult:
    """Run ``dag_id`` once with ``airflow dags test`` and raise :class:`DagRunFailed` unless it all succeeded.

    :param dags: your DAG folder, or one DAG file (its folder becomes the DAGs folder and only
        that file is parsed).
    :param dag_id: the DAG to run.
    :param run_conf: the run's ``conf`` (what ``params`` read), as ``airflow dags test -c``.
    :param logical_date: the run's logical date; default now.
    :param env: extra environment for the Airflow process, applied last, e.g.
        ``{"AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE": "True"}``.
    :param airflow_home: where Airflow keeps its database, config and logs; default a new
        temporary directory (removed when the test process exits). A home that already holds an
        ``airflow.db`` is reused as it is.
    :param timeout: seconds the run may take before the Airflow process is killed.
    :returns: the run's :class:`DagRunResult` (state ``"success"``, every task succeeded or skipped).
    """
    source = Path(dags).resolve()
    if not source.exists():
        raise FileNotFoundError(f"no DAG folder or file at {source}")
    folder = source.parent if source.is_file() else source
    home = Path(airflow_home).resolve() if airflow_home is not None else _new_home()
    home.mkdir(parents=True, exist_ok=True)
    database = home / "airflow.db"
    if not database.exists():
        shutil.copyfile(_migrated_template(), database)

    argv = ["dags", "test", dag_id]
    if logical_date is not None:
        argv.append(logical_date.isoformat() if isinstance(logical_date, datetime) else str(logical_date))
    if source.is_file():
        argv += ["--dagfile-path", str(source)]
    if run_conf is not None:
        argv += ["--conf", json.dumps(dict(run_conf))]
    log_path = home / f"dags-test-{dag_id}.log"
    timed_out = False
    with log_path.open("w+", encoding="utf-8", errors="replace") as log:
        child = subprocess.Popen(  # noqa: S603 - this interpreter, fixed arguments
            [sys.executable, "-c", _CHILD, *argv],
            env=_airflow_env(home, folder, env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: a timeout ends the task processes too
        )
        try:
            exit_code = child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(child.pid, signal.SIGKILL)
            exit_code = child.wait()
        log.seek(0)
        output = log.read()

    result = _read_result(database, dag_id, output, exit_code, home)
    if timed_out:
        raise DagRunFailed(f"DAG {dag_id!r} did not finish within {timeout:g} s\n{result.describe()}", result)
    if result.run_id is None:
        lines = output.splitlines()
        parse_errors: dict[str, str | None] = {}  # file -> its first import error
        for index, line in enumerate(lines):
            if "Failed to import:" in line:
                path = line.split("Failed to import:", 1)[1].split()[0]
                parse_errors.setdefault(path, _exception_after(lines, index + 1))
        tail = "\n".join(lines[-20:])
        raise DagRunFailed(
            f"DAG {dag_id!r} did not run (exit {exit_code})"
            + "".join(f"\nDAG file {path} failed to import: {error}" for path, error in parse_errors.items())
            + f"\nAirflow's output ends:\n{tail}",
            result,
        )
    bad = [key for key, state in result.tasks.items() if state in FAILED_TASK_STATES]
    if result.state != "success" or bad:
        failed = ", ".join(f"{key} ({result.tasks[key]})" for key in bad) or "none"
        raise DagRunFailed(
            f"DAG {dag_id!r} run ended {result.state}; failed tasks: {failed}\n{result.describe()}", result
        )
    return result


def _new_home() -> Path:
    global _scratch
    with _lock:
        if _scratch is None:
            _scratch = tempfile.TemporaryDirectory(prefix="kore-airflow-")
            atexit.register(_scratch.cleanup)
        return Path(tempfile.mkdtemp(prefix="home-", dir=_scratch.name))


def _migrated_template() -> Path:
    """A migrated metadata database for this interpreter's Airflow, made once per process."""
    with _lock:
        template = _templates.get(sys.executable)
        if template is not None and template.exists():
            return template
    home = _new_home()
    migrated = subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        env=_airflow_env(home, home / "dags", None),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if migrated.returncode != 0:
        raise RuntimeError(f"airflow db migrate failed (exit {migrated.returncode}):\n{migrated.stderr[-3000:]}")
    with _lock:
        _templates[sys.executable] = home / "airflow.db"
    return home / "airflow.db"


def _airflow_env(home: Path, dags_folder: Path, extra: Mapping[str, str] | None) -> dict[str, str]:
    """The test's environment without its Airflow settings, on ``home`` and ``dags_folder``."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__") and k != "AIRFLOW_CONFIG"}
    environ.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(dags_folder),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__UNIT_TEST_MODE="False",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home / 'airflow.db'}",
        # Wide enough that Airflow 3.0's console tracebacks keep each error on one line.
        COLUMNS="200",
        PYTHONUNBUFFERED="1",
    )
    # A provider imported from a source checkout (not installed) must be the one the child runs.
    import airflow_provider_kore

    root = str(Path(airflow_provider_kore.__file__).resolve().parent.parent)
    if not {"site-packages", "dist-packages"} & set(Path(root).parts):
        environ["PYTHONPATH"] = os.pathsep.join(p for p in (root, environ.get("PYTHONPATH")) if p)
    environ.update(extra or {})
    return environ


def _read_result(database: Path, dag_id: str, output: str, exit_code: int, home: Path) -> DagRunResult:
    run_id = state = None
    tasks: dict[str, str | None] = {}
    tries: dict[str, int] = {}
    with contextlib.closing(sqlite3.connect(database)) as db:
        row = db.execute("SELECT run_id, state FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1", (dag_id,))
        found = row.fetchone()
        if found is not None:
            run_id, state = found
            rows = db.execute(
                "SELECT task_id, map_index, state, try_number FROM task_instance"
                " WHERE dag_id = ? AND run_id = ? ORDER BY task_id, map_index",
                (dag_id, run_id),
            )
            for task_id, map_index, task_state, try_number in rows:
                key = task_id if map_index < 0 else f"{task_id}[{map_index}]"
                tasks[key] = task_state
                tries[key] = try_number
    errors = {
        key: error
        for key, error in _task_errors(output).items()
        if tasks.get(key) == "failed"  # an error a retry got past is not what failed the run
    }
    return DagRunResult(dag_id, run_id, state, tasks, tries, errors, output, exit_code, home)


def _task_errors(output: str) -> dict[str, str]:
    """``task key -> the last exception line logged while that task ran`` (``dag.test()`` runs tasks one by one)."""
    errors: dict[str, str] = {}
    current: str | None = None
    lines = output.splitlines()
    for index, line in enumerate(lines):
        started = _TASK_START.search(line)
        if started:
            map_index = int(started["map_index"])
            current = started["task_id"] if map_index < 0 else f"{started['task_id']}[{map_index}]"
        elif current is not None and "Task failed with exception" in line:
            error = _exception_after(lines, index + 1)
            if error:
                errors[current] = error
    return errors


def _exception_after(lines: list[str], start: int) -> str | None:
    """The exception line(s) of the traceback that starts at ``lines[start]`` (plain or Rich)."""
    found: str | None = None
    block: list[str] = []
    for line in lines[start:]:
        if _LOG_LINE.match(line):
            break
        if not line.strip() or line[0] in " \t\u2502\u256d\u2570" or line.startswith(("Traceback", *_CHAIN)):
            if block:  # the end of one exception of a chain; the last one is what failed the task
                found, block = " ".join(block), []
            continue
        block.append(line.strip())
    return " ".join(block) if block else found
