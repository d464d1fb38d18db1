"""Benchmarks: this provider against the HTTP provider doing the same job, on the same machine.

``python3 run.py bench`` (from the repository root) runs this in the project's virtual
environment. Sections (``--only`` picks some):

* ``imports``  - DAG-parse cost: importing the operator and sensor modules after ``airflow.sdk``,
  ours vs ``airflow.providers.http.operators.http`` + ``...sensors.http``.
* ``requests`` - 100 status reads through one ``KoreHook`` vs a bare ``requests.Session`` with a
  precomputed JWT; requests, JWTs signed and TCP connections counted by the simulator.
* ``triggers`` - 1,000 concurrent ``KoreCampaignStatusTrigger`` waits in one event loop vs 1,000
  ``HttpSensorTrigger`` waits on the same endpoint (and a bare shared aiohttp session, the floor):
  CPU, wall, peak RSS, traced memory per waiting trigger; then 5 polls per wait.
* ``pipeline`` - export 100,000 contact outcomes (1,000 pages) to a ``file://`` CSV with
  ``KoreExportCampaignResultsOperator``, and load 100,000 contacts from a CSV with
  ``KoreLoadContactsOperator``, vs the least code doing each job with a bare ``requests.Session``:
  peak RSS growth, requests per second, CPU per page (per request).
* ``fleet``    - 200 waits on one connection with a request budget against a rate-limited
  simulator: requests per completed wait, 429s, completion-to-event delay.
* ``e2e``      - the example DAG under ``dag.test()``, poke mode vs deferrable.

Every figure is the median of several fresh processes (``--quick``: fewer, smaller). The Kore
simulator always runs in a separate process, so its CPU is never counted. The table is printed
and saved as JSON (``benchmarks/results/latest.json``; ``--quick`` writes ``quick.json``).
Timings are printed, never asserted: ``tests/test_benchmarks.py`` checks counts only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
SECTIONS = ("imports", "requests", "triggers", "pipeline", "fleet", "e2e")

OUR_MODULES = ("airflow_provider_kore.operators.campaign", "airflow_provider_kore.sensors.campaign")
THEIR_MODULES = ("airflow.providers.http.operators.http", "airflow.providers.http.sensors.http")

# Goals from issue 5: (limit on ours/theirs, the team's own aim).
GOAL_IMPORT = (0.15, 0.05)
GOAL_REQUESTS = 1.10
GOAL_TRIGGER_CPU = (0.5, 0.25)
# Issue 14: exporting or loading 100,000 rows must keep the task's peak RSS growth under this.
GOAL_PIPELINE_RSS_MB = 50.0


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            # PyJWT warns on the simulator's 29-byte secret at every signature: noise, not cost.
            "PYTHONWARNINGS": "ignore",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.pop("BENCH_PROFILE", None)
    # Cache bytecode as an installed package would (pip writes .pyc for site-packages, so the HTTP
    # provider has them); with PYTHONDONTWRITEBYTECODE our modules alone would be compiled at
    # every import, about 45 ms of the figure. __pycache__/ is git-ignored.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def worker(section: str, args: dict[str, Any], env: dict[str, str], timeout: float = 600) -> dict[str, Any]:
    """Run ``_work.py SECTION`` in a fresh interpreter and return its RESULT."""
    proc = subprocess.run(
        [sys.executable, str(HERE / "_work.py"), section, json.dumps(args)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
    raise RuntimeError(f"{section} worker {args} failed (exit {proc.returncode}):\n{tail}")


def median(values: list[float]) -> float:
    return statistics.median(values)


# ---------------------------------------------------------------------------------------------
# 1. DAG-parse cost.

_IMPORT_SNIPPET = """
import json, time
t0 = time.perf_counter()
import airflow.sdk
t1 = time.perf_counter()
{imports}
t2 = time.perf_counter()
print(json.dumps({{"sdk_ms": (t1 - t0) * 1e3, "extra_ms": (t2 - t1) * 1e3}}))
"""


def _import_once(modules: tuple[str, ...], env: dict[str, str]) -> dict[str, float]:
    code = _IMPORT_SNIPPET.format(imports="\n".join(f"import {m}" for m in modules))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _importtime_top(modules: tuple[str, ...], env: dict[str, str], top: int = 8) -> list[dict[str, Any]]:
    """Modules loaded after ``airflow.sdk``, by self time (``python -X importtime``)."""
    code = "import airflow.sdk\n" + "\n".join(f"import {m}" for m in modules)
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", code], env=env, capture_output=True, text=True)
    lines = [line for line in out.stderr.splitlines() if line.startswith("import time:") and "|" in line]
    start = max((i for i, line in enumerate(lines) if line.split("|")[-1].strip() == "airflow.sdk"), default=-1)
    rows = []
    for line in lines[start + 1 :]:
        _, self_us, cumulative_us, name = (part.strip() for part in line.replace("import time:", "|").split("|"))
        rows.append({"module": name, "self_ms": int(self_us) / 1e3, "cumulative_ms": int(cumulative_us) / 1e3})
    rows.sort(key=lambda r: r["self_ms"], reverse=True)
    return rows[:top]


def bench_imports(quick: bool, env: dict[str, str]) -> dict[str, Any]:
    reps = 3 if quick else 9
    sides = {"ours": OUR_MODULES, "theirs": THEIR_MODULES}
    for modules in sides.values():  # warm-up: write .pyc files, fill the page cache
        _import_once(modules, env)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in sides}
    for i in range(reps):
        for name in sides if i % 2 == 0 else reversed(list(sides)):
            runs[name].append(_import_once(sides[name], env))
    result: dict[str, Any] = {"reps": reps, "modules": {k: list(v) for k, v in sides.items()}, "runs": runs}
    for name in sides:
        result[f"{name}_ms"] = median([r["extra_ms"] for r in runs[name]])
        result[f"{name}_sdk_ms"] = median([r["sdk_ms"] for r in runs[name]])
    result["ratio"] = result["ours_ms"] / result["theirs_ms"]
    result["ours_top_modules"] = _importtime_top(OUR_MODULES, env)
    result["theirs_top_modules"] = _importtime_top(THEIR_MODULES, env)
    return result


# ---------------------------------------------------------------------------------------------
# 2-4 and fleet: workers in fresh processes.


def bench_requests(quick: bool, env: dict[str, str]) -> dict[str, Any]:
    result = worker("requests", {"reads": 100, "rounds": 5 if quick else 15}, env)
    first = result["runs"]["ours"][0]
    # The median of the per-round ratios (as the README says): each round runs both back to back,
    # so load changing between rounds cancels out; the ratio of the two medians does not.
    result["ratio"] = result.get("paired_ratio", result["ours_seconds"] / result["bare_seconds"])
    result["counts"] = {k: first[k] for k in ("requests", "jwt_signed", "tcp_connections")}
    result["counts_every_round"] = [
        {k: r[k] for k in ("requests", "jwt_signed", "tcp_connections")} for r in result["runs"]["ours"]
    ]
    return result


def bench_triggers(quick: bool, env: dict[str, str]) -> dict[str, Any]:
    n = 200 if quick else 1000
    reps = 1 if quick else 5
    reps_multi = 1 if quick else 3
    sides = ("ours", "theirs", "floor")
    result: dict[str, Any] = {"n": n, "reps": reps, "reps_multi": reps_multi}

    def series(polls: int, interval: float, count: int) -> dict[str, list[dict[str, Any]]]:
        runs: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
        for i in range(count):
            for side in sides if i % 2 == 0 else tuple(reversed(sides)):
                log(f"triggers: {side}, {n} waits x {polls} poll(s), run {i + 1}/{count}")
                runs[side].append(worker("triggers", {"side": side, "n": n, "polls": polls, "interval": interval}, env))
        return runs

    def summary(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for side, items in runs.items():
            out[side] = {
                "cpu_seconds": median([r["cpu_seconds"] for r in items]),
                "wall_seconds": median([r["wall_seconds"] for r in items]),
                "rss_peak_delta_mb": median([r["rss_peak_delta_mb"] for r in items]),
                "cpu_per_request_us": median([r["cpu_per_request_us"] for r in items]),
                "requests": [r["requests"] for r in items],
                "good_events": [r["good_events"] for r in items],
                "events": [r["events"] for r in items],
                "tcp_connections": [r["tcp_connections"] for r in items],
            }
        return out

    one = series(1, 1.0, reps)
    result["one_poll"] = {"runs": one, **summary(one)}
    multi = series(5, 0.5 if quick else 1.0, reps_multi)
    result["five_polls"] = {"runs": multi, **summary(multi)}
    memory: dict[str, Any] = {}
    for side in ("ours", "theirs"):
        log(f"triggers: {side}, traced memory, {n} waits x 2 polls")
        run = worker("triggers", {"side": side, "n": n, "polls": 2, "interval": 4.0, "memory": True}, env)
        run["per_waiting_trigger_kb"] = (
            run["traced_waiting_bytes"] / n / 1024 if run.get("traced_waiting_bytes") is not None else None
        )
        memory[side] = run
    result["memory"] = memory
    return result


# Two fleets run side by side (each with its own simulator; they mostly sleep): one with a budget
# at Kore's limit, one without a budget (the adaptive pacing learns the limit from 429s).
FLEET_FULL = {
    "n": 200,
    "interval": 20.0,
    "complete_between": [5.0, 35.0],
    "deadline": 80.0,
    "max_requests_per_minute": 300,
    "sim_rate_limit": [300, 60.0],
}
FLEET_QUICK = {
    "n": 40,
    "interval": 2.0,
    "complete_between": [1.0, 6.0],
    "deadline": 20.0,
    "max_requests_per_minute": 360,
    "sim_rate_limit": [360, 60.0],
}


PIPELINE_FULL = {"rows": 100_000, "reps": 3}
PIPELINE_QUICK = {"rows": 2_000, "reps": 1}


def bench_pipeline(quick: bool, env: dict[str, str]) -> dict[str, Any]:
    """Each job, ours and bare alternately, in fresh processes; medians per side."""
    params = PIPELINE_QUICK if quick else PIPELINE_FULL
    rows, reps = params["rows"], params["reps"]
    result: dict[str, Any] = {"rows": rows, "reps": reps}
    for job in ("export", "load"):
        runs: dict[str, list[dict[str, Any]]] = {"ours": [], "bare": []}
        for i in range(reps):
            for side in ("ours", "bare") if i % 2 == 0 else ("bare", "ours"):
                log(f"pipeline: {job} {rows:,} rows, {side}, run {i + 1}/{reps}")
                runs[side].append(worker("pipeline", {"job": job, "side": side, "rows": rows}, env))
        summary: dict[str, Any] = {"runs": runs}
        for side, items in runs.items():
            for key in ("rss_peak_delta_mb", "requests_per_second", "cpu_per_page_ms", "wall_seconds", "cpu_seconds"):
                summary[f"{side}_{key}"] = median([r[key] for r in items])
            summary[f"{side}_rss_peak_delta_mb_max"] = max(r["rss_peak_delta_mb"] for r in items)
        result[job] = summary
    return result


def bench_fleet(quick: bool, env: dict[str, str]) -> dict[str, Any]:
    from concurrent.futures import ThreadPoolExecutor

    budgeted = FLEET_QUICK if quick else FLEET_FULL
    scenarios = {"budget": budgeted, "adaptive": {**budgeted, "max_requests_per_minute": None}}
    log(
        f"fleet: {budgeted['n']} waits, with a budget of {budgeted['max_requests_per_minute']}/min and without, "
        f"side by side (about {budgeted['deadline']:.0f}s)"
    )
    with ThreadPoolExecutor(len(scenarios)) as pool:
        futures = {
            name: pool.submit(worker, "fleet", params, env, budgeted["deadline"] + 180)
            for name, params in scenarios.items()
        }
        return {name: future.result() for name, future in futures.items()}


def bench_e2e(quick: bool, env: dict[str, str]) -> dict[str, Any]:
    reps = 1 if quick else 3
    home = Path(env["AIRFLOW_HOME"])
    e2e_env = dict(env, AIRFLOW__CORE__DAGS_FOLDER=str(ROOT / "example_dags"))
    log("e2e: airflow db migrate")
    airflow = Path(sys.executable).parent / "airflow"
    subprocess.run([str(airflow), "db", "migrate"], env=e2e_env, capture_output=True, check=True, cwd=ROOT)
    log("e2e: dag.test() warm-up run (not counted: the first run in a fresh database does one-off work)")
    worker("e2e", {"deferrable": False, "home": str(home)}, e2e_env)
    runs: dict[str, list[dict[str, Any]]] = {"sync": [], "deferrable": []}
    for i in range(reps):
        for mode in ("sync", "deferrable") if i % 2 == 0 else ("deferrable", "sync"):
            log(f"e2e: dag.test(), {mode}, run {i + 1}/{reps}")
            runs[mode].append(worker("e2e", {"deferrable": mode == "deferrable", "home": str(home)}, e2e_env))
    result: dict[str, Any] = {"reps": reps, "runs": runs}
    for mode, items in runs.items():
        result[f"{mode}_seconds"] = median([r["wall_seconds"] for r in items])
        result[f"{mode}_states"] = [r["state"] for r in items]
    result["ratio"] = result["deferrable_seconds"] / result["sync_seconds"]
    return result


BENCHES: dict[str, Callable[[bool, dict[str, str]], dict[str, Any]]] = {
    "imports": bench_imports,
    "requests": bench_requests,
    "triggers": bench_triggers,
    "pipeline": bench_pipeline,
    "fleet": bench_fleet,
    "e2e": bench_e2e,
}


# ---------------------------------------------------------------------------------------------
# The table.


def _row(figure: str, ours: Any, theirs: Any, ratio: float | None, goal: str, met: bool | None) -> dict[str, Any]:
    return {"figure": figure, "ours": ours, "theirs": theirs, "ratio": ratio, "goal": goal, "met": met}


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def build_table(sections: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    imp = sections.get("imports")
    if imp:
        ratio = imp["ratio"]
        rows.append(
            _row(
                "DAG-parse: operator+sensor modules after airflow.sdk (ms)",
                round(imp["ours_ms"], 1),
                round(imp["theirs_ms"], 1),
                ratio,
                f"<= {GOAL_IMPORT[0]}x (aim {GOAL_IMPORT[1]}x)",
                ratio <= GOAL_IMPORT[0],
            )
        )
    req = sections.get("requests")
    if req:
        counts = req["counts"]
        ok_counts = all(
            c == {"requests": 100, "jwt_signed": 1, "tcp_connections": 1} for c in req["counts_every_round"]
        )
        rows.append(
            _row(
                "100 status reads via one hook: requests / JWTs / TCP conns",
                f"{counts['requests']} / {counts['jwt_signed']} / {counts['tcp_connections']}",
                "100 / 0 (precomputed) / 1",
                None,
                "100 / 1 / 1",
                ok_counts,
            )
        )
        rows.append(
            _row(
                "100 status reads: wall (ms), KoreHook vs bare requests.Session",
                round(req["ours_seconds"] * 1e3, 1),
                round(req["bare_seconds"] * 1e3, 1),
                req["ratio"],
                f"<= {GOAL_REQUESTS:.2f}x",
                req["ratio"] <= GOAL_REQUESTS,
            )
        )
        if "paired_cpu_ratio" in req:
            rows.append(
                _row(
                    "100 status reads: client CPU (ms), KoreHook vs bare requests.Session",
                    round(req["ours_cpu_seconds"] * 1e3, 1),
                    round(req["bare_cpu_seconds"] * 1e3, 1),
                    req["paired_cpu_ratio"],
                    "report",
                    None,
                )
            )
    trig = sections.get("triggers")
    if trig:
        n = trig["n"]
        one, five, mem = trig["one_poll"], trig["five_polls"], trig["memory"]
        all_events = all(
            g == n for side in ("ours", "theirs") for g in one[side]["good_events"] + five[side]["good_events"]
        )
        same_polls = all(
            r == n * polls
            for part, polls in ((one, 1), (five, 5))
            for side in ("ours", "theirs", "floor")
            for r in part[side]["requests"]
        )
        rows.append(
            _row(
                f"{n:,} waits: every wait ended with its event; same polls each side",
                f"{min(one['ours']['good_events'] + five['ours']['good_events'])}/{n}",
                f"{min(one['theirs']['good_events'] + five['theirs']['good_events'])}/{n}",
                None,
                "all; equal polls",
                all_events and same_polls,
            )
        )
        cpu_ratio = one["ours"]["cpu_seconds"] / one["theirs"]["cpu_seconds"]
        rows.append(
            _row(
                f"{n:,} concurrent waits x 1 poll: CPU (s) vs HttpSensorTrigger",
                round(one["ours"]["cpu_seconds"], 3),
                round(one["theirs"]["cpu_seconds"], 3),
                cpu_ratio,
                f"<= {GOAL_TRIGGER_CPU[0]}x (aim {GOAL_TRIGGER_CPU[1]}x)",
                cpu_ratio <= GOAL_TRIGGER_CPU[0],
            )
        )
        rows.append(
            _row(
                f"{n:,} waits x 1 poll: CPU (s) vs the floor (bare shared aiohttp session)",
                round(one["ours"]["cpu_seconds"], 3),
                round(one["floor"]["cpu_seconds"], 3),
                one["ours"]["cpu_seconds"] / one["floor"]["cpu_seconds"],
                "close to 1x",
                None,
            )
        )
        rows.append(
            _row(
                f"{n:,} waits x 1 poll: wall (s)",
                round(one["ours"]["wall_seconds"], 2),
                round(one["theirs"]["wall_seconds"], 2),
                one["ours"]["wall_seconds"] / one["theirs"]["wall_seconds"],
                "report",
                None,
            )
        )
        rows.append(
            _row(
                f"{n:,} waits x 1 poll: peak RSS growth (MiB, ru_maxrss)",
                round(one["ours"]["rss_peak_delta_mb"], 1),
                round(one["theirs"]["rss_peak_delta_mb"], 1),
                one["ours"]["rss_peak_delta_mb"] / one["theirs"]["rss_peak_delta_mb"]
                if one["theirs"]["rss_peak_delta_mb"]
                else None,
                "report",
                None,
            )
        )
        rows.append(
            _row(
                f"{n:,} waits: traced peak (MiB, tracemalloc)",
                round(mem["ours"]["traced_peak_bytes"] / 2**20, 1),
                round(mem["theirs"]["traced_peak_bytes"] / 2**20, 1),
                mem["ours"]["traced_peak_bytes"] / mem["theirs"]["traced_peak_bytes"],
                "report",
                None,
            )
        )
        ours_kb, theirs_kb = mem["ours"]["per_waiting_trigger_kb"], mem["theirs"]["per_waiting_trigger_kb"]
        rows.append(
            _row(
                "memory per waiting trigger (KiB, tracemalloc)",
                round(ours_kb, 1) if ours_kb is not None else None,
                round(theirs_kb, 1) if theirs_kb is not None else None,
                ours_kb / theirs_kb if ours_kb and theirs_kb else None,
                "report",
                None,
            )
        )
        rows.append(
            _row(
                f"{n:,} waits x 5 polls: CPU per poll (us)",
                round(five["ours"]["cpu_per_request_us"]),
                round(five["theirs"]["cpu_per_request_us"]),
                five["ours"]["cpu_per_request_us"] / five["theirs"]["cpu_per_request_us"],
                "report",
                None,
            )
        )
        rows.append(
            _row(
                f"{n:,} waits x 5 polls: CPU per poll (us) vs the floor",
                round(five["ours"]["cpu_per_request_us"]),
                round(five["floor"]["cpu_per_request_us"]),
                five["ours"]["cpu_per_request_us"] / five["floor"]["cpu_per_request_us"],
                "close to 1x",
                None,
            )
        )
    rows += _pipeline_rows(sections.get("pipeline"))
    fleets = sections.get("fleet") or {}
    if "n" in fleets:  # a report from before the two scenarios
        fleets = {"budget": fleets}
    for scenario in ("budget", "adaptive"):
        fleet = fleets.get(scenario)
        if not fleet:
            continue
        n = fleet["n"]
        completed = fleet["outcomes"].get("success", 0)
        budget = fleet["max_requests_per_minute"]
        limit, window = fleet["sim_rate_limit"]
        paced = f"budget {budget}/min" if budget else "no budget (adaptive)"
        where = f"fleet of {n}, {paced}, Kore limit {limit}/{window:g}s"
        others = ", ".join(f"{count} {kind}" for kind, count in sorted(fleet["outcomes"].items()) if kind != "success")
        rows.append(
            _row(
                f"{where}: waits completed before the {fleet['deadline']:g}s end_time",
                f"{completed}/{n}" + (f" ({others})" if others else ""),
                None,
                None,
                "all" if budget else "report",
                completed == n if budget else None,
            )
        )
        rows.append(
            _row(
                f"{where}: requests per completed wait",
                fleet["requests_per_completed_wait"],
                None,
                None,
                "report",
                None,
            )
        )
        counters = fleet.get("event_counters")
        from_events = counters.get("rate_limited") if counters else None
        rows.append(
            _row(
                f"{where}: 429s received (simulator log / event counters)",
                f"{fleet['rate_limited_sim']} / {'n/a' if from_events is None else from_events}"
                + (f" ({counters['pauses']} pause(s))" if counters and "pauses" in counters else ""),
                None,
                None,
                "report (0 is best)",
                None,
            )
        )
        rows.append(
            _row(
                f"{where}: completion -> event delay, median / p95 (s)",
                f"{_fmt(fleet['delay_median'])} / {_fmt(fleet['delay_p95'])}",
                None,
                None,
                f"report (poll interval {fleet['interval']:g}s)",
                None,
            )
        )
    e2e = sections.get("e2e")
    if e2e:
        rows.append(
            _row(
                "example DAG under dag.test(): wall (s), deferrable (ours col) vs poke (theirs col)",
                round(e2e["deferrable_seconds"], 1),
                round(e2e["sync_seconds"], 1),
                e2e["ratio"],
                "report",
                None,
            )
        )
    return rows


def _pipeline_rows(pipe: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Export and load: counts, peak RSS growth (the goal), requests per second, CPU per page."""
    if not pipe:
        return []
    n = pipe["rows"]
    rows: list[dict[str, Any]] = []
    for job in ("export", "load"):
        data = pipe.get(job)
        if not data:
            continue
        ours_runs = data["runs"]["ours"]
        if job == "export":
            what = f"export {n:,} contact outcomes ({n // 100:,} pages) to a file:// CSV"
            done = [r["file_rows"] for r in ours_runs]
            counts = f"{min(done):,} rows / {ours_runs[0]['requests']:,} requests / {ours_runs[0]['tcp_connections']}"
            want = f"{n:,} / {n // 100:,} / 1"
            ok = all(r["file_rows"] == n and r["requests"] == n // 100 and r["tcp_connections"] == 1 for r in ours_runs)
            page = "page of 100"
        else:
            batch = ours_runs[0]["batch_size"]
            batches = -(-n // batch)
            what = f"load {n:,} contacts from a file:// CSV ({batches:,} batches of {batch})"
            done = [r["stored_contacts"] or 0 for r in ours_runs]
            counts = f"{min(done):,} stored / {ours_runs[0]['requests']:,} requests / {ours_runs[0]['tcp_connections']}"
            want = f"{n:,} / {batches + 1:,} (1 creates the list) / 1"
            ok = all(
                r["stored_contacts"] == n and r["requests"] == batches + 1 and r["tcp_connections"] == 1
                for r in ours_runs
            )
            page = f"batch of {batch}"
        rows.append(_row(f"{what}: rows done / requests / TCP conns", counts, None, None, want, ok))
        worst = data["ours_rss_peak_delta_mb_max"]
        rows.append(
            _row(
                f"{what}: peak RSS growth (MiB; median, worst run {worst:.1f}) vs bare requests.Session",
                round(max(0.0, data["ours_rss_peak_delta_mb"]), 1),  # -0.0 is noise: VmRSS vs ru_maxrss
                round(max(0.0, data["bare_rss_peak_delta_mb"]), 1),
                None,
                f"< {GOAL_PIPELINE_RSS_MB:g} MiB",
                worst < GOAL_PIPELINE_RSS_MB,
            )
        )
        rows.append(
            _row(
                f"{what}: requests per second",
                round(data["ours_requests_per_second"]),
                round(data["bare_requests_per_second"]),
                data["ours_requests_per_second"] / data["bare_requests_per_second"],
                "report",
                None,
            )
        )
        rows.append(
            _row(
                f"{what}: provider's CPU per {page} (ms)",
                round(data["ours_cpu_per_page_ms"], 2),
                round(data["bare_cpu_per_page_ms"], 2),
                data["ours_cpu_per_page_ms"] / data["bare_cpu_per_page_ms"],
                "report",
                None,
            )
        )
    return rows


def render(rows: list[dict[str, Any]]) -> str:
    header = ("figure", "ours", "theirs", "ratio", "goal", "met?")
    cells = [
        (
            r["figure"],
            _fmt(r["ours"], 2),
            _fmt(r["theirs"], 2),
            "-" if r["ratio"] is None else f"{r['ratio']:.2f}x",
            r["goal"],
            {True: "yes", False: "NO", None: "-"}[r["met"]],
        )
        for r in rows
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(c) + " |" for c in cells]
    return "\n".join(lines)


def machine_info() -> dict[str, Any]:
    from importlib import metadata

    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "airflow": version("apache-airflow"),
        "apache-airflow-providers-http": version("apache-airflow-providers-http"),
        "aiohttp": version("aiohttp"),
        "requests": version("requests"),
        "airflow-provider-kore": version("airflow-provider-kore"),
        "loadavg_start": list(os.getloadavg()),
        **_code_version(),
    }


def _code_version() -> dict[str, Any]:
    """The commit measured, and whether the work tree differed from it (None outside a git clone)."""

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    changes = git("status", "--porcelain", "--untracked-files=no", "--", "airflow_provider_kore") if commit else None
    return {"commit": commit, "package_changed_since_commit": None if changes is None else bool(changes)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and smaller runs (a smoke test)")
    parser.add_argument("--only", action="append", choices=SECTIONS, help="run only this section (repeatable)")
    parser.add_argument("--output", type=Path, help="JSON file (default results/latest.json, quick.json with --quick)")
    args = parser.parse_args(argv)
    only = args.only or list(SECTIONS)
    output = args.output or RESULTS / ("quick.json" if args.quick else "latest.json")

    previous: dict[str, Any] = {}
    if args.only and output.exists():  # refresh some sections, keep the others
        try:
            previous = json.loads(output.read_text())
        except ValueError:
            previous = {}
    sections: dict[str, Any] = dict(previous.get("sections", {}))
    machine = machine_info()
    home = Path(tempfile.mkdtemp(prefix="kore-bench-"))
    env = _env(home)
    try:
        for name in SECTIONS:
            if name not in only:
                continue
            log(f"section {name}{' (quick)' if args.quick else ''}")
            started = time.perf_counter()
            data = BENCHES[name](args.quick, env)
            data["_meta"] = {
                "quick": args.quick,
                "seconds": round(time.perf_counter() - started, 1),
                "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "loadavg_end": list(os.getloadavg()),
            }
            sections[name] = data
    finally:
        shutil.rmtree(home, ignore_errors=True)
    machine["loadavg_end"] = list(os.getloadavg())
    rows = build_table(sections)
    report = {"machine": machine, "quick": args.quick, "sections_run": only, "table": rows, "sections": sections}
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
    print(
        f"Benchmarks on {machine['cpu_count']} CPUs, Python {machine['python']}, Airflow {machine['airflow']}, "
        f"HTTP provider {machine['apache-airflow-providers-http']}, {machine['date']} "
        f"(load average {machine['loadavg_start'][0]:.1f} -> {machine['loadavg_end'][0]:.1f})"
    )
    print(render(rows))
    print(f"\nSaved {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
