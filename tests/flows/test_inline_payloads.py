"""Payloads of at most 128,000 bytes go inline in InvokeEndpointAsync(Body=…); larger ones through S3."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from tasks.aws.clients import aws_client
from tasks.aws.sagemaker_runtime import max_inline_body
from tasks.corpus.documents import Document
from tasks.run.plan.batching import payload_line
from tasks.run.request.prompts import GenerationParameters, PromptTemplate
from tasks.settings import load_profile
from tests.runs import Deployment, run_flow

pytestmark = pytest.mark.usefixtures("prefect_harness", "faults")

LIMIT = 128_000


class SentAs:
    """How each InvokeEndpointAsync carried its payload: InferenceId → "Body" or "InputLocation"."""

    def __init__(self, profile_path: str) -> None:
        self.client = aws_client("sagemaker-runtime", load_profile(profile_path))
        self.how: dict[str, str] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> SentAs:
        self.client.meta.events.register(
            "provide-client-params.sagemaker-runtime.InvokeEndpointAsync", self._see
        )
        return self

    def __exit__(self, *exc: Any) -> None:
        self.client.meta.events.unregister(
            "provide-client-params.sagemaker-runtime.InvokeEndpointAsync", self._see
        )

    def _see(self, params: dict[str, Any], **_: Any) -> None:
        with self._lock:
            self.how[params["InferenceId"]] = "Body" if "Body" in params else "InputLocation"


def texts_for_payload_of(size: int, ids: tuple[str, str]) -> tuple[str, str]:
    """Two document texts whose two-document payload (summarize, 16 new tokens) is ``size`` bytes.

    Two, because one document is at most 100,000 bytes (the corpus loader's limit).
    """
    template = PromptTemplate.model_validate({"kind": "summarize"})
    params = GenerationParameters(max_new_tokens=16)
    base = sum(len(payload_line(Document(doc_id=i, text=""), template, params)) for i in ids)
    first = (size - base) // 2
    return "x" * first, "y" * (size - base - first)


def test_small_payloads_go_inline_and_one_just_over_the_limit_through_s3(
    deploy_echo: Callable[..., Deployment], tmp_path: Path
) -> None:
    assert max_inline_body() == LIMIT  # botocore's model of InvokeEndpointAsync has Body
    dep = deploy_echo()
    prof = load_profile(dep.profile_path)
    corpus = tmp_path / "c.jsonl"
    rows = [{"id": f"s{i}", "text": f"small document {i}"} for i in range(6)]
    big_a, big_b = texts_for_payload_of(LIMIT + 1, ("bigA", "bigB"))
    rows[2:2] = [{"id": "bigA", "text": big_a}, {"id": "bigB", "text": big_b}]
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with SentAs(dep.profile_path) as sent:
        outcome = run_flow(dep, corpus, batch_size=2, run_key="inline1")
    assert outcome.result["completed"] == 8
    big = outcome.table.set_index("doc_id").loc["bigA", "batch_id"]
    assert outcome.table.set_index("doc_id").loc["bigB", "batch_id"] == big
    assert sent.how.pop(f"inline1-{big}") == "InputLocation"
    assert set(sent.how.values()) == {"Body"} and len(sent.how) == 3
    # Only the large payload was put in S3.
    listed = aws_client("s3", prof).list_objects_v2(
        Bucket=prof.bucket, Prefix=f"{prof.prefixes.runs}/inline1/inputs/"
    )
    assert [o["Key"].rsplit("/", 1)[1] for o in listed.get("Contents", [])] == [f"{big}.jsonl"]
    s3 = aws_client("s3", prof)
    body = s3.get_object(Bucket=prof.bucket, Key=f"{prof.prefixes.runs}/inline1/inputs/{big}.jsonl")
    assert len(body["Body"].read()) == LIMIT + 1


def test_localcloud_refuses_body_with_input_location_and_over_the_limit(
    deploy_echo: Callable[..., Deployment],
) -> None:
    dep = deploy_echo()
    runtime = aws_client("sagemaker-runtime", load_profile(dep.profile_path))
    common: dict[str, Any] = {"EndpointName": dep.endpoint, "ContentType": "application/jsonlines"}
    with pytest.raises(ClientError) as both:
        runtime.invoke_endpoint_async(
            **common, Body=b'{"id":"a","prompt":"x"}\n', InputLocation="s3://b/k"
        )
    assert both.value.response["Error"]["Code"] == "ValidationError"
    # botocore checks the size itself: send the request unchecked, as another SDK could.
    raw = boto3.client(
        "sagemaker-runtime",
        endpoint_url=runtime.meta.endpoint_url,
        region_name=runtime.meta.region_name,
        config=runtime.meta.config.merge(Config(parameter_validation=False)),
    )
    with pytest.raises(ClientError) as large:
        raw.invoke_endpoint_async(**common, Body=b"x" * (LIMIT + 1))
    assert large.value.response["Error"]["Code"] == "ValidationError"
    assert str(LIMIT) in large.value.response["Error"]["Message"]
