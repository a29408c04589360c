"""`docflow ui` keeps localcloud's S3 across a restart of the stack (``--state-dir``).

The stack is started as a user starts it, an object is written to the profile's bucket, the
stack is stopped with Ctrl-C and started again on the same PREFECT_HOME: the object is there.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import boto3
import pytest

from docflow.prefect_server import ChildProcess, free_port, spawn, wait_until
from docflow.ui_state import UiState
from localcloud.accounts import ACCESS_KEY, SECRET_KEY
from tasks.settings import load_profile

pytestmark = pytest.mark.timeout(600)

READY_LINE = "Ctrl-C stops everything."
LOCALCLOUD_ENV = ("AWS_ENDPOINT_URL", "DOCFLOW_ENDPOINT_URL", "DOCFLOW_CREDENTIALS_BLOCK")


def _start(home: Path, env: dict[str, str]) -> tuple[ChildProcess, UiState]:
    ui = spawn(
        "docflow ui", [sys.executable, "-m", "docflow.cli", "ui"], env=env, log_path=home / "ui.out"
    )
    try:
        wait_until(
            lambda: ui.log_tail(400).count(READY_LINE) >= 1 and UiState.load(home) is not None,
            what="`docflow ui` to print its banner",
            timeout_s=240,
            child=ui,
        )
    except BaseException:
        ui.stop()
        raise
    state = UiState.load(home)
    assert state is not None and state.ready
    return ui, state


def _stop(ui: ChildProcess) -> None:
    ui.popen.send_signal(signal.SIGINT)
    assert ui.popen.wait(timeout=90) == 0, ui.log_tail()


def test_s3_survives_a_restart_of_the_stack(tmp_path: Path) -> None:
    home = tmp_path / "prefect-home"
    env = {k: v for k, v in os.environ.items() if k not in LOCALCLOUD_ENV}
    env.update(
        {
            "DOCFLOW_UI_HOME": str(home),
            "DOCFLOW_UI_PORT": str(free_port()),
            "DOCFLOW_UI_LOCALCLOUD_PORT": str(free_port()),
            "PYTHONUNBUFFERED": "1",
        }
    )
    bucket = load_profile("local").bucket
    ui, state = _start(home, env)
    try:
        s3 = boto3.client(
            "s3",
            endpoint_url=state.localcloud_url,
            region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
        )
        s3.put_object(
            Bucket=bucket,
            Key="runs/kept1/manifest.json",
            Body=b'{"run_key": "kept1"}',
            ContentType="application/json",
            Metadata={"attempt": "1"},
        )
        _stop(ui)
        assert "S3 objects saved to" in (home / "logs" / "localcloud.log").read_text()
        first = ui.log_tail(400)
        (home / "ui.out").write_text("")  # the second start's banner, not the first's

        ui, state = _start(home, env)
        s3 = boto3.client(
            "s3",
            endpoint_url=state.localcloud_url,
            region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
        )
        got = s3.get_object(Bucket=bucket, Key="runs/kept1/manifest.json")
        assert got["Body"].read() == b'{"run_key": "kept1"}', first
        assert got["ContentType"] == "application/json"
        assert got["Metadata"] == {"attempt": "1"}
    finally:
        if ui.alive():
            _stop(ui)
