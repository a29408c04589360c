"""A sharded run as one run to `docflow runs`: its parent with its totals, and its shards.

A sharded run keeps no manifest of its own: each shard is a run under ``<key>.sNNNofMMM`` and
the parent writes ``<key>/summary.json`` (with the merged ``results.parquet``) once every
shard has finished. So the parent is found from its shards' keys, its counts are the sum of
theirs while it runs, and its results are the merged file once it has ended.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from tasks.run.results.status import RequestCounts, RunState, RunStatus, read_status, read_summary
from tasks.settings import Profile

SHARD_KEY = re.compile(r"^(?P<parent>.+)\.s(?P<number>\d{3})of(?P<count>\d{3})$")


class ShardedStatus(RunStatus):
    """A sharded run: the parent's totals, and each shard's own status."""

    shard_count: int
    shards: list[RunStatus]


def parent_of(run_key: str) -> str | None:
    """The parent's run key when ``run_key`` names a shard, else None."""
    match = SHARD_KEY.match(run_key)
    return match["parent"] if match else None


def group_keys(keys: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """(plain run keys, {parent key: its shards' keys}) from every run folder's key."""
    parents: dict[str, list[str]] = {}
    for key in keys:
        parent = parent_of(key)
        if parent is not None:
            parents.setdefault(parent, []).append(key)
    plain = [k for k in keys if parent_of(k) is None and k not in parents]
    return plain, {p: sorted(shards) for p, shards in parents.items()}


def shard_keys(profile: Profile, run_key: str) -> list[str]:
    """The keys of ``run_key``'s shards that have a folder in S3 (none: not a sharded run)."""
    from tasks.aws.clients import aws_client

    prefix = f"{profile.prefixes.runs.strip('/')}/{run_key}.s"
    paginator = aws_client("s3", profile).get_paginator("list_objects_v2")
    keys = []
    for page in paginator.paginate(Bucket=profile.bucket, Prefix=prefix, Delimiter="/"):
        for common in page.get("CommonPrefixes", []):
            key = common["Prefix"].rstrip("/").rsplit("/", 1)[-1]
            if parent_of(key) == run_key:
                keys.append(key)
    return sorted(keys)


def sharded_status(
    profile: Profile, run_key: str, keys: list[str] | None = None
) -> ShardedStatus | None:
    """The sharded run ``run_key`` (None when it has no shards in S3)."""
    keys = shard_keys(profile, run_key) if keys is None else keys
    shards = [s for k in keys if (s := read_status(profile, k)) is not None]
    if not shards:
        return None
    summary = read_summary(profile, run_key)
    count = max(int(SHARD_KEY.match(s.run_key)["count"]) for s in shards)  # type: ignore[index]
    return combine(run_key, count, shards, summary)


def combine(
    run_key: str, count: int, shards: list[RunStatus], summary: dict[str, Any] | None
) -> ShardedStatus:
    """The parent's status: the shards' counts summed, its state from theirs and its summary."""
    fields = RequestCounts.model_fields
    totals = {f: sum(getattr(s.request_counts, f) for s in shards) for f in fields}
    counts = RequestCounts(**totals)
    batches: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    for shard in shards:
        batches.update(shard.batches)
        reasons.update(shard.failures_by_reason)
    started = len(shards)
    finished = counts.total - counts.processing
    return ShardedStatus(
        run_key=run_key,
        state=_state(shards, count, summary),
        endpoint=shards[0].endpoint,
        corpus=shards[0].corpus,
        created_at=min(s.created_at for s in shards),
        request_counts=counts,
        progress_pct=round(100.0 * finished / counts.total, 1) if counts.total else 0.0,
        batches=dict(batches),
        failures_by_reason=dict(reasons.most_common(10)),
        results_uri=(summary or {}).get("results_uri"),
        failures_uri=None,
        summary_uri=(summary or {}).get("summary_uri"),
        retryable=any(s.retryable for s in shards) and started == count,
        shard_count=count,
        shards=sorted(shards, key=lambda s: s.run_key),
    )


def _state(shards: list[RunStatus], count: int, summary: dict[str, Any] | None) -> RunState:
    """In progress until every shard has ended and the parent has summed them up."""
    states = {s.state for s in shards}
    if "canceled" in states:
        return "canceled"
    if len(shards) < count or "in_progress" in states or summary is None:
        return "in_progress"
    return "completed_with_failures" if "completed_with_failures" in states else "completed"


def format_shards(status: ShardedStatus) -> str:
    """The lines `docflow runs show` adds under a sharded run's totals."""
    missing = status.shard_count - len(status.shards)
    lines = [
        f"  shards    {status.shard_count}"
        + (f" ({missing} not started yet)" if missing else "")
        + ": key, state, total, succeeded, errored, canceled, rejected"
    ]
    for shard in status.shards:
        c = shard.request_counts
        lines.append(
            f"    {shard.run_key}  {shard.state}  {c.total}  {c.succeeded}  {c.errored}  "
            f"{c.canceled}  {c.rejected}"
        )
    return "\n".join(lines) + "\n"


def remerge(profile: Profile, run_key: str) -> dict[str, Any] | None:
    """Sum up and merge the parent again from its shards' summaries (after a retry of some);
    the new summary, or None when the parent never wrote one (it has not ended yet)."""
    from tasks.run.results.status import write_summary
    from tasks.sharding.children import ShardRun
    from tasks.sharding.merge import PROCESS_DOCUMENTS, combine_summaries
    from tasks.sharding.parent import keep_local_copy

    old = read_summary(profile, run_key)
    if old is None or not old.get("shard_runs"):
        return None
    runs = []
    for entry in old["shard_runs"]:
        match = SHARD_KEY.match(entry["run_key"])
        assert match is not None, entry
        runs.append(
            ShardRun(
                index=int(match["number"]) - 1,
                count=int(match["count"]),
                run_key=entry["run_key"],
                attempt=entry.get("attempts") or 1,
                flow_run_id=entry.get("flow_run_id"),
                state=entry.get("state") or "COMPLETED",
                worker=entry.get("worker"),
                summary=read_summary(profile, entry["run_key"]),
            )
        )
    summary = combine_summaries(run_key, runs, PROCESS_DOCUMENTS)
    summary["results_uri"] = PROCESS_DOCUMENTS.merge(profile, run_key, runs)
    summary["wall_time_s"] = old.get("wall_time_s")
    summary["summary_uri"] = write_summary(profile, run_key, summary)
    keep_local_copy(profile, run_key, summary)
    return summary
