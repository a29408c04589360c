"""One endpoint instance, run as its own OS process: fetch the model from S3, load it, serve /invocations.

Started by the emulator as ``python -m localcloud.sagemaker.hosting.instance`` with ``LOCALCLOUD_INSTANCE``
(JSON) in its environment. It reports ``{"status": "ready", "port": N}`` or
``{"status": "failed", "reason": ...}`` as one JSON line on its original stdout.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import shutil
import signal
import socket
import sys
import tarfile
import tempfile
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

SPEC_ENV = "LOCALCLOUD_INSTANCE"
FAULT_HEADER = "X-Localcloud-Fault"


def _die_with_parent(parent_pid: int, model_dir: Path) -> None:
    """Exit when the emulator process goes away (polling: PR_SET_PDEATHSIG fires on the spawning *thread*'s exit)."""

    def watch() -> None:
        while True:
            if os.getppid() != parent_pid:
                shutil.rmtree(model_dir, ignore_errors=True)
                os._exit(0)
            time.sleep(0.5)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _split_s3(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://"):
        raise ValueError(f"{uri!r} is not an s3:// URI")
    bucket, _, key = uri[5:].partition("/")
    return bucket, key


def fetch_model(spec: dict[str, Any], model_dir: Path) -> None:
    """Download ``ModelDataUrl`` (tar.gz, extracted) or an uncompressed ``S3Prefix`` into model_dir."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=spec["endpoint_url"], region_name=spec["region"])
    if spec.get("model_data_url"):
        bucket, key = _split_s3(spec["model_data_url"])
        data = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
            tar.extractall(model_dir, filter="data")
        return
    if spec.get("s3_prefix"):
        bucket, prefix = _split_s3(spec["s3_prefix"])
        found = 0
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                rel = obj["Key"][len(prefix) :].lstrip("/")
                if not rel or rel.endswith("/"):
                    continue
                target = model_dir / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read())
                found += 1
        if not found:
            raise FileNotFoundError(f"no model files under {spec['s3_prefix']}")
        return
    raise ValueError("the model has neither ModelDataUrl nor ModelDataSource.S3DataSource")


def _error_status(exc: BaseException) -> int:
    """A handler exception's HTTP status: its own 4xx ``status`` (e.g. a session error), else 500."""
    status = getattr(exc, "status", None)
    return status if isinstance(status, int) and 400 <= status < 500 else 500


def _error_body(exc: BaseException, status: int) -> bytes:
    kind = "BadRequestException" if status < 500 else "InternalServerException"
    return json.dumps(
        {"code": status, "type": kind, "message": f"{type(exc).__name__}: {exc}"}
    ).encode()


def _make_handler_class(handler: Any) -> type[BaseHTTPRequestHandler]:
    from localcloud.sagemaker.hosting.context import Context

    class Invocations(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            """No access log."""

        def _reply(
            self,
            status: int,
            body: bytes,
            content_type: str,
            headers: dict[str, str] | None = None,
        ) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            for key, value in (headers or {}).items():
                if key.lower() != "content-type":
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            """``/ping``: healthy once loaded."""
            self._reply(200 if self.path == "/ping" else 404, b"", "text/plain")

        def do_POST(self) -> None:
            """``/invocations`` (and ``/invocations-response-stream``): run the handler."""
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            fault = self.headers.get(FAULT_HEADER, "")
            if fault == "die":
                os._exit(137)
            if self.path not in ("/invocations", "/invocations-response-stream"):
                self._reply(404, b"no such path", "text/plain")
                return
            context = Context(
                {k: v for k, v in self.headers.items() if k != FAULT_HEADER},
                str(getattr(handler, "model_dir", "")),
            )
            if self.path == "/invocations-response-stream":
                self._stream(body, context, fault)
                return
            try:
                if fault == "model-error":
                    raise RuntimeError("localcloud fault switchboard: injected model error")
                out, content_type = handler.invoke(
                    body, self.headers.get("Content-Type"), self.headers.get("Accept"), context
                )
            except Exception as exc:
                traceback.print_exc(file=sys.stderr)
                status = _error_status(exc)
                self._reply(
                    status,
                    _error_body(exc, status),
                    "application/json",
                    context.get_response_headers(0),
                )
                return
            self._reply(
                context.response_status(), out, content_type, context.get_response_headers(0)
            )

        def _stream(self, body: bytes, context: Any, fault: str) -> None:
            """Chunked JSON lines as the handler yields them; a failure breaks the stream."""
            try:
                if fault == "model-error":
                    raise RuntimeError("localcloud fault switchboard: injected model error")
                chunks = iter(handler.stream(body, self.headers.get("Content-Type"), context))
                first = next(chunks, b"")  # errors before the first token are an error answer
            except Exception as exc:
                traceback.print_exc(file=sys.stderr)
                status = _error_status(exc)
                self._reply(status, _error_body(exc, status), "application/json")
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/jsonlines")
            for key, value in context.get_response_headers(0).items():
                self.send_header(key, value)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                sent = 0
                for chunk in itertools.chain([first], chunks):
                    if chunk:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        self.wfile.flush()
                        sent += 1
                    if fault == "stream-break" and sent == 2:
                        raise RuntimeError(
                            "localcloud fault switchboard: injected failure mid-stream"
                        )
                self.wfile.write(b"0\r\n\r\n")
            except Exception:
                # The model failed mid-stream: end the connection without the last chunk, as a
                # crashing server would; SageMaker reports it to the client as ModelStreamError.
                traceback.print_exc(file=sys.stderr)
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)

    return Invocations


def main() -> int:
    """Load the model and serve until killed."""
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # the model's own prints go to stderr, never into the protocol stream
    spec = json.loads(os.environ[SPEC_ENV])
    model_dir = Path(spec.get("model_dir") or tempfile.mkdtemp(prefix="localcloud-model-"))
    model_dir.mkdir(parents=True, exist_ok=True)
    _die_with_parent(int(spec["parent_pid"]), model_dir)
    try:
        from localcloud.sagemaker.hosting.handler import Handler, load_module

        fetch_model(spec, model_dir)
        handler = Handler(load_module(model_dir), model_dir)
    except BaseException as exc:
        traceback.print_exc(file=sys.stderr)
        protocol.write(
            json.dumps({"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}) + "\n"
        )
        shutil.rmtree(model_dir, ignore_errors=True)
        return 1
    server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler_class(handler))
    server.daemon_threads = True
    signal.signal(
        signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start()
    )
    protocol.write(
        json.dumps({"status": "ready", "port": server.server_address[1], "pid": os.getpid()}) + "\n"
    )
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        shutil.rmtree(model_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
