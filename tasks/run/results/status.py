"""A run's state read back from S3 (its manifest and, once aggregated, its summary.json).

What ``docflow runs list/show`` print: counts in the shape of the batch services'
``request_counts`` (processing, succeeded, errored, canceled, plus rejected rows), the share
finished, failures by reason and where the results are.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel

from tasks.aws.s3 import split_s3_uri
from tasks.run.plan.layout import summary_uri
from tasks.run.plan.manifest import BatchStatus, RunManifest, load_manifest
from tasks.settings import Profile

RunState = Literal["in_progress", "canceled", "completed", "completed_with_failures"]
TOP_REASONS = 10


class RequestCounts(BaseModel):
    """Documents by where they are (``total`` counts every input row, rejected ones included)."""

    total: int
    processing: int
    succeeded: int
    errored: int
    canceled: int
    rejected: int


class RunStatus(BaseModel):
    """One run as ``docflow runs`` shows it."""

    run_key: str
    state: RunState
    endpoint: str
    corpus: str | None
    created_at: datetime
    request_counts: RequestCounts
    progress_pct: float
    batches: dict[str, int]
    failures_by_reason: dict[str, int]
    results_uri: str | None
    failures_uri: str | None
    summary_uri: str | None
    retryable: bool
    cost: dict[str, Any] | None = None


def run_status(manifest: RunManifest, summary: dict[str, Any] | None) -> RunStatus:
    """The status of a run from its manifest and (when aggregated since) its summary."""
    docs = manifest.document_counts()
    unfinished = docs["pending"] + docs["submitted"]
    rejected = len(manifest.rejected)
    batched = sum(len(r.doc_ids) for r in manifest.batches.values() if r.parent is None)
    succeeded, errored = docs["completed"], docs["failed"]
    reasons: Counter[str] = Counter()
    for record in manifest.batches.values():
        if record.status is BatchStatus.FAILED:
            reasons[record.reason or "batch failed"] += len(record.doc_ids)
    done = not unfinished
    if done and summary is not None:
        # Aggregation also fails documents inside completed batches (an error line): count those.
        succeeded, errored = int(summary["completed"]), int(summary["failed"])
        rejected = int(summary["rejected"])
        reasons = Counter({k: int(v) for k, v in summary.get("top_failure_reasons", {}).items()})
    total = batched + len(manifest.rejected)
    if manifest.canceled is not None:
        state: RunState = "canceled"
    elif not done:
        state = "in_progress"
    else:
        state = "completed_with_failures" if errored else "completed"
    canceled = unfinished if manifest.canceled is not None else 0
    finished = total - unfinished
    return RunStatus(
        run_key=manifest.run_key,
        state=state,
        endpoint=manifest.endpoint,
        corpus=manifest.corpus,
        created_at=manifest.created_at,
        request_counts=RequestCounts(
            total=total,
            processing=unfinished - canceled,
            succeeded=succeeded,
            errored=errored,
            canceled=canceled,
            rejected=rejected,
        ),
        progress_pct=round(100.0 * finished / total, 1) if total else 100.0,
        batches=manifest.counts(),
        failures_by_reason=dict(reasons.most_common(TOP_REASONS)),
        results_uri=summary.get("results_uri") if summary else None,
        failures_uri=summary.get("failures_uri") if summary else None,
        summary_uri=summary.get("summary_uri") if summary else None,
        retryable=bool(manifest.parameters) and (errored > 0 or canceled > 0),
        cost=_cost(summary),
    )


COST_FIELDS = (
    "instance_type",
    "instances_min",
    "instances_max",
    "instance_seconds",
    "estimated_cost_usd",
    "cost_note",
)


def _cost(summary: dict[str, Any] | None) -> dict[str, Any] | None:
    """What the run's last attempt kept the endpoint up for and its cost (from summary.json)."""
    if summary is None or "instance_seconds" not in summary:
        return None
    return {k: summary.get(k) for k in COST_FIELDS}


def read_summary(profile: Profile, run_key: str) -> dict[str, Any] | None:
    """The run's summary.json, or None before its first aggregation."""
    from botocore.exceptions import ClientError

    from tasks.aws.clients import aws_client

    bucket, key = split_s3_uri(summary_uri(profile, run_key))
    try:
        body = aws_client("s3", profile).get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return None
        raise
    data: dict[str, Any] = json.loads(body)
    return data


def write_summary(profile: Profile, run_key: str, summary: Mapping[str, Any]) -> str:
    """Write the run's summary.json (what ``read_summary`` reads back); returns its URI."""
    from tasks.aws.clients import aws_client

    target = summary_uri(profile, run_key)
    bucket, key = split_s3_uri(target)
    body = json.dumps(summary, indent=2, default=str).encode("utf-8")
    aws_client("s3", profile).put_object(
        Bucket=bucket, Key=key, Body=body, ContentType="application/json"
    )
    return target


def read_status(profile: Profile, run_key: str) -> RunStatus | None:
    """The status of run ``run_key``, or None when it has no manifest."""
    manifest = load_manifest(run_key, profile)
    if manifest is None:
        return None
    return run_status(manifest, read_summary(profile, run_key))


def run_keys(profile: Profile) -> list[str]:
    """Every run key with a folder under ``s3://<bucket>/<prefixes.runs>/``."""
    from tasks.aws.clients import aws_client

    prefix = profile.prefixes.runs.strip("/") + "/"
    paginator = aws_client("s3", profile).get_paginator("list_objects_v2")
    keys: list[str] = []
    for page in paginator.paginate(Bucket=profile.bucket, Prefix=prefix, Delimiter="/"):
        for common in page.get("CommonPrefixes", []):
            keys.append(common["Prefix"][len(prefix) :].rstrip("/"))
    return keys


def list_runs(profile: Profile, *, limit: int = 20) -> list[RunStatus]:
    """The most recent ``limit`` runs (by when their manifest was created), newest first."""
    found = [s for key in run_keys(profile) if (s := read_status(profile, key)) is not None]
    found.sort(key=lambda s: s.created_at, reverse=True)
    return found[:limit]


def format_list(runs: list[RunStatus]) -> str:
    """One line per run: key, state, counts, endpoint, started, corpus."""
    head = (
        "RUN KEY",
        "STATE",
        "TOTAL",
        "DONE",
        "FAILED",
        "CANCELED",
        "REJECTED",
        "ENDPOINT",
        "STARTED",
    )
    rows = [head]
    for s in runs:
        c = s.request_counts
        rows.append(
            (
                s.run_key,
                s.state,
                str(c.total),
                str(c.succeeded),
                str(c.errored),
                str(c.canceled),
                str(c.rejected),
                s.endpoint,
                s.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines) + "\n"


def format_show(s: RunStatus) -> str:
    """A run's counts, progress, failures by reason and where its results are."""
    c = s.request_counts
    lines = [
        f"run {s.run_key}: {s.state} ({s.progress_pct:.1f} % finished)",
        f"  endpoint  {s.endpoint}",
        f"  corpus    {s.corpus or '-'}",
        f"  started   {s.created_at:%Y-%m-%d %H:%M:%S} UTC",
        f"  documents total {c.total}: succeeded {c.succeeded}, errored {c.errored}, "
        f"canceled {c.canceled}, processing {c.processing}, rejected {c.rejected}",
        "  batches   " + ", ".join(f"{k} {v}" for k, v in s.batches.items() if v),
        f"  results   {s.results_uri or '- (not aggregated yet)'}",
        f"  failures  {s.failures_uri or '-'}",
    ]
    if s.cost is not None:
        usd = s.cost["estimated_cost_usd"]
        low, high = s.cost["instances_min"], s.cost["instances_max"]
        lines.append(
            f"  cost      {'unknown' if usd is None else f'${usd:.4f}'}: "
            f"{s.cost['instance_seconds']:.1f} instance-seconds on {s.cost['instance_type']} "
            f"({low if low == high else f'{low}-{high}'} instances; last attempt)"
        )
        if s.cost.get("cost_note"):
            lines.append(f"            {s.cost['cost_note']}")
    if s.failures_by_reason:
        lines.append("  failures by reason:")
        lines += [f"    {n:>6}  {reason[:160]}" for reason, n in s.failures_by_reason.items()]
    if s.retryable:
        lines.append(f"  retry with: docflow runs retry {s.run_key}")
    return "\n".join(lines) + "\n"
