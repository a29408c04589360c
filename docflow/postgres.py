"""A private PostgreSQL server for the local Prefect server, when several workers share it.

Prefect's default SQLite database serialises every write; with several workers, their flow
runs' heartbeats and the automations that watch them, writes fail with "database is locked" and
the server's trigger service drops events (seen with 3 workers and 8 shards). Prefect recommends
PostgreSQL for anything beyond one process; this module runs one from the Debian package
(``apt-get install postgresql``, installed here when missing and we are root) as a child
process on 127.0.0.1, with its data in a folder of its own, trust authentication and one
database, ``prefect``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from docflow.prefect_server import HOST, ChildProcess, StackError, spawn, wait_until

DATABASE = "prefect"
SUPERUSER = "postgres"
SYSTEM_USER = "postgres"  # the Debian package's account: the server refuses to run as root


@dataclass
class Postgres:
    """A running PostgreSQL server and the URL Prefect connects with."""

    child: ChildProcess
    port: int
    data_dir: Path

    @property
    def url(self) -> str:
        """``PREFECT_SERVER_DATABASE_CONNECTION_URL`` for this server."""
        return f"postgresql+asyncpg://{SUPERUSER}@{HOST}:{self.port}/{DATABASE}"

    def stop(self) -> None:
        """Stop the server (its data stays, so a restart finds its runs)."""
        self.child.stop(timeout_s=20)


def bin_dir() -> Path | None:
    """The newest installed PostgreSQL's bin folder (Debian: /usr/lib/postgresql/<v>/bin)."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def ensure_installed(say: Callable[[str], None] = print) -> Path:
    """PostgreSQL's bin folder, installing the Debian package first when it is missing."""
    found = bin_dir()
    if found is not None:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise StackError(
            "several local workers need PostgreSQL for the Prefect server and none is "
            "installed; install it (Debian/Ubuntu: apt-get install postgresql) or start one "
            "worker (DOCFLOW_UI_WORKERS=1)"
        )
    say("installing PostgreSQL for the Prefect server: apt-get install postgresql")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (
        ["apt-get", "update", "-q"],
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", "postgresql"],
    ):
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise StackError(f"`{' '.join(command)}` failed:\n{done.stdout[-2000:]}{done.stderr}")
    found = bin_dir()
    if found is None:
        raise StackError("apt-get installed postgresql but its initdb is not where expected")
    return found


def _as_server_user(command: list[str]) -> list[str]:
    """Run as the postgres account when we are root (PostgreSQL refuses root)."""
    if os.geteuid() == 0:
        return ["runuser", "-u", SYSTEM_USER, "--", *command]
    return command


def data_dir_for(home: Path) -> Path:
    """The cluster's folder: beside, not inside, ``home`` (which the postgres account may not
    be able to enter), named after it so each stack keeps its own."""
    digest = hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"docflow-postgres-{digest}"


def _prepare(data: Path, bins: Path) -> None:
    """initdb once: trust authentication on the loopback address only."""
    if (data / "PG_VERSION").is_file():
        return
    data.mkdir(mode=0o700, parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(data, SYSTEM_USER, SYSTEM_USER)
    done = subprocess.run(
        _as_server_user(
            [str(bins / "initdb"), "-D", str(data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8"]
        ),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise StackError(f"initdb failed for {data}:\n{done.stdout[-2000:]}{done.stderr}")


def _ready(bins: Path, port: int) -> bool:
    return (
        subprocess.run(
            [str(bins / "pg_isready"), "-h", HOST, "-p", str(port), "-U", SUPERUSER, "-q"],
            check=False,
        ).returncode
        == 0
    )


def _create_database(bins: Path, port: int) -> None:
    """CREATE DATABASE prefect, unless it exists."""
    psql = [str(bins / "psql"), "-h", HOST, "-p", str(port), "-U", SUPERUSER, "-tA"]
    found = subprocess.run(
        [*psql, "-c", f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'"],
        capture_output=True,
        text=True,
        check=False,
    )
    if found.stdout.strip() == "1":
        return
    made = subprocess.run(
        [*psql, "-c", f"CREATE DATABASE {DATABASE}"], capture_output=True, text=True, check=False
    )
    if made.returncode != 0:
        raise StackError(f"cannot create the {DATABASE} database: {made.stderr}")


def start_postgres(home: Path, port: int, say: Callable[[str], None] = print) -> Postgres:
    """Start (initialising on first use) a PostgreSQL server on 127.0.0.1:port for ``home``."""
    bins = ensure_installed(say)
    data = data_dir_for(home)
    _prepare(data, bins)
    (home / "logs").mkdir(parents=True, exist_ok=True)
    child = spawn(
        "postgres",
        _as_server_user(
            [
                str(bins / "postgres"),
                "-D",
                str(data),
                "-p",
                str(port),
                "-h",
                HOST,
                "-k",
                str(data),
                "-c",
                "max_connections=200",
            ]
        ),
        env=dict(os.environ),
        log_path=home / "logs" / "postgres.log",
    )
    wait_until(
        lambda: _ready(bins, port), what=f"PostgreSQL on {HOST}:{port}", timeout_s=60, child=child
    )
    _create_database(bins, port)
    return Postgres(child=child, port=port, data_dir=data)
