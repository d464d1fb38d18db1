#!/usr/bin/env bash
# Airflow's defer race, run many times in a row (by hand; the suite runs it once per database).
#
# Runs tests/test_e2e_scheduler.py::test_quick_waits_are_not_failed_by_the_defer_race (16 mapped
# deferred waits + a deferrable start, poll 2 s, campaigns done at the trigger's first read; a real
# api-server, scheduler, dag-processor and one triggerer) RUNS times on one metadata database, and
# prints one line per run and the count at the end. A run that fails keeps its pytest output in
# the log folder; "DEFER RACE" in it means Airflow's scheduler failed a task on the race
# ("finished with state success, but the task instance's state attribute is queued").
#
#   scripts/e2e_race_loop.sh sqlite 10 4     # SQLite, 10 runs, four CPU burners while it runs
#   scripts/e2e_race_loop.sh postgres 10     # a throwaway PostgreSQL 15 cluster per run, no load
#
# Arguments: DB (sqlite | postgres), RUNS (default 10), BURNERS (busy `python -c "while True: pass"`
# processes started here and stopped on exit; default 0). Environment: PYTHON (default
# /work/main/.venv/bin/python, else python3), LOGS (default a new folder under /tmp).
# Runs the copy of the provider in this checkout (PYTHONPATH), for the Airflow processes too.
set -uo pipefail
cd "$(dirname "$0")/.."
db=${1:?usage: $0 sqlite|postgres [RUNS] [BURNERS]}
runs=${2:-10}
burners=${3:-0}
python=${PYTHON:-/work/main/.venv/bin/python}
[[ -x $python ]] || python=python3
logs=${LOGS:-$(mktemp -d /tmp/kore-race-loop.XXXXXX)}
mkdir -p "$logs"
export PYTHONPATH=$PWD KORE_E2E_DB=$db

burner_pids=()
stop_burners() {
    for pid in "${burner_pids[@]}"; do kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; done
    burner_pids=()
}
trap stop_burners EXIT
trap 'stop_burners; exit 130' INT TERM

echo "provider imported from: $("$python" -c 'import airflow_provider_kore as p; print(p.__file__)')"
echo "database: $db, runs: $runs, CPU burners: $burners, logs: $logs"
for ((i = 0; i < burners; i++)); do
    "$python" -c "while True: pass" &
    burner_pids+=($!)
done

passed=0
failed=0
races=0
for ((run = 1; run <= runs; run++)); do
    log="$logs/run-$run.log"
    started=$(date +%s)
    "$python" -m pytest tests/test_e2e_scheduler.py -q -x -s -p no:cacheprovider \
        -k test_quick_waits_are_not_failed_by_the_defer_race >"$log" 2>&1
    rc=$?
    took=$(($(date +%s) - started))
    summary=$(grep -o "quick waits on .*" "$log" | tail -1)
    if ((rc == 0)) && grep -q " passed" "$log" && ! grep -q " skipped" "$log"; then
        passed=$((passed + 1))
        echo "run $run: passed in ${took}s; $summary"
    else
        failed=$((failed + 1))
        why=$(grep -m1 -E "^E +[A-Za-z.]*(Error|Skipped|Failed)|^SKIPPED|^ERROR" "$log" | sed -E 's/^E +//' | cut -c1-200)
        grep -q "AssertionError: DEFER RACE" "$log" && races=$((races + 1))
        echo "run $run: FAILED (exit $rc) in ${took}s: $why (log: $log)"
    fi
done
echo "$db: $passed of $runs passed, $failed failed ($races on the defer race); CPU burners: $burners"
((failed == 0))
