"""SageMaker Runtime: InvokeEndpointAsync for one batch, paced by a per-endpoint rate limiter.

Retries, one layer per kind of failure:

- a single AWS call that is throttled, answers 5xx or loses its connection is retried by
  botocore (``tasks.aws.clients``: standard mode, ``AWS_CALL_ATTEMPTS`` attempts with jittered
  exponential backoff); nothing here retries a call again;
- a batch whose invocation still failed retryably, or whose inference failed or expired, is
  invoked again by the run's driver, up to the flow's ``max_attempts`` (``tasks.run.fanout.outcomes``);
- a validation error or any other 4xx is never retried: the batch fails with AWS's reason.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from typing import Any

from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    ReadTimeoutError,
)
from pydantic import BaseModel

from tasks.aws.clients import aws_client
from tasks.run.plan.layout import output_filename
from tasks.settings import Profile

CONTENT_TYPE = "application/jsonlines"
# The service's defaults and bounds for an async invocation (AWS-FACTS.md).
DEFAULT_REQUEST_TTL_S = 21600
DEFAULT_INVOCATION_TIMEOUT_S = 900
MAX_INVOCATION_TIMEOUT_S = 3600


@functools.cache
def max_inline_body() -> int:
    """The largest payload InvokeEndpointAsync takes inline as ``Body`` (botocore's model: 128,000
    bytes); 0 when the installed botocore predates ``Body`` (every payload then goes through S3)."""
    import botocore.session

    model = botocore.session.get_session().get_service_model("sagemaker-runtime")
    shape = model.operation_model("InvokeEndpointAsync").input_shape
    if shape is None or "Body" not in shape.members:
        return 0
    return int(shape.members["Body"].metadata.get("max", 0))


THROTTLING_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "SlowDown",
        "ServiceUnavailable",
        "InternalFailure",
        "InternalServerError",
        "InternalError",
    }
)


class InvokeRequest(BaseModel):
    """What one async invocation of a batch needs: its payload inline (``body``, at most
    ``max_inline_body()`` bytes) or its S3 location."""

    batch_id: str
    inference_id: str
    input_uri: str
    body: bytes | None = None
    attempt: int = 1
    invocation_timeout_s: int | None = None


class InvokeResult(BaseModel):
    """The outcome of submitting one batch: its output/failure locations, or why it was not accepted."""

    batch_id: str
    inference_id: str
    output_uri: str | None = None
    failure_uri: str | None = None
    error: str | None = None
    retryable: bool = False
    submitted_at: float | None = None


class InvokeSettings(BaseModel):
    """Per-run options of InvokeEndpointAsync and the endpoint's call rate."""

    endpoint: str
    run_key: str
    request_ttl_s: int | None = None
    invocation_timeout_s: int | None = None
    rate_per_second: float = 20.0


class RateLimiter:
    """A thread-safe token bucket: at most ``rate`` calls per second, bursts up to ``burst``."""

    def __init__(
        self,
        rate: float,
        burst: int | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be > 0 calls per second, got {rate}")
        self.rate = rate
        self.capacity = float(burst if burst is not None else max(1, int(rate)))
        self._tokens = self.capacity
        self._clock = clock
        self._sleep = sleep
        self._last = clock()
        self._lock = threading.Lock()

    def acquire(self) -> None:
        """Block until one call may go out (a call reserves its slot, then sleeps until it comes)."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= 1
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            self._sleep(wait)


_limiters: dict[tuple[str, float], RateLimiter] = {}
_limiters_lock = threading.Lock()


def rate_limiter(endpoint: str, rate: float) -> RateLimiter:
    """One limiter per endpoint and rate in this process, shared by all waves of all runs."""
    with _limiters_lock:
        return _limiters.setdefault((endpoint, rate), RateLimiter(rate))


def is_retryable(exc: BaseException) -> bool:
    """Throttling, 5xx and connection trouble are retried; validation and other 4xx never are."""
    if isinstance(exc, EndpointConnectionError | ConnectionClosedError | ReadTimeoutError):
        return True
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return code in THROTTLING_CODES or status == 429 or status >= 500
    return False


def describe_error(exc: BaseException) -> str:
    """A one-line reason for the manifest: AWS's code and message when there is one."""
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        return f"{err.get('Code', 'Error')}: {err.get('Message', str(exc))}"
    return f"{type(exc).__name__}: {exc}"


def invoke_one(profile: Profile, settings: InvokeSettings, request: InvokeRequest) -> InvokeResult:
    """Submit one batch; an error the service will not take back is returned, not raised."""
    runtime = aws_client("sagemaker-runtime", profile)
    params: dict[str, Any] = {
        "EndpointName": settings.endpoint,
        "ContentType": CONTENT_TYPE,
        "Accept": CONTENT_TYPE,
        "InferenceId": request.inference_id,
        "S3OutputPathExtension": settings.run_key,
        "Filename": output_filename(request.batch_id, request.attempt),
    }
    if request.body is not None:
        params["Body"] = request.body  # no S3 PUT for this payload; never with InputLocation
    else:
        params["InputLocation"] = request.input_uri
    if settings.request_ttl_s is not None:
        params["RequestTTLSeconds"] = settings.request_ttl_s
    timeout_s = request.invocation_timeout_s or settings.invocation_timeout_s
    if timeout_s is not None:
        params["InvocationTimeoutSeconds"] = timeout_s
    limiter = rate_limiter(settings.endpoint, settings.rate_per_second)

    limiter.acquire()
    try:
        response = runtime.invoke_endpoint_async(**params)
    except Exception as exc:
        return InvokeResult(
            batch_id=request.batch_id,
            inference_id=request.inference_id,
            error=f"InvokeEndpointAsync failed: {describe_error(exc)}",
            retryable=is_retryable(exc),
        )
    return InvokeResult(
        batch_id=request.batch_id,
        inference_id=response.get("InferenceId", request.inference_id),
        output_uri=response.get("OutputLocation"),
        failure_uri=response.get("FailureLocation"),
        submitted_at=time.time(),
    )
