"""tasks.aws.sagemaker_runtime: the rate limiter, which errors are retryable, and the one retry
layer for a single call (botocore's), exercised through a real botocore client whose HTTP answers
are given by a ``before-send`` handler."""

from __future__ import annotations

import json
import types
from typing import Any

import boto3
import botocore.endpoint
import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ClientError

from tasks.aws.clients import AWS_CALL_ATTEMPTS, client_config
from tasks.aws.sagemaker_runtime import (
    InvokeRequest,
    InvokeSettings,
    RateLimiter,
    invoke_one,
    is_retryable,
)
from tasks.settings import Profile

PROFILE = Profile(
    name="scripted", bucket="docflow-test", endpoint_url="http://127.0.0.1:9", region="us-east-1"
)


def client_error(code: str, status: int) -> ClientError:
    response: Any = {
        "Error": {"Code": code, "Message": code},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, "InvokeEndpointAsync")


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


class _Raw:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Any:
        yield self._body


class ScriptedRuntime:
    """A real sagemaker-runtime client whose HTTP answers come from a script, not a server."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, answers: list[tuple[int, str]]) -> None:
        self.answers = answers
        self.sends = 0
        self.slept: list[float] = []
        # botocore's endpoint sleeps between attempts; record the delays instead of waiting.
        monkeypatch.setattr(
            botocore.endpoint, "time", types.SimpleNamespace(sleep=self.slept.append)
        )
        profile = PROFILE
        self.client = boto3.session.Session(
            aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1"
        ).client(
            "sagemaker-runtime", endpoint_url=profile.endpoint_url, config=client_config(profile)
        )
        answer: Any = self._answer  # a before-send handler may return the response
        self.client.meta.events.register("before-send.sagemaker-runtime.*", answer)

    def _answer(self, request: Any, **_: Any) -> AWSResponse:
        status, code = self.answers[min(self.sends, len(self.answers) - 1)]
        self.sends += 1
        headers: Any = {"x-amzn-requestid": "r"}
        if status == 200:  # InvokeEndpointAsync answers in headers (botocore's service model)
            headers["X-Amzn-SageMaker-OutputLocation"] = "s3://b/o.out"
            body = b'{"InferenceId": "r-b"}'
        else:
            body = json.dumps({"__type": code, "message": code}).encode()
        return AWSResponse(request.url, status, headers, _Raw(body))

    def invoke(self, monkeypatch: pytest.MonkeyPatch) -> Any:
        monkeypatch.setattr(
            "tasks.aws.sagemaker_runtime.aws_client", lambda service, profile: self.client
        )
        settings = InvokeSettings(endpoint="ep", run_key="r", rate_per_second=1000)
        request = InvokeRequest(batch_id="b", inference_id="r-b", input_uri="s3://b/in.jsonl")
        return invoke_one(PROFILE, settings, request)


def test_throttling_is_retried_by_botocore_until_it_succeeds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runtime = ScriptedRuntime(monkeypatch, [(400, "ThrottlingException")] * 3 + [(200, "")])
    result = runtime.invoke(monkeypatch)
    assert result.error is None and result.output_uri == "s3://b/o.out"
    assert runtime.sends == 4 and len(runtime.slept) == 3


def test_validation_errors_are_never_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = ScriptedRuntime(monkeypatch, [(400, "ValidationError")])
    result = runtime.invoke(monkeypatch)
    assert runtime.sends == 1 and runtime.slept == []
    assert result.error is not None and "ValidationError" in result.error
    assert result.retryable is False


def test_retries_are_bounded_and_the_batch_is_left_retryable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runtime = ScriptedRuntime(monkeypatch, [(503, "ServiceUnavailable")])
    result = runtime.invoke(monkeypatch)
    # One layer retries a call: botocore's attempts, not botocore's times a hand-written loop's.
    assert runtime.sends == AWS_CALL_ATTEMPTS
    assert result.error is not None and result.retryable is True


def test_backoff_between_attempts_is_exponential_with_full_jitter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runtime = ScriptedRuntime(monkeypatch, [(503, "ServiceUnavailable")])
    runtime.invoke(monkeypatch)
    assert len(runtime.slept) == AWS_CALL_ATTEMPTS - 1
    # botocore standard mode: uniform(0, min(20 s, 2 ** attempt)) before each retry.
    for attempt, delay in enumerate(runtime.slept):
        assert 0 <= delay <= min(20.0, 2.0 ** (attempt + 1)), (attempt, delay)
    assert len(set(runtime.slept)) > 1  # jittered, not a fixed schedule
