"""The emulator's side of one instance process: spawn it, wait for it to load, send it requests, kill it."""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localcloud.sagemaker.hosting.instance import FAULT_HEADER, SPEC_ENV
from localcloud.sagemaker.images import image_profile

PROJECT_ROOT = Path(__file__).resolve().parents[2]
_ids = itertools.count(1)


class InstanceStartError(RuntimeError):
    """The instance could not download or load the model; the message is the reason."""


class InstanceDied(RuntimeError):
    """The instance process went away during a request."""


class InvocationTimeout(RuntimeError):
    """The model did not answer within InvocationTimeoutSeconds."""


class StreamBroken(RuntimeError):
    """The model's response stream ended before its last chunk (the model failed mid-stream)."""


@dataclass
class Answer:
    """The instance's answer: status, body, content type and the headers the handler set."""

    status: int
    body: bytes
    content_type: str
    headers: dict[str, str]


@dataclass
class ContainerSpec:
    """What an instance needs: where the model is and the container's Environment."""

    model_data_url: str | None
    s3_prefix: str | None
    environment: dict[str, str]
    image: str = "localcloud"


STREAM_HEADERS = {"X-Amzn-SageMaker-Forwarded-Api": "InvokeEndpointWithResponseStream"}
INJECTED_MODEL_ERROR = json.dumps(
    {
        "code": 500,
        "type": "InternalServerException",
        "message": "RuntimeError: localcloud fault switchboard: injected model error",
    }
).encode()


class InstanceProcess:
    """One instance, a child in its own session: ``python -m localcloud.sagemaker.hosting.instance``
    (the inference toolkit's contract, run by localcloud), or for docflow's serving image
    ``...hosting.serve_instance``, which execs the image's real ``serve`` (the SageMaker container
    contract: ``/invocations``, streamed when ``X-Amzn-SageMaker-Forwarded-Api`` says so). The
    fault switchboard reaches the real server from outside: a killed process, an error answer, a
    stream cut after two chunks.
    """

    def __init__(self, variant: str, container: ContainerSpec, aws_env: dict[str, str]) -> None:
        self.id = f"i-{next(_ids):05d}"
        self.variant = variant
        self.port: int | None = None
        self.dead = threading.Event()
        self.serves = image_profile(container.image).server == "docflow"
        # The emulator owns the model directory, so it is removed even when the instance is killed.
        self.model_dir = tempfile.mkdtemp(prefix="localcloud-model-")
        env = dict(os.environ)
        # An instance's stderr is the user's terminal: no per-instance weight-loading bars.
        env.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        env.update(aws_env)
        env.pop(
            "DOCFLOW_ENGINE", None
        )  # the image decides (ImageProfile), then the model's Environment
        env.update(image_profile(container.image).environment())
        env.update(container.environment)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p
        )
        env[SPEC_ENV] = json.dumps(
            {
                "endpoint_url": aws_env["AWS_ENDPOINT_URL"],
                "region": aws_env["AWS_DEFAULT_REGION"],
                "model_data_url": container.model_data_url,
                "s3_prefix": container.s3_prefix,
                "parent_pid": os.getpid(),
                "model_dir": self.model_dir,
            }
        )
        module = "serve_instance" if self.serves else "instance"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", f"localcloud.sagemaker.hosting.{module}"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            env=env,
            cwd=str(PROJECT_ROOT),
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        """The OS process id."""
        return self.proc.pid

    def wait_ready(self, timeout_s: float) -> None:
        """Block until the model is loaded; raise InstanceStartError with the reason otherwise."""
        result: dict[str, Any] = {}

        def read() -> None:
            assert self.proc.stdout is not None
            line = self.proc.stdout.readline()
            try:
                result.update(json.loads(line))
            except ValueError:
                result["reason"] = (
                    f"instance exited before loading the model (exit code {self.proc.poll()})"
                )

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(timeout_s)
        if reader.is_alive():
            self.kill()
            raise InstanceStartError(f"the model did not load within {timeout_s:.0f} s")
        if result.get("status") != "ready":
            self.kill()
            raise InstanceStartError(str(result.get("reason", "unknown")))
        self.port = int(result["port"])

    def alive(self) -> bool:
        """True while the process runs and has not been marked dead."""
        return not self.dead.is_set() and self.proc.poll() is None

    def invoke(
        self,
        body: bytes,
        content_type: str | None,
        accept: str | None,
        custom_attributes: str | None,
        timeout_s: float,
        fault: str = "",
        extra_headers: dict[str, str] | None = None,
        on_chunk: Callable[[bytes], None] | None = None,
        on_head: Callable[[Answer], None] | None = None,
    ) -> Answer:
        """POST /invocations (or, with ``on_chunk``, the response stream, chunk by chunk).

        A stream that ends without its last chunk raises StreamBroken.
        """
        headers = {
            "Content-Type": content_type or "application/octet-stream",
            "Accept": accept or "*/*",
            **(extra_headers or {}),
        }
        if custom_attributes is not None:
            headers["X-Amzn-SageMaker-Custom-Attributes"] = custom_attributes
        assert self.port is not None, "invoke() before the instance was ready"
        path = "/invocations" if on_chunk is None else "/invocations-response-stream"
        if self.serves:  # the real server: one path; faults from outside
            path = "/invocations"
            headers.update(STREAM_HEADERS if on_chunk is not None else {})
            if fault == "model-error":
                return Answer(500, INJECTED_MODEL_ERROR, "application/json", {})
            if fault == "die":
                self._kill_group()
        elif fault:
            headers[FAULT_HEADER] = fault
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout_s)
        try:
            conn.request("POST", path, body=body, headers=headers)
            response = conn.getresponse()
            answer = Answer(
                response.status,
                b"",
                response.getheader("Content-Type") or "application/octet-stream",
                {k: v for k, v in response.getheaders() if k.lower().startswith("x-amzn-")},
            )
            if on_chunk is None or response.status != 200:
                answer.body = response.read()
                return answer
            if on_head is not None:
                on_head(answer)
            self._pump(response, on_chunk, 2 if self.serves and fault == "stream-break" else None)
            return answer
        except TimeoutError as exc:
            raise InvocationTimeout(f"no answer within {timeout_s:.0f} s") from exc
        except (ConnectionError, http.client.HTTPException, OSError) as exc:
            self.dead.set()
            raise InstanceDied(
                f"instance {self.id} terminated during the request ({type(exc).__name__})"
            ) from exc
        finally:
            conn.close()

    def _pump(
        self,
        response: http.client.HTTPResponse,
        on_chunk: Callable[[bytes], None],
        break_after: int | None = None,
    ) -> None:
        """Hand the stream's chunks on as they arrive; StreamBroken when it ends early.

        ``break_after``: the fault switchboard cuts the stream after that many chunks.
        """
        sent = 0
        try:
            while chunk := response.read1(65536):
                on_chunk(chunk)
                sent += 1
                if break_after is not None and sent >= break_after:
                    raise ConnectionError("localcloud fault switchboard: stream cut mid-way")
        except (http.client.IncompleteRead, ConnectionError, OSError) as exc:
            raise StreamBroken(
                f"the model's response stream from instance {self.id} broke ({type(exc).__name__})"
            ) from exc

    def _kill_group(self) -> None:
        """SIGKILL the instance's process group (the server and its watchdog)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def kill(self) -> None:
        """Terminate the process (SIGTERM, then SIGKILL to its group) and reap it."""
        self.dead.set()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self._kill_group()
                self.proc.wait(timeout=5)
        if self.serves:
            self._kill_group()  # the server's watchdog
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        shutil.rmtree(self.model_dir, ignore_errors=True)
