"""Re-opening a run's failed batches for a retry, and the status read back from its manifest."""

from __future__ import annotations

from tasks.run.fanout.notifications import Outcome
from tasks.run.fanout.outcomes import Decision, apply_outcome
from tasks.run.plan.manifest import BatchStatus
from tasks.run.plan.retry import reopen_failed
from tasks.run.results.status import run_status
from tests.tasks.run.plan.test_manifest import _manifest


def test_reopen_failed_gives_a_fresh_attempt_budget_and_keeps_counting_attempts() -> None:
    manifest = _manifest(batches=3, docs_per_batch=1)  # one document: retried, never split
    ids = list(manifest.batches)
    manifest.mark(ids[0], BatchStatus.COMPLETED)
    manifest.mark(ids[1], BatchStatus.FAILED, attempts=3, reason="failed after 3 attempts: poison")
    manifest.mark(ids[2], BatchStatus.FAILED, attempts=1, reason="ValidationError: too big")
    assert [r.batch_id for r in reopen_failed(manifest, "POISON")] == [ids[1]]
    record = manifest.batches[ids[1]]
    assert (record.status, record.attempts, record.retried_after) == (BatchStatus.PENDING, 3, 3)
    assert manifest.batches[ids[2]].status is BatchStatus.FAILED  # another reason: left alone
    # The 4th attempt fails: with max_attempts=2 the batch is retried once more, not failed.
    manifest.mark(ids[1], BatchStatus.SUBMITTED, attempts=4)
    failed = Outcome(batch_id=ids[1], status="failed", reason="poison", source="notification")
    assert apply_outcome(manifest, failed, max_attempts=2) is Decision.RETRY
    manifest.mark(ids[1], BatchStatus.SUBMITTED, attempts=5)
    assert apply_outcome(manifest, failed, max_attempts=2) is Decision.FAILED


def test_status_of_a_canceled_run_counts_its_unfinished_documents_as_canceled() -> None:
    manifest = _manifest(batches=3, docs_per_batch=4)
    ids = list(manifest.batches)
    manifest.mark(ids[0], BatchStatus.COMPLETED)
    manifest.mark(ids[1], BatchStatus.SUBMITTED, attempts=1)
    manifest.canceled = "flow run x was cancelled (Cancelling)"
    status = run_status(manifest, None)
    assert status.state == "canceled"
    counts = status.request_counts
    assert (counts.total, counts.succeeded, counts.canceled, counts.processing) == (12, 4, 8, 0)
    assert status.progress_pct == round(100 * 4 / 12, 1)
    assert not status.retryable  # no parameters kept: a manifest from before they were
    manifest.canceled = None
    assert run_status(manifest, None).state == "in_progress"
