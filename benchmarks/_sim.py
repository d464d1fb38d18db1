"""The Kore simulator in its own process, driven over stdin/stdout with one JSON object per line.

Benchmarks measure the CPU of the process that runs the client (``time.process_time`` and
``getrusage(RUSAGE_SELF)`` count only that process), so the server must live elsewhere.
``SimProcess`` starts ``python benchmarks/_sim.py`` and sends commands; the child answers each
with one JSON line. Only the standard library and the provider's simulator are imported here.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class SimProcess:
    """A :class:`KoreSimulator` in a child process (``with SimProcess() as sim: sim.call(...)``)."""

    def __init__(self, **options: Any) -> None:
        self.options = options
        self.proc: subprocess.Popen[str] | None = None
        self.info: dict[str, Any] = {}

    def __enter__(self) -> SimProcess:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), json.dumps(self.options)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.info = self._read()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            with contextlib.suppress(Exception):
                self.call("quit")
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def _read(self) -> Any:
        assert self.proc is not None
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the simulator process exited")
        answer = json.loads(line)
        if isinstance(answer, dict) and "error" in answer:
            raise RuntimeError(f"simulator process: {answer['error']}")
        return answer

    def call(self, command: str, **args: Any) -> Any:
        """Send one command and return its answer."""
        assert self.proc is not None
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"command": command, **args}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    @property
    def conn_json(self) -> str:
        return self.info["conn_json"]

    def conn_json_with(self, **extra: Any) -> str:
        conn = json.loads(self.info["conn_json"])
        conn["extra"].update(extra)
        return json.dumps(conn)


# ---------------------------------------------------------------------------------------------
# The child.


def _serve(options: dict[str, Any]) -> None:
    _raise_fd_limit()
    from airflow_provider_kore.testing.simulator import KoreSimulator

    sim = KoreSimulator(
        complete_after_polls=options.get("complete_after_polls"),
        campaigns=options.get("campaigns", []),
        rate_limit=tuple(options["rate_limit"]) if options.get("rate_limit") else None,
        # Contacts added to a list are counted, not kept (the pipeline benchmark loads 100,000).
        keep_contacts=options.get("keep_contacts", True),
    )
    sim.start()

    def reply(value: Any) -> None:
        sys.stdout.write(json.dumps(value) + "\n")
        sys.stdout.flush()

    reply(
        {
            "url": sim.url,
            "conn_json": sim.airflow_conn_json(),
            "client_id": sim.client_id,
            "client_secret": sim.client_secret,
            "account_id": sim.account_id,
            "stream_id": sim.stream_id,
            "pid": os.getpid(),
        }
    )
    for line in sys.stdin:
        request = json.loads(line)
        command = request.pop("command")
        try:
            if command == "quit":
                reply({"ok": True})
                break
            reply(_handle(sim, command, request))
        except Exception as exc:
            reply({"error": f"{type(exc).__name__}: {exc}"})
    sim.stop()


def _handle(sim: Any, command: str, args: dict[str, Any]) -> Any:
    if command == "add":
        started: dict[str, float] = {}
        for campaign_id, after_seconds in zip(
            args["ids"], args.get("complete_after_seconds") or [None] * len(args["ids"]), strict=True
        ):
            sim.add_campaign(
                campaign_id,
                campaign_type=args.get("campaign_type", "sms"),
                status=args.get("status", "Ready"),
                complete_after_polls=args.get("complete_after_polls"),
                complete_after_seconds=after_seconds,
            )
            started[campaign_id] = time.monotonic()
        return {"started": started}
    if command == "outcomes":  # N generated contact outcomes, built page by page as they are read
        sim.set_contact_outcomes(args["campaign_id"], args["count"])
        return {"ok": True}
    if command == "add_list":
        return {"list_id": sim.add_contact_list(args["name"], allow_duplicates=args.get("allow_duplicates", False))}
    if command == "list_info":
        return sim.contact_list_info(args["name"])
    if command == "set_status":
        sim.set_status(args["campaign_id"], args["status"])
        return {"ok": True}
    if command == "status_of":
        return {"status": sim.status_of(args["campaign_id"])}
    if command == "fault":
        sim.inject_fault(args["operation"], status=args["status"], times=args.get("times", 1))
        return {"ok": True}
    if command == "clear_faults":
        sim.clear_faults()
        return {"ok": True}
    if command == "rate_limit":
        sim.set_rate_limit(args.get("limit"), args.get("window"))
        return {"ok": True}
    if command == "reset_log":
        sim.reset_log()
        return {"ok": True, "connections_opened": sim.connections_opened}
    if command == "count":
        return {"requests": len(sim.requests.snapshot())}
    if command == "stats":
        records = sim.requests.snapshot()
        by_status = Counter(str(r.status_code) for r in records)
        tokens = {r.headers.get("auth") for r in records if r.headers.get("auth")}
        return {
            "requests": len(records),
            "by_status": dict(by_status),
            "distinct_tokens": len(tokens),
            "connections_opened": sim.connections_opened,
            "pending_faults": sim.pending_faults,
        }
    raise ValueError(f"unknown command {command!r}")


if __name__ == "__main__":
    _serve(json.loads(sys.argv[1]) if len(sys.argv) > 1 else {})
