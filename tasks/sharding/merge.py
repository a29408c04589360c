"""What the parent of a sharded run sums and merges: its children's summary.json counts and their
results tables, as one run (``ShardedFlow``: what differs between the flows that shard)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict

from tasks.sharding.children import ShardRun

MERGE_ROWS = 1_000_000  # results.parquet as one file for runs up to this many rows


class ShardedFlow(BaseModel):
    """What differs between the flows that shard: the counts a parent sums, the one results file
    it merges, and how it says the totals. Starting, watching and re-running shards is shared."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    flow: str  # the flow's name, for people: "process-documents"
    summed: tuple[str, ...]  # counts summed over the shards' summary.json
    carried: tuple[str, ...] = ()  # the same in every shard's summary.json: taken from the first
    averaged: tuple[str, ...] = ()  # means, weighted by each shard's "completed"
    # (profile, parent run key, finished shards) -> the merged results file's URI, or None
    merge: Callable[[Any, str, list[ShardRun]], str | None]
    headline: Callable[[Mapping[str, Any]], str]  # the totals in one sentence


def combine_summaries(run_key: str, shards: list[ShardRun], kind: ShardedFlow) -> dict[str, Any]:
    """The whole run's counts: every shard's summary.json summed, and where each shard's are."""
    summaries = [s.summary or {} for s in shards]
    totals: dict[str, Any] = {name: 0 for name in kind.summed}
    for summary in summaries:
        for name in kind.summed:
            value = summary.get(name)
            if isinstance(value, int | float):
                totals[name] += value
    for name, value in totals.items():
        if isinstance(value, float):
            totals[name] = round(value, 6)
    carried = {name: next((s[name] for s in summaries if name in s), None) for name in kind.carried}
    averaged = {name: _weighted_mean(summaries, name) for name in kind.averaged}
    reasons: dict[str, int] = {}
    for summary in summaries:
        for reason, n in (summary.get("top_failure_reasons") or {}).items():
            reasons[reason] = reasons.get(reason, 0) + int(n)
    excluded: dict[str, int] = {}  # files left out by include/exclude (shard 0 reports them)
    for summary in summaries:
        for pattern, n in (summary.get("excluded") or {}).items():
            excluded[pattern] = excluded.get(pattern, 0) + int(n)
    return {
        "run_key": run_key,
        **carried,
        **totals,
        **averaged,
        "shards": len(shards),
        "top_failure_reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1])[:10]),
        **({"excluded": excluded} if excluded else {}),
        "shard_runs": [
            {
                "shard": s.shard.label,
                "run_key": s.run_key,
                "flow_run_id": s.flow_run_id,
                "attempts": s.attempt,
                "state": s.state,
                "worker": s.worker,
                "results_uri": (s.summary or {}).get("results_uri"),
                "failures_uri": (s.summary or {}).get("failures_uri"),
            }
            for s in shards
        ],
    }


def _weighted_mean(summaries: list[dict[str, Any]], name: str) -> float | None:
    """The mean of every shard's ``name`` weighted by its completed count (None: no value)."""
    pairs = [
        (float(s[name]), int(s.get("completed") or 0))
        for s in summaries
        if isinstance(s.get(name), int | float)
    ]
    weight = sum(w for _, w in pairs)
    return round(sum(v * w for v, w in pairs) / weight, 4) if weight else None


def merge_results(profile: Any, run_key: str, shards: list[ShardRun]) -> str | None:
    """The shards' results.parquet files as one results.parquet under the parent's prefix.

    Only for Parquet results of at most ``MERGE_ROWS`` rows (None otherwise): bigger runs are read
    as a dataset of the per-shard files that summary.json lists. The files are copied to disk and
    merged a record batch at a time, so the parent's memory does not grow with the run.
    """
    import tempfile
    from pathlib import Path

    import pyarrow as pa
    import pyarrow.parquet as pq

    from tasks.aws.clients import aws_client
    from tasks.aws.s3 import split_s3_uri
    from tasks.run.plan.layout import run_uri

    uris = [(s.summary or {}).get("results_uri") for s in shards]
    rows = sum(int((s.summary or {}).get("documents") or 0) for s in shards)
    if rows > MERGE_ROWS or not all(isinstance(u, str) and u.endswith(".parquet") for u in uris):
        return None
    s3 = aws_client("s3", profile)
    target = run_uri(profile, run_key, "results.parquet")
    with tempfile.TemporaryDirectory(prefix="docflow-merge-") as folder:
        parts = []
        for number, uri in enumerate(uris):
            bucket, key = split_s3_uri(str(uri))
            part = Path(folder) / f"{number:03d}.parquet"
            s3.download_file(bucket, key, str(part))
            parts.append(pq.ParquetFile(part))
        # A column all null in one shard (no failures there) has another type than elsewhere.
        schema = pa.unify_schemas([p.schema_arrow for p in parts], promote_options="permissive")
        merged = Path(folder) / "results.parquet"
        with pq.ParquetWriter(merged, schema) as writer:
            for part in parts:
                for batch in part.iter_batches():
                    writer.write_table(conform_table(pa.Table.from_batches([batch]), schema))
        bucket, key = split_s3_uri(target)
        s3.upload_file(str(merged), bucket, key)
    return target


def conform_table(table: Any, schema: Any) -> Any:
    """``table`` with ``schema``'s columns in its order and types (a missing one all null)."""
    import pyarrow as pa

    columns = []
    for field in schema:
        if field.name in table.column_names:
            column = table[field.name]
            columns.append(column if column.type == field.type else column.cast(field.type))
        else:
            columns.append(pa.nulls(len(table), field.type))
    return pa.Table.from_arrays(columns, schema=schema)


def _documents_headline(summary: Mapping[str, Any]) -> str:
    return (
        f"{summary['documents']} documents in {summary['shards']} shards: "
        f"{summary['completed']} completed, {summary['failed']} failed, "
        f"{summary['rejected']} rejected, {summary['canceled']} canceled; "
        f"{summary['invocations']} invocations."
    )


PROCESS_DOCUMENTS = ShardedFlow(
    flow="process-documents",
    summed=(
        "documents",
        "completed",
        "failed",
        "rejected",
        "canceled",
        "batches",
        "invocations",
        "prompt_tokens",
        "completion_tokens",
        "estimated_cost_usd",
    ),
    merge=merge_results,
    headline=_documents_headline,
)


def sharded_markdown(summary: Mapping[str, Any], kind: ShardedFlow) -> str:
    """The parent's summary artifact: totals and one line per shard."""
    lines = [
        f"# Sharded {kind.flow} run `{summary['run_key']}`",
        "",
        kind.headline(summary),
        "",
        "| shard | run key | state | attempts | worker | results |",
        "|---|---|---|---|---|---|",
    ]
    for run in summary["shard_runs"]:
        lines.append(
            f"| {run['shard']} | `{run['run_key']}` | {run['state']} | {run['attempts']} | "
            f"{run['worker'] or ''} | {run['results_uri'] or ''} |"
        )
    if summary.get("results_uri"):
        lines += ["", f"All results in one file: {summary['results_uri']}"]
    return "\n".join(lines) + "\n"
