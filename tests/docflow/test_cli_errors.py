"""Every `docflow` sub-command run as a newcomer would, in a fresh shell: one line, non-zero exit.

Each command is a subprocess with an environment holding only PATH, HOME and PYTHONPATH (no AWS
credentials, no exports from `docflow local up`), started from a folder outside the project.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from localcloud import LocalCloud

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = str(ROOT / "datasets" / "sample")

# Every sub-command that reaches AWS (`local up`, `demo` and `ui` start localcloud themselves).
COMMANDS = [
    ["runs", "list"],
    ["runs", "show", "nokey"],
    ["runs", "fetch", "nokey"],
    ["runs", "retry", "nokey"],
    ["estimate", SAMPLE],
    ["ask", "what is it?", "--document", SAMPLE + "/README.md"],
]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def docflow(tmp_path: Path, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`docflow ARGV…` in a fresh environment: PATH, HOME, PYTHONPATH and ``env`` only."""
    fresh = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'inference'}",
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "docflow.cli", *argv],
        cwd=tmp_path,
        env=fresh,
        capture_output=True,
        text=True,
        timeout=120,
    )


def assert_one_line(done: subprocess.CompletedProcess[str], *naming: str) -> str:
    """Exit non-zero; stderr is one line without a traceback, naming each of ``naming``."""
    lines = done.stderr.strip().splitlines()
    assert done.returncode != 0, done
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    for word in naming:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda a: " ".join(a[:2]))
def test_localcloud_down_names_docflow_local_up(tmp_path: Path, argv: list[str]) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    done = docflow(tmp_path, *argv, DOCFLOW_ENDPOINT_URL=url)
    assert_one_line(done, "localcloud is not running", url, "docflow local up")


def test_the_demo_names_docflow_local_up_when_its_localcloud_is_down(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    done = docflow(tmp_path, "demo", DOCFLOW_ENDPOINT_URL=url)
    assert_one_line(done, "localcloud is not running", "docflow local up")


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda a: " ".join(a[:2]))
def test_no_aws_credentials_names_how_to_get_them(tmp_path: Path, argv: list[str]) -> None:
    done = docflow(tmp_path, *argv, "--profile", "aws")
    assert_one_line(done, "no AWS credentials", "aws configure")


def test_an_unknown_profile_names_the_known_ones(tmp_path: Path) -> None:
    done = docflow(tmp_path, "runs", "list", "--profile", "nope")
    assert_one_line(done, "profile 'nope' not found", "local")


def test_a_fresh_shell_reaches_localcloud_with_the_profile_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No exports: the local profile carries the key; unknown run keys and endpoints say so."""
    with LocalCloud(port=0) as cloud:
        env = {"DOCFLOW_ENDPOINT_URL": cloud.url}
        assert_one_line(docflow(tmp_path, "runs", "list", **env), "does not exist", "make ui")
        from tasks.aws.clients import aws_client, clear_client_cache
        from tasks.settings import load_profile

        for name, value in cloud.environment().items():  # the test's client; the CLI has none
            monkeypatch.setenv(name, value)
        clear_client_cache()
        try:
            profile = load_profile("local")
            aws_client("s3", profile).create_bucket(Bucket=profile.bucket)
        finally:
            clear_client_cache()
        listed = docflow(tmp_path, "runs", "list", **env)
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout.startswith("RUN KEY")
        for argv in (["runs", "show", "nokey"], ["runs", "fetch", "nokey"]):
            assert_one_line(docflow(tmp_path, *argv, **env), "no run 'nokey'", "docflow runs list")
        line = assert_one_line(docflow(tmp_path, "estimate", SAMPLE, "--endpoint", "nope", **env))
        assert "endpoint 'nope' not found" in line and "deploy-endpoint" in line


def test_flows_run_from_the_project_send_no_telemetry(tmp_path: Path) -> None:
    """pyproject.toml's [tool.prefect.server] turns the embedded server's telemetry off."""
    code = "from prefect.settings import get_current_settings as s; print(s().server.analytics_enabled)"
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.stdout.strip() == "False", done.stderr
