#!/usr/bin/env python3
"""One entry point for a newcomer: ``python3 run.py demo`` and ``python3 run.py test``.

Both make (or reuse) a virtual environment in the repository with a pinned, checked Airflow
release and this provider installed in editable mode, then run inside it:

* ``demo`` - starts the bundled Kore.ai simulator, runs the ``kore_campaign_pipeline`` example
  DAG through Airflow (``dag.test()``), and prints what happened to each campaign.
* ``test`` - the whole test suite (unit, end to end through real Airflow, UI checks).
  ``--airflow lowest`` runs it on the lowest supported Airflow in a second environment.

Only the standard library is used here, so it runs on a bare Python 3.10+.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent

# The Airflow releases this provider is checked against. "lowest" pins what Airflow 3.0's era
# shipped with: today's cadwyn/fastapi/pydantic break its execution API under dag.test().
AIRFLOW = {
    "newest": ["apache-airflow==3.3.2"],
    "lowest": [
        "apache-airflow==3.0.6",
        "cadwyn==5.4.6",
        "fastapi[standard]==0.116.1",
        "pydantic==2.11.7",
        # 3.0.6's api-server rejects its own tokens with PyJWT>=2.11 (no iss claim configured).
        "pyjwt==2.10.1",
    ],
}
# Tools the test suite uses beyond the dev extra: the HTTP provider for the side-by-side benchmark;
# PostgreSQL drivers for the real-deployment test on a throwaway PostgreSQL (Airflow 3 needs both).
TEST_EXTRAS = ["apache-airflow-providers-http", "psycopg2-binary", "asyncpg"]


def venv_dir(flavour: str) -> Path:
    return ROOT / (".venv" if flavour == "newest" else f".venv-airflow-{flavour}")


def python_in(env: Path) -> Path:
    return env / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def ensure_env(flavour: str) -> Path:
    """Create or refresh the environment; skip the install when nothing it depends on changed."""
    env = venv_dir(flavour)
    requirements = [*AIRFLOW[flavour], *TEST_EXTRAS]
    stamp_text = "\n".join([sys.version, (ROOT / "pyproject.toml").read_text(), *requirements])
    stamp = hashlib.sha256(stamp_text.encode()).hexdigest()
    stamp_file = env / ".kore-stamp"
    py = python_in(env)
    if py.exists() and stamp_file.exists() and stamp_file.read_text() == stamp:
        return py
    print(f"==> preparing {env.name} ({' '.join(AIRFLOW[flavour])}); the first time takes a minute or two", flush=True)
    if not py.exists():
        venv.EnvBuilder(with_pip=True, clear=True).create(env)
    pip = [str(py), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "install", "-e", f"{ROOT}[dev]", *requirements], check=True)
    stamp_file.write_text(stamp)
    return py


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["demo", "test", "bench", "env"])
    parser.add_argument("--airflow", choices=sorted(AIRFLOW), default="newest", help="which Airflow to use")
    args, rest = parser.parse_known_args(argv)
    py = ensure_env(args.airflow)
    environ = dict(os.environ, PYTHONUNBUFFERED="1")
    if args.command == "env":
        print(py)
        return 0
    if args.command == "demo":
        cmd = [str(py), str(ROOT / "scripts" / "demo.py"), *rest]
    elif args.command == "bench":
        cmd = [str(py), str(ROOT / "benchmarks" / "run.py"), *rest]
    else:
        # Four workers (pytest-xdist), a file to a worker, overlap the suite's real-time waits (tests/conftest.py).
        cmd = [str(py), "-m", "pytest", *(rest or ["-q", "-n", "4", "--dist", "loadfile"])]
    return subprocess.run(cmd, cwd=ROOT, env=environ).returncode


if __name__ == "__main__":
    sys.exit(main())
