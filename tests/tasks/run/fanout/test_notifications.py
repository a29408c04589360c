"""tasks.run.fanout.run_queue and tasks.run.fanout.notifications: the run's queue on the endpoint topics, parsing AWS's JSON."""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any

from tasks.aws.clients import aws_client
from tasks.run.fanout.notifications import is_expiry, parse_notification
from tasks.run.fanout.run_queue import close_run_queue, delete, open_run_queue, receive
from tasks.run.plan.layout import queue_name
from tasks.run.plan.target import EndpointOutputs
from tasks.settings import Profile

SUCCESS = {
    "awsRegion": "us-east-1",
    "eventTime": "2022-01-25T22:46:00.608Z",
    "receivedTime": "2022-01-25T22:46:00.455Z",
    "invocationStatus": "Completed",
    "requestParameters": {
        "contentType": "application/jsonlines",
        "endpointName": "my-endpoint",
        "inputLocation": "s3://bucket/input/batch.jsonl",
    },
    "responseParameters": {
        "contentType": "application/jsonlines",
        "outputLocation": "s3://bucket/output/abc.out",
    },
    "inferenceId": "run1-0123456789abcdef",
    "eventVersion": "1.0",
    "eventSource": "aws:sagemaker",
    "eventName": "InferenceResult",
}


def failure(reason: str, inference_id: str = "run1-0123456789abcdef") -> dict[str, Any]:
    return {
        **SUCCESS,
        "invocationStatus": "Failed",
        "inferenceId": inference_id,
        "failureReason": reason,
        "responseParameters": {"failureLocation": "s3://bucket/fail/abc-error.out"},
    }


def test_parse_success_and_failure() -> None:
    ok = parse_notification(json.dumps(SUCCESS))
    assert ok is not None
    assert ok.status == "completed"
    assert ok.inference_id == "run1-0123456789abcdef"
    assert ok.output_uri == "s3://bucket/output/abc.out"
    assert ok.event_time is not None and ok.received_time is not None
    assert (ok.event_time - ok.received_time).total_seconds() == 0.153
    bad = parse_notification(json.dumps(failure("ClientError: Received server error (500)")))
    assert bad is not None
    assert bad.status == "failed"
    assert bad.failure_uri == "s3://bucket/fail/abc-error.out"
    assert not bad.expired


def test_parse_ignores_test_and_foreign_messages() -> None:
    test_note = {"eventName": "TestNotification", "eventSource": "aws:sagemaker"}
    assert parse_notification(json.dumps(test_note)) is None
    assert parse_notification("not json") is None
    assert parse_notification(json.dumps([1, 2])) is None
    assert parse_notification(json.dumps({**SUCCESS, "invocationStatus": "Weird"})) is None


def test_parse_unwraps_an_sns_envelope() -> None:
    envelope = {"Type": "Notification", "Message": json.dumps(SUCCESS)}
    note = parse_notification(json.dumps(envelope))
    assert note is not None and note.status == "completed"


def test_expiry_reasons() -> None:
    assert is_expiry("ExpiredRequest: the request waited longer than RequestTTLSeconds (60 s)")
    assert is_expiry("ModelTimeoutError: the model did not respond within 1 s")
    assert not is_expiry('ClientError: Received server error (500) from model "__POISON__"')
    # Words late in a model's own message do not make a model error an expiry.
    assert not is_expiry("ClientError: Received server error (500) " + "x" * 80 + " expired")
    assert not is_expiry(None)


def test_queue_names_fit_sqs() -> None:
    assert queue_name("ep", "abc") == "docflow-ep-abc"
    # A run key's '.' (a shard's key: <key>.s001of008) is not allowed in SQS names.
    assert queue_name("ep", "abc.s001of008") == "docflow-ep-abc-s001of008"
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,80}", queue_name("e" * 63, "r.1" * 15, "-dlq"))
    long = queue_name("e" * 63, "r" * 47, "-dlq")
    assert len(long) <= 80
    assert long.endswith("-" + "r" * 47 + "-dlq")
    assert long != queue_name("e" * 62 + "f", "r" * 47, "-dlq")


def _topics(profile: Profile) -> EndpointOutputs:
    sns = aws_client("sns", profile)
    tag = uuid.uuid4().hex[:6]
    return EndpointOutputs(
        endpoint=f"ep-{tag}",
        success_topic=sns.create_topic(Name=f"ok-{tag}")["TopicArn"],
        error_topic=sns.create_topic(Name=f"err-{tag}")["TopicArn"],
        output_path=profile.s3_uri("async-outputs"),
        failure_path=profile.s3_uri("async-failures"),
    )


def _drain(profile: Profile, queue: Any, expect: int) -> list[Any]:
    got: list[Any] = []
    deadline = time.monotonic() + 10
    while len(got) < expect and time.monotonic() < deadline:
        batch = receive(profile, queue, wait_s=1)
        got += batch
        delete(profile, queue, [m.receipt_handle for m in batch])
    return got


def test_run_queue_gets_only_this_runs_results(profile: Profile) -> None:
    outputs = _topics(profile)
    queue = open_run_queue(profile, outputs, "run1")
    sqs = aws_client("sqs", profile)
    sns = aws_client("sns", profile)
    try:
        attrs = sqs.get_queue_attributes(QueueUrl=queue.queue_url, AttributeNames=["All"])
        policy = json.loads(attrs["Attributes"]["Policy"])
        condition = policy["Statement"][0]["Condition"]["ArnEquals"]["aws:SourceArn"]
        assert sorted(condition) == sorted([outputs.success_topic, outputs.error_topic])
        assert json.loads(attrs["Attributes"]["RedrivePolicy"])["deadLetterTargetArn"] == (
            queue.dlq_arn
        )
        for arn in queue.subscription_arns:
            sub = sns.get_subscription_attributes(SubscriptionArn=arn)["Attributes"]
            assert sub["RawMessageDelivery"] == "true"
            assert sub["FilterPolicyScope"] == "MessageBody"
            assert json.loads(sub["FilterPolicy"]) == {"inferenceId": [{"prefix": "run1-"}]}
        sns.publish(TopicArn=outputs.success_topic, Message=json.dumps(SUCCESS))
        other = {**SUCCESS, "inferenceId": "run2-0123456789abcdef"}
        sns.publish(TopicArn=outputs.success_topic, Message=json.dumps(other))
        sns.publish(TopicArn=outputs.error_topic, Message=json.dumps(failure("boom")))
        received = _drain(profile, queue, 2)
        assert receive(profile, queue, wait_s=1) == []  # run2's result was filtered out
        notes = sorted(m.notification.status for m in received if m.notification)
        assert notes == ["completed", "failed"]
        assert {m.notification.inference_id for m in received if m.notification} == {
            "run1-0123456789abcdef"
        }
    finally:
        close_run_queue(profile, queue)
    urls = sqs.list_queues(QueueNamePrefix=queue.name).get("QueueUrls", [])
    assert urls == []
    assert not [
        s
        for s in sns.list_subscriptions_by_topic(TopicArn=outputs.success_topic)["Subscriptions"]
        if s["Endpoint"] == queue.queue_arn
    ]
    close_run_queue(profile, queue)  # a second cleanup is harmless


def test_reopening_a_run_queue_reuses_it(profile: Profile) -> None:
    outputs = _topics(profile)
    first = open_run_queue(profile, outputs, "run7")
    try:
        again = open_run_queue(profile, outputs, "run7")
        assert again.queue_url == first.queue_url
    finally:
        close_run_queue(profile, first)
