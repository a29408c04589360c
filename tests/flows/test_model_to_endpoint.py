"""package_model -> deploy_endpoint -> InvokeEndpointAsync with real LLM weights on localcloud.

Tiny random Mistral and Llama models (safetensors) and SmolLM2-135M-Instruct go through the two
flows exactly as a user runs them; the answers come back from the endpoint's S3 output objects.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from flows.deploy_endpoint import deploy_endpoint
from flows.package_model import package_model
from flows.teardown_endpoint import teardown_endpoint
from tasks.aws.clients import aws_client
from tasks.settings import Profile
from tests.flows.endpoint_helpers import FAST_WAIT, profile_file
from tests.tiny_models import make_tiny_model

pytestmark = pytest.mark.usefixtures("prefect_harness")

# One torch thread: on a small shared machine more threads only spin (see docs/performance.md).
MODEL_ENV = {"DOCFLOW_NUM_THREADS": "1", "DOCFLOW_MAX_BATCH_SIZE": "4"}


def _invoke(profile: Profile, documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Stage a JSON Lines payload, InvokeEndpointAsync, and read the output object's lines."""
    s3 = aws_client("s3", profile)
    key = f"{profile.prefixes.runs}/model-test/{uuid.uuid4().hex}.jsonl"
    body = "".join(json.dumps(doc) + "\n" for doc in documents)
    s3.put_object(Bucket=profile.bucket, Key=key, Body=body.encode())
    answer = aws_client("sagemaker-runtime", profile).invoke_endpoint_async(
        EndpointName=profile.endpoint_name,
        InputLocation=profile.s3_uri(key),
        ContentType="application/jsonlines",
        Accept="application/jsonlines",
        InferenceId=f"model-test-{uuid.uuid4().hex[:8]}",
    )
    bucket, _, out_key = answer["OutputLocation"].removeprefix("s3://").partition("/")
    s3.get_waiter("object_exists").wait(
        Bucket=bucket, Key=out_key, WaiterConfig={"Delay": 0.5, "MaxAttempts": 600}
    )
    text = s3.get_object(Bucket=bucket, Key=out_key)["Body"].read().decode()
    return [json.loads(line) for line in text.splitlines()]


@contextmanager
def _package_and_deploy(profile: Profile, tmp_path: Path, source: str) -> Iterator[dict[str, Any]]:
    """Package ``source``, deploy it, and delete the endpoint afterwards even when the test fails."""
    path = profile_file(profile, tmp_path)
    artifact: dict[str, Any] = package_model(source=source, profile=path)
    assert artifact["model_data_url"].startswith(profile.s3_uri("models/"))
    deployed = deploy_endpoint(
        profile=path, model_artifact=artifact, environment=MODEL_ENV, **FAST_WAIT
    )
    assert "CreateEndpoint" in deployed["actions"]
    try:
        yield {"path": path, "artifact": artifact}
    finally:  # the model-serving instance process would otherwise live for the whole session
        teardown_endpoint(profile=path, mode="delete", **FAST_WAIT)


@pytest.mark.parametrize("arch", ["mistral", "llama"])
def test_tiny_model_answers_through_the_async_endpoint(
    arch: str, profile: Profile, tmp_path: Path
) -> None:
    model_dir = make_tiny_model(tmp_path / f"tiny-{arch}", arch)  # type: ignore[arg-type]
    with _package_and_deploy(profile, tmp_path, str(model_dir)) as deployed:
        assert deployed["artifact"]["architecture"].lower().startswith(arch)
        prompts = {
            "a": "Summarise: the cat sat on the mat.",
            "b": "Hello there, how are you today?",
        }
        lines = _invoke(
            profile,
            [
                {"id": doc_id, "prompt": prompt, "parameters": {"max_new_tokens": 6}}
                for doc_id, prompt in prompts.items()
            ],
        )

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        assert [line["id"] for line in lines] == ["a", "b"]
        for line in lines:
            expected_prompt: Any = tokenizer.apply_chat_template(
                [{"role": "user", "content": prompts[line["id"]]}],
                tokenize=True,
                add_generation_prompt=True,
            )
            if not isinstance(expected_prompt, list):  # transformers 5 returns a BatchEncoding
                expected_prompt = expected_prompt["input_ids"]
            assert line["prompt_tokens"] == len(expected_prompt)
            assert 1 <= line["completion_tokens"] <= 6
            assert line["finish_reason"] in ("stop", "length")
            if line["finish_reason"] == "length":
                assert line["completion_tokens"] == 6
            assert isinstance(line["text"], str)


def test_smollm2_answers_sensibly_through_the_async_endpoint(
    profile: Profile, tmp_path: Path
) -> None:
    with _package_and_deploy(profile, tmp_path, "smollm2"):
        question = "What is the capital of France? Answer in one short sentence."
        [line] = _invoke(
            profile, [{"id": "q", "prompt": question, "parameters": {"max_new_tokens": 24}}]
        )
        assert line["id"] == "q"
        assert line["completion_tokens"] > 0 and line["prompt_tokens"] > 5
        assert "Paris" in line["text"], line
