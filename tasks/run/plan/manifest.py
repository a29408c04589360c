"""The run manifest: batch → documents, locations, attempts, status; persisted as JSON in S3."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tasks.aws.s3 import split_s3_uri
from tasks.aws.sagemaker_runtime import max_inline_body
from tasks.corpus.documents import Rejected
from tasks.run.plan import layout
from tasks.run.plan.batching import BatchPayload
from tasks.run.plan.layout import batch_id_of, manifest_uri
from tasks.run.plan.target import EndpointOutputs
from tasks.settings import Profile


class BatchStatus(StrEnum):
    """Where a batch is; completed, failed and split are terminal."""

    PENDING = "pending"
    SUBMITTED = "submitted"
    COMPLETED = "completed"
    FAILED = "failed"
    SPLIT = "split"


TERMINAL = frozenset({BatchStatus.COMPLETED, BatchStatus.FAILED, BatchStatus.SPLIT})
OUTSTANDING = frozenset({BatchStatus.PENDING, BatchStatus.SUBMITTED})


class ManifestError(ValueError):
    """A manifest operation that cannot be right (unknown batch, bad field, bad transition)."""


class BatchRecord(BaseModel):
    """One invocation payload of a run and what happened to it."""

    model_config = ConfigDict(validate_assignment=True, extra="forbid")

    batch_id: str
    doc_ids: list[str]
    input_uri: str
    output_uri: str
    failure_uri: str
    inference_id: str
    inline: bool = Field(
        False,
        description="The payload is sent inline (InvokeEndpointAsync Body), never put in S3: a "
        "resumed or retried run rebuilds it from the corpus.",
    )
    attempts: int = 0
    retried_after: int = Field(
        0,
        description="Attempts made before the batch was last re-opened by a retry of its run; "
        "the attempt budget (max_attempts) counts from here.",
    )
    status: BatchStatus = BatchStatus.PENDING
    reason: str | None = None
    parent: str | None = None
    submitted_at: datetime | None = None
    received_time: datetime | None = None
    completed_at: datetime | None = Field(
        None, description="eventTime of the notification, or when reconciliation saw the object."
    )

    @property
    def terminal(self) -> bool:
        """Whether the batch has reached completed, failed or split."""
        return self.status in TERMINAL


class NotificationCounters(BaseModel):
    """Notifications seen by the run: all, repeats of a recorded outcome, and unknown ids."""

    received: int = 0
    duplicates: int = 0
    unknown: int = 0


class AttemptTime(BaseModel):
    """One attempt at the run (the first, or a resume): when it started and was last seen saving."""

    started_at: datetime
    last_seen_at: datetime | None = None

    @property
    def duration_s(self) -> float:
        """How long the attempt ran, as far as its last manifest save shows."""
        if self.last_seen_at is None:
            return 0.0
        return max(0.0, (self.last_seen_at - self.started_at).total_seconds())


class RunManifest(BaseModel):
    """Everything needed to resume or aggregate a run."""

    model_config = ConfigDict(validate_assignment=True)

    run_key: str
    endpoint: str
    model_artifact: str
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    batches: dict[str, BatchRecord] = Field(default_factory=dict)
    rejected: list[Rejected] = Field(default_factory=list)
    staged: bool = Field(
        True,
        description="Every first-attempt payload is in S3 (False while a new run is staging them; "
        "manifests written before this field existed were saved after staging).",
    )
    notifications: NotificationCounters = Field(default_factory=NotificationCounters)
    corpus: str | None = Field(None, description="The corpus the run was started on.")
    parameters: dict[str, Any] = Field(
        default_factory=dict,
        description="The process-documents parameters that shape the run's results (template, "
        "columns, batching, generation, output format): what a retry runs it with again.",
    )
    attempt_log: list[AttemptTime] = Field(
        default_factory=list, description="The run's attempts: the first and every resume."
    )
    canceled: str | None = Field(
        None,
        description="Why the run stopped before every batch was terminal (its flow run was "
        "cancelled); its unfinished documents are reported canceled. Cleared when it resumes.",
    )

    def add(self, record: BatchRecord) -> None:
        """Add a batch (a new run's, or a half of a split one); an existing id is left as it is."""
        self.batches.setdefault(record.batch_id, record)

    def by_inference_id(self, inference_id: str) -> BatchRecord | None:
        """The batch with this InferenceId, if the run has one."""
        batch_id = batch_id_of(inference_id)
        record = self.batches.get(batch_id)
        if record is not None and record.inference_id == inference_id:
            return record
        return None

    def mark(self, batch_id: str, status: BatchStatus | str, **fields: Any) -> bool:
        """Move a batch to ``status`` and set ``fields``; False (and no change) once it is terminal."""
        record = self.batches.get(batch_id)
        if record is None:
            raise ManifestError(f"run {self.run_key} has no batch {batch_id!r}")
        unknown = sorted(set(fields) - set(_SETTABLE))
        if unknown:
            raise ManifestError(f"mark() cannot set {unknown}; settable: {_SETTABLE}")
        if record.terminal:
            return False
        record.status = BatchStatus(status)
        for name, value in fields.items():
            setattr(record, name, value)
        return True

    def counts(self) -> dict[str, int]:
        """Number of batches in each status (every status present, zeros included)."""
        out = {s.value: 0 for s in BatchStatus}
        for record in self.batches.values():
            out[record.status.value] += 1
        return out

    def document_counts(self) -> dict[str, int]:
        """Documents per status of their (leaf) batch; split batches count through their halves."""
        out = {s.value: 0 for s in BatchStatus if s is not BatchStatus.SPLIT}
        for record in self.batches.values():
            if record.status is not BatchStatus.SPLIT:
                out[record.status.value] += len(record.doc_ids)
        return out

    def outstanding(self) -> list[BatchRecord]:
        """Batches still pending or submitted, in insertion order."""
        return [r for r in self.batches.values() if r.status in OUTSTANDING]

    def is_done(self) -> bool:
        """True when every batch is terminal (decided by counting, never by an empty queue)."""
        return not self.outstanding()

    def to_json(self) -> bytes:
        """Compact JSON (unset optional fields left out)."""
        return self.model_dump_json(exclude_none=True).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes | str) -> RunManifest:
        """Parse what to_json wrote."""
        return cls.model_validate_json(data)


_SETTABLE = sorted(set(BatchRecord.model_fields) - {"batch_id", "status"})


def save_manifest(manifest: RunManifest, profile: Profile) -> None:
    """Write the manifest to S3 (overwriting the previous version); the attempt is seen alive now."""
    from tasks.aws.clients import aws_client

    if manifest.attempt_log:
        manifest.attempt_log[-1].last_seen_at = datetime.now(UTC)
    bucket, key = split_s3_uri(manifest_uri(profile, manifest.run_key))
    aws_client("s3", profile).put_object(
        Bucket=bucket, Key=key, Body=manifest.to_json(), ContentType="application/json"
    )


def load_manifest(run_key: str, profile: Profile) -> RunManifest | None:
    """The run's manifest from S3, or None when the run has none yet."""
    from botocore.exceptions import ClientError

    from tasks.aws.clients import aws_client

    bucket, key = split_s3_uri(manifest_uri(profile, run_key))
    try:
        body = aws_client("s3", profile).get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code")
        if code in ("NoSuchKey", "404"):
            return None
        if code == "NoSuchBucket":
            raise ManifestError(
                f"bucket {bucket!r} (the profile's `bucket`) does not exist; create it or set "
                "`bucket` in the profile to one docflow may write to"
            ) from exc
        raise
    return RunManifest.from_json(body)


def new_record(
    profile: Profile,
    outputs: EndpointOutputs,
    run_key: str,
    payload: BatchPayload,
    *,
    parent: str | None = None,
) -> BatchRecord:
    """A pending manifest record for a payload, with the locations its first attempt will use."""
    return BatchRecord(
        batch_id=payload.batch_id,
        doc_ids=list(payload.doc_ids),
        input_uri=profile.s3_uri(layout.input_key(profile, run_key, payload.batch_id)),
        output_uri=outputs.output_uri(run_key, payload.batch_id, 1),
        failure_uri=outputs.failure_uri(run_key, payload.batch_id, 1),
        inference_id=layout.inference_id(run_key, payload.batch_id),
        parent=parent,
        # A first-level payload small enough goes inline; halves of a split are staged in S3.
        inline=parent is None and 0 < len(payload.body) <= max_inline_body(),
    )
