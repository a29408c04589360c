"""tasks.run.fanout.outcomes: each batch ends once; failures retry (bounded), split down to the poison, or fail."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tasks.aws.clients import aws_client
from tasks.aws.s3 import split_s3_uri
from tasks.corpus.documents import Document
from tasks.run.fanout.notifications import Outcome
from tasks.run.fanout.outcomes import (
    Decision,
    apply_outcome,
    fail_outstanding,
    overdue,
    split_failed_batch,
)
from tasks.run.fanout.staging import stage_inputs, staged_input
from tasks.run.plan.batching import make_batches
from tasks.run.plan.manifest import BatchStatus, RunManifest, new_record
from tasks.run.plan.target import EndpointOutputs
from tasks.run.request.prompts import GenerationParameters, PromptTemplate
from tasks.settings import Profile, load_profile

OUTPUTS = EndpointOutputs(
    endpoint="ep",
    success_topic="arn:aws:sns:us-east-1:123456789012:ok",
    error_topic="arn:aws:sns:us-east-1:123456789012:err",
    output_path="s3://bkt/async-outputs",
    failure_path="s3://bkt/async-failures",
)


def manifest_of(profile: Profile, n_docs: int, per_batch: int) -> RunManifest:
    docs = [Document(doc_id=f"d{i}", text=f"document {i}") for i in range(n_docs)]
    payloads, _ = make_batches(docs, PromptTemplate(), GenerationParameters(), max_docs=per_batch)
    manifest = RunManifest(run_key="run1", endpoint="ep", model_artifact="s3://m/model.tar.gz")
    for payload in payloads:
        manifest.add(new_record(profile, OUTPUTS, "run1", payload))
    return manifest


def submitted(manifest: RunManifest, batch_id: str, attempt: int = 1) -> None:
    manifest.mark(
        batch_id,
        BatchStatus.SUBMITTED,
        attempts=attempt,
        output_uri=OUTPUTS.output_uri("run1", batch_id, attempt),
        failure_uri=OUTPUTS.failure_uri("run1", batch_id, attempt),
        submitted_at=datetime.now(UTC),
    )


@pytest.fixture
def local() -> Profile:
    return load_profile("local").model_copy(update={"bucket": "bkt"})


def test_locations_follow_the_attempt() -> None:
    assert OUTPUTS.output_uri("run1", "b1", 2) == "s3://bkt/async-outputs/run1/b1.a2.out"
    assert OUTPUTS.failure_uri("run1", "b1", 2) == "s3://bkt/async-failures/run1/b1.a2-error.out"


def test_completion_is_recorded_once(local: Profile) -> None:
    manifest = manifest_of(local, 4, 4)
    (batch_id,) = manifest.batches
    submitted(manifest, batch_id)
    done = Outcome(batch_id=batch_id, status="completed", output_uri="s3://bkt/x.out")
    assert apply_outcome(manifest, done, max_attempts=3) is Decision.COMPLETED
    assert apply_outcome(manifest, done, max_attempts=3) is Decision.IGNORED
    record = manifest.batches[batch_id]
    assert record.status is BatchStatus.COMPLETED
    assert record.output_uri == "s3://bkt/x.out"
    # A late failure of the same batch changes nothing.
    late = Outcome(batch_id=batch_id, status="failed", reason="boom")
    assert apply_outcome(manifest, late, max_attempts=3) is Decision.IGNORED
    assert manifest.batches[batch_id].status is BatchStatus.COMPLETED


def test_single_document_failures_retry_then_fail_with_the_reason(local: Profile) -> None:
    manifest = manifest_of(local, 1, 1)
    (batch_id,) = manifest.batches
    for attempt in (1, 2):
        submitted(manifest, batch_id, attempt)
        bad = Outcome(batch_id=batch_id, status="failed", reason="ClientError: 500")
        assert apply_outcome(manifest, bad, max_attempts=3) is Decision.RETRY
        assert manifest.batches[batch_id].status is BatchStatus.PENDING
    submitted(manifest, batch_id, 3)
    bad = Outcome(batch_id=batch_id, status="failed", reason="ClientError: 500")
    assert apply_outcome(manifest, bad, max_attempts=3) is Decision.FAILED
    record = manifest.batches[batch_id]
    assert record.status is BatchStatus.FAILED
    assert record.reason == "failed after 3 attempts: ClientError: 500"


def test_a_failure_of_an_earlier_attempt_is_ignored(local: Profile) -> None:
    manifest = manifest_of(local, 1, 1)
    (batch_id,) = manifest.batches
    submitted(manifest, batch_id, 2)
    stale = Outcome(
        batch_id=batch_id,
        status="failed",
        reason="late",
        failure_uri=OUTPUTS.failure_uri("run1", batch_id, 1),
    )
    assert apply_outcome(manifest, stale, max_attempts=3) is Decision.IGNORED
    assert manifest.batches[batch_id].status is BatchStatus.SUBMITTED


def test_expired_multi_document_batches_are_reinvoked_not_split(local: Profile) -> None:
    manifest = manifest_of(local, 4, 4)
    (batch_id,) = manifest.batches
    submitted(manifest, batch_id)
    expired = Outcome(batch_id=batch_id, status="failed", expired=True, reason="ExpiredRequest")
    assert apply_outcome(manifest, expired, max_attempts=3) is Decision.RETRY
    assert "expired" in (manifest.batches[batch_id].reason or "")


def test_a_failing_batch_is_split_until_the_poison_is_alone(profile: Profile) -> None:
    outputs = OUTPUTS.model_copy(
        update={"output_path": profile.s3_uri("out"), "failure_path": profile.s3_uri("fail")}
    )
    docs = [Document(doc_id=f"d{i}", text=f"document {i}") for i in range(16)]
    payloads, _ = make_batches(docs, PromptTemplate(), GenerationParameters(), max_docs=16)
    manifest = RunManifest(run_key="run1", endpoint="ep", model_artifact="m")
    manifest.add(new_record(profile, outputs, "run1", payloads[0]))
    stage_inputs(profile, [staged_input(profile, "run1", payloads[0])])
    poison = "d5"
    current = payloads[0].batch_id
    splits = 0
    while True:
        submitted(manifest, current)
        bad = Outcome(batch_id=current, status="failed", reason="ClientError: 500 __POISON__")
        decision = apply_outcome(manifest, bad, max_attempts=1)
        if decision is not Decision.SPLIT:
            break
        halves = split_failed_batch(profile, outputs, manifest, current, bad.reason or "")
        splits += 1
        assert manifest.batches[current].status is BatchStatus.SPLIT
        for half in halves:
            record = manifest.batches[half]
            assert record.parent == current
            bucket, key = split_s3_uri(record.input_uri)
            lines = aws_client("s3", profile).get_object(Bucket=bucket, Key=key)["Body"].read()
            assert len(lines.splitlines()) == len(record.doc_ids)
        current = next(h for h in halves if poison in manifest.batches[h].doc_ids)
    assert decision is Decision.FAILED
    assert splits == 4
    assert manifest.batches[current].doc_ids == [poison]
    counts = manifest.document_counts()
    assert counts["failed"] == 1
    # The other halves wait to be invoked: 15 documents, none lost.
    assert counts["pending"] == 15


def test_overdue_and_deadline(local: Profile) -> None:
    manifest = manifest_of(local, 8, 2)
    ids = list(manifest.batches)
    submitted(manifest, ids[0])
    manifest.batches[ids[0]].submitted_at = datetime.now(UTC) - timedelta(seconds=120)
    submitted(manifest, ids[1])
    late = overdue(manifest, now=datetime.now(UTC), after_s=60)
    assert [r.batch_id for r in late] == [ids[0]]
    assert fail_outstanding(manifest, "deadline passed") == 4
    assert manifest.is_done()
    assert {r.reason for r in manifest.batches.values()} == {"deadline passed"}
