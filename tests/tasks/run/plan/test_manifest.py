"""The run manifest: one-way transitions, counts, compact JSON, and a round trip through S3."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tasks.corpus.documents import Rejected
from tasks.run.plan.layout import inference_id, manifest_uri, run_uri
from tasks.run.plan.manifest import (
    BatchRecord,
    BatchStatus,
    ManifestError,
    RunManifest,
    load_manifest,
    save_manifest,
)
from tasks.settings import Profile, load_profile

RUN = "0123456789ab"


def _record(i: int, docs_per_batch: int = 4) -> BatchRecord:
    batch_id = f"{i:016x}"
    return BatchRecord(
        batch_id=batch_id,
        doc_ids=[f"doc-{i * docs_per_batch + j:06d}" for j in range(docs_per_batch)],
        input_uri=f"s3://docflow-local/runs/{RUN}/inputs/{batch_id}.jsonl",
        output_uri=f"s3://docflow-local/async-outputs/{RUN}/{batch_id}.out",
        failure_uri=f"s3://docflow-local/async-failures/{RUN}/{batch_id}-error.out",
        inference_id=inference_id(RUN, batch_id),
    )


def _manifest(batches: int = 3, docs_per_batch: int = 4) -> RunManifest:
    manifest = RunManifest(run_key=RUN, endpoint="docflow-llm", model_artifact="s3://b/m.tar.gz")
    for i in range(batches):
        manifest.add(_record(i, docs_per_batch))
    return manifest


def test_transitions_are_one_way() -> None:
    m = _manifest(1)
    bid = next(iter(m.batches))
    now = datetime.now(UTC)
    assert m.mark(bid, BatchStatus.SUBMITTED, attempts=1, submitted_at=now)
    assert m.mark(bid, "submitted", attempts=2)  # a re-invoke of an expired request
    assert m.mark(bid, BatchStatus.COMPLETED, completed_at=now)
    # duplicates and late notifications change nothing
    assert not m.mark(bid, BatchStatus.COMPLETED, completed_at=datetime(2000, 1, 1, tzinfo=UTC))
    assert not m.mark(bid, BatchStatus.FAILED, reason="late failure")
    record = m.batches[bid]
    assert (record.status, record.attempts, record.completed_at, record.reason) == (
        BatchStatus.COMPLETED,
        2,
        now,
        None,
    )


@pytest.mark.parametrize("terminal", [BatchStatus.FAILED, BatchStatus.SPLIT])
def test_every_terminal_state_ignores_repeats(terminal: BatchStatus) -> None:
    m = _manifest(1)
    bid = next(iter(m.batches))
    assert m.mark(bid, terminal, reason="x")
    assert not m.mark(bid, BatchStatus.COMPLETED)
    assert not m.mark(bid, BatchStatus.PENDING)
    assert m.batches[bid].status is terminal


def test_mark_refuses_unknown_batches_fields_and_statuses() -> None:
    m = _manifest(1)
    bid = next(iter(m.batches))
    with pytest.raises(ManifestError, match="no batch 'nope'"):
        m.mark("nope", BatchStatus.COMPLETED)
    with pytest.raises(ManifestError, match="cannot set"):
        m.mark(bid, BatchStatus.SUBMITTED, colour="red")
    with pytest.raises(ValueError):
        m.mark(bid, "exploded")
    assert m.batches[bid].status is BatchStatus.PENDING


def test_counts_outstanding_and_done() -> None:
    m = _manifest(4)
    ids = list(m.batches)
    m.mark(ids[0], BatchStatus.SUBMITTED)
    m.mark(ids[1], BatchStatus.COMPLETED)
    m.mark(ids[2], BatchStatus.SPLIT)
    half = _record(99, 2).model_copy(update={"parent": ids[2]})
    m.add(half)
    m.mark(half.batch_id, BatchStatus.FAILED, reason="model error")
    assert m.counts() == {"pending": 1, "submitted": 1, "completed": 1, "failed": 1, "split": 1}
    assert m.document_counts() == {"pending": 4, "submitted": 4, "completed": 4, "failed": 2}
    assert [r.batch_id for r in m.outstanding()] == [ids[0], ids[3]]
    assert not m.is_done()
    m.mark(ids[0], BatchStatus.COMPLETED)
    m.mark(ids[3], BatchStatus.FAILED, reason="x")
    assert m.is_done() and m.outstanding() == []


def test_lookup_by_inference_id() -> None:
    m = _manifest(2)
    record = next(iter(m.batches.values()))
    assert m.by_inference_id(record.inference_id) is record
    assert m.by_inference_id(f"otherrun-{record.batch_id}") is None
    assert m.by_inference_id("garbage") is None


def test_json_round_trip_keeps_everything() -> None:
    m = _manifest(3)
    bid = next(iter(m.batches))
    m.mark(bid, BatchStatus.COMPLETED, submitted_at=datetime.now(UTC), attempts=1)
    m.rejected.append(Rejected(doc_id="x", row=3, reason="empty text"))
    m.notifications.duplicates += 2
    again = RunManifest.from_json(m.to_json())
    assert again == m


def test_json_stays_compact_at_100k_documents() -> None:
    m = _manifest(6_250, docs_per_batch=16)
    now = datetime.now(UTC)
    for bid in m.batches:
        m.mark(bid, "completed", attempts=1, submitted_at=now, received_time=now, completed_at=now)
    size = len(m.to_json())
    # Per batch ~440 bytes of locations and timestamps, plus ~13 bytes per document id: ~4.6 MB.
    assert sum(len(r.doc_ids) for r in m.batches.values()) == 100_000
    assert size < 5_000_000, size


def test_uris_live_under_the_run_prefix() -> None:
    prof = load_profile("local")
    assert manifest_uri(prof, RUN) == f"s3://{prof.bucket}/runs/{RUN}/manifest.json"
    assert (
        run_uri(prof, RUN, "inputs", "a.jsonl") == f"s3://{prof.bucket}/runs/{RUN}/inputs/a.jsonl"
    )


def test_save_and_load_through_localcloud_s3(profile: Profile) -> None:
    assert load_manifest(RUN, profile) is None
    m = _manifest(5)
    save_manifest(m, profile)
    loaded = load_manifest(RUN, profile)
    assert loaded == m
    assert loaded is not None
    loaded.mark(next(iter(loaded.batches)), BatchStatus.COMPLETED)
    save_manifest(loaded, profile)
    assert load_manifest(RUN, profile) == loaded
