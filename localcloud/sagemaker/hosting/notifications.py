"""Async inference notifications in AWS's JSON shape, published to SNS through the fault switchboard."""

from __future__ import annotations

import json
import logging
import threading
from datetime import UTC, datetime
from typing import Any

from localcloud.faults import Faults

log = logging.getLogger(__name__)

MAX_EMBEDDED_RESPONSE = 128 * 1024


def iso_millis(moment: datetime) -> str:
    """``2022-01-25T22:46:00.608Z``."""
    return (
        moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    )


def inference_result(
    *,
    region: str,
    endpoint_name: str,
    inference_id: str,
    received: datetime,
    content_type: str | None,
    input_location: str | None,
    custom_attributes: str | None,
    ok: bool,
    response_content_type: str | None = None,
    output_location: str | None = None,
    failure_location: str | None = None,
    failure_reason: str | None = None,
    response_body: bytes | None = None,
) -> dict[str, Any]:
    """The notification body for one finished invocation (success or failure)."""
    request: dict[str, Any] = {
        "contentType": content_type or "application/octet-stream",
        "endpointName": endpoint_name,
    }
    if input_location:
        request["inputLocation"] = input_location
    if custom_attributes is not None:
        request["customAttributes"] = custom_attributes
    response: dict[str, Any] = {
        "contentType": response_content_type or content_type or "application/octet-stream"
    }
    message: dict[str, Any] = {
        "awsRegion": region,
        "eventTime": iso_millis(datetime.now(UTC)),
        "receivedTime": iso_millis(received),
        "invocationStatus": "Completed" if ok else "Failed",
        "requestParameters": request,
        "responseParameters": response,
        "inferenceId": inference_id,
        "eventVersion": "1.0",
        "eventSource": "aws:sagemaker",
        "eventName": "InferenceResult",
    }
    if ok:
        response["outputLocation"] = output_location
        if response_body is not None and len(response_body) <= MAX_EMBEDDED_RESPONSE:
            message["responseBody"] = {
                "content": response_body.decode("utf-8", "replace"),
                "encoding": "UTF8",
            }
    else:
        message["failureReason"] = failure_reason or "ClientError: unknown failure"
        if failure_location:
            response["failureLocation"] = failure_location
    return message


def test_notification(region: str, endpoint_name: str) -> dict[str, Any]:
    """What SageMaker publishes after CreateEndpoint/UpdateEndpoint to prove the topic works."""
    return {
        "awsRegion": region,
        "eventTime": iso_millis(datetime.now(UTC)),
        "endpointName": endpoint_name,
        "eventVersion": "1.0",
        "eventSource": "aws:sagemaker",
        "eventName": "TestNotification",
        "message": f"Test notification for endpoint {endpoint_name}: the topic is reachable.",
    }


class Notifier:
    """Publishes to SNS (moto) and applies dropped / duplicated / delayed notification faults."""

    def __init__(self, sns: Any, faults: Faults) -> None:
        self.sns = sns
        self.faults = faults

    def _publish_now(self, topic_arn: str, body: str) -> None:
        try:
            self.sns.publish(TopicArn=topic_arn, Message=body)
        except (
            Exception
        ) as exc:  # a missing topic must not break serving; AWS counts NotificationFailures
            log.warning("localcloud: publishing to %s failed: %s", topic_arn, exc)

    def publish(
        self, topic_arn: str | None, message: dict[str, Any], *, faults: bool = True
    ) -> None:
        """Publish ``message`` (JSON) to ``topic_arn`` unless a fault drops it."""
        if not topic_arn:
            return
        body = json.dumps(message)
        if faults and self.faults.roll("drop_notification_rate"):
            return
        copies = 2 if faults and self.faults.roll("duplicate_notification_rate") else 1
        if faults and self.faults.roll("delay_notification_rate"):
            delay = self.faults.delay_s

            def later() -> None:
                for _ in range(copies):
                    self._publish_now(topic_arn, body)

            timer = threading.Timer(delay, later)
            timer.daemon = True
            timer.start()
            return
        for _ in range(copies):
            self._publish_now(topic_arn, body)
