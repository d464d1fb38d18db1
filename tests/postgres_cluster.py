"""A throwaway PostgreSQL cluster for end-to-end tests: ``initdb`` + ``pg_ctl``, stopped and removed after.

Needs PostgreSQL's server binaries (Debian's ``postgresql-15`` puts them in
``/usr/lib/postgresql/15/bin``; ``KORE_E2E_PG_BIN`` names another folder) and, for Airflow 3,
the ``psycopg2`` and ``asyncpg`` drivers in this Python. PostgreSQL refuses to run as root: as
root, the cluster runs as the ``postgres`` system user (``KORE_E2E_PG_USER`` names another) in a
folder under /tmp owned by it. :func:`unavailable` says why a cluster cannot be started here
(a test skips with that reason), or returns None.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from processes import free_port

#: Where Debian (and the postgresql.org apt packages) install the server binaries, newest first.
BIN_CANDIDATES = ("/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/17/bin")
DRIVERS = ("psycopg2", "asyncpg")
DATABASE = "airflow"
ROLE = "airflow"


def bin_dir() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``, or None."""
    chosen = os.environ.get("KORE_E2E_PG_BIN")
    candidates = [chosen] if chosen else list(BIN_CANDIDATES)
    which = shutil.which("initdb")
    if not chosen and which:
        candidates.append(str(Path(which).parent))
    for folder in candidates:
        if (Path(folder) / "initdb").is_file() and (Path(folder) / "pg_ctl").is_file():
            return Path(folder)
    return None


def run_as() -> pwd.struct_passwd | None:
    """The user the server runs as: this one, or (as root) ``postgres`` / ``KORE_E2E_PG_USER``."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid())
    with contextlib.suppress(KeyError):
        return pwd.getpwnam(os.environ.get("KORE_E2E_PG_USER", "postgres"))
    return None


def unavailable() -> str | None:
    """Why a throwaway cluster cannot be started here, or None when it can."""
    if bin_dir() is None:
        return (
            f"PostgreSQL server binaries (initdb, pg_ctl) not found in {', '.join(BIN_CANDIDATES)} "
            "or on PATH (set KORE_E2E_PG_BIN; Debian: apt-get install postgresql-15)"
        )
    missing = [name for name in DRIVERS if importlib.util.find_spec(name) is None]
    if missing:
        return f"Airflow on PostgreSQL needs {', '.join(missing)}: pip install psycopg2-binary asyncpg"
    if run_as() is None:
        user = os.environ.get("KORE_E2E_PG_USER", "postgres")
        return f"running as root and there is no {user!r} user to run PostgreSQL as (useradd --system {user})"
    return None


@dataclass
class Cluster:
    root: Path
    port: int

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the ``airflow`` database (psycopg2; Airflow derives the asyncpg one)."""
        return f"postgresql+psycopg2://{ROLE}@127.0.0.1:{self.port}/{DATABASE}"

    def connect(self) -> object:
        import psycopg2

        return psycopg2.connect(host="127.0.0.1", port=self.port, user=ROLE, dbname=DATABASE, connect_timeout=10)


def _run(args: list[str], user: pwd.struct_passwd, cwd: Path, timeout: float) -> None:
    as_other = user.pw_uid != os.geteuid()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8", "HOME": str(cwd)}
    done = subprocess.run(
        args,
        cwd=cwd,
        env=env,
        user=user.pw_uid if as_other else None,
        group=user.pw_gid if as_other else None,
        extra_groups=[] if as_other else None,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")


@contextlib.contextmanager
def cluster(max_connections: int = 300) -> Iterator[Cluster]:
    """Start a fresh cluster on a free port with an ``airflow`` database; stop and remove it after.

    Throwaway settings: trust authentication on 127.0.0.1 only, no fsync. The unix socket is in
    the cluster's own folder under /tmp.
    """
    reason = unavailable()
    if reason:
        raise RuntimeError(reason)
    binaries, user = bin_dir(), run_as()
    assert binaries is not None
    assert user is not None
    root = Path(tempfile.mkdtemp(prefix="kore-e2e-pg-", dir="/tmp"))
    os.chown(root, user.pw_uid, user.pw_gid)
    data = root / "data"
    port = free_port()
    started = False
    try:
        _run(
            [str(binaries / "initdb"), "-D", str(data), "-U", ROLE, "--auth=trust", "-E", "UTF8", "--no-sync"],
            user,
            root,
            120,
        )
        options = (
            f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off "
            f"-c full_page_writes=off -c max_connections={max_connections}"
        )
        pg_ctl = [str(binaries / "pg_ctl"), "-D", str(data), "-w", "-t", "60"]
        _run([*pg_ctl, "-l", str(root / "server.log"), "-o", options, "start"], user, root, 90)
        started = True
        _run([str(binaries / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", ROLE, DATABASE], user, root, 60)
        yield Cluster(root=root, port=port)
    finally:
        if started:
            deadline = time.monotonic() + 60
            with contextlib.suppress(Exception):
                _run([*pg_ctl, "-m", "fast", "stop"], user, root, 90)
            while (data / "postmaster.pid").exists() and time.monotonic() < deadline:
                time.sleep(0.5)
        shutil.rmtree(root, ignore_errors=True)
