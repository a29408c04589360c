"""What a batch outcome does to the run: complete it, retry it (bounded), split it, or fail it with a reason."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from enum import StrEnum

from tasks.aws.clients import aws_client
from tasks.aws.s3 import split_s3_uri
from tasks.run.fanout.notifications import Outcome
from tasks.run.fanout.staging import stage_inputs, staged_input
from tasks.run.plan.batching import BatchPayload, split_batch
from tasks.run.plan.manifest import BatchRecord, BatchStatus, RunManifest, new_record
from tasks.run.plan.target import EndpointOutputs
from tasks.settings import Profile


class Decision(StrEnum):
    """What applying one outcome did."""

    COMPLETED = "completed"
    RETRY = "retry"
    SPLIT = "split"
    FAILED = "failed"
    IGNORED = "ignored"


def _is_stale_failure(record: BatchRecord, outcome: Outcome) -> bool:
    """A failure reported for an earlier attempt than the one now outstanding."""
    return bool(
        outcome.failure_uri and record.failure_uri and outcome.failure_uri != record.failure_uri
    )


def apply_outcome(manifest: RunManifest, outcome: Outcome, *, max_attempts: int) -> Decision:
    """Record one outcome; a repeat or a stale report is IGNORED so each batch ends exactly once."""
    record = manifest.batches.get(outcome.batch_id)
    if record is None or record.terminal:
        return Decision.IGNORED
    completed_at = outcome.event_time or datetime.now(UTC)
    if outcome.status == "completed":
        # Any attempt's output is a valid result, even one that arrives after a re-invoke.
        manifest.mark(
            record.batch_id,
            BatchStatus.COMPLETED,
            output_uri=outcome.output_uri or record.output_uri,
            completed_at=completed_at,
            received_time=outcome.received_time,
            reason=None,
        )
        return Decision.COMPLETED
    if record.status is not BatchStatus.SUBMITTED or _is_stale_failure(record, outcome):
        return Decision.IGNORED
    reason = (outcome.reason or "the model failed without a reason").strip()
    if outcome.expired or len(record.doc_ids) == 1:
        if record.attempts - record.retried_after < max_attempts:
            kind = "expired" if outcome.expired else "failed"
            manifest.mark(
                record.batch_id,
                BatchStatus.PENDING,
                reason=f"attempt {record.attempts} {kind}: {reason}",
            )
            return Decision.RETRY
        manifest.mark(
            record.batch_id,
            BatchStatus.FAILED,
            reason=f"failed after {record.attempts} attempts: {reason}",
            completed_at=completed_at,
            received_time=outcome.received_time,
        )
        return Decision.FAILED
    return Decision.SPLIT


def split_failed_batch(
    profile: Profile,
    outputs: EndpointOutputs,
    manifest: RunManifest,
    batch_id: str,
    reason: str,
    *,
    body: bytes | None = None,
) -> list[str]:
    """Halve a failed multi-document batch: stage both halves, add them, mark the parent split.

    ``body``: the parent's payload when it was sent inline (otherwise it is read from S3).
    """
    record = manifest.batches[batch_id]
    if body is None:
        bucket, key = split_s3_uri(record.input_uri)
        body = aws_client("s3", profile).get_object(Bucket=bucket, Key=key)["Body"].read()
    parent = BatchPayload(batch_id=batch_id, doc_ids=record.doc_ids, body=body)
    halves = split_batch(parent)
    stage_inputs(profile, [staged_input(profile, manifest.run_key, h) for h in halves])
    for half in halves:
        manifest.add(new_record(profile, outputs, manifest.run_key, half, parent=batch_id))
    manifest.mark(
        batch_id,
        BatchStatus.SPLIT,
        reason=f"split into {halves[0].batch_id} and {halves[1].batch_id} after: {reason}",
        completed_at=datetime.now(UTC),
    )
    return [h.batch_id for h in halves]


def overdue(manifest: RunManifest, *, now: datetime, after_s: float) -> list[BatchRecord]:
    """Submitted batches with no outcome ``after_s`` seconds after their submission (TTL + timeout)."""
    limit = timedelta(seconds=after_s)
    return [
        r
        for r in manifest.batches.values()
        if r.status is BatchStatus.SUBMITTED and r.submitted_at and now - r.submitted_at > limit
    ]


def fail_outstanding(manifest: RunManifest, reason: str) -> int:
    """Mark every batch still outstanding failed with ``reason`` (the run's deadline passed)."""
    now = datetime.now(UTC)
    failed = 0
    for record in manifest.outstanding():
        failed += manifest.mark(
            record.batch_id, BatchStatus.FAILED, reason=reason, completed_at=now
        )
    return failed
