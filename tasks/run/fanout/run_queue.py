"""A run's SQS queue on the endpoint's SNS topics: create it, long-poll it, delete handled messages, remove it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from botocore.exceptions import ClientError
from pydantic import BaseModel

from tasks.aws.clients import aws_client
from tasks.run.fanout.notifications import Received, parse_notification
from tasks.run.plan.layout import inference_prefix, queue_name
from tasks.run.plan.target import EndpointOutputs
from tasks.settings import Profile


class RunQueue(BaseModel):
    """The per-run queue, its dead-letter queue and the two topic subscriptions feeding it."""

    name: str
    queue_url: str
    queue_arn: str
    dlq_url: str
    dlq_arn: str
    subscription_arns: list[str] = []
    filter_prefix: str


def queue_policy(queue_arn: str, topic_arns: Sequence[str]) -> str:
    """A queue policy admitting SendMessage from SNS only on behalf of ``topic_arns``."""
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "endpoint-topics-only",
                    "Effect": "Allow",
                    "Principal": {"Service": "sns.amazonaws.com"},
                    "Action": "sqs:SendMessage",
                    "Resource": queue_arn,
                    "Condition": {"ArnEquals": {"aws:SourceArn": list(topic_arns)}},
                }
            ],
        }
    )


def filter_policy(prefix: str) -> str:
    """Body filter that admits only this run's InferenceResults."""
    return json.dumps({"inferenceId": [{"prefix": prefix}]})


def _create_queue(sqs: Any, name: str, attributes: dict[str, str]) -> tuple[str, str]:
    url = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    return url, arn


def open_run_queue(
    profile: Profile, outputs: EndpointOutputs, run_key: str, *, visibility_timeout_s: int = 60
) -> RunQueue:
    """Create (or reuse) the run's queue and DLQ and subscribe them to both topics, before any invoke."""
    sqs = aws_client("sqs", profile)
    sns = aws_client("sns", profile)
    topics = [outputs.success_topic, outputs.error_topic]
    name = queue_name(outputs.endpoint, run_key)
    dlq_url, dlq_arn = _create_queue(
        sqs, queue_name(outputs.endpoint, run_key, "-dlq"), {"MessageRetentionPeriod": "1209600"}
    )
    sqs.set_queue_attributes(QueueUrl=dlq_url, Attributes={"Policy": queue_policy(dlq_arn, topics)})
    url, arn = _create_queue(
        sqs,
        name,
        {
            "VisibilityTimeout": str(visibility_timeout_s),
            "MessageRetentionPeriod": "1209600",
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "10"}),
        },
    )
    sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": queue_policy(arn, topics)})
    prefix = inference_prefix(run_key)
    subscriptions = []
    for topic in topics:
        sub = sns.subscribe(
            TopicArn=topic,
            Protocol="sqs",
            Endpoint=arn,
            Attributes={
                "RawMessageDelivery": "true",
                "FilterPolicyScope": "MessageBody",
                "FilterPolicy": filter_policy(prefix),
                "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn}),
            },
            ReturnSubscriptionArn=True,
        )
        subscriptions.append(sub["SubscriptionArn"])
    return RunQueue(
        name=name,
        queue_url=url,
        queue_arn=arn,
        dlq_url=dlq_url,
        dlq_arn=dlq_arn,
        subscription_arns=subscriptions,
        filter_prefix=prefix,
    )


def close_run_queue(profile: Profile, queue: RunQueue) -> None:
    """Unsubscribe and delete the run's queues; objects already gone are fine."""
    sns = aws_client("sns", profile)
    sqs = aws_client("sqs", profile)
    for arn in queue.subscription_arns:
        try:
            sns.unsubscribe(SubscriptionArn=arn)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in {"NotFound", "NotFoundException"}:
                raise
    for url in (queue.queue_url, queue.dlq_url):
        try:
            sqs.delete_queue(QueueUrl=url)
        except ClientError as exc:
            if "NonExistentQueue" not in exc.response.get("Error", {}).get("Code", ""):
                raise


def receive(
    profile: Profile, queue: RunQueue, *, wait_s: int = 1, max_messages: int = 10
) -> list[Received]:
    """Long-poll the run's queue once (``wait_s`` ≤ 20); the client's read timeout exceeds the wait."""
    sqs = aws_client("sqs", profile, read_timeout_s=wait_s + profile.read_timeout_s)
    response = sqs.receive_message(
        QueueUrl=queue.queue_url,
        MaxNumberOfMessages=max(1, min(10, max_messages)),
        WaitTimeSeconds=max(0, min(20, wait_s)),
    )
    return [
        Received(receipt_handle=m["ReceiptHandle"], notification=parse_notification(m["Body"]))
        for m in response.get("Messages", [])
    ]


def delete(profile: Profile, queue: RunQueue, receipt_handles: Sequence[str]) -> None:
    """Delete handled messages (call only after their effect is recorded)."""
    sqs = aws_client("sqs", profile)
    handles = list(receipt_handles)
    for start in range(0, len(handles), 10):
        chunk = handles[start : start + 10]
        sqs.delete_message_batch(
            QueueUrl=queue.queue_url,
            Entries=[{"Id": str(i), "ReceiptHandle": h} for i, h in enumerate(chunk)],
        )
