"""docflow's serving image's model server: the SageMaker container contract on uvicorn + starlette.

``docker run <image> serve`` (docker/serving/serve) starts it. It loads ``code/inference.py`` from
the model directory (``DOCFLOW_MODEL_DIR``, default ``/opt/ml/model``, where SageMaker extracts
the artifact) with ``code/`` first on ``sys.path``, exactly as the Hugging Face inference toolkit
does, calls ``model_fn`` once (in the background: ``GET /ping`` answers 503 while loading, 200 once
loaded) and listens on ``SAGEMAKER_BIND_TO_PORT`` (default 8080) of ``DOCFLOW_BIND_HOST`` (default
``0.0.0.0``). A model that fails to load stops the server with exit status 1 and the reason on
stderr, a line starting ``docflow serve: ``.

``POST /invocations`` runs ``input_fn`` / ``predict_fn`` / ``output_fn`` with a request context
of the interface the toolkit's model server (MMS) hands them, so the session headers
(``X-Amzn-SageMaker-Session-Id`` in; the session and closed-session headers out) work as on the
Hugging Face image. With ``X-Amzn-SageMaker-Forwarded-Api: InvokeEndpointWithResponseStream``
(SageMaker adds it for response streams) the answer is the handler's ``invoke_stream`` as a
chunked body of JSON lines, a chunk as each is produced. An error before the first chunk is an
error answer (a handler exception's own 4xx ``status``, else 500); a failure after it ends the
connection without the last chunk, which SageMaker reports as ``ModelStreamError``. A reader
that goes away cancels the generation.

Why uvicorn + starlette: a maintained ASGI server that streams chunked bodies and notices a
client that left; both are pure Python (h11) and light, and the Hugging Face image ships
neither (docker/serving/requirements.txt pins them). The handler blocks (the engine runs in its
own thread), so every call runs in the worker thread pool (``DOCFLOW_SERVER_THREADS``, 128).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import signal
import sys
import threading
import traceback
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio.to_thread
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

FORWARDED_API = "X-Amzn-SageMaker-Forwarded-Api"
STREAM_API = "InvokeEndpointWithResponseStream"
STREAM_TYPE = "application/jsonlines"
LOG_PREFIX = "docflow serve: "

logger = logging.getLogger("docflow.serve")


class Context:
    """One request's headers in and its response headers and status out (MMS's interface)."""

    def __init__(self, headers: dict[str, str], model_dir: str) -> None:
        self.system_properties = {"model_dir": model_dir, "batch_size": 1, "gpu_id": 0}
        self.request_headers = headers
        self.response_headers: dict[str, str] = {}
        self.status = 200

    def get_request_header(self, idx: int, key: str) -> str | None:
        """A request header (any case)."""
        wanted = key.lower()
        return next((v for k, v in self.request_headers.items() if k.lower() == wanted), None)

    def get_all_request_header(self, idx: int) -> dict[str, str]:
        """Every request header."""
        return self.request_headers

    def set_response_header(self, idx: int, key: str, value: str) -> None:
        """Set a response header."""
        self.response_headers[key] = value

    def set_response_content_type(self, idx: int, value: str) -> None:
        """Set the response content type."""
        self.set_response_header(idx, "Content-Type", value)

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        """Set the response status."""
        self.status = code


class Model:
    """The handler module and its loaded model, filled in by the loading thread."""

    def __init__(self, model_dir: Path) -> None:
        self.model_dir = model_dir
        self.handler: ModuleType | None = None
        self.model: Any = None
        self.error: str | None = None

    def load(self) -> None:
        """Import ``code/inference.py`` (``code/`` first on sys.path) and call its ``model_fn``."""
        code_dir = self.model_dir / "code"
        script = code_dir / "inference.py"
        if not script.is_file():
            raise FileNotFoundError(
                f"{script} does not exist: the model artifact needs its handler at "
                "code/inference.py (package it with docflow's package_model)"
            )
        sys.path.insert(0, str(code_dir))
        spec = importlib.util.spec_from_file_location("inference", script)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot import {script}")
        module = importlib.util.module_from_spec(spec)
        sys.modules["inference"] = module
        spec.loader.exec_module(module)
        self.model = module.model_fn(str(self.model_dir))
        self.handler = module


def _error(exc: BaseException) -> Response:
    """A handler exception as an answer: its own 4xx ``status`` (a session error), else 500."""
    status = getattr(exc, "status", None)
    status = status if isinstance(status, int) and 400 <= status < 500 else 500
    kind = "BadRequestException" if status < 500 else "InternalServerException"
    message = f"{type(exc).__name__}: {exc}"
    body = json.dumps({"code": status, "type": kind, "message": message})
    return Response(body, status_code=status, media_type="application/json")


def _whole(model: Model, body: bytes, headers: dict[str, str], context: Context) -> Response:
    """input_fn -> predict_fn -> output_fn; no Accept (or ``*/*``): JSON Lines (a session: JSON)."""
    handler = model.handler
    assert handler is not None
    content_type = headers.get("content-type")
    accept = headers.get("accept")
    accept = accept if accept and accept != "*/*" else None
    data = handler.input_fn(body, content_type, context)
    prediction = handler.predict_fn(data, model.model, context)
    out = handler.output_fn(prediction, accept, context)
    default = "application/json" if isinstance(prediction, dict) else STREAM_TYPE
    media = context.response_headers.pop("Content-Type", None) or accept or default
    return Response(out, context.status, context.response_headers, media)


async def _chunks(first: bytes, rest: Iterator[bytes]) -> AsyncIterator[bytes]:
    """The stream's chunks, each pulled in a worker thread; closing it cancels the generation."""
    try:
        yield first
        while (chunk := await anyio.to_thread.run_sync(next, rest, None)) is not None:
            if chunk:
                yield chunk
    finally:
        close = getattr(rest, "close", None)
        if close is not None:
            close()  # the handler's finally: cancels the document when the reader went away


def build_app(model: Model) -> Starlette:
    """The ASGI app: ``GET /ping`` and ``POST /invocations`` (whole or streamed)."""

    async def ping(request: Request) -> Response:
        return Response(status_code=200 if model.handler is not None else 503)

    async def invocations(request: Request) -> Response:
        if model.handler is None:
            return Response("the model is still loading", 503, media_type="text/plain")
        body = await request.body()
        headers = dict(request.headers)  # lower-cased names
        context = Context(headers, str(model.model_dir))
        if (headers.get(FORWARDED_API.lower()) or "").lower() != STREAM_API.lower():
            try:
                return await anyio.to_thread.run_sync(_whole, model, body, headers, context)
            except Exception as exc:
                logger.error("%sinvocation failed\n%s", LOG_PREFIX, traceback.format_exc())
                return _error(exc)
        try:
            stream = model.handler.invoke_stream
            rest = iter(
                await anyio.to_thread.run_sync(
                    stream, model.model, body, headers.get("content-type"), context
                )
            )
            first = await anyio.to_thread.run_sync(next, rest, b"")
        except Exception as exc:
            logger.error("%sstream failed\n%s", LOG_PREFIX, traceback.format_exc())
            return _error(exc)
        return StreamingResponse(
            _chunks(first, rest), headers=context.response_headers, media_type=STREAM_TYPE
        )

    return Starlette(
        routes=[
            Route("/ping", ping, methods=["GET"]),
            Route("/invocations", invocations, methods=["POST"]),
        ]
    )


def _settings() -> tuple[Path, str, int, int]:
    """Model directory, host, port and worker threads from the environment."""
    model_dir = Path(os.environ.get("DOCFLOW_MODEL_DIR") or "/opt/ml/model")
    host = os.environ.get("DOCFLOW_BIND_HOST") or "0.0.0.0"
    port = int(os.environ.get("SAGEMAKER_BIND_TO_PORT") or 8080)
    threads = int(os.environ.get("DOCFLOW_SERVER_THREADS") or 128)
    return model_dir, host, port, threads


def main(argv: list[str]) -> int:
    """``serve``: load the model in the background and answer on the port until stopped."""
    if argv not in ([], ["serve"]):
        print(f"{LOG_PREFIX}usage: serve (got {' '.join(argv)!r})", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    model_dir, host, port, threads = _settings()
    model = Model(model_dir)
    config = uvicorn.Config(
        build_app(model), host=host, port=port, log_level="warning", access_log=False
    )
    server = uvicorn.Server(config)

    def load() -> None:
        try:
            model.load()
            logger.info(
                "%smodel loaded from %s, listening on %s:%d", LOG_PREFIX, model_dir, host, port
            )
        except BaseException as exc:
            traceback.print_exc(file=sys.stderr)
            model.error = f"{type(exc).__name__}: {exc}"
            logger.error("%sthe model did not load: %s", LOG_PREFIX, model.error)
            server.should_exit = True

    # uvicorn shuts down gracefully on SIGTERM, restores the handler it found and raises the
    # signal again: with this one the process then exits normally (status 0, exit hooks run, so
    # the engine's thread is stopped) instead of dying by the signal.
    signal.signal(signal.SIGTERM, lambda *_: None)

    async def serve() -> None:
        anyio.to_thread.current_default_thread_limiter().total_tokens = threads
        threading.Thread(target=load, name="model-load", daemon=True).start()
        await server.serve()

    anyio.run(serve)
    return 1 if model.error is not None else 0
