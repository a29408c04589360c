"""HTTP in one place: parse SageMaker requests, call the backends, shape AWS's answers and errors."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import unquote

from werkzeug.wrappers import Request, Response

from localcloud.sagemaker.eventstream import CONTENT_TYPE as EVENT_STREAM
from localcloud.sagemaker.eventstream import payload_part, stream_error
from localcloud.sagemaker.exceptions import (
    InternalFailure,
    ModelError,
    SageMakerError,
    ValidationException,
)
from localcloud.sagemaker.hosting.invocations import RuntimeBackend
from localcloud.sagemaker.hosting.queue import Reply
from localcloud.sagemaker.hosting.sticky import CLOSED_HEADER, NEW_SESSION, SESSION_HEADER
from localcloud.sagemaker.models import SageMakerBackend
from localcloud.sagemaker.urls import (
    ASYNC_HEADERS,
    CONTROL_OPERATIONS,
    INSTANCE_HEADER,
    INSTANCE_PID_HEADER,
    REALTIME_HEADERS,
    RUNTIME_PATH,
    STREAM_HEADERS,
    TARGET_PREFIX,
)

log = logging.getLogger(__name__)
JSON11 = "application/x-amz-json-1.1"


def _error(exc: SageMakerError, content_type: str) -> Response:
    body: dict[str, Any] = {"__type": exc.code, "message": exc.message}
    if isinstance(exc, ModelError):
        body.update(OriginalStatusCode=exc.original_status, OriginalMessage=exc.original_message)
    return Response(
        json.dumps(body),
        status=exc.status,
        content_type=content_type,
        headers={"x-amzn-RequestId": str(uuid.uuid4()), "x-amzn-ErrorType": exc.code},
    )


class SageMakerResponses:
    """The emulator's WSGI app (control plane and runtime share the ``sagemaker`` signing name)."""

    def __init__(self, control: SageMakerBackend, runtime: RuntimeBackend) -> None:
        self.control = control
        self.runtime = runtime

    def dispatch(self, request: Request) -> Response:
        """Route by X-Amz-Target (control plane) or by path (runtime)."""
        target = request.headers.get("X-Amz-Target", "")
        if target.startswith(TARGET_PREFIX):
            return self._control(target[len(TARGET_PREFIX) :], request)
        match = RUNTIME_PATH.match(request.path)
        if match and request.method == "POST":
            name = unquote(match["name"])
            if match["kind"] == "async-invocations":
                return self._invoke_async(name, request)
            if match["kind"] == "invocations-response-stream":
                return self._invoke_stream(name, request)
            return self._invoke(name, request)
        return _error(
            ValidationException(
                f"localcloud's SageMaker emulator has no route for {request.method} {request.path}"
            ),
            JSON11,
        )

    def _control(self, operation: str, request: Request) -> Response:
        method = CONTROL_OPERATIONS.get(operation)
        if method is None:
            exc = SageMakerError(f"localcloud does not implement SageMaker.{operation}")
            exc.code, exc.status = "UnknownOperationException", 400
            return _error(exc, JSON11)
        try:
            payload = json.loads(request.get_data() or b"{}")
            result = getattr(self.control, method)(payload)
        except SageMakerError as exc:
            return _error(exc, JSON11)
        except Exception as exc:
            log.exception("localcloud: SageMaker.%s crashed", operation)
            return _error(InternalFailure(f"{type(exc).__name__}: {exc}"), JSON11)
        return Response(
            json.dumps(result),
            status=200,
            content_type=JSON11,
            headers={"x-amzn-RequestId": str(uuid.uuid4())},
        )

    def _invoke_async(self, name: str, request: Request) -> Response:
        headers = {field: request.headers.get(header) for field, header in ASYNC_HEADERS.items()}
        headers = {k: v for k, v in headers.items() if v is not None}
        try:
            accepted = self.runtime.invoke_async(name, headers, request.get_data() or None)
        except SageMakerError as exc:
            return _error(exc, "application/json")
        out_headers = {
            "X-Amzn-SageMaker-OutputLocation": accepted.output_location,
            "x-amzn-RequestId": str(uuid.uuid4()),
        }
        if accepted.failure_location:
            out_headers["X-Amzn-SageMaker-FailureLocation"] = accepted.failure_location
        return Response(
            json.dumps({"InferenceId": accepted.inference_id}),
            status=202,
            content_type="application/json",
            headers=out_headers,
        )

    def _invoke(self, name: str, request: Request) -> Response:
        headers = {field: request.headers.get(header) for field, header in REALTIME_HEADERS.items()}
        headers = {k: v for k, v in headers.items() if v is not None}
        try:
            reply = self.runtime.invoke(name, headers, request.get_data())
            variant = self.runtime.variant(name)
        except SageMakerError as exc:
            return _error(exc, "application/json")
        out = _answer_headers(reply, variant, headers.get("SessionId"))
        return Response(reply.body, status=200, content_type=reply.content_type, headers=out)

    def _invoke_stream(self, name: str, request: Request) -> Response:
        """InvokeEndpointWithResponseStream: the model's chunks as PayloadPart events."""
        headers = {field: request.headers.get(header) for field, header in STREAM_HEADERS.items()}
        headers = {k: v for k, v in headers.items() if v is not None}
        try:
            reply = self.runtime.invoke(name, headers, request.get_data(), stream=True)
            variant = self.runtime.variant(name)
        except SageMakerError as exc:
            return _error(exc, "application/json")
        out = _answer_headers(reply, variant, headers.get("SessionId"))
        out["X-Amzn-SageMaker-Content-Type"] = reply.content_type
        return Response(_events(reply), status=200, content_type=EVENT_STREAM, headers=out)

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        """WSGI entry point."""
        return self.dispatch(Request(environ))(environ, start_response)


def _answer_headers(reply: Reply, variant: str, session_id: str | None) -> dict[str, str]:
    """The runtime's answer headers: variant, instance, and the session opened or closed."""
    out = {
        "x-Amzn-Invoked-Production-Variant": variant,
        "x-amzn-RequestId": str(uuid.uuid4()),
        INSTANCE_HEADER: reply.instance_id,
        INSTANCE_PID_HEADER: str(reply.instance_pid),
    }
    given = {k.lower(): v for k, v in reply.headers.items()}
    opened = given.get(SESSION_HEADER.lower())
    if session_id == NEW_SESSION and opened:
        out["X-Amzn-SageMaker-New-Session-Id"] = opened
    closed = given.get(CLOSED_HEADER.lower())
    if closed:
        out[CLOSED_HEADER] = closed
    return out


def _events(reply: Reply) -> Iterator[bytes]:
    """PayloadPart per chunk; ModelStreamError when the model's stream broke."""
    assert reply.chunks is not None
    while True:
        chunk = reply.chunks.get()
        if chunk is None:
            return
        if isinstance(chunk, BaseException):
            yield stream_error(
                "ModelStreamError",
                f"The model's response stream failed: {chunk}. See the endpoint's logs.",
                "StreamBroken",
            )
            return
        yield payload_part(chunk)
