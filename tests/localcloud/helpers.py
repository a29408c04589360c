"""Shared steps for localcloud tests: deploy the echo model, wire topics to a queue, read notifications."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from localcloud.testing.artifacts import upload_echo_model
from tasks.aws.clients import aws_client
from tasks.settings import Profile

FAST_WAIT = {"Delay": 0.2, "MaxAttempts": 300}


def topics_and_queue(profile: Profile, filtered: bool = True) -> tuple[str, str, str]:
    """Success and error topics, both delivering raw to one new queue; returns (ok arn, err arn, queue url)."""
    sns = aws_client("sns", profile)
    sqs = aws_client("sqs", profile)
    tag = uuid.uuid4().hex[:8]
    ok = sns.create_topic(Name=f"ok-{tag}")["TopicArn"]
    err = sns.create_topic(Name=f"err-{tag}")["TopicArn"]
    url = sqs.create_queue(QueueName=f"q-{tag}")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    for topic in (ok, err):
        attributes = {"RawMessageDelivery": "true"}
        if filtered:
            attributes["FilterPolicyScope"] = "MessageBody"
            attributes["FilterPolicy"] = json.dumps({"eventName": ["InferenceResult"]})
        sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn, Attributes=attributes)
    return ok, err, url


def deploy_echo(
    profile: Profile,
    *,
    name: str | None = None,
    version: str | None = "1",
    instances: int = 1,
    max_concurrent: int = 2,
    topics: tuple[str, str] | None = None,
    asynchronous: bool = True,
    environment: dict[str, str] | None = None,
    wait: bool = True,
    failure_path: bool = True,
    include_response: bool = False,
) -> str:
    """Upload the echo artifact, create model + config + endpoint; returns the endpoint name."""
    sm = aws_client("sagemaker", profile)
    name = name or profile.endpoint_name
    model_uri = upload_echo_model(
        aws_client("s3", profile),
        profile.bucket,
        f"models/{name}-v{version}.tar.gz",
        version=version,
    )
    model = f"{name}-m{version}-{uuid.uuid4().hex[:4]}"
    sm.create_model(
        ModelName=model,
        ExecutionRoleArn="arn:aws:iam::123456789012:role/sm",
        PrimaryContainer={
            "Image": "echo:latest",
            "ModelDataUrl": model_uri,
            "Environment": environment or {},
        },
    )
    config = echo_config(
        profile,
        sm,
        model,
        instances,
        max_concurrent,
        topics,
        asynchronous,
        failure_path,
        include_response,
    )
    sm.create_endpoint(EndpointName=name, EndpointConfigName=config)
    if wait:
        sm.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig=FAST_WAIT)
    return name


def echo_config(
    profile: Profile,
    sm: Any,
    model: str,
    instances: int = 1,
    max_concurrent: int = 2,
    topics: tuple[str, str] | None = None,
    asynchronous: bool = True,
    failure_path: bool = True,
    include_response: bool = False,
) -> str:
    """An endpoint config serving ``model``; returns its name."""
    config = f"{model}-c-{uuid.uuid4().hex[:4]}"
    kwargs: dict[str, Any] = {}
    if asynchronous:
        output: dict[str, Any] = {"S3OutputPath": profile.s3_uri("async-outputs")}
        if failure_path:
            output["S3FailurePath"] = profile.s3_uri("async-failures")
        if topics:
            output["NotificationConfig"] = {"SuccessTopic": topics[0], "ErrorTopic": topics[1]}
            if include_response:
                output["NotificationConfig"]["IncludeInferenceResponseIn"] = [
                    "SUCCESS_NOTIFICATION_TOPIC"
                ]
        kwargs["AsyncInferenceConfig"] = {
            "ClientConfig": {"MaxConcurrentInvocationsPerInstance": max_concurrent},
            "OutputConfig": output,
        }
    sm.create_endpoint_config(
        EndpointConfigName=config,
        ProductionVariants=[
            {
                "VariantName": "AllTraffic",
                "ModelName": model,
                "InstanceType": "ml.g5.2xlarge",
                "InitialInstanceCount": instances,
            }
        ],
        **kwargs,
    )
    return config


def receive(
    profile: Profile, queue_url: str, count: int, timeout_s: float = 30.0
) -> list[dict[str, Any]]:
    """Collect ``count`` notification bodies from the queue (deleting them), or fail after ``timeout_s``."""
    sqs = aws_client("sqs", profile)
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < count and time.monotonic() < deadline:
        resp = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
        for m in resp.get("Messages", []):
            got.append(json.loads(m["Body"]))
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"])
    assert len(got) >= count, f"expected {count} notifications, got {len(got)}: {got}"
    return got


def read_s3(profile: Profile, uri: str) -> bytes:
    """The object at ``s3://bucket/key``."""
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    body: bytes = aws_client("s3", profile).get_object(Bucket=bucket, Key=key)["Body"].read()
    return body


def jsonl(*docs: dict[str, Any]) -> bytes:
    """JSON Lines payload."""
    return "".join(json.dumps(d) + "\n" for d in docs).encode()
