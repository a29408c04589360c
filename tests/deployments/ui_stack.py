"""`docflow ui` as a user runs it, for tests: started in the foreground, stopped with Ctrl-C, started
again on the same home; the profile, S3 client and deployments of the stack it printed."""

from __future__ import annotations

import io
import json
import os
import signal
import sys
import urllib.request
from pathlib import Path
from typing import Any

import boto3
import psutil
import pyarrow.parquet as pq

from docflow.prefect_server import ChildProcess, free_port, prefect_api, spawn, wait_until
from docflow.ui_state import UiState
from localcloud.accounts import ACCESS_KEY, SECRET_KEY
from tasks.settings import Profile, load_profile

READY_LINE = "Ctrl-C stops everything."
LOCALCLOUD_ENV = ("AWS_ENDPOINT_URL", "DOCFLOW_ENDPOINT_URL", "DOCFLOW_CREDENTIALS_BLOCK")
STOP_TIMEOUT_S = 240.0  # the stack's own worst case: a worker's 10 s, localcloud's save, the server


class UiRun:
    """One `docflow ui` home: start it, stop it with Ctrl-C, start it again."""

    def __init__(self, home: Path, workers: int = 1) -> None:
        self.home = home
        self.env = {k: v for k, v in os.environ.items() if k not in LOCALCLOUD_ENV}
        self.env.update(
            {
                "DOCFLOW_UI_HOME": str(home),
                "DOCFLOW_UI_PORT": str(free_port()),
                "DOCFLOW_UI_LOCALCLOUD_PORT": str(free_port()),
                "DOCFLOW_UI_WORKERS": str(workers),
                "PYTHONUNBUFFERED": "1",
            }
        )
        self.child: ChildProcess | None = None
        self.state: UiState | None = None

    @property
    def log(self) -> Path:
        """What `docflow ui` printed, every start appended."""
        return self.home / "ui.out"

    def start(self, timeout_s: float = 300.0) -> UiState:
        """`docflow ui` in the foreground, until it prints its banner."""
        printed = self.log.read_text() if self.log.exists() else ""
        child = spawn(
            "docflow ui",
            [sys.executable, "-m", "docflow.cli", "ui"],
            env=self.env,
            log_path=self.log,
        )
        self.child = child

        def ready() -> bool:
            return self.log.read_text().count(READY_LINE) > printed.count(READY_LINE)

        try:
            wait_until(
                ready, what="`docflow ui` to print its banner", timeout_s=timeout_s, child=child
            )
        except BaseException:
            child.stop()
            raise
        self.state = UiState.load(self.home)
        assert self.state is not None and self.state.ready
        return self.state

    def stop(self) -> str:
        """Ctrl-C, as a user stops it; what `docflow ui` printed while stopping."""
        assert self.child is not None
        before = len(self.log.read_text())
        self.child.popen.send_signal(signal.SIGINT)
        try:
            code = self.child.popen.wait(timeout=STOP_TIMEOUT_S)
        except BaseException:
            self.child.stop()
            raise AssertionError(f"`docflow ui` did not stop: {self.log_text(before)}") from None
        assert code == 0, self.log_text(before)
        self.child = None
        return self.log.read_text()[before:]

    def log_text(self, start: int = 0) -> str:
        """`docflow ui`'s output from ``start``, and the end of each child's log."""
        logs = "".join(
            f"\n--- {path.name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-15:])
            for path in sorted((self.home / "logs").glob("*.log"))
        )
        return self.log.read_text()[start:] + logs

    def close(self) -> None:
        """Stop whatever is still running."""
        if self.child is not None and self.child.alive():
            self.child.stop(timeout_s=30)

    def running(self) -> UiState:
        """The state of the running stack."""
        assert self.state is not None and self.child is not None and self.child.alive()
        return self.state

    def profile(self) -> Profile:
        """The local profile, pointed at this stack's localcloud."""
        return load_profile("local").model_copy(
            update={
                "endpoint_url": self.running().localcloud_url,
                "credentials_block": "docflow-local",
            }
        )

    def s3(self) -> Any:
        """An unmodified boto3 S3 client on this stack's localcloud."""
        return boto3.client(
            "s3",
            endpoint_url=self.running().localcloud_url,
            region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
        )

    def localcloud_stats(self) -> dict[str, Any]:
        """Requests each endpoint received, from localcloud's stats."""
        url = f"{self.running().localcloud_url}/_localcloud/stats"
        with urllib.request.urlopen(url, timeout=10) as resp:
            stats: dict[str, Any] = json.loads(resp.read())
        return stats

    def deploy_echo(self, sleep_s: float = 0.0) -> None:
        """The echo model deployed by `deploy-endpoint/local`; each invocation takes ``sleep_s``."""
        from prefect.deployments import run_deployment

        from localcloud.testing.artifacts import upload_echo_model

        with prefect_api(self.running().api_url):
            url = upload_echo_model(self.s3(), load_profile("local").bucket)
            done: Any = run_deployment(
                "deploy-endpoint/local",
                parameters={
                    "model_data_url": url,
                    "environment": {"ECHO_SLEEP_S": str(sleep_s)},
                },
                timeout=300,
            )
        assert done.state is not None and done.state.is_completed(), done.state

    def run_deployment(self, name: str, parameters: dict[str, Any], timeout: float) -> Any:
        """Start (timeout 0) or run a deployment on this stack."""
        from prefect.deployments import run_deployment

        with prefect_api(self.running().api_url):
            return run_deployment(name, parameters=parameters, timeout=timeout)

    def merged_doc_ids(self, run_key: str) -> tuple[dict[str, Any], list[str]]:
        """The run's summary and the doc_ids of its results table, read from S3."""
        s3, bucket = self.s3(), load_profile("local").bucket
        summary = json.loads(
            s3.get_object(Bucket=bucket, Key=f"runs/{run_key}/summary.json")["Body"].read()
        )
        bucket, _, key = summary["results_uri"].removeprefix("s3://").partition("/")
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        return summary, pq.read_table(io.BytesIO(body)).column("doc_id").to_pylist()


def kill_tree(pid: int) -> None:
    """SIGKILL a process and its descendants (a worker with its flow runs)."""
    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    for proc in procs:
        proc.kill()
    psutil.wait_procs(procs, timeout=10)


def descendants(pid: int) -> set[int]:
    """pid and every process below it."""
    try:
        root = psutil.Process(pid)
        return {pid, *(p.pid for p in root.children(recursive=True))}
    except psutil.NoSuchProcess:
        return set()


def still_running(pids: set[int]) -> list[str]:
    """Command lines of those pids still running (zombies waiting to be reaped do not count)."""
    running = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            if proc.status() != psutil.STATUS_ZOMBIE:
                running.append(f"{pid}: {' '.join(proc.cmdline())}")
        except psutil.NoSuchProcess:
            continue
    return running
