"""HTTP in one place: parse SageMaker requests, call the backends, shape AWS's answers and errors."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import unquote

from werkzeug.wrappers import Request, Response

from localcloud.sagemaker.exceptions import (
    InternalFailure,
    ModelError,
    SageMakerError,
    ValidationException,
)
from localcloud.sagemaker.invocations import RuntimeBackend
from localcloud.sagemaker.models import SageMakerBackend
from localcloud.sagemaker.urls import (
    ASYNC_HEADERS,
    CONTROL_OPERATIONS,
    REALTIME_HEADERS,
    RUNTIME_PATH,
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
            body, content_type, variant = self.runtime.invoke(name, headers, request.get_data())
        except SageMakerError as exc:
            return _error(exc, "application/json")
        return Response(
            body,
            status=200,
            content_type=content_type,
            headers={
                "x-Amzn-Invoked-Production-Variant": variant,
                "x-amzn-RequestId": str(uuid.uuid4()),
            },
        )

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        """WSGI entry point."""
        return self.dispatch(Request(environ))(environ, start_response)
