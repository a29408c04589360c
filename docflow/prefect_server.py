"""A real Prefect server, work pool and worker on 127.0.0.1, as child processes we own and stop."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

PROJECT_ROOT = Path(__file__).resolve().parent.parent
WORK_POOL = "docflow-local"
DEFAULT_PREFECT_PORT = 4200
HOST = "127.0.0.1"


class StackError(RuntimeError):
    """A child process failed to start or answer; the message says which and where its log is."""


@dataclass
class ChildProcess:
    """A child started in its own process group, with its output in a log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        """The process id (also the process group id)."""
        return self.popen.pid

    def alive(self) -> bool:
        """True while the process has not exited."""
        return self.popen.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the child's log, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout_s: float = 10.0) -> None:
        """Terminate the process group and every descendant, then kill what is left."""
        stop_tree(self.pid, timeout_s=timeout_s)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=1)


def stop_tree(pid: int, *, timeout_s: float = 10.0) -> None:
    """SIGTERM a process, its group and all descendants; SIGKILL any still alive after timeout_s."""
    procs: list[psutil.Process] = []
    with contextlib.suppress(psutil.NoSuchProcess):
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.send_signal(sig)
        _, procs = psutil.wait_procs(procs, timeout=timeout_s)
        if not procs:
            return


def spawn(
    name: str,
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    log_path: Path,
    cwd: Path = PROJECT_ROOT,
) -> ChildProcess:
    """Start argv in a new session (so the group can be stopped as one), output to log_path."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        popen = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return ChildProcess(name=name, popen=popen, log_path=log_path)


def prefect_cli(*args: str) -> list[str]:
    """argv for the `prefect` CLI of this interpreter's environment."""
    return [sys.executable, "-m", "prefect", *args]


def port_is_free(port: int, host: str = HOST) -> bool:
    """True when nothing listens on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex((host, port)) != 0


def free_port(preferred: int | None = None, host: str = HOST) -> int:
    """preferred if nothing listens there, else a free port chosen by the OS."""
    if preferred and port_is_free(preferred, host):
        return preferred
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def api_url_for(port: int, host: str = HOST) -> str:
    """The Prefect API address of a server on host:port."""
    return f"http://{host}:{port}/api"


def is_healthy(api_url: str, timeout_s: float = 2.0) -> bool:
    """True when a Prefect server answers its health check at api_url."""
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=timeout_s) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def wait_until(
    check: Callable[[], bool], *, what: str, timeout_s: float, child: ChildProcess | None = None
) -> None:
    """Poll check() until it is true; fail early with the child's log if the child died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        if child is not None and not child.alive():
            raise StackError(
                f"{child.name} exited with code {child.popen.returncode} before {what}; "
                f"its log ({child.log_path}):\n{child.log_tail()}"
            )
        time.sleep(0.25)
    log = f"; its log ({child.log_path}):\n{child.log_tail()}" if child else ""
    raise StackError(f"timed out after {timeout_s:.0f} s waiting for {what}{log}")


def prefect_env(home: Path, api_url: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for Prefect processes: this project's PREFECT_HOME and server, no telemetry."""
    env = dict(os.environ)
    env.update(
        {
            "PREFECT_HOME": str(home),
            "PREFECT_API_URL": api_url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_CLI_PROMPT": "false",
            # prefect.yaml's pull step reads {{ $PWD }} at deploy time: the project root.
            "PWD": str(PROJECT_ROOT),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra or {})
    return env


def spawn_server(home: Path, port: int, *, database_url: str | None = None) -> ChildProcess:
    """`prefect server start` on 127.0.0.1:port (no wait); its database is SQLite under home,
    or ``database_url`` (PostgreSQL, see docflow.postgres, when several workers share it)."""
    home.mkdir(parents=True, exist_ok=True)
    extra = {"PREFECT_SERVER_DATABASE_CONNECTION_URL": database_url} if database_url else {}
    return spawn(
        "prefect server",
        prefect_cli("server", "start", "--host", HOST, "--port", str(port)),
        env=prefect_env(home, api_url_for(port), extra),
        log_path=home / "logs" / "server.log",
    )


def wait_for_server(child: ChildProcess, port: int, *, timeout_s: float = 90.0) -> None:
    """Wait until the server started by spawn_server answers its health check."""
    api_url = api_url_for(port)
    wait_until(
        lambda: is_healthy(api_url),
        what=f"the Prefect server at {api_url}",
        timeout_s=timeout_s,
        child=child,
    )


@contextlib.contextmanager
def prefect_api(api_url: str) -> Iterator[None]:
    """Point this process's Prefect client (and blocks) at api_url for the duration."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        yield


def ensure_work_pool(api_url: str, name: str = WORK_POOL) -> bool:
    """Create the process work pool if missing; True when it was created."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with prefect_api(api_url), get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
            return False
        except ObjectNotFound:
            client.create_work_pool(
                WorkPoolCreate(
                    name=name,
                    type="process",
                    base_job_template=ProcessWorker.get_default_base_job_template(),
                    description="docflow flows run as local processes (make ui)",
                )
            )
            return True


def ensure_global_concurrency_limit(api_url: str, name: str, limit: int) -> bool:
    """Create the global concurrency limit if missing; True when it was created."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectNotFound

    with prefect_api(api_url), get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
            return False
        except ObjectNotFound:
            client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=name, limit=limit)
            )
            return True


def release_stale_slots(api_url: str, prefix: str = "sagemaker:") -> list[str]:
    """Set the active slots of docflow's concurrency limits back to 0; the names that held some.

    Only for a server that was just started: its leases were kept in memory and are gone, but
    the limits' counts of held slots were kept in its database, so a run resumed after a
    restart of the stack would wait for slots that nobody will ever give back.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

    reset = []
    with prefect_api(api_url), get_client(sync_client=True) as client:
        offset = 0
        while page := client.read_global_concurrency_limits(limit=100, offset=offset):
            offset += len(page)
            for found in page:
                if found.name.startswith(prefix) and found.active_slots:
                    client.update_global_concurrency_limit(
                        found.name, GlobalConcurrencyLimitUpdate(active_slots=0)
                    )
                    reset.append(f"{found.name} ({found.active_slots} slots)")
    return reset


def prefect_deploy(env: Mapping[str, str], *args: str, timeout_s: float = 300.0) -> str:
    """Run `prefect deploy ARGS --no-prompt` from the project root; its output, raises on failure."""
    command = prefect_cli("deploy", *args, "--no-prompt")
    proc = subprocess.run(
        command,
        cwd=PROJECT_ROOT,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        shown = " ".join(["prefect deploy", *args])
        raise StackError(f"`{shown}` failed (exit {proc.returncode}):\n{output}")
    return output


def deploy_all(env: Mapping[str, str], *, timeout_s: float = 300.0) -> str:
    """Run `prefect deploy --all` (every deployment in prefect.yaml); its output."""
    return prefect_deploy(env, "--all", timeout_s=timeout_s)


def worker_name(number: int, restart: int = 0) -> str:
    """The name of the local stack's ``number``-th worker (1-based); a restarted one gets a name
    of its own (``docflow-worker-2-r1``), so the server marks the dead one offline and the
    sharded run re-runs the shards it held, even those killed before their first heartbeat."""
    return f"docflow-worker-{number}" + (f"-r{restart}" if restart else "")


def spawn_worker(
    home: Path,
    env: Mapping[str, str],
    *,
    pool: str = WORK_POOL,
    number: int = 1,
    limit: int | None = None,
    restart: int = 0,
) -> ChildProcess:
    """`prefect worker start --pool <pool> --type process --name docflow-worker-<n>` (no wait).

    ``limit``: the most flow runs the worker runs at once (``--limit``); the rest wait for
    another worker. Default: no limit.
    """
    worker_env = {
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "PREFECT_WORKER_PREFETCH_SECONDS": "5",
        # The server marks a worker offline after 3 missed heartbeats: ~30 s, not 90 s, so a
        # sharded run re-runs the shards of a lost worker soon (tasks/sharding/children.py).
        "PREFECT_WORKER_HEARTBEAT_SECONDS": "10",
        **env,
    }
    log = "worker.log" if number == 1 else f"worker-{number}.log"
    if restart:
        log = log.replace(".log", f"-r{restart}.log")
    return spawn(
        f"prefect worker {number}",
        prefect_cli(
            "worker",
            "start",
            "--pool",
            pool,
            "--type",
            "process",
            "--name",
            worker_name(number, restart),
            *(["--limit", str(limit)] if limit is not None else []),
        ),
        env=worker_env,
        log_path=home / "logs" / log,
    )


def wait_for_worker(child: ChildProcess, *, timeout_s: float = 60.0) -> None:
    """Wait until the worker says it started polling its pool."""
    wait_until(
        lambda: "started!" in child.log_tail(200),
        what="the worker to start polling",
        timeout_s=timeout_s,
        child=child,
    )
