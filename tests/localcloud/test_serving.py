"""Serving behaviour: rolling update with a queue, the concurrency bound, scale to zero and back, TTL, timeout."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from localcloud.testing.artifacts import upload_echo_model
from tasks.aws.clients import aws_client
from tasks.settings import Profile
from tests.localcloud.helpers import (
    FAST_WAIT,
    deploy_echo,
    echo_config,
    jsonl,
    read_s3,
    receive,
    topics_and_queue,
)


def _invoke(
    profile: Profile, name: str, doc_id: str, sleep_s: float = 0.0, **extra: Any
) -> dict[str, Any]:
    rt = aws_client("sagemaker-runtime", profile)
    body = jsonl({"id": doc_id, "prompt": f"doc {doc_id}", "parameters": {"sleep_s": sleep_s}})
    resp: dict[str, Any] = rt.invoke_endpoint_async(
        EndpointName=name,
        Body=body,
        ContentType="application/jsonlines",
        InferenceId=doc_id,
        **extra,
    )
    return resp


def test_update_with_queued_requests_loses_none(profile: Profile, localcloud: Any) -> None:
    ok, err, queue = topics_and_queue(profile)
    name = deploy_echo(profile, version="1", max_concurrent=2, topics=(ok, err))
    sm = aws_client("sagemaker", profile)
    old_pids = localcloud.instance_pids(name)
    first = [_invoke(profile, name, f"a{i}", sleep_s=0.3) for i in range(6)]
    uri = upload_echo_model(
        aws_client("s3", profile), profile.bucket, "models/v2.tar.gz", version="2"
    )
    model = f"v2-{uuid.uuid4().hex[:6]}"
    sm.create_model(ModelName=model, PrimaryContainer={"Image": "echo", "ModelDataUrl": uri})
    config = echo_config(profile, sm, model, max_concurrent=2, topics=(ok, err))
    sm.update_endpoint(EndpointName=name, EndpointConfigName=config)
    assert sm.describe_endpoint(EndpointName=name)["EndpointStatus"] == "Updating"
    during = [_invoke(profile, name, f"b{i}", sleep_s=0.1) for i in range(4)]
    sm.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig=FAST_WAIT)
    assert sm.describe_endpoint(EndpointName=name)["EndpointConfigName"] == config
    after = [_invoke(profile, name, f"c{i}") for i in range(3)]
    notes = receive(profile, queue, len(first) + len(during) + len(after))
    assert sorted(n["inferenceId"] for n in notes) == sorted(
        r["InferenceId"] for r in first + during + after
    )
    assert all(n["invocationStatus"] == "Completed" for n in notes)
    for resp in after:
        assert json.loads(read_s3(profile, resp["OutputLocation"]))["text"].startswith("v2:")
    versions = {
        json.loads(read_s3(profile, r["OutputLocation"]))["text"][:3] for r in first + during
    }
    assert versions <= {"v1:", "v2:"} and "v1:" in versions
    stats = localcloud.stats.snapshot()[name]
    assert stats["completed"] == 13 and stats["failed"] == 0
    deadline = time.monotonic() + 10  # the old instance drained and stopped
    while set(old_pids) & set(localcloud.instance_pids(name)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not set(old_pids) & set(localcloud.instance_pids(name))
    assert len(localcloud.instance_pids(name)) == 1
    sm.delete_endpoint(EndpointName=name)


def test_concurrency_bound_and_scale_to_zero(profile: Profile, localcloud: Any) -> None:
    ok, err, queue = topics_and_queue(profile)
    name = deploy_echo(profile, instances=2, max_concurrent=2, topics=(ok, err))
    sm = aws_client("sagemaker", profile)
    sent = [_invoke(profile, name, f"x{i}", sleep_s=0.25) for i in range(12)]
    receive(profile, queue, len(sent))
    stats = localcloud.stats.snapshot()[name]
    assert stats["completed"] == 12
    assert 2 <= stats["max_running"] <= 2 * 2  # instances x MaxConcurrentInvocationsPerInstance

    variant = [{"VariantName": "AllTraffic", "DesiredInstanceCount": 0}]
    sm.update_endpoint_weights_and_capacities(
        EndpointName=name, DesiredWeightsAndCapacities=variant
    )
    sm.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig=FAST_WAIT)
    summary = sm.describe_endpoint(EndpointName=name)["ProductionVariants"][0]
    assert summary["CurrentInstanceCount"] == 0 and summary["DesiredInstanceCount"] == 0
    assert localcloud.instance_pids(name) == []
    waiting = [_invoke(profile, name, f"z{i}") for i in range(3)]
    time.sleep(0.5)
    assert localcloud.stats.snapshot()[name]["queued"] == 3  # no capacity: they wait in the queue
    variant[0]["DesiredInstanceCount"] = 1
    sm.update_endpoint_weights_and_capacities(
        EndpointName=name, DesiredWeightsAndCapacities=variant
    )
    notes = receive(profile, queue, len(waiting))
    assert sorted(n["inferenceId"] for n in notes) == ["z0", "z1", "z2"]
    sm.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig=FAST_WAIT)
    assert (
        sm.describe_endpoint(EndpointName=name)["ProductionVariants"][0]["CurrentInstanceCount"]
        == 1
    )
    sm.delete_endpoint(EndpointName=name)


def test_ttl_expiry_timeout_and_naming_headers(profile: Profile, localcloud: Any) -> None:
    ok, err, queue = topics_and_queue(profile)
    name = deploy_echo(profile, topics=(ok, err))
    sm = aws_client("sagemaker", profile)
    _invoke(profile, name, "slow", sleep_s=3, InvocationTimeoutSeconds=1)
    named = _invoke(profile, name, "named", S3OutputPathExtension="run-7", Filename="batch-1.out")
    assert named["OutputLocation"] == profile.s3_uri("async-outputs/run-7/batch-1.out")
    assert named["FailureLocation"] == profile.s3_uri("async-failures/run-7/batch-1-error.out")
    notes = {n["inferenceId"]: n for n in receive(profile, queue, 2)}
    assert notes["slow"]["invocationStatus"] == "Failed"
    assert "InvocationTimeoutSeconds" in notes["slow"]["failureReason"]
    assert notes["named"]["responseParameters"]["outputLocation"] == named["OutputLocation"]

    # RequestTTLSeconds: with no capacity the request waits, then expires with a failure notification.
    sm.update_endpoint_weights_and_capacities(
        EndpointName=name,
        DesiredWeightsAndCapacities=[{"VariantName": "AllTraffic", "DesiredInstanceCount": 0}],
    )
    sm.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig=FAST_WAIT)
    localcloud.faults.set(ttl_scale=0.01)  # 60 s (AWS's minimum TTL) becomes 0.6 s
    try:
        _invoke(profile, name, "expires", RequestTTLSeconds=60)
        (note,) = receive(profile, queue, 1)
    finally:
        localcloud.faults.reset()
    assert note["inferenceId"] == "expires" and note["invocationStatus"] == "Failed"
    assert "RequestTTLSeconds" in note["failureReason"]
    assert b"RequestTTLSeconds" in read_s3(profile, note["responseParameters"]["failureLocation"])
    sm.delete_endpoint(EndpointName=name)
