"""Retrying a run's failed documents under the same run key: re-open their batches in the manifest.

A failed batch goes back to pending with a fresh attempt budget (``retried_after``); its payload
is still in S3 under the run's inputs, and attempt numbers keep counting so that no output or
failure object of an earlier attempt is mistaken for the new one. The run then resumes as usual
and its aggregation rewrites every row, the retried ones included.
"""

from __future__ import annotations

from tasks.run.plan.manifest import BatchRecord, BatchStatus, RunManifest


def retryable(record: BatchRecord, only_reason: str | None) -> bool:
    """A failed batch whose reason contains ``only_reason`` (case-insensitive; None: any reason)."""
    if record.status is not BatchStatus.FAILED:
        return False
    return only_reason is None or only_reason.lower() in (record.reason or "").lower()


def reopen_failed(manifest: RunManifest, only_reason: str | None = None) -> list[BatchRecord]:
    """Move the run's failed batches (those matching ``only_reason``) back to pending; returns them."""
    reopened = [r for r in manifest.batches.values() if retryable(r, only_reason)]
    for record in reopened:
        record.status = BatchStatus.PENDING
        record.retried_after = record.attempts
        record.reason = None
        record.completed_at = None
        record.received_time = None
    return reopened
