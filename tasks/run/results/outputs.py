"""A completed batch's output object: read it (from the run's spool or S3) and parse its JSON lines
by document id."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tasks.aws.s3 import split_s3_uri
from tasks.run.plan.manifest import BatchRecord
from tasks.settings import Profile

if TYPE_CHECKING:
    from tasks.run.fanout.spool import OutputSpool

READ_WORKERS = 16


@dataclass
class BatchOutput:
    """What one batch's output object said about each of its documents."""

    lines: dict[str, dict[str, Any]] = field(default_factory=dict)
    unparsed: int = 0
    error: str | None = None


def read_output(
    record: BatchRecord, profile: Profile, spool: OutputSpool | None = None
) -> BatchOutput:
    """Parse a completed batch's output object (one JSON line per document).

    The spool's local copy is used when it has one; otherwise the object is read from S3.
    """
    try:
        body = _output_body(record.output_uri, profile, spool)
    except Exception as exc:  # NoSuchKey, access errors: the batch's documents fail with this
        return BatchOutput(error=f"output object {record.output_uri} could not be read: {exc}")
    return parse_output(body)


def _output_body(uri: str, profile: Profile, spool: OutputSpool | None) -> bytes:
    """The object's bytes: from the spool when it has them, else S3 GetObject."""
    from tasks.aws.clients import aws_client

    if spool is not None:
        try:
            local = spool.read(uri)
        except OSError:  # a lost spool file: S3 still has the object
            local = None
        if local is not None:
            return local
    bucket, key = split_s3_uri(uri)
    return bytes(aws_client("s3", profile).get_object(Bucket=bucket, Key=key)["Body"].read())


def parse_output(body: bytes) -> BatchOutput:
    """The result lines of an output object, by document id (the first line for an id wins)."""
    out = BatchOutput()
    for raw in body.splitlines():
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            out.unparsed += 1
            continue
        if isinstance(line, dict) and isinstance(line.get("id"), str):
            out.lines.setdefault(line["id"], line)
        else:
            out.unparsed += 1
    return out


def read_outputs(
    records: list[BatchRecord], profile: Profile, spool: OutputSpool | None = None
) -> dict[str, BatchOutput]:
    """Read the outputs of the given batches: those already in the spool here (local files: a
    thread each would cost more to start than the read), the others concurrently (thread pool
    over the spool's downloads under way and S3)."""
    if not records:
        return {}
    local = [r for r in records if spool is not None and spool.ready(r.output_uri)]
    outputs = {r.batch_id: read_output(r, profile, spool) for r in local}
    rest = [r for r in records if r.batch_id not in outputs]
    if rest:
        workers = min(READ_WORKERS, len(rest))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="read-output") as pool:
            read = pool.map(lambda r: read_output(r, profile, spool), rest)
            outputs.update((r.batch_id, o) for r, o in zip(rest, read, strict=True))
    return {r.batch_id: outputs[r.batch_id] for r in records}


class OutputCache:
    """The parsed outputs one chunk needs; a batch shared with the previous chunk is kept."""

    def __init__(self, profile: Profile, spool: OutputSpool | None) -> None:
        self._profile = profile
        self._spool = spool
        self._held: dict[str, BatchOutput] = {}

    def for_chunk(self, records: list[BatchRecord]) -> dict[str, BatchOutput]:
        """The outputs of ``records``; outputs no longer needed are dropped before any read."""
        wanted = {r.batch_id for r in records}
        self._held = {b: o for b, o in self._held.items() if b in wanted}
        missing = [r for r in records if r.batch_id not in self._held]
        self._held.update(read_outputs(missing, self._profile, self._spool))
        return self._held
