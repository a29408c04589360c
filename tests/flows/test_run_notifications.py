"""A run's end reaches the <endpoint>-runs SNS topic: one message per completed and per failed run."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tasks.aws.clients import aws_client
from tasks.endpoint.spec import runs_topic_name
from tasks.endpoint.topics import ensure_topic
from tasks.run.fanout.run_queue import queue_policy
from tasks.settings import load_profile
from tests.runs import Deployment, run_flow, write_corpus

pytestmark = pytest.mark.usefixtures("prefect_harness", "faults")


def subscribe_queue(profile: Any, endpoint: str) -> str:
    """An SQS queue subscribed (raw delivery) to the endpoint's run topic; returns its URL."""
    sqs, sns = aws_client("sqs", profile), aws_client("sns", profile)
    topic, _ = ensure_topic(profile, runs_topic_name(endpoint))
    url = sqs.create_queue(QueueName=f"{endpoint}-runs-watch")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": queue_policy(arn, [topic])})
    sns.subscribe(
        TopicArn=topic,
        Protocol="sqs",
        Endpoint=arn,
        Attributes={"RawMessageDelivery": "true"},
    )
    return str(url)


def drain(profile: Any, url: str) -> list[dict[str, Any]]:
    """Every message on the queue now (bodies parsed)."""
    sqs = aws_client("sqs", profile)
    bodies: list[dict[str, Any]] = []
    while True:
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
        messages = got.get("Messages", [])
        if not messages:
            return bodies
        for message in messages:
            bodies.append(json.loads(message["Body"]))
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])


def test_a_completed_and_a_failed_run_each_send_one_message(
    deploy_echo: Callable[..., Deployment], tmp_path: Path
) -> None:
    dep = deploy_echo()
    prof = load_profile(dep.profile_path)
    url = subscribe_queue(prof, dep.endpoint)
    write_corpus(tmp_path / "c.jsonl", 12, poison={5})

    done = run_flow(dep, tmp_path / "c.jsonl", batch_size=4, run_key="notified1", max_attempts=1)
    assert (done.result["completed"], done.result["failed"]) == (11, 1)
    with pytest.raises(Exception, match="missing.jsonl"):
        run_flow(dep, tmp_path / "missing.jsonl", run_key="notified2")

    messages = sorted(drain(prof, url), key=lambda m: str(m["run_key"]))
    assert [(m["run_key"], m["event"]) for m in messages] == [
        ("notified1", "run.completed"),
        ("notified2", "run.failed"),
    ]
    completed, failed = messages
    # A completed run with failed documents says so.
    assert completed["outcome"] == "completed_with_failures"
    assert completed["counts"] == {
        "documents": 12,
        "completed": 11,
        "failed": 1,
        "rejected": 0,
        "canceled": 0,
    }
    assert completed["results_uri"] == done.result["results_uri"]
    assert failed["outcome"] == "failed" and "missing.jsonl" in failed["error"]
    assert all(m["endpoint"] == dep.endpoint for m in messages)
