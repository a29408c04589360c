"""A run's SQS queue on the endpoint's SNS topics: create, long-poll, parse, reconcile against S3, remove."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from botocore.exceptions import ClientError
from pydantic import BaseModel

from tasks.aws.clients import aws_client
from tasks.run import layout
from tasks.run.layout import inference_prefix, queue_name
from tasks.settings import Profile

# AWS and localcloud name the cause first ("ExpiredRequest: …", "ModelTimeoutError: …").
EXPIRED_PATTERN = re.compile(r"expired|timeout|timed out|\bTTL\b", re.IGNORECASE)
EXPIRED_SCAN_CHARS = 80


def is_expiry(reason: str | None) -> bool:
    """Whether a failure reason says the request expired (TTL) or timed out, not that the model failed."""
    return bool(EXPIRED_PATTERN.search((reason or "")[:EXPIRED_SCAN_CHARS]))


class EndpointOutputs(BaseModel):
    """Where an async endpoint sends results and notifications (from its endpoint config)."""

    endpoint: str
    success_topic: str
    error_topic: str
    output_path: str
    failure_path: str | None = None
    model_artifact: str = ""
    model_environment: dict[str, str] = {}

    def output_uri(self, run_key: str, batch_id: str, attempt: int) -> str:
        """Where attempt ``attempt`` of a batch writes its result."""
        return layout.output_uri(self.output_path, run_key, batch_id, attempt)

    def failure_uri(self, run_key: str, batch_id: str, attempt: int) -> str:
        """Where attempt ``attempt`` of a batch writes its failure (the output path when unset)."""
        return layout.failure_uri(self.failure_path or self.output_path, run_key, batch_id, attempt)


class RunQueue(BaseModel):
    """The per-run queue, its dead-letter queue and the two topic subscriptions feeding it."""

    name: str
    queue_url: str
    queue_arn: str
    dlq_url: str
    dlq_arn: str
    subscription_arns: list[str] = []
    filter_prefix: str


class Notification(BaseModel):
    """One SageMaker async InferenceResult, parsed from AWS's JSON."""

    inference_id: str
    status: Literal["completed", "failed"]
    event_time: datetime | None = None
    received_time: datetime | None = None
    output_uri: str | None = None
    failure_uri: str | None = None
    failure_reason: str | None = None

    @property
    def expired(self) -> bool:
        """True when the failure says the request outlived its TTL or invocation timeout."""
        return self.status == "failed" and is_expiry(self.failure_reason)


class Received(BaseModel):
    """A message taken off the queue: its receipt handle and the notification it holds (None: ignore)."""

    receipt_handle: str
    notification: Notification | None


class Outcome(BaseModel):
    """What became of one submitted batch, from a notification or from looking in S3."""

    batch_id: str
    status: Literal["completed", "failed"]
    expired: bool = False
    reason: str | None = None
    output_uri: str | None = None
    failure_uri: str | None = None
    event_time: datetime | None = None
    received_time: datetime | None = None
    source: Literal["notification", "reconcile"] = "notification"


def endpoint_outputs(profile: Profile, endpoint: str) -> EndpointOutputs:
    """Read the topics and S3 paths of ``endpoint``'s AsyncInferenceConfig."""
    sm = aws_client("sagemaker", profile)
    try:
        desc = sm.describe_endpoint(EndpointName=endpoint)
    except ClientError as exc:
        raise ValueError(
            f"endpoint {endpoint!r} not found ({exc}); deploy it first with the deploy-endpoint flow"
        ) from exc
    config = sm.describe_endpoint_config(EndpointConfigName=desc["EndpointConfigName"])
    async_cfg = config.get("AsyncInferenceConfig") or {}
    output = async_cfg.get("OutputConfig") or {}
    notify = output.get("NotificationConfig") or {}
    if not notify.get("SuccessTopic") or not notify.get("ErrorTopic"):
        raise ValueError(
            f"endpoint {endpoint!r} has no success and error topics in its AsyncInferenceConfig; "
            "redeploy it with the deploy-endpoint flow, which sets both"
        )
    return EndpointOutputs(
        endpoint=endpoint,
        success_topic=notify["SuccessTopic"],
        error_topic=notify["ErrorTopic"],
        output_path=output["S3OutputPath"],
        failure_path=output.get("S3FailurePath"),
        **_model_container(sm, config),
    )


def _model_container(sm: Any, config: dict[str, Any]) -> dict[str, Any]:
    """The S3 model location (part of the run key) and container environment of the first variant."""
    variants = config.get("ProductionVariants") or []
    if not variants:
        return {}
    model = sm.describe_model(ModelName=variants[0]["ModelName"])
    container = model.get("PrimaryContainer") or (model.get("Containers") or [{}])[0]
    source = (container.get("ModelDataSource") or {}).get("S3DataSource") or {}
    return {
        "model_artifact": str(container.get("ModelDataUrl") or source.get("S3Uri") or ""),
        "model_environment": dict(container.get("Environment") or {}),
    }


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


def _time(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def parse_notification(body: str) -> Notification | None:
    """The InferenceResult in an SQS body (raw or SNS-wrapped); None for test or foreign messages."""
    try:
        data = json.loads(body)
    except (TypeError, ValueError):
        return None
    if isinstance(data, dict) and data.get("Type") == "Notification" and "Message" in data:
        return parse_notification(str(data["Message"]))
    if not isinstance(data, dict) or data.get("eventName") != "InferenceResult":
        return None
    inference_id = data.get("inferenceId")
    status = str(data.get("invocationStatus", "")).lower()
    if not inference_id or status not in {"completed", "failed"}:
        return None
    response = data.get("responseParameters") or {}
    return Notification(
        inference_id=str(inference_id),
        status="completed" if status == "completed" else "failed",
        event_time=_time(data.get("eventTime")),
        received_time=_time(data.get("receivedTime")),
        output_uri=response.get("outputLocation"),
        failure_uri=response.get("failureLocation"),
        failure_reason=data.get("failureReason"),
    )


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


def outcome_from_notification(batch_id: str, note: Notification) -> Outcome:
    """The batch outcome a notification reports."""
    return Outcome(
        batch_id=batch_id,
        status=note.status,
        expired=note.expired,
        reason=note.failure_reason,
        output_uri=note.output_uri,
        failure_uri=note.failure_uri,
        event_time=note.event_time,
        received_time=note.received_time,
    )
