"""`make ui`: Prefect server, localcloud, work pool, worker, blocks and deployments, in the foreground."""

from __future__ import annotations

import os
import re
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from docflow.prefect_server import (
    HOST,
    WORK_POOL,
    ChildProcess,
    StackError,
    api_url_for,
    deploy_all,
    ensure_global_concurrency_limit,
    ensure_work_pool,
    free_port,
    is_healthy,
    prefect_api,
    prefect_env,
    release_stale_slots,
    spawn,
    spawn_server,
    spawn_worker,
    stop_tree,
    wait_for_server,
    wait_for_worker,
    wait_until,
    worker_name,
)
from docflow.restarts import Restarts, worker_number
from docflow.ui_state import STATE_FILE, UiConfig, UiState, process_identity, same_process
from localcloud.persist import STOP_TIMEOUT_S

if TYPE_CHECKING:
    from docflow.alerts import AlertReceiver
    from tasks.aws.blocks import BlockNames
    from tasks.settings import Profile

PROCESS_DOCUMENTS = "process-documents/nightly"
RUN_ORDER = ("package-model/local", "deploy-endpoint/local", PROCESS_DOCUMENTS)

Printer = Callable[[str], None]


def _localcloud_answers(url: str) -> bool:
    """True when localcloud's control API answers."""
    try:
        with urllib.request.urlopen(f"{url}/_localcloud/faults", timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def run_command_line(api_url: str) -> str:
    """The ready-to-paste lines that start a process-documents run against this stack."""
    prefect = os.path.relpath(Path(sys.executable).parent / "prefect", Path.cwd())
    return (
        f"export PREFECT_API_URL={api_url}\n"
        f"{prefect} deployment run '{PROCESS_DOCUMENTS}' "
        "--param corpus=datasets/sample --param template=summarize --watch"
    )


class UiStack:
    """The processes of `make ui`, started in order and stopped in reverse."""

    def __init__(self, config: UiConfig, say: Printer = print) -> None:
        self.config = config
        self.say = say
        self.children: list[ChildProcess] = []
        self.receiver: AlertReceiver | None = None
        self.api_url = ""
        self.localcloud_url = ""
        self._started = time.monotonic()
        self.state = UiState(ui=process_identity(os.getpid()), api_url="", localcloud_url="")
        self._worker_env: dict[str, str] = {}
        self.restarts = Restarts()

    def up(self) -> UiState:
        """Start everything; on any failure stop what was started and re-raise."""
        try:
            return self._up()
        except BaseException:
            self.down()
            raise

    def _step(self, message: str) -> None:
        """Print a progress line with the seconds since up() began."""
        self.say(f"[{time.monotonic() - self._started:5.1f} s] {message}")

    def _up(self) -> UiState:
        from tasks.settings import load_profile

        cfg = self.config
        cfg.home.mkdir(parents=True, exist_ok=True)
        self._started = time.monotonic()
        profile = load_profile(cfg.profile)

        port = free_port(cfg.prefect_port)
        if port != cfg.prefect_port:
            self._step(f"port {cfg.prefect_port} is busy; the Prefect server takes {port}")
        self.api_url = api_url_for(port)
        cloud_port = free_port(cfg.localcloud_port)
        if cloud_port != cfg.localcloud_port:
            self._step(f"port {cfg.localcloud_port} is busy; localcloud takes {cloud_port}")
        self.localcloud_url = f"http://{HOST}:{cloud_port}"
        from localcloud.cloud import localcloud_environment

        cloud_env = localcloud_environment(self.localcloud_url, profile.region)
        self.state = UiState(
            ui=process_identity(os.getpid()),
            api_url=self.api_url,
            localcloud_url=self.localcloud_url,
        )
        self.state.save(cfg.home)

        # Server and localcloud start side by side; each takes seconds to import and bind.
        database_url = None
        if cfg.workers > 1:  # SQLite locks under several workers' runs: PostgreSQL instead
            from docflow.postgres import start_postgres

            pg_port = free_port()
            self._step(f"starting PostgreSQL for {cfg.workers} workers on {HOST}:{pg_port}")
            postgres = start_postgres(cfg.home, pg_port, say=self._step)
            self._adopt(postgres.child)
            database_url = postgres.url
        self._step(f"starting the Prefect server on {HOST}:{port} (PREFECT_HOME={cfg.home})")
        server = spawn_server(cfg.home, port, database_url=database_url)
        self._adopt(server)
        self._step(f"starting localcloud on {self.localcloud_url}")
        cloud = spawn(
            "localcloud",
            [sys.executable, "-m", "docflow.cli", "local", "up"]
            + ["--host", HOST, "--port", str(cloud_port)]
            + ["--state-dir", str(cfg.home / "localcloud")],
            env={**os.environ, **cloud_env, "PYTHONUNBUFFERED": "1"},
            log_path=cfg.home / "logs" / "localcloud.log",
        )
        self._adopt(cloud)
        wait_until(
            lambda: _localcloud_answers(self.localcloud_url),
            what=f"localcloud at {self.localcloud_url}",
            timeout_s=90,
            child=cloud,
        )
        self._step("localcloud is up")
        wait_for_server(server, port)
        self._step("the Prefect server is up")

        profile = profile.model_copy(update={"endpoint_url": self.localcloud_url})
        names = self._configure(profile, cloud_env)
        self._alerts()
        env = prefect_env(
            cfg.home,
            self.api_url,
            {
                **cloud_env,
                "DOCFLOW_PROFILE": cfg.profile,
                "DOCFLOW_CREDENTIALS_BLOCK": names.credentials,
                "PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK": names.results_slug,
                "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
            },
        )
        workers = []
        self._worker_env = env
        for number in range(1, cfg.workers + 1):
            self._step(
                f"starting a worker: prefect worker start --pool {WORK_POOL} "
                f"--name {worker_name(number)}"
            )
            workers.append(spawn_worker(cfg.home, env, number=number))
            self._adopt(workers[-1])
        self._deploy(env)
        for worker in workers:
            wait_for_worker(worker)
        self._step(f"{cfg.workers} worker(s) polling")

        self.state.ready = True
        self.state.save(cfg.home)
        return self.state

    def _deploy(self, env: dict[str, str]) -> None:
        """`prefect deploy --all`, unless nothing a deployment is made of changed since the last."""
        from docflow.deployed import remember, still_deployed

        kept = still_deployed(self.config.home, self.api_url)
        if kept:
            self._step(
                f"deployments unchanged since the last start (prefect.yaml, profiles, flows): "
                f"{', '.join(kept)}"
            )
            return
        self._step("deploying: prefect deploy --all")
        deployed = re.findall(r"Deployment '([^']+)' successfully", deploy_all(env))
        remember(self.config.home, deployed)
        self._step(f"deployed {', '.join(deployed)}")

    def _adopt(self, child: ChildProcess) -> None:
        """Own child: stop it with the stack, and note it so a later `make ui` can clean up after a crash."""
        self.children.append(child)
        self.state.children[child.name] = process_identity(child.pid)
        self.state.save(self.config.home)

    def _configure(self, profile: Profile, cloud_env: dict[str, str]) -> BlockNames:
        """The bucket in localcloud, the work pool, the concurrency limit and the blocks."""
        from tasks.aws.blocks import RESULTS_FOLDER, describe_credentials, save_blocks
        from tasks.aws.clients import aws_client, clear_client_cache
        from tasks.aws.s3 import ensure_bucket
        from tasks.endpoint.spec import concurrency_limit_name

        os.environ.update(cloud_env)
        clear_client_cache()
        if ensure_bucket(aws_client("s3", profile), profile.bucket):
            self._step(f"created bucket s3://{profile.bucket} in localcloud")
        if ensure_work_pool(self.api_url):
            self._step(f"created work pool {WORK_POOL!r} (type process)")
        for stale in release_stale_slots(self.api_url):
            self._step(f"released the slots a stopped stack's runs held: {stale}")
        limit_name = concurrency_limit_name(profile.endpoint_name)
        limit = profile.max_outstanding_invocations
        if ensure_global_concurrency_limit(self.api_url, limit_name, limit):
            self._step(f"created global concurrency limit {limit_name!r} ({limit} slots)")
        with prefect_api(self.api_url):
            names = save_blocks(profile, cloud_env)
            self._step(f"saved block {describe_credentials(names.credentials)}")
        self._step(
            f"saved block S3Bucket {names.results!r} (result storage): "
            f"s3://{profile.bucket}/{RESULTS_FOLDER}"
        )
        return names

    def _alerts(self) -> None:
        """The listener for run alerts, and the automation + notification block that post to it."""
        from docflow.alerts import AlertReceiver, ensure_run_alerts

        self.receiver = AlertReceiver(self.config.home / "logs" / "alerts.log", say=self.say)
        self.receiver.start()
        for change in ensure_run_alerts(self.api_url, self.receiver.url):
            self._step(f"saved {change}")
        self._step(f"failed or crashed docflow runs are alerted here ({self.receiver.url})")

    def wait(self) -> None:
        """Block until Ctrl-C (or SIGTERM), or until the server, PostgreSQL or localcloud exits;
        a worker that exits is started again (``docflow.restarts``)."""
        while True:
            for index, child in enumerate(self.children):
                if not child.alive():
                    self.children[index] = self._restart(child)
            time.sleep(1)

    def _restart(self, child: ChildProcess) -> ChildProcess:
        """The worker ``child`` started again; StackError for any other child, or a crash loop."""
        number = worker_number(child.name)
        code = child.popen.returncode
        if number is None or not self.restarts.allow(child.name):
            again = (
                "" if number is None else f" (restarted {self.restarts.count(child.name)} times)"
            )
            raise StackError(
                f"{child.name} exited with code {code}{again}; "
                f"its log ({child.log_path}):\n{child.log_tail()}"
            )
        self._step(
            f"[restart] {child.name} exited with code {code}; starting it again (its flow runs "
            f"are re-run by their sharded run, or resumed with the same run key; log: "
            f"{child.log_path})"
        )
        restart = self.restarts.total(child.name)  # a new worker name for every restart
        worker = spawn_worker(self.config.home, self._worker_env, number=number, restart=restart)
        self.state.children[worker.name] = process_identity(worker.pid)
        self.state.save(self.config.home)
        return worker

    def down(self) -> None:
        """Stop every child (worker, localcloud, server) and forget the state file."""
        for child in reversed(self.children):
            # localcloud writes S3 to its state folder as it stops (localcloud.persist).
            started = time.monotonic()
            child.stop(timeout_s=STOP_TIMEOUT_S if child.name == "localcloud" else 10.0)
            self.say(f"stopped {child.name} in {time.monotonic() - started:.1f} s")
        self.children.clear()
        if self.receiver is not None:
            self.receiver.stop()
            self.receiver = None
        state = UiState.load(self.config.home)
        if state is not None and state.pid == os.getpid():
            (self.config.home / STATE_FILE).unlink(missing_ok=True)


def _already_running(config: UiConfig, say: Printer) -> bool:
    """Say so and return True when another `make ui` for this home is up; clean up after a dead one."""
    state = UiState.load(config.home)
    if state is None:
        return False
    if same_process(state.ui):
        if state.ready and is_healthy(state.api_url):
            say(f"docflow ui is already running (pid {state.pid}): nothing to do.")
            say(_banner(state))
        else:
            say(
                f"docflow ui (pid {state.pid}) is still starting, or stuck: wait for its banner, "
                f"or stop it with `kill {state.pid}`; logs in {config.home / 'logs'}"
            )
        return True
    for name, ident in state.children.items():
        if same_process(ident):
            say(f"stopping {name} (pid {int(ident[0])}) left by a docflow ui that died")
            stop_tree(int(ident[0]))
    (config.home / STATE_FILE).unlink(missing_ok=True)
    return False


def _banner(state: UiState) -> str:
    """The addresses and the commands a user needs next."""
    order = " -> ".join(f"'{name}'" for name in RUN_ORDER)
    return (
        f"\nPrefect UI:  {state.ui_url}\n"
        f"Prefect API: {state.api_url}\n"
        f"localcloud:  {state.localcloud_url}\n"
        f"First run {order} (or 'end-to-end/local' for all three). Then, from another shell:\n\n"
        f"{run_command_line(state.api_url)}\n"
    )


def _sigterm_to_interrupt(signum: int, frame: FrameType | None) -> None:
    """Treat SIGTERM like Ctrl-C so the stack is stopped the same way."""
    raise KeyboardInterrupt


def run_ui() -> int:
    """Bring the local stack up, print where it is, stay in the foreground until Ctrl-C."""
    config = UiConfig.from_env()

    def say(line: str) -> None:
        print(line, flush=True)

    if _already_running(config, say):
        return 0
    # A shell that starts us in the background leaves SIGINT ignored; Ctrl-C must still stop us.
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    previous = signal.signal(signal.SIGTERM, _sigterm_to_interrupt)
    stack = UiStack(config, say)
    try:
        state = stack.up()
        say(_banner(state))
        say("Ctrl-C stops everything.")
        stack.wait()
    except KeyboardInterrupt:
        say("\nstopping the worker, localcloud and the Prefect server ...")
    except StackError as exc:
        say(f"docflow ui failed: {exc}")
        return 1
    finally:
        stack.down()
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
    say("stopped.")
    return 0
