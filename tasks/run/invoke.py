"""Stage batch payloads in S3 and submit them with InvokeEndpointAsync, within the endpoint's shared cap."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from functools import partial
from typing import Any

from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    ReadTimeoutError,
)
from pydantic import BaseModel

from tasks.aws.clients import aws_client
from tasks.endpoint.spec import concurrency_limit_name
from tasks.run.layout import output_filename
from tasks.settings import Profile

CONTENT_TYPE = "application/jsonlines"
# Prefect's shortest lease (renewed every 45 s while held): a killed run's slots return within
# about a minute (lease + the server's 15 s repossessor loop), not the default five.
SLOT_LEASE_S = 60
FREE_POLL_S = 0.2
PUT_ATTEMPTS = 4  # staging PUTs, on top of botocore's own retries: throttling and 5xx only
ACQUIRE_AFTER_CHECK_S = 5.0
EXISTS_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})
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


class StagedInput(BaseModel):
    """One payload to put at an S3 key (skipped when the key already exists)."""

    key: str
    body: bytes


class InvokeRequest(BaseModel):
    """What one async invocation of a batch needs: small, serialisable, no payload body."""

    batch_id: str
    inference_id: str
    input_uri: str
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
    """Per-run options of InvokeEndpointAsync and of the client-side backoff."""

    endpoint: str
    run_key: str
    request_ttl_s: int | None = None
    invocation_timeout_s: int | None = None
    max_attempts: int = 6
    base_delay_s: float = 0.2
    max_delay_s: float = 10.0
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


def backoff_delay(attempt: int, base_s: float, max_s: float, rng: random.Random) -> float:
    """Exponential backoff with full jitter: uniform(0, min(max, base * 2**attempt))."""
    return rng.uniform(0, min(max_s, base_s * (2**attempt)))


def call_with_backoff(
    fn: Callable[[], Any],
    *,
    max_attempts: int,
    base_s: float,
    max_s: float,
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
) -> Any:
    """Call ``fn``; retry retryable errors with jittered exponential backoff, raise the rest at once."""
    rng = rng or random.Random()
    for attempt in range(max_attempts):
        try:
            return fn()
        except Exception as exc:
            if not is_retryable(exc) or attempt == max_attempts - 1:
                raise
            sleep(backoff_delay(attempt, base_s, max_s, rng))
    raise AssertionError("unreachable")  # pragma: no cover


def describe_error(exc: BaseException) -> str:
    """A one-line reason for the manifest: AWS's code and message when there is one."""
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        return f"{err.get('Code', 'Error')}: {err.get('Message', str(exc))}"
    return f"{type(exc).__name__}: {exc}"


def put_if_absent(profile: Profile, item: StagedInput) -> int:
    """One conditional PUT (If-None-Match: *); 1 when written, 0 when the key already exists."""
    try:
        aws_client("s3", profile).put_object(
            Bucket=profile.bucket,
            Key=item.key,
            Body=item.body,
            ContentType=CONTENT_TYPE,
            IfNoneMatch="*",
        )
    except ClientError as exc:
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = exc.response.get("Error", {}).get("Code")
        if status in (409, 412) or code in EXISTS_CODES:
            return 0  # already there (or being written by a concurrent run)
        raise
    return 1


def put_with_retries(profile: Profile, item: StagedInput) -> int:
    """``put_if_absent``, retrying throttling and 5xx answers beyond botocore's own retries."""
    return int(
        call_with_backoff(
            partial(put_if_absent, profile, item),
            max_attempts=PUT_ATTEMPTS,
            base_s=0.5,
            max_s=10.0,
        )
    )


def stage_inputs(profile: Profile, inputs: Sequence[StagedInput], *, workers: int = 8) -> int:
    """Put each payload at its key unless an object is already there; returns how many were written."""
    if not inputs:
        return 0
    with ThreadPoolExecutor(max_workers=min(workers, len(inputs))) as pool:
        return sum(pool.map(partial(put_with_retries, profile), inputs))


def invoke_one(profile: Profile, settings: InvokeSettings, request: InvokeRequest) -> InvokeResult:
    """Submit one batch; an error the service will not take back is returned, not raised."""
    runtime = aws_client("sagemaker-runtime", profile)
    params: dict[str, Any] = {
        "EndpointName": settings.endpoint,
        "ContentType": CONTENT_TYPE,
        "Accept": CONTENT_TYPE,
        "InferenceId": request.inference_id,
        "InputLocation": request.input_uri,
        "S3OutputPathExtension": settings.run_key,
        "Filename": output_filename(request.batch_id, request.attempt),
    }
    if settings.request_ttl_s is not None:
        params["RequestTTLSeconds"] = settings.request_ttl_s
    timeout_s = request.invocation_timeout_s or settings.invocation_timeout_s
    if timeout_s is not None:
        params["InvocationTimeoutSeconds"] = timeout_s
    limiter = rate_limiter(settings.endpoint, settings.rate_per_second)

    def call() -> Any:
        limiter.acquire()
        return runtime.invoke_endpoint_async(**params)

    try:
        response = call_with_backoff(
            call,
            max_attempts=settings.max_attempts,
            base_s=settings.base_delay_s,
            max_s=settings.max_delay_s,
        )
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


class CapacityError(RuntimeError):
    """The endpoint's shared concurrency limit is missing; the message says how to create it."""


def enter_lease(name: str, occupy: int, wait_s: float) -> ExitStack | None:
    """Take ``occupy`` slots of limit ``name`` as one renewed lease (None: not free in time)."""
    from prefect.concurrency._asyncio import ConcurrencySlotAcquisitionError
    from prefect.concurrency.sync import concurrency

    stack = ExitStack()
    try:
        stack.enter_context(
            concurrency(
                name,
                occupy=occupy,
                strict=True,
                timeout_seconds=max(wait_s, ACQUIRE_AFTER_CHECK_S),
                raise_on_lease_renewal_failure=False,
                lease_duration=SLOT_LEASE_S,
            )
        )
    except TimeoutError:
        stack.close()
        return None
    except ConcurrencySlotAcquisitionError as exc:
        stack.close()
        raise CapacityError(
            f"global concurrency limit {name!r} does not exist: run the deploy-endpoint "
            "flow (it creates the limit) or create it with "
            f"`prefect gcl create {name} --limit <max outstanding invocations>` ({exc})"
        ) from exc
    return stack


def wait_for_free(name: str, n: int, wait_s: float) -> int:
    """Poll limit ``name`` until ``n`` slots are free or ``wait_s`` passes; returns the free slots.

    Asking the server first keeps a contended acquire out of Prefect's polling back-off, which
    also logs every timeout as an error; a missing limit answers ``n`` so the strict acquire
    that follows raises the clear error.
    """
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    deadline = time.monotonic() + wait_s
    with get_client(sync_client=True) as client:
        while True:
            try:
                limit = client.read_global_concurrency_limit_by_name(name)
            except ObjectNotFound:
                return n
            free = int(limit.limit) - int(limit.active_slots)
            if free >= n or time.monotonic() >= deadline:
                return max(0, free)
            time.sleep(FREE_POLL_S)


class CapShare:
    """The run's share of the endpoint's global concurrency limit, held for the run as a few leases.

    Each lease is one ``strict`` acquisition of several slots, renewed while held, so concurrent
    runs never exceed the limit between them and a killed run's slots return when its lease
    lapses. The run paces invocations locally inside what it holds and refills a slot the moment
    a batch ends; it takes more slots only as they come free and gives whole leases back when
    its remaining work no longer needs them.
    """

    def __init__(self, endpoint: str) -> None:
        self.name = concurrency_limit_name(endpoint)
        self._leases: list[tuple[ExitStack, int]] = []

    @property
    def held(self) -> int:
        """Slots this run holds now."""
        return sum(size for _, size in self._leases)

    def grow(self, n: int, *, timeout_s: float) -> int:
        """Take up to ``n`` more slots as one lease: as many as are free once one is (within ``timeout_s``)."""
        if n <= 0:
            return 0
        take = min(n, wait_for_free(self.name, 1, timeout_s))
        if take <= 0:
            return 0
        stack = enter_lease(self.name, take, 0.0)
        if stack is None:
            return 0
        self._leases.append((stack, take))
        return take

    def shrink_to(self, n: int) -> int:
        """Give back whole leases while at least ``n`` slots stay held; returns the slots released."""
        released = 0
        for lease in sorted(self._leases, key=lambda item: item[1]):
            stack, size = lease
            if self.held - size < n:
                continue
            stack.close()
            self._leases.remove(lease)
            released += size
        return released

    def close(self) -> None:
        """Give back every lease still held."""
        for stack, _ in self._leases:
            stack.close()
        self._leases.clear()


@contextmanager
def cap_share(endpoint: str) -> Iterator[CapShare]:
    """A CapShare that always gives its leases back, even when the run fails."""
    share = CapShare(endpoint)
    try:
        yield share
    finally:
        share.close()


def read_invocation_limit(endpoint: str) -> int | None:
    """The shared cap on outstanding invocations for ``endpoint``, or None when the limit is missing."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            found = client.read_global_concurrency_limit_by_name(concurrency_limit_name(endpoint))
        except ObjectNotFound:
            return None
    return int(found.limit) if found.active else None


def require_invocation_limit(endpoint: str) -> int:
    """The shared cap for ``endpoint``; a CapacityError that says how to create it when missing."""
    limit = read_invocation_limit(endpoint)
    if not limit:
        name = concurrency_limit_name(endpoint)
        raise CapacityError(
            f"global concurrency limit {name!r} is missing or inactive: run the deploy-endpoint "
            f"flow for {endpoint!r} (it creates the limit) or "
            f"`prefect gcl create {name} --limit <max outstanding invocations>`"
        )
    return limit
