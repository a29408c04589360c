"""Finding results in S3 when notifications are late or lost: look up where a batch's output or
failure object would be, and settle a resumed run's unfinished batches before it invokes again."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from botocore.exceptions import ClientError
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from tasks.aws.clients import aws_client
from tasks.aws.s3 import split_s3_uri
from tasks.run.fanout.notifications import Outcome, is_expiry
from tasks.run.fanout.outcomes import Decision, apply_outcome, overdue, split_failed_batch
from tasks.run.plan.manifest import BatchRecord, BatchStatus, RunManifest
from tasks.run.plan.target import EndpointOutputs
from tasks.run.quoting import quoted
from tasks.settings import Profile


def _head(s3: Any, uri: str | None) -> datetime | None:
    """LastModified of the object at ``uri``, or None when there is none."""
    if not uri:
        return None
    bucket, key = split_s3_uri(uri)
    try:
        head = s3.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
            return None
        raise
    modified = head.get("LastModified")
    return modified if isinstance(modified, datetime) else None


def _read_reason(s3: Any, uri: str, limit: int = 2000) -> str:
    bucket, key = split_s3_uri(uri)
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read(limit)
    return body.decode("utf-8", errors="replace").strip() or "failure object is empty"


class ResultLookup(BaseModel):
    """A submitted batch to look up in S3: where its output and failure objects would be."""

    batch_id: str
    output_uri: str | None
    failure_uri: str | None


def look_up_results(
    profile: Profile, pending: Sequence[ResultLookup], *, workers: int = 8
) -> list[Outcome]:
    """Outcomes for submitted batches whose output or failure object already exists in S3."""
    s3 = aws_client("s3", profile)

    def look(item: ResultLookup) -> Outcome | None:
        done = _head(s3, item.output_uri)
        if done is not None:
            return Outcome(
                batch_id=item.batch_id,
                status="completed",
                output_uri=item.output_uri,
                event_time=done,
                source="reconcile",
            )
        failed = _head(s3, item.failure_uri)
        if failed is not None and item.failure_uri:
            reason = _read_reason(s3, item.failure_uri)
            return Outcome(
                batch_id=item.batch_id,
                status="failed",
                expired=is_expiry(reason),
                reason=reason,
                failure_uri=item.failure_uri,
                event_time=failed,
                source="reconcile",
            )
        return None

    if not pending:
        return []
    with ThreadPoolExecutor(max_workers=min(workers, len(pending))) as pool:
        return [o for o in pool.map(look, pending) if o is not None]


@task(name="reconcile-batches", cache_policy=NO_CACHE)
def reconcile_batches(profile: Profile, pending: list[ResultLookup]) -> list[Outcome]:
    """Look up submitted batches' output and failure objects in S3 (notifications can be lost)."""
    return look_up_results(profile, pending)


def result_lookup(record: BatchRecord, outputs: EndpointOutputs, run_key: str) -> ResultLookup:
    """Where a batch's result would be: its recorded locations, or the next attempt's for a pending one."""
    if record.status is BatchStatus.SUBMITTED:
        return ResultLookup(
            batch_id=record.batch_id, output_uri=record.output_uri, failure_uri=record.failure_uri
        )
    attempt = record.attempts + 1
    return ResultLookup(
        batch_id=record.batch_id,
        output_uri=outputs.output_uri(run_key, record.batch_id, attempt),
        failure_uri=None,
    )


def resume_reconcile(
    profile: Profile,
    manifest: RunManifest,
    outputs: EndpointOutputs,
    *,
    max_attempts: int,
    bodies: Mapping[str, bytes] | None = None,
) -> int:
    """Before invoking anything on a resumed run, settle its unfinished batches from S3.

    ``bodies``: the rebuilt payloads of batches sent inline (in no S3 object), so that one that
    failed while no one was listening can still be split.
    """
    outstanding = manifest.outstanding()
    if not outstanding:
        return 0
    lookups = [result_lookup(r, outputs, manifest.run_key) for r in outstanding]
    settled = 0
    for outcome in reconcile_batches(profile, quoted(lookups)):
        record = manifest.batches[outcome.batch_id]
        if record.status is BatchStatus.PENDING:
            # Its next attempt's output exists: the killed run invoked it after its last save.
            manifest.mark(record.batch_id, BatchStatus.SUBMITTED, attempts=record.attempts + 1)
        decision = apply_outcome(manifest, outcome, max_attempts=max_attempts)
        if decision is Decision.SPLIT:
            body = (bodies or {}).get(outcome.batch_id)
            split_failed_batch(
                profile, outputs, manifest, outcome.batch_id, outcome.reason or "", body=body
            )
        settled += decision is not Decision.IGNORED
    for outcome in lost_with_an_earlier_endpoint(manifest, outputs):
        settled += apply_outcome(manifest, outcome, max_attempts=max_attempts) is Decision.RETRY
    return settled


def lost_with_an_earlier_endpoint(manifest: RunManifest, outputs: EndpointOutputs) -> list[Outcome]:
    """A failed, expired outcome for each batch still outstanding that was submitted before the
    endpoint was created: its request went to an endpoint deleted since (a stack restarted,
    an endpoint deployed again), whose queue was lost with it, so no result will ever come."""
    created = outputs.created_at
    if created is None:
        return []
    return [
        Outcome(
            batch_id=record.batch_id,
            status="failed",
            expired=True,
            reason=(
                f"submitted before endpoint {outputs.endpoint!r} was created "
                f"({created:%Y-%m-%d %H:%M:%S} UTC): the request was lost with the endpoint it went to"
            ),
            failure_uri=record.failure_uri,
            source="reconcile",
        )
        for record in manifest.outstanding()
        if record.status is BatchStatus.SUBMITTED
        and record.submitted_at is not None
        and record.submitted_at < created
    ]


def found_in_s3(
    profile: Profile,
    manifest: RunManifest,
    outputs: EndpointOutputs,
    after_s: float,
    now: datetime,
) -> list[Outcome]:
    """Outcomes in S3 for the batches outstanding longer than ``after_s`` (lost notifications)."""
    waiting = overdue(manifest, now=now, after_s=after_s)
    if not waiting:
        return []
    return look_up_results(profile, [result_lookup(r, outputs, manifest.run_key) for r in waiting])


def expired(manifest: RunManifest, expiry_s: float, now: datetime) -> list[Outcome]:
    """A failed, expired outcome for each batch with no result ``expiry_s`` after submission."""
    return [
        Outcome(
            batch_id=record.batch_id,
            status="failed",
            expired=True,
            reason=f"no result {expiry_s:.0f}s after submission (expired)",
            failure_uri=record.failure_uri,
            source="reconcile",
        )
        for record in overdue(manifest, now=now, after_s=expiry_s)
    ]
