"""The handler served by localcloud: a real model.tar.gz, InvokeEndpointAsync, output in S3."""

from __future__ import annotations

import io
import json
import tarfile
import uuid
from pathlib import Path
from typing import Any

from tasks.aws.clients import aws_client
from tasks.model.archive import code_files
from tasks.settings import Profile
from tests.inference.conftest import HANDLER_PATH, jsonl, without_cached

WAIT = {"Delay": 0.5, "MaxAttempts": 240}


def _artifact(model_dir: Path) -> bytes:
    """model.tar.gz as SageMaker expects it: weights at the root, the handler under code/."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(model_dir.iterdir()):
            tar.add(path, arcname=path.name)
        for name in code_files(HANDLER_PATH.parent):
            tar.add(HANDLER_PATH.with_name(name), arcname=f"code/{name}")
    return buffer.getvalue()


def _deploy(profile: Profile, model_dir: Path, per_instance: int = 1) -> str:
    s3 = aws_client("s3", profile)
    sm = aws_client("sagemaker", profile)
    tag = uuid.uuid4().hex[:6]
    s3.put_object(
        Bucket=profile.bucket, Key=f"models/{tag}/model.tar.gz", Body=_artifact(model_dir)
    )
    sm.create_model(
        ModelName=f"tiny-{tag}",
        ExecutionRoleArn="arn:aws:iam::123456789012:role/sm",
        PrimaryContainer={
            "Image": "docflow-serving:local",  # docflow's serving image: localcloud runs its real serve
            "ModelDataUrl": profile.s3_uri(f"models/{tag}/model.tar.gz"),
            "Environment": {"DOCFLOW_NUM_THREADS": "1", "DOCFLOW_MAX_BATCH_SIZE": "2"},
        },
    )
    sm.create_endpoint_config(
        EndpointConfigName=f"tiny-{tag}",
        ProductionVariants=[
            {
                "VariantName": "AllTraffic",
                "ModelName": f"tiny-{tag}",
                "InstanceType": "ml.g5.2xlarge",
                "InitialInstanceCount": 1,
            }
        ],
        AsyncInferenceConfig={
            "ClientConfig": {"MaxConcurrentInvocationsPerInstance": per_instance},
            "OutputConfig": {
                "S3OutputPath": profile.s3_uri("async-outputs"),
                "S3FailurePath": profile.s3_uri("async-failures"),
            },
        },
    )
    sm.create_endpoint(EndpointName=profile.endpoint_name, EndpointConfigName=f"tiny-{tag}")
    sm.get_waiter("endpoint_in_service").wait(EndpointName=profile.endpoint_name, WaiterConfig=WAIT)
    return profile.endpoint_name


def _read_when_ready(profile: Profile, uri: str) -> bytes:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    s3 = aws_client("s3", profile)
    s3.get_waiter("object_exists").wait(Bucket=bucket, Key=key, WaiterConfig=WAIT)
    body: bytes = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    return body


def test_tiny_mistral_served_by_localcloud(
    profile: Profile,
    tiny_dirs: dict[str, Path],
    loaded_models: dict[str, Any],
    run: Any,
) -> None:
    name = _deploy(profile, tiny_dirs["mistral"])
    try:
        _invoke_and_check(profile, name, run, loaded_models["mistral"])
    finally:
        aws_client("sagemaker", profile).delete_endpoint(EndpointName=name)


def _invoke_and_check(profile: Profile, name: str, run: Any, in_process: Any) -> None:
    docs: list[Any] = [
        {"id": f"d{i}", "prompt": p, "parameters": {"max_new_tokens": 6}}
        for i, p in enumerate(["Hi", "What is the capital of France?", "The quick brown fox jumps"])
    ]
    docs.append({"id": "empty", "prompt": ""})
    runtime = aws_client("sagemaker-runtime", profile)
    ok = runtime.invoke_endpoint_async(
        EndpointName=name,
        Body=jsonl(docs),
        ContentType="application/jsonlines",
        Accept="application/jsonlines",
        InferenceId="tiny-ok",
    )
    bad = runtime.invoke_endpoint_async(
        EndpointName=name, Body=b"\xff\xfe not utf-8\n", ContentType="application/jsonlines"
    )
    served = without_cached(
        [json.loads(line) for line in _read_when_ready(profile, ok["OutputLocation"]).splitlines()]
    )
    # The endpoint's instance (its own process, micro-batches of 2) answers exactly as in-process.
    assert served == run(in_process, docs)
    assert [r["id"] for r in served] == ["d0", "d1", "d2", "empty"]
    assert all(r["completion_tokens"] == 6 for r in served[:3] if r["finish_reason"] == "length")
    assert "empty prompt" in served[3]["error"]
    failure = _read_when_ready(profile, bad["FailureLocation"]).decode()
    assert "not UTF-8" in failure


def test_concurrent_invocations_share_the_instance_engine(
    profile: Profile,
    tiny_dirs: dict[str, Path],
    loaded_models: dict[str, Any],
    run: Any,
) -> None:
    """Two invocations in flight on one instance (one engine) each get exactly their own lines."""
    name = _deploy(profile, tiny_dirs["llama"], per_instance=2)
    try:
        payloads = [
            [
                {"id": f"{tag}{i}", "prompt": p, "parameters": {"max_new_tokens": 4 + 5 * i}}
                for i, p in enumerate(prompts)
            ]
            for tag, prompts in (
                ("a", ["Hi", "What is the capital of France?", "The quick brown fox jumps"]),
                ("b", ["Invoices, contracts and reports", "SageMaker runs the model", "Hi"]),
            )
        ]
        runtime = aws_client("sagemaker-runtime", profile)
        answers = [
            runtime.invoke_endpoint_async(
                EndpointName=name,
                Body=jsonl(docs),
                ContentType="application/jsonlines",
                InferenceId=f"concurrent-{n}",
            )
            for n, docs in enumerate(payloads)
        ]
        for docs, answer in zip(payloads, answers, strict=True):
            body = _read_when_ready(profile, answer["OutputLocation"])
            served = without_cached([json.loads(line) for line in body.splitlines()])
            assert served == run(loaded_models["llama"], docs)
    finally:
        aws_client("sagemaker", profile).delete_endpoint(EndpointName=name)
