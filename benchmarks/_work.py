"""One measurement in a fresh interpreter: ``python benchmarks/_work.py SECTION 'JSON-ARGS'``.

``benchmarks/run.py`` starts one of these per repetition so that each starts cold and what it
measures (CPU, peak RSS, traced memory) belongs to it alone. The Kore simulator runs in yet
another process (:class:`_sim.SimProcess`). The result is printed as one line,
``RESULT {json}``, the last line of stdout.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _sim import SimProcess, _raise_fd_limit

ROOT = Path(__file__).resolve().parent.parent
STATUS_PATH = "/campaign/api/v2/public/{stream}/campaign/{campaign}/status?accountId={account}&view=status"


def _rss_mb() -> float:
    """Peak resident set size of this process so far (``ru_maxrss``, KiB on Linux), in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _campaign_ids(n: int, prefix: str = "cd-bench") -> list[str]:
    return [f"{prefix}-{i:05d}" for i in range(n)]


def _sign(info: dict[str, Any]) -> str:
    """A Kore JWT built by hand, as a user of the HTTP provider would (outside any timing)."""
    import uuid

    import jwt

    now = int(time.time())
    claims = {"appId": info["client_id"], "iat": now, "exp": now + 3600, "jti": uuid.uuid4().hex}
    return jwt.encode(claims, info["client_secret"], algorithm="HS256")


# ---------------------------------------------------------------------------------------------
# 2. Request efficiency: 100 status reads through one KoreHook vs a bare requests.Session.


def bench_requests(args: dict[str, Any]) -> dict[str, Any]:
    reads = args.get("reads", 100)
    rounds = args.get("rounds", 7)
    with SimProcess(campaigns=[{"campaign_id": "cd-bench-00000", "status": "Active"}]) as sim:
        info = sim.info
        os.environ["AIRFLOW_CONN_KORE_BENCH"] = sim.conn_json
        import requests

        from airflow_provider_kore.hooks.kore import KoreHook

        campaign = "cd-bench-00000"
        url = info["url"] + STATUS_PATH.format(stream=info["stream_id"], campaign=campaign, account=info["account_id"])
        token = _sign(info)
        headers = {
            "auth": token,
            "iid": info["stream_id"],
            "accountId": info["account_id"],
            "Accept": "application/json",
            "Content-Type": "application/json",
        }

        try:  # Airflow 3.1+
            from airflow.sdk._shared.secrets_masker import reset_secrets_masker
        except ImportError:  # Airflow 3.0: one masker per process, no reset; rounds then grow slower
            reset_secrets_masker = None

        def ours() -> dict[str, Any]:
            # A task signs one JWT in a fresh process. Each signed token is handed to Airflow's
            # secrets masker, which recompiles one regex of every secret it holds (~0.8 ms per
            # token already held): without a reset, round k of this loop would pay for k tokens.
            if reset_secrets_masker is not None:
                reset_secrets_masker()
            before = sim.call("reset_log")["connections_opened"]
            cpu = time.process_time()
            started = time.perf_counter()
            hook = KoreHook("kore_bench")
            for _ in range(reads):
                data = hook.get_campaign_status(campaign)
                assert data["status"] == "Active", data
            elapsed = time.perf_counter() - started
            cpu = time.process_time() - cpu
            signed = hook.signer.signed
            hook.close()
            stats = sim.call("stats")
            return {
                "seconds": elapsed,
                "cpu_seconds": cpu,
                "requests": stats["requests"],
                "ok": stats["by_status"].get("200", 0),
                "tcp_connections": stats["connections_opened"] - before,
                "jwt_signed": signed,
                "distinct_tokens": stats["distinct_tokens"],
            }

        def bare() -> dict[str, Any]:
            before = sim.call("reset_log")["connections_opened"]
            cpu = time.process_time()
            started = time.perf_counter()
            session = requests.Session()
            for _ in range(reads):
                response = session.post(url, headers=headers, data=b"{}", timeout=30)
                response.raise_for_status()
                assert response.json()["data"]["status"] == "Active"
            elapsed = time.perf_counter() - started
            cpu = time.process_time() - cpu
            session.close()
            stats = sim.call("stats")
            return {
                "seconds": elapsed,
                "cpu_seconds": cpu,
                "requests": stats["requests"],
                "ok": stats["by_status"].get("200", 0),
                "tcp_connections": stats["connections_opened"] - before,
                "jwt_signed": 0,
                "distinct_tokens": stats["distinct_tokens"],
            }

        ours(), bare()  # warm-up: first-use imports (jwt, urllib3 pools), not part of either figure
        runs: dict[str, list[dict[str, Any]]] = {"ours": [], "bare": []}
        for i in range(rounds):
            order = (("ours", ours), ("bare", bare)) if i % 2 == 0 else (("bare", bare), ("ours", ours))
            for name, fn in order:
                runs[name].append(fn())
    pairs = list(zip(runs["ours"], runs["bare"], strict=True))
    return {
        "reads": reads,
        "rounds": rounds,
        "masker_reset": reset_secrets_masker is not None,
        "runs": runs,
        "ours_seconds": statistics.median(r["seconds"] for r in runs["ours"]),
        "bare_seconds": statistics.median(r["seconds"] for r in runs["bare"]),
        "ours_cpu_seconds": statistics.median(r["cpu_seconds"] for r in runs["ours"]),
        "bare_cpu_seconds": statistics.median(r["cpu_seconds"] for r in runs["bare"]),
        # Each round runs both back to back (order alternating): the ratio within a round is
        # the least disturbed by the machine's load changing between rounds.
        "paired_ratio": statistics.median(o["seconds"] / b["seconds"] for o, b in pairs),
        "paired_cpu_ratio": statistics.median(o["cpu_seconds"] / b["cpu_seconds"] for o, b in pairs),
    }


# ---------------------------------------------------------------------------------------------
# 3. Deferred-wait scale: N triggers in one event loop, ours vs HttpSensorTrigger.


def _profiled(main: Any) -> Any:
    """``asyncio.run(main())``; under ``BENCH_PROFILE=FILE`` (pyinstrument importable) also a profile."""
    target = os.environ.get("BENCH_PROFILE")
    if not target:
        return asyncio.run(main())
    if target.endswith(".pstats"):  # cProfile: exact call counts, own time per function
        import cProfile

        profile = cProfile.Profile()
        try:
            return profile.runcall(asyncio.run, main())
        finally:
            profile.dump_stats(target)
    from pyinstrument import Profiler

    profiler = Profiler(interval=0.0005, async_mode="disabled")
    profiler.start()
    try:
        return asyncio.run(main())
    finally:
        profiler.stop()
        Path(target).write_text(
            profiler.output_text(unicode=False, color=False, show_all=os.environ.get("BENCH_PROFILE_ALL") == "1")
        )


async def _run_trigger(trigger: Any) -> Any:
    async for event in trigger.run():
        return event.payload
    return None


def bench_triggers(args: dict[str, Any]) -> dict[str, Any]:
    side = args["side"]
    n = args["n"]
    polls = args["polls"]
    interval = args["interval"]
    memory = args.get("memory", False)
    _raise_fd_limit()
    ids = _campaign_ids(n)
    with SimProcess() as sim:
        info = sim.info
        if side in ("ours", "floor"):
            if polls == 1:
                sim.call("add", ids=ids, status="Completed")
            else:  # Active, Completed on the polls-th status read
                sim.call("add", ids=ids, status="Active", complete_after_polls=polls)
        else:
            # HttpSensorTrigger fires at the first answer that is not an error and sleeps after a
            # 404: (polls - 1) 404s per wait, then 200s, is exactly `polls` requests per wait.
            sim.call("add", ids=ids, status="Completed")
            if polls > 1:
                sim.call("fault", operation="get_campaign_status", status=404, times=n * (polls - 1))
        os.environ["AIRFLOW_CONN_KORE_BENCH"] = sim.conn_json
        os.environ["AIRFLOW_CONN_HTTP_KORE"] = json.dumps({"conn_type": "http", "host": info["url"]})

        # Everything either side imports, imported before the clock starts (DAG-parse cost is section 1).
        import aiohttp
        from airflow.providers.http.triggers.http import HttpSensorTrigger

        from airflow_provider_kore.triggers.campaign import KoreCampaignStatusTrigger

        token = _sign(info)
        headers = {
            "auth": token,
            "iid": info["stream_id"],
            "accountId": info["account_id"],
            "Accept": "application/json",
            "Content-Type": "application/json",
        }

        def make(campaign: str) -> Any:
            if side == "ours":
                return KoreCampaignStatusTrigger(
                    campaign_id=campaign, kore_conn_id="kore_bench", poll_interval=interval
                )
            endpoint = STATUS_PATH.format(stream=info["stream_id"], campaign=campaign, account=info["account_id"])
            return HttpSensorTrigger(
                endpoint=endpoint,
                http_conn_id="http_kore",
                method="POST",
                data="{}",
                headers=headers,
                poke_interval=interval,
            )

        samples: dict[str, Any] = {}

        async def sample_waiting_memory() -> None:
            """Traced memory once every first poll is answered and all waits sleep (memory runs)."""
            import tracemalloc

            last = -1
            while True:
                await asyncio.sleep(0.05)
                count = sim.call("count")["requests"]
                if count >= n and count == last:
                    samples["waiting_traced"] = tracemalloc.get_traced_memory()[0]
                    samples["at_requests"] = count
                    return
                last = count

        async def floor_wait(session: Any, campaign: str) -> Any:
            """The least a wait can do: one shared session, one POST per poll, parse, compare."""
            url = info["url"] + STATUS_PATH.format(
                stream=info["stream_id"], campaign=campaign, account=info["account_id"]
            )
            while True:
                async with session.post(url, data=b"{}", headers=headers) as response:
                    body = await response.read()
                if response.status == 200 and json.loads(body)["data"]["status"] == "Completed":
                    return True
                await asyncio.sleep(interval)

        async def main() -> list[Any]:
            sampler = asyncio.ensure_future(sample_waiting_memory()) if memory else None
            if side == "floor":
                async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100)) as session:
                    payloads = await asyncio.gather(*(floor_wait(session, c) for c in ids))
            else:
                triggers = [make(c) for c in ids]
                payloads = await asyncio.gather(*(_run_trigger(t) for t in triggers))
            if sampler is not None:
                sampler.cancel()
            return payloads

        gc.collect()
        if memory:
            import tracemalloc

            tracemalloc.start()
            base_traced = tracemalloc.get_traced_memory()[0]
        rss_before = _rss_mb()
        cpu_before = time.process_time()
        wall_before = time.perf_counter()
        payloads = _profiled(main)
        wall = time.perf_counter() - wall_before
        cpu = time.process_time() - cpu_before
        rss_peak_delta = _rss_mb() - rss_before
        result: dict[str, Any] = {"side": side, "n": n, "polls": polls, "interval": interval}
        if memory:
            import tracemalloc

            current, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            result["traced_peak_bytes"] = peak - base_traced
            result["traced_waiting_bytes"] = (
                samples["waiting_traced"] - base_traced if "waiting_traced" in samples else None
            )
            result["traced_after_bytes"] = current - base_traced
        stats = sim.call("stats")

    if side == "ours":
        good = sum(
            1
            for c, p in zip(ids, payloads, strict=True)
            if isinstance(p, dict) and p.get("status") == "success" and p.get("campaign_id") == c
        )
        polls_reported = sum(p.get("polls", 0) for p in payloads if isinstance(p, dict))
    else:
        good = sum(1 for p in payloads if p is True)
        polls_reported = None
    result.update(
        {
            "events": sum(1 for p in payloads if p is not None),
            "good_events": good,
            "polls_reported": polls_reported,
            "requests": stats["requests"],
            "by_status": stats["by_status"],
            "tcp_connections": stats["connections_opened"],
            "distinct_tokens": stats["distinct_tokens"],
            "cpu_seconds": cpu,
            "wall_seconds": wall,
            "rss_peak_delta_mb": rss_peak_delta,
            "cpu_per_request_us": cpu / stats["requests"] * 1e6 if stats["requests"] else None,
        }
    )
    return result


# ---------------------------------------------------------------------------------------------
# Pipelines: export N contact outcomes to a file, load N contacts from a CSV.


def _rss_now_mb() -> float:
    """Resident set size of this process now (``VmRSS``), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return _rss_mb()


def _reset_peak_rss() -> bool:
    """Reset this process's RSS high-water mark (Linux 4.0+: ``clear_refs`` 5), so that
    ``ru_maxrss`` afterwards is the peak of what follows, not of the imports before it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return abs(_rss_mb() - _rss_now_mb()) < 1.0


def _write_contacts_csv(path: Path, n: int) -> None:
    """``n`` contacts, distinct phone numbers, the columns a warehouse export would have."""
    import csv

    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["phoneNumber", "firstName", "lastName", "timeZone", "uniqueId", "contactPriority"])
        for i in range(n):
            writer.writerow(
                [
                    f"+1 (555) {i // 10000:03d}-{i % 10000:04d}",
                    f"First{i}",
                    f"Last{i}",
                    "America/New_York",
                    f"wh-{i:08d}",
                    1 + i % 5,
                ]
            )


def bench_pipeline(args: dict[str, Any]) -> dict[str, Any]:
    """One export or load of ``rows`` rows, ``ours`` (the operator, as a task runs it) or ``bare``.

    ``bare`` is the least code doing the same job: a ``requests.Session`` with a JWT signed
    beforehand, the CSV module, no checks beyond the HTTP status. Memory: the RSS high-water
    mark is reset once everything is imported; the figure is the peak after minus RSS before.
    """
    import tempfile

    job, side, n = args["job"], args["side"], args["rows"]
    batch = args.get("batch_size", 500)
    campaign = "cd-bench-export-0001"
    list_name = "Bench nightly list"
    folder = Path(tempfile.mkdtemp(prefix="kore-bench-pipeline-"))
    source = folder / "contacts.csv"
    destination = folder / "out" / "results.csv"
    if job == "load":
        _write_contacts_csv(source, n)
    with SimProcess(keep_contacts=False, campaigns=[{"campaign_id": campaign, "campaign_type": "voice"}]) as sim:
        info = sim.info
        if job == "export":
            sim.call("outcomes", campaign_id=campaign, count=n)
        elif side == "bare":
            sim.call("add_list", name=list_name)
        os.environ["AIRFLOW_CONN_KORE_BENCH"] = sim.conn_json
        # Everything either side imports when it runs, imported before the baseline.
        import csv
        import types

        import requests
        from airflow.sdk import ObjectStoragePath  # noqa: F401

        from airflow_provider_kore import api  # noqa: F401
        from airflow_provider_kore._compat import object_storage_path
        from airflow_provider_kore.hooks.kore import KoreHook  # noqa: F401
        from airflow_provider_kore.operators.contacts import KoreLoadContactsOperator
        from airflow_provider_kore.operators.results import RESULT_FIELDS, KoreExportCampaignResultsOperator

        object_storage_path(f"file://{folder}/warm")  # fsspec's local filesystem registered
        token = _sign(info)
        headers = {
            "auth": token,
            "iid": info["stream_id"],
            "accountId": info["account_id"],
            "Accept": "application/json",
            "Content-Type": "application/json",
        }
        base = info["url"]
        stream = info["stream_id"]
        context: dict[str, Any] = {
            "ti": types.SimpleNamespace(try_number=1, task_id="bench", dag_id="bench", map_index=-1),
            "ds": "2026-01-05",
            "params": {},
        }

        def ours_export() -> dict[str, Any]:
            op = KoreExportCampaignResultsOperator(
                task_id="export", campaign_id=campaign, destination=f"file://{destination}", kore_conn_id="kore_bench"
            )
            return op.execute(context)

        def ours_load() -> dict[str, Any]:
            op = KoreLoadContactsOperator(
                task_id="load",
                contact_list_name=list_name,
                source=f"file://{source}",
                create_list=True,
                description="Benchmark load",
                batch_size=batch,
                kore_conn_id="kore_bench",
            )
            return op.execute(context)

        def bare_export() -> dict[str, Any]:
            url = f"{base}/campaign/api/v2/public/{stream}/campaign/{campaign}/status?view=contacts"
            session = requests.Session()
            destination.parent.mkdir(parents=True, exist_ok=True)
            rows = 0
            with destination.open("w", newline="", encoding="utf-8") as out:
                writer = csv.DictWriter(out, RESULT_FIELDS, extrasaction="ignore")
                writer.writeheader()
                for page in range(1, 10**9):
                    response = session.post(url, headers=headers, json={"limit": 100, "page": page}, timeout=30)
                    response.raise_for_status()
                    data = response.json()["data"]
                    for row in data["results"]:
                        codes = row.get("agentDispositionCodes")
                        writer.writerow({**row, "agentDispositionCodes": "; ".join(codes or ())})
                    rows += len(data["results"])
                    if page >= data["totalPages"]:
                        break
            session.close()
            return {"rows": rows}

        def bare_load() -> dict[str, Any]:
            url = f"{base}/api/1.1/public/{stream}/campaign/contactList/addContacts"
            session = requests.Session()
            sent = 0
            with source.open(newline="", encoding="utf-8") as text:
                chunk: list[dict[str, Any]] = []
                for row in csv.DictReader(text):
                    chunk.append({k: v for k, v in row.items() if v})
                    if len(chunk) == batch:
                        session.post(
                            url, headers=headers, json={"contact_list_name": list_name, "data": chunk}, timeout=30
                        ).raise_for_status()
                        sent, chunk = sent + len(chunk), []
                if chunk:
                    session.post(
                        url, headers=headers, json={"contact_list_name": list_name, "data": chunk}, timeout=30
                    ).raise_for_status()
                    sent += len(chunk)
            session.close()
            return {"sent": sent}

        run = {
            ("ours", "export"): ours_export,
            ("ours", "load"): ours_load,
            ("bare", "export"): bare_export,
            ("bare", "load"): bare_load,
        }[(side, job)]
        sim.call("reset_log")
        gc.collect()
        reset = _reset_peak_rss()
        rss_before = _rss_now_mb() if reset else _rss_mb()
        cpu_before = time.process_time()
        wall_before = time.perf_counter()
        outcome = run()
        wall = time.perf_counter() - wall_before
        cpu = time.process_time() - cpu_before
        rss_peak = _rss_mb()
        rss_after = _rss_now_mb()
        stats = sim.call("stats")
        listed = sim.call("list_info", name=list_name) if job == "load" else None
    if job == "export":
        with destination.open(newline="", encoding="utf-8") as written:
            file_rows = sum(1 for _ in csv.reader(written)) - 1
        stored = None
    else:
        file_rows = None
        stored = listed.get("totalRecordCount") if listed else None
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
    requests_made = stats["requests"]
    data_requests = requests_made - (1 if job == "load" and side == "ours" else 0)  # the create-list call
    return {
        "job": job,
        "side": side,
        "rows": n,
        "batch_size": batch if job == "load" else 100,
        "outcome": outcome,
        "file_rows": file_rows,
        "stored_contacts": stored,
        "requests": requests_made,
        "data_requests": data_requests,
        "by_status": stats["by_status"],
        "tcp_connections": stats["connections_opened"],
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "requests_per_second": requests_made / wall if wall else None,
        "cpu_per_page_ms": cpu / data_requests * 1e3 if data_requests else None,
        "rss_before_mb": rss_before,
        "rss_peak_delta_mb": rss_peak - rss_before,
        "rss_after_delta_mb": rss_after - rss_before,
        "peak_reset": reset,
    }


# ---------------------------------------------------------------------------------------------
# Fleet: N waits on one connection with a request budget, against a rate-limited simulator.


def bench_fleet(args: dict[str, Any]) -> dict[str, Any]:
    n = args["n"]
    interval = args["interval"]
    first, last = args["complete_between"]
    deadline = args["deadline"]
    budget = args["max_requests_per_minute"]
    limit, window = args["sim_rate_limit"]
    _raise_fd_limit()
    ids = _campaign_ids(n, "cd-fleet")
    # Campaigns complete at known times, spread evenly over [first, last] seconds from the start.
    after = [first + (last - first) * i / max(1, n - 1) for i in range(n)]
    import logging

    logging.basicConfig(level=logging.ERROR)  # 429 retries log a warning each; keep stdout readable
    with SimProcess(rate_limit=[limit, window]) as sim:
        extra = {} if budget is None else {"max_requests_per_minute": budget}
        os.environ["AIRFLOW_CONN_KORE_FLEET"] = sim.conn_json_with(**extra)
        import aiohttp  # noqa: F401

        from airflow_provider_kore.shared import shared_client
        from airflow_provider_kore.triggers.campaign import KoreCampaignStatusTrigger

        arrived: dict[str, float] = {}
        client_counters: dict[str, Any] = {}

        async def wait(trigger: Any) -> Any:
            payload = await _run_trigger(trigger)
            arrived[trigger.campaign_id] = time.monotonic()
            return payload

        async def main() -> list[Any]:
            # One extra hold on the shared client, only to read its counters at the end.
            async with shared_client("kore_fleet") as client:
                started = sim.call("add", ids=ids, status="Active", complete_after_seconds=after)["started"]
                end_time = time.time() + deadline
                triggers = [
                    KoreCampaignStatusTrigger(
                        campaign_id=c, kore_conn_id="kore_fleet", poll_interval=interval, end_time=end_time
                    )
                    for c in ids
                ]
                payloads = await asyncio.gather(*(wait(t) for t in triggers))
                for name in ("requests_sent", "retries", "rate_limited", "auth_refreshes", "connection_lookups"):
                    client_counters[name] = getattr(client, name, None)
                client_counters["started"] = started
            return payloads

        wall_before = time.perf_counter()
        cpu_before = time.process_time()
        payloads = asyncio.run(main())
        cpu = time.process_time() - cpu_before
        wall = time.perf_counter() - wall_before
        stats = sim.call("stats")

    started = client_counters.pop("started")
    outcomes: dict[str, int] = {}
    delays: list[float] = []
    counters: dict[str, int] | None = None
    for campaign, payload, seconds in zip(ids, payloads, after, strict=True):
        status = payload.get("status") if isinstance(payload, dict) else "no event"
        outcomes[status] = outcomes.get(status, 0) + 1
        if status == "success":
            delays.append(arrived[campaign] - (started[campaign] + seconds))
        event_counters = payload.get("counters") if isinstance(payload, dict) else None
        if isinstance(event_counters, dict):
            counters = counters or {}
            for key, value in event_counters.items():
                if isinstance(value, (int, float)):
                    # "pauses" counts connection-wide pauses seen during each wait: the largest
                    # is the fleet's; the others are per wait and add up.
                    counters[key] = (
                        max(counters.get(key, 0), value) if key == "pauses" else counters.get(key, 0) + value
                    )
    delays.sort()
    completed = outcomes.get("success", 0)
    return {
        "n": n,
        "interval": interval,
        "complete_between": [first, last],
        "deadline": deadline,
        "max_requests_per_minute": budget,
        "sim_rate_limit": [limit, window],
        "outcomes": outcomes,
        "requests": stats["requests"],
        "by_status": stats["by_status"],
        "rate_limited_sim": stats["by_status"].get("429", 0),
        "event_counters": counters,
        "client_counters": client_counters,
        "requests_per_completed_wait": stats["requests"] / completed if completed else None,
        "delay_median": statistics.median(delays) if delays else None,
        "delay_p95": delays[min(len(delays) - 1, round(0.95 * (len(delays) - 1)))] if delays else None,
        "delay_max": delays[-1] if delays else None,
        "wall_seconds": wall,
        "cpu_seconds": cpu,
    }


# ---------------------------------------------------------------------------------------------
# 4. End to end: the example DAG under dag.test(), sync vs deferrable.


def bench_e2e(args: dict[str, Any]) -> dict[str, Any]:
    deferrable = args["deferrable"]
    home = Path(args["home"])
    with SimProcess(
        complete_after_polls=3,
        campaigns=[
            {"campaign_id": "cd-sms-welcome-0001", "campaign_type": "sms"},
            {"campaign_id": "cd-voice-renewal-0001", "campaign_type": "voice", "status": "Active"},
        ],
    ) as sim:
        os.environ.update(
            {
                "AIRFLOW_HOME": str(home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "example_dags"),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
                "AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE": "True" if deferrable else "False",
                "AIRFLOW_CONN_KORE_DEFAULT": sim.conn_json,
                "KORE_DEMO_POLL_INTERVAL": "1",
            }
        )
        import logging

        try:
            from airflow.dag_processing.dagbag import DagBag
        except ImportError:  # Airflow 3.0
            from airflow.models import DagBag  # type: ignore[no-redef]

        import inspect

        kwargs = {"include_examples": False} if "include_examples" in inspect.signature(DagBag).parameters else {}
        dag = DagBag(dag_folder=str(ROOT / "example_dags"), **kwargs).get_dag("kore_campaign_pipeline")
        assert dag is not None
        logging.disable(logging.INFO)  # dag.test() logs every line of every task; keep stdout short
        started = time.perf_counter()
        run = dag.test()
        wall = time.perf_counter() - started
        logging.disable(logging.NOTSET)
        state = str(getattr(run, "state", run))
        stats = sim.call("stats")
        statuses = {
            c: sim.call("status_of", campaign_id=c)["status"] for c in ("cd-sms-welcome-0001", "cd-voice-renewal-0001")
        }
    return {
        "deferrable": deferrable,
        "wall_seconds": wall,
        "state": state,
        "requests": stats["requests"],
        "campaigns": statuses,
    }


SECTIONS = {
    "requests": bench_requests,
    "triggers": bench_triggers,
    "pipeline": bench_pipeline,
    "fleet": bench_fleet,
    "e2e": bench_e2e,
}


if __name__ == "__main__":
    section, raw = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "{}"
    outcome = SECTIONS[section](json.loads(raw))
    sys.stdout.write("RESULT " + json.dumps(outcome) + "\n")
    sys.stdout.flush()
