"""tasks.run.invoke: rate limit, backoff that never retries validation errors, staging, the shared cap."""

from __future__ import annotations

import random
import uuid
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tasks.aws.clients import aws_client
from tasks.run.invoke import (
    CapacityError,
    CapShare,
    RateLimiter,
    StagedInput,
    backoff_delay,
    call_with_backoff,
    is_retryable,
    read_invocation_limit,
    require_invocation_limit,
    stage_inputs,
)
from tasks.settings import Profile


def client_error(code: str, status: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "InvokeEndpointAsync",
    )


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_rate_limiter_spaces_calls_after_the_burst() -> None:
    clock = FakeClock()
    limiter = RateLimiter(5.0, burst=1, clock=clock, sleep=clock.sleep)
    for _ in range(11):
        limiter.acquire()
    # One call from the burst, then ten more at 5 per second: two seconds of (fake) time.
    assert clock.now == pytest.approx(2.0)


def test_rate_limiter_rejects_a_zero_rate() -> None:
    with pytest.raises(ValueError, match="rate must be > 0"):
        RateLimiter(0)


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (client_error("ThrottlingException", 400), True),
        (client_error("ServiceUnavailable", 503), True),
        (client_error("InternalFailure", 500), True),
        (client_error("SomethingNew", 502), True),
        (client_error("ValidationError", 400), False),
        (client_error("AccessDeniedException", 403), False),
        (ValueError("bad"), False),
    ],
)
def test_is_retryable(exc: BaseException, expected: bool) -> None:
    assert is_retryable(exc) is expected


def test_backoff_is_exponential_with_full_jitter() -> None:
    rng = random.Random(1)
    for attempt in range(8):
        delay = backoff_delay(attempt, 0.1, 2.0, rng)
        assert 0 <= delay <= min(2.0, 0.1 * 2**attempt)


def test_throttling_is_retried_until_it_succeeds() -> None:
    calls: list[int] = []
    slept: list[float] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 4:
            raise client_error("ThrottlingException", 400)
        return "ok"

    result = call_with_backoff(flaky, max_attempts=6, base_s=0.1, max_s=1.0, sleep=slept.append)
    assert result == "ok"
    assert len(calls) == 4
    assert len(slept) == 3


def test_validation_errors_are_never_retried() -> None:
    calls: list[int] = []

    def invalid() -> None:
        calls.append(1)
        raise client_error("ValidationError", 400)

    with pytest.raises(ClientError, match="ValidationError"):
        call_with_backoff(invalid, max_attempts=6, base_s=0.1, max_s=1.0, sleep=lambda s: None)
    assert len(calls) == 1


def test_retries_are_bounded() -> None:
    calls: list[int] = []

    def down() -> None:
        calls.append(1)
        raise client_error("ServiceUnavailable", 503)

    with pytest.raises(ClientError):
        call_with_backoff(down, max_attempts=3, base_s=0.01, max_s=0.1, sleep=lambda s: None)
    assert len(calls) == 3


def test_staging_skips_objects_that_exist(profile: Profile) -> None:
    inputs = [
        StagedInput(key=f"runs/r1/inputs/b{i}.jsonl", body=b'{"id":"%d"}\n' % i) for i in range(3)
    ]
    assert stage_inputs(profile, inputs) == 3
    changed = [StagedInput(key=inputs[0].key, body=b"changed\n"), *inputs[1:]]
    assert stage_inputs(profile, changed) == 0
    s3 = aws_client("s3", profile)
    body = s3.get_object(Bucket=profile.bucket, Key=inputs[0].key)["Body"].read()
    assert body == b'{"id":"0"}\n'


def _limit(endpoint: str, limit: int) -> None:
    from tasks.endpoint.deploy import ensure_invocation_limit

    ensure_invocation_limit(endpoint, limit)


def test_cap_shares_split_the_endpoint_cap_between_runs(prefect_harness: Any) -> None:
    endpoint = f"cap-{uuid.uuid4().hex[:8]}"
    _limit(endpoint, 3)
    assert require_invocation_limit(endpoint) == 3
    run_a, run_b = CapShare(endpoint), CapShare(endpoint)
    try:
        assert run_a.grow(2, timeout_s=0) == 2
        assert run_a.held == 2
        # Only one slot is left for the second run: it takes what is free, not what it asked for.
        assert run_b.grow(2, timeout_s=0.5) == 1
        assert run_a.grow(1, timeout_s=0.5) == 0
        assert run_a.shrink_to(1) == 0  # leases go back whole: 2 cannot become 1
        assert run_a.shrink_to(0) == 2
        assert run_b.grow(2, timeout_s=2) == 2
        assert run_b.held == 3
    finally:
        run_a.close()
        run_b.close()
    assert run_a.held == run_b.held == 0


def test_a_missing_limit_is_a_clear_error(prefect_harness: Any) -> None:
    endpoint = f"nolimit-{uuid.uuid4().hex[:8]}"
    assert read_invocation_limit(endpoint) is None
    with pytest.raises(CapacityError, match="deploy-endpoint"):
        require_invocation_limit(endpoint)
    with pytest.raises(CapacityError, match=f"sagemaker:{endpoint}"):
        CapShare(endpoint).grow(1, timeout_s=1)
