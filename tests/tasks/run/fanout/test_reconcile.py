"""tasks.run.fanout.reconcile: a batch's output or failure object found in S3 when its notification is lost."""

from __future__ import annotations

from datetime import datetime

from tasks.aws.clients import aws_client
from tasks.run.fanout.reconcile import ResultLookup, look_up_results
from tasks.run.plan.target import EndpointOutputs
from tasks.settings import Profile


def _outputs(profile: Profile, created_at: datetime | None = None) -> EndpointOutputs:
    """The endpoint of the resume tests, its outputs and failures in the profile's bucket."""
    return EndpointOutputs(
        endpoint="ep",
        success_topic="arn:aws:sns:us-east-1:123456789012:ok",
        error_topic="arn:aws:sns:us-east-1:123456789012:err",
        output_path=profile.s3_uri("async-outputs"),
        failure_path=profile.s3_uri("async-failures"),
        created_at=created_at,
    )


def test_reconcile_finds_outputs_and_failures(profile: Profile) -> None:
    s3 = aws_client("s3", profile)
    s3.put_object(Bucket=profile.bucket, Key="async-outputs/r/a.a1.out", Body=b'{"id":"1"}\n')
    s3.put_object(
        Bucket=profile.bucket,
        Key="async-failures/r/b.a1-error.out",
        Body=b"ExpiredRequest: the request waited longer than RequestTTLSeconds",
    )
    pending = [
        ResultLookup(
            batch_id=name,
            output_uri=profile.s3_uri(f"async-outputs/r/{name}.a1.out"),
            failure_uri=profile.s3_uri(f"async-failures/r/{name}.a1-error.out"),
        )
        for name in ("a", "b", "c")
    ]
    outcomes = {o.batch_id: o for o in look_up_results(profile, pending)}
    assert set(outcomes) == {"a", "b"}
    assert outcomes["a"].status == "completed" and outcomes["a"].source == "reconcile"
    assert outcomes["a"].event_time is not None
    assert outcomes["b"].status == "failed" and outcomes["b"].expired
    assert "RequestTTLSeconds" in (outcomes["b"].reason or "")


def test_a_resumed_run_splits_an_inline_batch_that_failed_while_no_one_listened(
    profile: Profile,
) -> None:
    """The batch went inline (no S3 object of its payload); its failure is found in S3 on resume.
    Splitting it needs its payload: the resumed run's rebuilt one, never a missing object."""
    from datetime import UTC, datetime

    import pytest
    from botocore.exceptions import ClientError

    from tasks.corpus.documents import Document
    from tasks.run.fanout.reconcile import resume_reconcile
    from tasks.run.plan.batching import make_batches
    from tasks.run.plan.manifest import BatchStatus, RunManifest, new_record
    from tasks.run.request.prompts import GenerationParameters, PromptTemplate

    outputs = _outputs(profile)
    docs = [Document(doc_id=f"d{i}", text=f"document {i}") for i in range(4)]
    (payload,), _ = make_batches(docs, PromptTemplate(), GenerationParameters(), max_docs=4)

    def failed_manifest() -> RunManifest:
        manifest = RunManifest(run_key="inl", endpoint="ep", model_artifact="s3://m/model.tar.gz")
        manifest.add(new_record(profile, outputs, "inl", payload))
        record = manifest.batches[payload.batch_id]
        assert record.inline  # small: sent in the request body, never staged
        manifest.mark(
            payload.batch_id,
            BatchStatus.SUBMITTED,
            attempts=1,
            failure_uri=outputs.failure_uri("inl", payload.batch_id, 1),
            output_uri=outputs.output_uri("inl", payload.batch_id, 1),
            submitted_at=datetime.now(UTC),
        )
        return manifest

    bucket, _, key = (
        outputs.failure_uri("inl", payload.batch_id, 1).removeprefix("s3://").partition("/")
    )
    aws_client("s3", profile).put_object(Bucket=bucket, Key=key, Body=b"ModelError: out of memory")

    with pytest.raises(ClientError):  # without the rebuilt payload: the missing S3 object
        resume_reconcile(profile, failed_manifest(), outputs, max_attempts=3)
    manifest = failed_manifest()
    settled = resume_reconcile(
        profile, manifest, outputs, max_attempts=3, bodies={payload.batch_id: payload.body}
    )
    assert settled == 1
    assert manifest.batches[payload.batch_id].status is BatchStatus.SPLIT
    halves = [r for r in manifest.batches.values() if r.parent == payload.batch_id]
    assert sorted(d for h in halves for d in h.doc_ids) == ["d0", "d1", "d2", "d3"]
    for half in halves:  # each half staged, so it can be invoked through S3
        h_bucket, _, h_key = half.input_uri.removeprefix("s3://").partition("/")
        aws_client("s3", profile).head_object(Bucket=h_bucket, Key=h_key)


def test_a_resumed_run_retries_at_once_what_it_sent_to_an_endpoint_deleted_since(
    profile: Profile,
) -> None:
    """The stack restarted (or the endpoint was deployed again) while batches were in flight:
    their requests went with the old endpoint. The resumed run retries each at once, within
    ``max_attempts``, instead of waiting for it to expire; a batch sent to this endpoint waits."""
    from datetime import UTC, datetime, timedelta

    from tasks.corpus.documents import Document
    from tasks.run.fanout.reconcile import resume_reconcile
    from tasks.run.plan.batching import make_batches
    from tasks.run.plan.manifest import BatchStatus, RunManifest, new_record
    from tasks.run.request.prompts import GenerationParameters, PromptTemplate

    created = datetime.now(UTC)
    outputs = _outputs(profile, created_at=created)
    docs = [Document(doc_id=f"d{i}", text=f"document {i}") for i in range(3)]
    payloads, _ = make_batches(docs, PromptTemplate(), GenerationParameters(), max_docs=1)
    manifest = RunManifest(run_key="lost", endpoint="ep", model_artifact="s3://m/model.tar.gz")
    sent = {  # batch -> (attempts, submitted)
        payloads[0].batch_id: (1, created - timedelta(minutes=5)),  # to the old endpoint
        payloads[1].batch_id: (2, created - timedelta(minutes=5)),  # to it, its last attempt
        payloads[2].batch_id: (1, created + timedelta(seconds=5)),  # to this endpoint
    }
    for payload in payloads:
        manifest.add(new_record(profile, outputs, "lost", payload))
        attempts, submitted = sent[payload.batch_id]
        manifest.mark(
            payload.batch_id,
            BatchStatus.SUBMITTED,
            attempts=attempts,
            output_uri=outputs.output_uri("lost", payload.batch_id, attempts),
            failure_uri=outputs.failure_uri("lost", payload.batch_id, attempts),
            submitted_at=submitted,
        )

    assert resume_reconcile(profile, manifest, outputs, max_attempts=2) == 1
    retried, spent, waiting = (manifest.batches[p.batch_id] for p in payloads)
    assert retried.status is BatchStatus.PENDING
    assert "lost with the endpoint" in (retried.reason or "")
    assert spent.status is BatchStatus.FAILED and "after 2 attempts" in (spent.reason or "")
    assert waiting.status is BatchStatus.SUBMITTED
