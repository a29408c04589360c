"""``serve_forever`` (``docflow local up``): prints the environment, stops cleanly, leaves no orphans."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
import requests

from tasks.aws.clients import aws_client, clear_client_cache
from tasks.settings import load_profile
from tests.localcloud.helpers import deploy_echo

SERVE = "import sys; from localcloud.server import serve_forever; sys.exit(serve_forever('127.0.0.1', 0))"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _start_server() -> tuple[subprocess.Popen[str], str, list[str]]:
    proc = subprocess.Popen([sys.executable, "-c", SERVE], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    lines: list[str] = []
    while not lines or not lines[-1].startswith("export DOCFLOW_ENDPOINT_URL="):
        line = proc.stdout.readline()
        assert line, f"server exited early: {lines}"
        lines.append(line.strip())
    url = lines[-1].split("=", 1)[1]
    return proc, url, lines


def _deploy_one(url: str) -> list[int]:
    profile = load_profile("local").model_copy(
        update={
            "endpoint_url": url,
            "bucket": f"srv-{uuid.uuid4().hex[:8]}",
            "endpoint_name": "srv",
        }
    )
    aws_client("s3", profile).create_bucket(Bucket=profile.bucket)
    deploy_echo(profile, asynchronous=False)
    pids: list[int] = requests.get(f"{url}/_localcloud/instances", timeout=5).json()["srv"]
    assert pids and all(_alive(p) for p in pids)
    return pids


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_server_stops_with_its_instances(
    sig: signal.Signals, monkeypatch: pytest.MonkeyPatch
) -> None:
    proc, url, lines = _start_server()
    try:
        exports = dict(
            line.removeprefix("export ").split("=", 1)
            for line in lines
            if line.startswith("export ")
        )
        assert set(exports) >= {
            "AWS_ENDPOINT_URL",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_DEFAULT_REGION",
        }
        for key, value in exports.items():
            monkeypatch.setenv(key, value)
        clear_client_cache()
        pids = _deploy_one(url)
        proc.send_signal(sig)
        code = proc.wait(timeout=30)
        if sig == signal.SIGTERM:
            assert code == 0
            assert proc.stdout is not None and "localcloud stopped" in proc.stdout.read()
        deadline = time.monotonic() + 10  # after SIGKILL the instances notice their parent is gone
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(p) for p in pids)
    finally:
        clear_client_cache()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_busy_port_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    from localcloud.server import serve_forever

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert serve_forever("127.0.0.1", busy.getsockname()[1]) == 1
    assert "pick a free port with --port" in capsys.readouterr().err
