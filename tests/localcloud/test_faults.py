"""The fault switchboard: every fault observable over HTTP and from Python, seeded, off by default."""

from __future__ import annotations

import time
from typing import Any

import boto3
import pytest
import requests
from botocore.config import Config
from botocore.exceptions import ClientError

from tasks.aws.clients import aws_client
from tasks.settings import Profile
from tests.localcloud.helpers import deploy_echo, jsonl, receive, topics_and_queue


def _send(profile: Profile, name: str, ids: list[str]) -> None:
    rt = aws_client("sagemaker-runtime", profile)
    for doc_id in ids:
        rt.invoke_endpoint_async(
            EndpointName=name,
            Body=jsonl({"id": doc_id, "prompt": "p"}),
            ContentType="application/jsonlines",
            InferenceId=doc_id,
        )


def test_http_switchboard_and_throttling(profile: Profile, localcloud: Any, faults: Any) -> None:
    url = f"{localcloud.url}/_localcloud/faults"
    assert requests.get(url, timeout=5).json()["settings"]["throttle_rate"] == 0.0
    assert (
        requests.put(url, json={"throttle_rate": 1.0}, timeout=5).json()["settings"][
            "throttle_rate"
        ]
        == 1.0
    )
    bad = requests.put(url, json={"throttle_rate": 2}, timeout=5)
    assert bad.status_code == 400 and "between 0 and 1" in bad.json()["error"]
    name = deploy_echo(profile)
    # botocore's standard retry mode treats 503 as retryable: 2 attempts, both throttled.
    rt = boto3.client(
        "sagemaker-runtime", config=Config(retries={"mode": "standard", "total_max_attempts": 2})
    )
    with pytest.raises(ClientError) as info:
        rt.invoke_endpoint_async(
            EndpointName=name,
            Body=jsonl({"id": "t", "prompt": "p"}),
            ContentType="application/jsonlines",
        )
    assert info.value.response["Error"]["Code"] == "ServiceUnavailable"
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert info.value.response["ResponseMetadata"]["RetryAttempts"] == 1
    assert requests.get(url, timeout=5).json()["counters"]["throttled"] == 2
    requests.delete(url, timeout=5)
    assert faults.counters()["throttled"] == 0
    stats = requests.get(f"{localcloud.url}/_localcloud/stats", timeout=5).json()[name]
    assert stats["received"] == 0
    aws_client("sagemaker", profile).delete_endpoint(EndpointName=name)


def test_model_errors_and_notification_faults(
    profile: Profile, localcloud: Any, faults: Any
) -> None:
    ok, err, queue = topics_and_queue(profile)
    name = deploy_echo(profile, topics=(ok, err))

    faults.set(model_error_rate=1.0)
    _send(profile, name, ["m1", "m2"])
    notes = receive(profile, queue, 2)
    assert {n["invocationStatus"] for n in notes} == {"Failed"}
    assert all("injected model error" in n["failureReason"] for n in notes)
    assert faults.counters()["model_errors"] == 2

    faults.reset()
    faults.set(duplicate_notification_rate=1.0)
    _send(profile, name, ["d1"])
    dupes = receive(profile, queue, 2)
    assert [n["inferenceId"] for n in dupes] == ["d1", "d1"]
    assert faults.counters()["duplicated_notifications"] == 1

    faults.reset()
    faults.set(drop_notification_rate=1.0)
    _send(profile, name, ["x1", "x2"])
    deadline = time.monotonic() + 20
    while localcloud.stats.snapshot()[name]["completed"] < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert faults.counters()["dropped_notifications"] == 2
    sqs = aws_client("sqs", profile)
    assert "Messages" not in sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=1)

    faults.reset()
    faults.set(delay_notification_rate=1.0, delay_notification_s=1.5)
    _send(profile, name, ["late"])
    assert "Messages" not in sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=1)
    (late,) = receive(profile, queue, 1, timeout_s=10)
    assert late["inferenceId"] == "late" and faults.counters()["delayed_notifications"] == 1
    aws_client("sagemaker", profile).delete_endpoint(EndpointName=name)


def test_instance_killed_mid_request_is_replaced(
    profile: Profile, localcloud: Any, faults: Any
) -> None:
    ok, err, queue = topics_and_queue(profile)
    name = deploy_echo(profile, topics=(ok, err))
    (before,) = localcloud.instance_pids(name)
    faults.set(kill_instance_rate=1.0)
    _send(profile, name, ["k1"])
    (note,) = receive(profile, queue, 1)
    assert (
        note["invocationStatus"] == "Failed" and "terminated unexpectedly" in note["failureReason"]
    )
    assert faults.counters()["killed_instances"] == 1
    faults.reset()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and localcloud.instance_pids(name) in ([], [before]):
        time.sleep(0.1)
    (after,) = localcloud.instance_pids(name)
    assert after != before
    _send(profile, name, ["k2"])
    (note,) = receive(profile, queue, 1)
    assert note["inferenceId"] == "k2" and note["invocationStatus"] == "Completed"
    aws_client("sagemaker", profile).delete_endpoint(EndpointName=name)


def test_seeded_rates_are_reproducible(localcloud: Any, faults: Any) -> None:
    faults.set(seed=7, model_error_rate=0.5)
    first = [faults.roll("model_error_rate") for _ in range(40)]
    faults.reset()
    faults.set(seed=7, model_error_rate=0.5)
    assert [faults.roll("model_error_rate") for _ in range(40)] == first
    assert 5 < sum(first) < 35


def test_every_request_ends_once_under_mixed_faults(
    profile: Profile, localcloud: Any, faults: Any
) -> None:
    ok, err, queue = topics_and_queue(profile)
    name = deploy_echo(profile, instances=2, max_concurrent=2, topics=(ok, err))
    faults.set(seed=3, kill_instance_rate=0.1, model_error_rate=0.15)
    ids = [f"s{i:02d}" for i in range(30)]
    _send(profile, name, ids)
    notes = receive(profile, queue, len(ids), timeout_s=60)
    assert sorted(n["inferenceId"] for n in notes) == ids  # exactly one terminal event each
    failed = [n for n in notes if n["invocationStatus"] == "Failed"]
    counters = faults.counters()
    assert counters["killed_instances"] >= 1 and counters["model_errors"] >= 1
    assert len(failed) >= counters["killed_instances"] + counters["model_errors"]
    stats = localcloud.stats.snapshot()[name]
    assert stats["completed"] + stats["failed"] == len(ids) and stats["running"] == 0
    assert stats["max_running"] <= 2 * 2
    faults.reset()
    deadline = time.monotonic() + 30  # dead instances are replaced: back to two
    while len(localcloud.instance_pids(name)) != 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(localcloud.instance_pids(name)) == 2
    aws_client("sagemaker", profile).delete_endpoint(EndpointName=name)
