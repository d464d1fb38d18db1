"""The main job: run the ``kore_campaign_pipeline`` example DAG for real, against the simulator.

``python3 run.py demo`` calls this inside the project's virtual environment. It

1. starts the bundled Kore.ai simulator on 127.0.0.1 (no Kore account needed), with the voice
   campaign already running so the pipeline has something to stop;
2. points a throwaway Airflow home (SQLite, ``.demo/airflow``) at ``example_dags/`` and the
   ``kore_default`` connection at the simulator (``AIRFLOW_CONN_KORE_DEFAULT``);
3. runs ``airflow dags test kore_campaign_pipeline``: Airflow itself executes the tasks, and the
   deferrable wait runs through the real trigger;
4. prints what happened to each campaign, from the simulator's request log.

``--deferrable false`` runs the wait in poke mode instead; ``--home DIR`` puts the throwaway
Airflow home somewhere else than ``.demo/`` (the test suite uses a temporary folder).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO_HOME = ROOT / ".demo"
DAG_ID = "kore_campaign_pipeline"
TASK_IDS = ("start_sms_campaign", "wait_for_sms_completed", "stop_voice_campaign")
SMS_CAMPAIGN = "cd-sms-welcome-0001"
VOICE_CAMPAIGN = "cd-voice-renewal-0001"

OPERATION_WORDS = {
    "start_campaign": "start",
    "get_campaign_status": "status read",
    "get_campaign": "campaign read",
    "stop_campaign": "stop",
}


JWT = re.compile(r"eyJ[\w-]+\.[\w-]+\.[\w-]*")
# Airflow 3.0's dag.test() prints, at debug level, each value handed to its secrets masker
# ("Sending request msg=MaskSecret(value='...')"): Airflow's own output, left out of the check.
AIRFLOW_30_MASKER_ECHO = re.compile(r"(Sending request|Received message from task runner).*MaskSecret\(value=")


def airflow_env(home: Path, sim_conn_json: str, deferrable: bool) -> dict[str, str]:
    # Nothing from the caller's Airflow setup (another AIRFLOW_HOME, a real kore_default) leaks in.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_"))}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "example_dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE": "True" if deferrable else "False",
            "AIRFLOW_CONN_KORE_DEFAULT": sim_conn_json,
            # The demo's waits are short: poll every second instead of every 30.
            "KORE_DEMO_POLL_INTERVAL": "1",
            "PYTHONWARNINGS": "ignore",
        }
    )
    return env


def airflow(*args: str, env: dict[str, str], log_file: Path) -> int:
    cmd = [str(Path(sys.executable).parent / "airflow"), *args]
    with log_file.open("a") as out:
        out.write(f"\n$ airflow {' '.join(args)}\n")
        out.flush()
        return subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT).returncode


def describe(sim, campaigns: dict[str, str], initial: dict[str, str]) -> list[str]:
    """One paragraph per campaign: what the DAG asked of Kore and where the campaign ended."""
    by_campaign: dict[str, list] = defaultdict(list)
    for record in sim.requests:
        if record.campaign_id:
            by_campaign[record.campaign_id].append(record)
    lines = []
    for campaign_id, channel in campaigns.items():
        records = by_campaign.get(campaign_id, [])
        counts: dict[str, int] = defaultdict(int)
        refused = 0
        for record in records:
            counts[OPERATION_WORDS.get(record.operation or "", record.operation or "unknown")] += 1
            refused += record.status_code >= 400
        asked = ", ".join(f"{n} {what}{'s' if n > 1 else ''}" for what, n in counts.items()) or "nothing"
        lines.append(
            f"  {campaign_id} ({channel}): {initial[campaign_id]} -> {sim.status_of(campaign_id)}"
            f"   [requests: {asked}; refused: {refused}]"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deferrable", choices=["true", "false"], default="true")
    parser.add_argument("--home", type=Path, default=DEMO_HOME, help="throwaway folder (emptied first)")
    args = parser.parse_args(argv)
    deferrable = args.deferrable == "true"
    demo_home = args.home.resolve()
    home = demo_home / "airflow"

    from airflow_provider_kore.testing import KoreSimulator

    shutil.rmtree(demo_home, ignore_errors=True)
    home.mkdir(parents=True)
    log_file = demo_home / "airflow.log"

    with KoreSimulator(complete_after_polls=3) as sim:
        sim.set_status(VOICE_CAMPAIGN, "Active")  # a voice campaign already running, for the DAG to stop
        campaigns = {SMS_CAMPAIGN: "sms", VOICE_CAMPAIGN: "voice"}
        initial = {c: sim.status_of(c) for c in campaigns}
        env = airflow_env(home, sim.airflow_conn_json(), deferrable)
        print(f"==> Kore.ai simulator on {sim.url} (account {sim.account_id})")
        print(f"==> Airflow home {home}; full Airflow output in {log_file}")
        started = time.monotonic()
        if airflow("db", "migrate", env=env, log_file=log_file) != 0:
            print("airflow db migrate failed; see the log above", file=sys.stderr)
            return 1
        mode = "deferrable (trigger)" if deferrable else "poke (worker slot)"
        print(f"==> airflow dags test {DAG_ID}   [wait mode: {mode}]", flush=True)
        code = airflow("dags", "test", DAG_ID, env=env, log_file=log_file)
        elapsed = time.monotonic() - started

        print()
        print(f"DAG run {DAG_ID}: {'success' if code == 0 else 'FAILED'} in {elapsed:.1f}s")
        for line in _task_states(home / "airflow.db"):
            print(f"  task {line}")
        print("What happened to each campaign:")
        for line in describe(sim, campaigns, initial):
            print(line)
        leaked = _secret_leaks(log_file, sim)
        print(f"Secrets in Airflow's output: {'NONE' if not leaked else 'FOUND: ' + ', '.join(leaked)}")
    if code != 0:
        print(f"\nThe run failed; the last lines of {log_file}:", file=sys.stderr)
        print("".join(log_file.read_text().splitlines(keepends=True)[-40:]), file=sys.stderr)
    return 0 if code == 0 and not leaked else 1


def _task_states(db: Path) -> list[str]:
    """Each task's final state and try, read from the run's metadata DB."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            rows = conn.execute(
                "SELECT task_id, state, try_number FROM task_instance WHERE dag_id = ? AND run_id = "
                "(SELECT run_id FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1)",
                (DAG_ID, DAG_ID),
            ).fetchall()
    except sqlite3.Error as exc:
        return [f"(could not read the task states: {exc})"]
    order = {task_id: i for i, task_id in enumerate(TASK_IDS)}
    rows.sort(key=lambda row: order.get(row[0], len(order)))
    return [f"{task_id}: {state or 'none'} (try {try_number})" for task_id, state, try_number in rows]


def _secret_leaks(log_file: Path, sim) -> list[str]:
    lines = log_file.read_text(errors="replace").splitlines()
    text = "\n".join(line for line in lines if not AIRFLOW_30_MASKER_ECHO.search(line))
    found = []
    if sim.client_secret in text:
        found.append("client secret")
    if JWT.search(text) or any(r.headers.get("auth") and r.headers["auth"] in text for r in sim.requests):
        found.append("JWT")
    return found


if __name__ == "__main__":
    sys.exit(main())
