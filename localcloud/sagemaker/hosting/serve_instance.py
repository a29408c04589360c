"""One instance of docflow's serving image: the model fetched as SageMaker does, then the image's ``serve``.

Started by the emulator as ``python -m localcloud.sagemaker.hosting.serve_instance`` (same
``LOCALCLOUD_INSTANCE`` spec and ready-line protocol as ``instance``). It downloads the artifact
into the model directory (the container's ``/opt/ml/model``), then *becomes* the image's entrypoint:
``exec docker/serving/serve serve`` with ``DOCFLOW_MODEL_DIR`` and ``SAGEMAKER_BIND_TO_PORT`` set
and no docflow code on ``PYTHONPATH``, so the instance's pid is the real server's. Before that it
forks a watchdog, which stands in for SageMaker's health check and host: it polls ``GET /ping``
and writes ``{"status": "ready", "port": N}`` once it answers 200, or ``failed`` with the server's
last ``docflow serve:`` line when the server exits first; later it kills the server when the
emulator goes away, and leaves when the server does. The server's output reaches the emulator's
stderr through the watchdog.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import IO, Any

from localcloud.sagemaker.hosting.instance import SPEC_ENV, fetch_model

SERVE = Path(__file__).resolve().parents[3] / "docker" / "serving" / "serve"
LOG_PREFIX = "docflow serve: "


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pings(port: int) -> bool:
    """True when the server answers ``GET /ping`` with 200."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/ping")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _forward(read_fd: int, stderr: IO[str], last: list[str]) -> None:
    """Copy the server's output to the real stderr, remembering its last ``docflow serve:`` line."""
    with os.fdopen(read_fd, "r", errors="replace") as lines:
        for line in lines:
            stderr.write(line)
            stderr.flush()
            if line.startswith(LOG_PREFIX):
                last[:] = [line.removeprefix(LOG_PREFIX).strip()]


def _watchdog(
    protocol: IO[str], read_fd: int, stderr: IO[str], port: int, spec: dict[str, Any]
) -> None:
    """The forked child: report readiness, then tie the server's life to the emulator's."""
    server = os.getppid()
    last: list[str] = []
    forwarder = threading.Thread(target=_forward, args=(read_fd, stderr, last), daemon=True)
    forwarder.start()
    while os.getppid() == server and not _pings(port):
        time.sleep(0.1)
    if os.getppid() != server:
        forwarder.join(timeout=2)
        reason = last[0] if last else "the server exited before answering /ping"
        protocol.write(json.dumps({"status": "failed", "reason": reason}) + "\n")
        return
    protocol.write(json.dumps({"status": "ready", "port": port, "pid": server}) + "\n")
    protocol.close()
    while os.getppid() == server:
        if not _alive(int(spec["parent_pid"])):
            with contextlib.suppress(ProcessLookupError):
                os.kill(server, signal.SIGKILL)
            shutil.rmtree(spec["model_dir"], ignore_errors=True)
            return
        time.sleep(0.5)
    forwarder.join(timeout=2)


def main() -> int:
    """Fetch the model, fork the watchdog, exec ``serve``."""
    protocol = os.fdopen(os.dup(1), "w", buffering=1)  # not inherited across exec
    stderr = os.fdopen(os.dup(2), "w", buffering=1)
    spec = json.loads(os.environ[SPEC_ENV])
    model_dir = Path(spec["model_dir"])
    try:
        model_dir.mkdir(parents=True, exist_ok=True)
        fetch_model(spec, model_dir)
    except BaseException as exc:
        traceback.print_exc(file=sys.stderr)
        protocol.write(
            json.dumps({"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}) + "\n"
        )
        return 1
    port = _free_port()
    read_fd, write_fd = os.pipe()
    if os.fork() == 0:  # the watchdog
        os.close(write_fd)
        try:
            _watchdog(protocol, read_fd, stderr, port, spec)
        finally:
            os._exit(0)
    os.close(read_fd)
    protocol.close()
    os.dup2(write_fd, 1)
    os.dup2(write_fd, 2)
    os.close(write_fd)
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # the container has its own packages and code/, not docflow's
    env.pop(SPEC_ENV, None)
    env.update(
        DOCFLOW_MODEL_DIR=str(model_dir),
        SAGEMAKER_BIND_TO_PORT=str(port),
        DOCFLOW_BIND_HOST="127.0.0.1",
    )
    os.execve(sys.executable, [sys.executable, str(SERVE), "serve"], env)


if __name__ == "__main__":
    sys.exit(main())
