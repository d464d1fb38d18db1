"""Smoke test of the benchmark command: it runs, writes its JSON, and the counts hold.

Timings are never asserted (machines are noisy); only counts: 100 status reads through one
hook are 100 HTTP requests, one signed JWT and one TCP connection; a small export and load
through the pipeline operators move every row on one connection. The one memory bound checked
is issue 14's 50 MiB, far above what a small run grows (a few MiB of first-use costs).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks" / "run.py"


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    output = tmp_path_factory.mktemp("bench") / "quick.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--only", "requests", "--output", str(output)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "| figure | ours | theirs | ratio | goal | met? |" in proc.stdout
    return json.loads(output.read_text())


def test_report_has_machine_info_and_table(quick_report: dict) -> None:
    assert {"machine", "quick", "sections_run", "table", "sections"} <= quick_report.keys()
    machine = quick_report["machine"]
    assert {"date", "cpu_count", "python", "airflow", "loadavg_start", "loadavg_end"} <= machine.keys()
    assert quick_report["quick"] is True
    assert quick_report["sections_run"] == ["requests"]
    for row in quick_report["table"]:
        assert {"figure", "ours", "theirs", "ratio", "goal", "met"} == row.keys()


def test_one_hook_makes_100_requests_with_one_jwt_on_one_connection(quick_report: dict) -> None:
    section = quick_report["sections"]["requests"]
    assert {"ours_seconds", "bare_seconds", "ratio", "counts", "runs"} <= section.keys()
    for run in section["runs"]["ours"]:
        assert run["requests"] == 100
        assert run["ok"] == 100
        assert run["jwt_signed"] == 1
        assert run["distinct_tokens"] == 1
        assert run["tcp_connections"] == 1
    for run in section["runs"]["bare"]:  # the baseline does the same work
        assert run["requests"] == 100
        assert run["tcp_connections"] == 1
    counts_row = next(r for r in quick_report["table"] if "requests / JWTs / TCP conns" in r["figure"])
    assert counts_row["met"] is True


def test_table_renders_every_section_from_a_saved_report() -> None:
    """The table builder copes with a full report (the committed reference run, if present)."""
    spec = importlib.util.spec_from_file_location("kore_benchmarks_run", BENCH)
    assert spec is not None
    assert spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    reference = BENCH.parent / "results" / "latest.json"
    if not reference.exists():
        pytest.skip("no reference run saved yet")
    report = json.loads(reference.read_text())
    rows = bench.build_table(report["sections"])
    assert len(rows) == len(report["table"])
    text = bench.render(rows)
    assert text.count("\n") == len(rows) + 1


def run_pipeline_worker(job: str, rows: int) -> dict:
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCH.parent / "_work.py"),
            "pipeline",
            json.dumps({"job": job, "side": "ours", "rows": rows}),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    output = proc.stdout[-2000:] + proc.stderr[-4000:]
    assert proc.returncode == 0, output
    assert lines, output
    return json.loads(lines[-1][len("RESULT ") :])


def test_pipeline_export_benchmark_writes_every_row_page_by_page() -> None:
    result = run_pipeline_worker("export", 1_000)
    assert result["outcome"]["rows"] == 1_000
    assert result["file_rows"] == 1_000
    assert result["requests"] == 10  # pages of 100
    assert result["by_status"] == {"200": 10}
    assert result["tcp_connections"] == 1
    assert result["rss_peak_delta_mb"] < 50


def test_pipeline_load_benchmark_stores_every_contact_in_batches() -> None:
    result = run_pipeline_worker("load", 1_200)
    assert result["outcome"]["sent"] == 1_200
    assert result["stored_contacts"] == 1_200
    assert result["requests"] == 1 + 3  # create the list, then batches of 500
    assert result["tcp_connections"] == 1
    assert result["rss_peak_delta_mb"] < 50
