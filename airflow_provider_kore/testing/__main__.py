"""``kore-simulator`` / ``python -m airflow_provider_kore.testing``: run the simulator by hand.

Example::

    kore-simulator --port 8765 --campaign cd-sms-welcome-0001:sms --campaign "cd-voice-1:voice:Ready:Renewals"

prints the URL and the ``AIRFLOW_CONN_KORE_DEFAULT`` value to export (JSON and URI forms), then
one line per request (method, path, status code - never the ``auth`` header) until Ctrl-C or
SIGTERM.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from airflow_provider_kore.testing.simulator import CAMPAIGN_TYPES, DEFAULT_CLIENT_SECRET, KoreSimulator, RequestRecord


def _campaign(value: str) -> dict[str, Any]:
    """``ID[:sms|voice[:Status[:Name]]]`` -> keywords for :meth:`KoreSimulator.add_campaign`."""
    parts = value.split(":", 3)
    if not parts[0]:
        raise argparse.ArgumentTypeError(f"expected ID[:sms|voice[:Status[:Name]]], got {value!r}")
    spec: dict[str, Any] = {"campaign_id": parts[0]}
    if len(parts) > 1 and parts[1]:
        if parts[1].lower() not in CAMPAIGN_TYPES:
            raise argparse.ArgumentTypeError(f"campaign type must be sms or voice, got {parts[1]!r}")
        spec["campaign_type"] = parts[1].lower()
    if len(parts) > 2 and parts[2]:
        spec["status"] = parts[2]
    if len(parts) > 3 and parts[3]:
        spec["name"] = parts[3]
    return spec


def _outcomes(value: str) -> tuple[str, int]:
    """``CAMPAIGN_ID:COUNT`` -> ``(campaign_id, count)``."""
    campaign_id, _, count = value.rpartition(":")
    if not campaign_id or not count.isdigit():
        raise argparse.ArgumentTypeError(f"expected CAMPAIGN_ID:COUNT such as cd-voice-1:1000, got {value!r}")
    return campaign_id, int(count)


def _optional_int(value: str) -> int | None:
    if value.strip().lower() in ("none", "off", ""):
        return None
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number or 'none', got {value!r}") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value!r}")
    return number


def _seconds(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {value!r}") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value!r}")
    return number


def _rate_limit(value: str) -> tuple[int, float]:
    limit, sep, window = value.partition("/")
    try:
        parsed = (int(limit), float(window))
    except ValueError:
        parsed = (0, 0.0)
    if not sep or parsed[0] < 1 or parsed[1] <= 0:
        raise argparse.ArgumentTypeError(f"expected LIMIT/SECONDS such as 600/60, got {value!r}")
    return parsed


def build_parser() -> argparse.ArgumentParser:
    """The command-line options."""
    parser = argparse.ArgumentParser(
        prog="kore-simulator",
        description="Run a local Kore.ai campaign API simulator on 127.0.0.1.",
    )
    parser.add_argument("--port", type=int, default=8765, help="TCP port (0 picks a free one). Default 8765.")
    parser.add_argument("--client-id", default="kore-sim-client", help="JWT app client id (the appId claim).")
    parser.add_argument("--client-secret", default=DEFAULT_CLIENT_SECRET, help="JWT app client secret.")
    parser.add_argument("--account-id", default="sim-account-0001", help="Expected accountId.")
    parser.add_argument("--stream-id", default="st-sim-0001", help="Expected stream (bot) id in paths.")
    parser.add_argument(
        "--campaign",
        action="append",
        type=_campaign,
        metavar="ID[:sms|voice[:Status[:Name]]]",
        help="Seed a campaign (repeatable). Without any, three Ready demo campaigns are seeded.",
    )
    parser.add_argument(
        "--outcomes",
        action="append",
        type=_outcomes,
        default=[],
        metavar="CAMPAIGN_ID:COUNT",
        help="Serve COUNT generated contact outcomes for a campaign (status?view=contacts; repeatable).",
    )
    parser.add_argument(
        "--complete-after-polls",
        type=_optional_int,
        default=3,
        metavar="N",
        help="An Active campaign reads Completed on the N-th status read ('none' disables). Default 3.",
    )
    parser.add_argument(
        "--complete-after-seconds",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help="An Active campaign is Completed this many seconds after it started.",
    )
    parser.add_argument(
        "--rate-limit",
        type=_rate_limit,
        default=None,
        metavar="LIMIT/SECONDS",
        help="Answer 429 beyond LIMIT requests per rolling SECONDS, e.g. 600/60.",
    )
    return parser


def _print_request(record: RequestRecord) -> None:
    where = f" ({record.operation} {record.campaign_id})" if record.operation else ""
    print(f"{record.method} {record.path} -> {record.status_code}{where}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the simulator until SIGINT or SIGTERM; returns the exit status."""
    args = build_parser().parse_args(argv)
    simulator = KoreSimulator(
        client_id=args.client_id,
        client_secret=args.client_secret,
        account_id=args.account_id,
        stream_id=args.stream_id,
        port=args.port,
        complete_after_polls=args.complete_after_polls,
        complete_after_seconds=args.complete_after_seconds,
        campaigns=args.campaign,
        rate_limit=args.rate_limit,
        on_request=_print_request,
    )
    for campaign_id, count in args.outcomes:
        try:
            simulator.set_contact_outcomes(campaign_id, count)
        except KeyError:
            print(f"kore-simulator: --outcomes names an unknown campaign {campaign_id!r}", file=sys.stderr)
            return 2
    stop = threading.Event()

    def _on_signal(signum: int, frame: object) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            simulator.start()
        except OSError as exc:
            print(f"kore-simulator: cannot listen on 127.0.0.1:{args.port}: {exc}", file=sys.stderr)
            return 1
        print(f"Kore.ai simulator listening on {simulator.url}", flush=True)
        print(f"Campaigns: {', '.join(simulator.campaign_ids) or '(none)'}", flush=True)
        print("Point Airflow at it with (JSON form):", flush=True)
        print(f"export AIRFLOW_CONN_KORE_DEFAULT={shlex.quote(simulator.airflow_conn_json())}", flush=True)
        print("or (URI form; the /http path keeps it plain HTTP, without it the host means https):", flush=True)
        print(f"export AIRFLOW_CONN_KORE_DEFAULT={shlex.quote(simulator.airflow_conn_uri())}", flush=True)
        while not stop.wait(0.2):
            pass
        print("Stopping the Kore.ai simulator", flush=True)
        return 0
    finally:
        simulator.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
