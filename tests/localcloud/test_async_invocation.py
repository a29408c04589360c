"""InvokeEndpointAsync end to end: output object, SNS->SQS notification, failures, real-time invoke."""

from __future__ import annotations

import json
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tasks.aws.clients import aws_client
from tasks.settings import Profile
from tests.localcloud.helpers import deploy_echo, jsonl, read_s3, receive, topics_and_queue


def test_async_success_and_model_error(profile: Profile, localcloud: Any) -> None:
    ok, err, queue = topics_and_queue(profile)
    name = deploy_echo(profile, topics=(ok, err))
    sm = aws_client("sagemaker", profile)
    described = sm.describe_endpoint(EndpointName=name)
    assert described["EndpointStatus"] == "InService"
    assert described["ProductionVariants"][0]["CurrentInstanceCount"] == 1
    rt = aws_client("sagemaker-runtime", profile)
    s3 = aws_client("s3", profile)
    s3.put_object(
        Bucket=profile.bucket, Key="in/a.jsonl", Body=jsonl({"id": "d1", "prompt": "hello there"})
    )
    resp = rt.invoke_endpoint_async(
        EndpointName=name,
        InputLocation=profile.s3_uri("in/a.jsonl"),
        ContentType="application/jsonlines",
        InferenceId="run1-batch1",
        CustomAttributes="trace=1",
    )
    assert resp["ResponseMetadata"]["HTTPStatusCode"] == 202
    assert resp["InferenceId"] == "run1-batch1"
    assert resp["OutputLocation"] == profile.s3_uri("async-outputs/run1-batch1.out")
    assert resp["FailureLocation"] == profile.s3_uri("async-failures/run1-batch1-error.out")
    poison = rt.invoke_endpoint_async(
        EndpointName=name,
        Body=jsonl({"id": "p", "prompt": "x __POISON__"}),
        ContentType="application/jsonlines",
        Filename="poison.out",
    )
    rt.invoke_endpoint_async(
        EndpointName=name, InputLocation=profile.s3_uri("in/missing.jsonl"), InferenceId="no-input"
    )
    notes = {n["inferenceId"]: n for n in receive(profile, queue, 3)}
    unreadable = notes["no-input"]
    assert unreadable["invocationStatus"] == "Failed"
    assert "Failed to download input data from" in unreadable["failureReason"]
    good = notes["run1-batch1"]
    assert good["invocationStatus"] == "Completed"
    assert good["eventName"] == "InferenceResult" and good["eventSource"] == "aws:sagemaker"
    assert good["requestParameters"] == {
        "contentType": "application/jsonlines",
        "endpointName": name,
        "inputLocation": profile.s3_uri("in/a.jsonl"),
        "customAttributes": "trace=1",
    }
    assert good["responseParameters"]["outputLocation"] == resp["OutputLocation"]
    assert {"awsRegion", "eventTime", "receivedTime", "eventVersion"} <= set(good)
    row = json.loads(read_s3(profile, resp["OutputLocation"]))
    assert row == {
        "id": "d1",
        "text": "v1:HELLO THERE",
        "prompt_tokens": 2,
        "completion_tokens": 2,
        "finish_reason": "stop",
    }
    bad = notes[poison["InferenceId"]]
    assert bad["invocationStatus"] == "Failed"
    assert (
        "ClientError: Received server error (500)" in bad["failureReason"]
        and "poison" in bad["failureReason"]
    )
    assert poison["OutputLocation"].endswith("/async-outputs/poison.out")
    assert bad["responseParameters"]["failureLocation"] == profile.s3_uri(
        "async-failures/poison-error.out"
    )
    assert b"poison" in read_s3(profile, bad["responseParameters"]["failureLocation"])
    with pytest.raises(ClientError) as missing:
        s3.head_object(Bucket=profile.bucket, Key="async-outputs/poison.out")
    assert missing.value.response["Error"]["Code"] == "404"

    # Real-time on the same instance: same handler, synchronous answer or ModelError.
    out = rt.invoke_endpoint(
        EndpointName=name,
        Body=jsonl({"id": "r", "prompt": "now"}),
        ContentType="application/jsonlines",
    )
    assert json.loads(out["Body"].read())["text"] == "v1:NOW"
    assert out["InvokedProductionVariant"] == "AllTraffic"
    with pytest.raises(ClientError) as model_error:
        rt.invoke_endpoint(
            EndpointName=name,
            Body=jsonl({"id": "r", "prompt": "__POISON__"}),
            ContentType="application/jsonlines",
        )
    assert model_error.value.response["Error"]["Code"] == "ModelError"
    assert dict(model_error.value.response)["OriginalStatusCode"] == 500
    stats = localcloud.stats.snapshot()[name]
    assert stats["completed"] == 2 and stats["failed"] == 3 and stats["running"] == 0


def test_test_notification_and_embedded_response(profile: Profile) -> None:
    ok, err, queue = topics_and_queue(profile, filtered=False)
    name = deploy_echo(profile, topics=(ok, err), include_response=True)
    tests = receive(profile, queue, 2)
    assert [n["eventName"] for n in tests] == ["TestNotification", "TestNotification"]
    rt = aws_client("sagemaker-runtime", profile)
    resp = rt.invoke_endpoint_async(
        EndpointName=name,
        Body=jsonl({"id": "e", "prompt": "embed me"}),
        ContentType="application/jsonlines",
    )
    (note,) = receive(profile, queue, 1)
    assert note["inferenceId"] == resp["InferenceId"]  # generated UUID when none is sent
    assert len(resp["InferenceId"]) == 36
    assert "responseBody" in note, note
    assert json.loads(note["responseBody"]["content"])["text"] == "v1:EMBED ME"
    aws_client("sagemaker", profile).delete_endpoint(EndpointName=name)
