"""The serving image's ``serve`` entrypoint as a subprocess, and plain HTTP calls to it."""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from tasks.model.archive import code_files

ROOT = Path(__file__).resolve().parents[2]
SERVE = ROOT / "docker" / "serving" / "serve"
STREAM = {"X-Amzn-SageMaker-Forwarded-Api": "InvokeEndpointWithResponseStream"}


def model_with_code(model_dir: Path, code_dir: Path, out: Path) -> Path:
    """``/opt/ml/model`` as SageMaker extracts the artifact: the weights plus ``code/``."""
    out.mkdir(parents=True)
    for path in model_dir.iterdir():
        (out / path.name).symlink_to(path)
    shutil.copytree(code_dir, out / "code", symlinks=True)
    return out


def handler_code(out: Path) -> Path:
    """``code/`` as package_model ships it (without vendored packages)."""
    out.mkdir(parents=True)
    for name in code_files(ROOT / "inference"):
        shutil.copy(ROOT / "inference" / name, out / name)
    return out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Served:
    """``serve`` started as the image starts it: the executable itself, by its shebang."""

    def __init__(self, python: str, model_dir: Path, cwd: Path, **env: str) -> None:
        self.port = _free_port()
        self.stderr_path = cwd / f"serve-{self.port}.log"
        self._stderr = self.stderr_path.open("wb")
        self.proc = subprocess.Popen(
            [str(SERVE), "serve"],
            stdin=subprocess.DEVNULL,
            stdout=self._stderr,
            stderr=self._stderr,
            cwd=cwd,  # nothing of docflow's on the path: only the model's code/
            env={
                "PATH": f"{Path(python).parent}:/usr/bin:/bin",  # `python` is this env's
                "HF_HUB_OFFLINE": "1",
                "OMP_NUM_THREADS": "1",
                "DOCFLOW_NUM_THREADS": "1",
                "DOCFLOW_MODEL_DIR": str(model_dir),
                "SAGEMAKER_BIND_TO_PORT": str(self.port),
                "DOCFLOW_BIND_HOST": "127.0.0.1",
                **env,
            },
        )

    def stderr(self) -> str:
        """What the server printed so far."""
        return self.stderr_path.read_text(errors="replace")

    def ping(self) -> int:
        """``GET /ping``'s status (0: nothing listens yet)."""
        try:
            return self.request("GET", "/ping", b"", {})[0]
        except OSError:
            return 0

    def wait_ready(self, timeout_s: float = 180) -> list[int]:
        """Poll /ping until 200; the statuses seen on the way."""
        seen: list[int] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.proc.poll() is None:
            status = self.ping()
            seen.append(status)
            if status == 200:
                return seen
            time.sleep(0.05)
        raise AssertionError(f"serve never became healthy: {seen[-5:]}\n{self.stderr()[-3000:]}")

    def request(
        self, method: str, path: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        """One request; (status, lower-cased headers, body)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            return (
                response.status,
                {k.lower(): v for k, v in response.getheaders()},
                response.read(),
            )
        finally:
            conn.close()

    def invoke(self, body: bytes, **headers: str) -> tuple[int, dict[str, str], bytes]:
        """``POST /invocations``."""
        return self.request(
            "POST", "/invocations", body, {k.replace("_", "-"): v for k, v in headers.items()}
        )

    def stream(self, body: bytes, **headers: str) -> tuple[int, dict[str, str], list[bytes]]:
        """``POST /invocations`` forwarded as a response stream: the body's chunks as they came."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        sent = {**STREAM, **{k.replace("_", "-"): v for k, v in headers.items()}}
        try:
            conn.request("POST", "/invocations", body=body, headers=sent)
            response = conn.getresponse()
            chunks = []
            while chunk := response.read1(65536):
                chunks.append(chunk)
            return response.status, {k.lower(): v for k, v in response.getheaders()}, chunks
        finally:
            conn.close()

    def stop(self) -> tuple[int, str]:
        """SIGTERM, as SageMaker stops a container; (exit status, everything it printed)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            code = self.proc.wait()
        self._stderr.close()
        return code, self.stderr()


def lines(chunks: list[bytes] | bytes) -> list[dict[str, Any]]:
    """JSON lines of a body (or of a stream's chunks joined)."""
    import json

    data = b"".join(chunks) if isinstance(chunks, list) else chunks
    return [json.loads(line) for line in data.splitlines() if line.strip()]
