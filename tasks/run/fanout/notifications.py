"""Async inference notifications: parse them into batch outcomes (success, failure, expiry)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel

# AWS and localcloud name the cause first ("ExpiredRequest: …", "ModelTimeoutError: …").
EXPIRED_PATTERN = re.compile(r"expired|timeout|timed out|\bTTL\b", re.IGNORECASE)
EXPIRED_SCAN_CHARS = 80


def is_expiry(reason: str | None) -> bool:
    """Whether a failure reason says the request expired (TTL) or timed out, not that the model failed."""
    return bool(EXPIRED_PATTERN.search((reason or "")[:EXPIRED_SCAN_CHARS]))


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
