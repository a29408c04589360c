"""Aggregate a run: read batch outputs from S3, join them to the input rows, write the tables."""

from __future__ import annotations

import io
import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel

from tasks.corpus import Corpus, Rejected
from tasks.manifest import BatchRecord, BatchStatus, RunManifest, run_uri, split_s3_uri
from tasks.settings import Profile

OutputFormat = Literal["parquet", "csv", "jsonl"]
COLUMNS = [
    "row",
    "doc_id",
    "status",
    "reason",
    "text",
    "prompt_tokens",
    "completion_tokens",
    "finish_reason",
    "batch_id",
]
_READ_WORKERS = 16


class RunSummary(BaseModel):
    """The small summary a run returns and writes as summary.json."""

    run_key: str
    endpoint: str
    documents: int
    completed: int
    failed: int
    rejected: int
    batches: int
    invocations: int
    wall_time_s: float
    docs_per_s: float
    latency_p50_s: float | None = None
    latency_p90_s: float | None = None
    latency_p99_s: float | None = None
    turnaround_p50_s: float | None = None
    turnaround_p90_s: float | None = None
    turnaround_p99_s: float | None = None
    prompt_tokens: int
    completion_tokens: int
    instance_type: str
    instance_count: int
    estimated_cost_usd: float
    notifications_received: int = 0
    duplicate_notifications: int = 0
    unknown_notifications: int = 0
    top_failure_reasons: dict[str, int] = {}
    results_uri: str
    failures_uri: str
    summary_uri: str
    local_results_path: str | None = None


class _Output(BaseModel):
    """What one batch's output object said about each of its documents."""

    lines: dict[str, dict[str, Any]] = {}
    unparsed: int = 0
    error: str | None = None


def read_output(record: BatchRecord, profile: Profile) -> _Output:
    """Parse a completed batch's output object (one JSON line per document)."""
    from tasks.aws import aws_client

    try:
        bucket, key = split_s3_uri(record.output_uri)
        body = aws_client("s3", profile).get_object(Bucket=bucket, Key=key)["Body"].read()
    except Exception as exc:  # NoSuchKey, access errors: the batch's documents fail with this
        return _Output(error=f"output object {record.output_uri} could not be read: {exc}")
    out = _Output()
    for raw in bytes(body).splitlines():
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


def read_outputs(records: list[BatchRecord], profile: Profile) -> dict[str, _Output]:
    """Read the outputs of the given batches concurrently (thread pool over S3 GetObject)."""
    if not records:
        return {}
    workers = min(_READ_WORKERS, len(records))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="read-output") as pool:
        outputs = pool.map(lambda r: read_output(r, profile), records)
        return {r.batch_id: o for r, o in zip(records, outputs, strict=True)}


def _outcome(doc_id: str, record: BatchRecord, output: _Output | None) -> dict[str, Any]:
    """The result columns of one batched document."""
    row: dict[str, Any] = {"doc_id": doc_id, "batch_id": record.batch_id}
    if record.status is BatchStatus.FAILED:
        return row | {"status": "failed", "reason": record.reason or "batch failed"}
    if record.status is not BatchStatus.COMPLETED:
        reason = f"batch {record.batch_id} was still {record.status.value} when the run ended"
        return row | {"status": "failed", "reason": reason}
    assert output is not None
    if output.error:
        return row | {"status": "failed", "reason": output.error}
    line = output.lines.get(doc_id)
    if line is None:
        extra = f" ({output.unparsed} lines could not be parsed)" if output.unparsed else ""
        reason = f"no result line for this document in {record.output_uri}{extra}"
        return row | {"status": "failed", "reason": reason}
    if line.get("error") is not None:
        return row | {"status": "failed", "reason": str(line["error"])}
    return row | {
        "status": "completed",
        "text": line.get("text"),
        "prompt_tokens": line.get("prompt_tokens"),
        "completion_tokens": line.get("completion_tokens"),
        "finish_reason": line.get("finish_reason"),
    }


def results_frame(
    manifest: RunManifest, corpus: Corpus, outputs: dict[str, _Output]
) -> pd.DataFrame:
    """One row per input row: completed, failed or rejected, with the reason and the metadata."""
    leaf_of: dict[str, BatchRecord] = {}
    for record in manifest.batches.values():
        if record.status is not BatchStatus.SPLIT:
            for doc_id in record.doc_ids:
                known = leaf_of.get(doc_id)
                if known is None or (
                    record.status is BatchStatus.COMPLETED
                    and known.status is not BatchStatus.COMPLETED
                ):
                    leaf_of[doc_id] = record
    # manifest.rejected may repeat the corpus's own rejections; those rows are already counted.
    early = {(r.doc_id, r.row, r.reason) for r in corpus.rejected}
    late_rejects = {
        r.doc_id: r
        for r in manifest.rejected
        if r.doc_id is not None and (r.doc_id, r.row, r.reason) not in early
    }

    inputs = pd.DataFrame(
        [{"row": d.row, "doc_id": d.doc_id, **_prefixed(d.metadata)} for d in corpus.documents]
    )
    outcomes: list[dict[str, Any]] = []
    for doc in corpus.documents:
        leaf = leaf_of.get(doc.doc_id)
        if leaf is not None:
            outcomes.append(_outcome(doc.doc_id, leaf, outputs.get(leaf.batch_id)))
        elif doc.doc_id in late_rejects:
            reason = late_rejects[doc.doc_id].reason
            outcomes.append({"doc_id": doc.doc_id, "status": "rejected", "reason": reason})
        else:
            reason = f"document is in no batch of run {manifest.run_key}"
            outcomes.append({"doc_id": doc.doc_id, "status": "failed", "reason": reason})
    frames = []
    if corpus.documents:
        joined = inputs.merge(
            pd.DataFrame(outcomes), on="doc_id", how="left", validate="one_to_one"
        )
        frames.append(joined)
    if corpus.rejected:
        frames.append(_rejected_frame(corpus.rejected))
    table = pd.concat(frames, ignore_index=True, sort=False) if frames else pd.DataFrame()
    for column in COLUMNS:
        if column not in table:
            table[column] = None
    meta = [c for c in table.columns if c not in COLUMNS]
    table = table[COLUMNS + meta]
    table = table.sort_values("row", kind="stable", na_position="last").reset_index(drop=True)
    for column in ("row", "prompt_tokens", "completion_tokens"):
        table[column] = pd.to_numeric(table[column]).astype("Int64")
    for column in ("doc_id", "status", "reason", "text", "finish_reason", "batch_id"):
        table[column] = table[column].astype("string")
    for column in meta:
        table[column] = _uniform(table[column])
    return table


def _rejected_frame(rejected: list[Rejected]) -> pd.DataFrame:
    rows = [
        {"row": r.row, "doc_id": r.doc_id, "status": "rejected", "reason": r.reason}
        for r in rejected
    ]
    return pd.DataFrame(rows)


def _prefixed(metadata: dict[str, Any]) -> dict[str, Any]:
    """Metadata as columns; a key that clashes with a result column gets a metadata_ prefix."""
    return {(f"metadata_{k}" if k in COLUMNS else str(k)): v for k, v in metadata.items()}


def _uniform(column: pd.Series) -> pd.Series:
    """A metadata column Parquet can store: one scalar type, else JSON text."""
    values = [v for v in column if v is not None and not (isinstance(v, float) and np.isnan(v))]
    kinds = {type(v) for v in values}
    if len(kinds) <= 1 and not kinds & {dict, list, tuple}:
        return column
    as_text = [
        None if v is None else json.dumps(v, default=str, ensure_ascii=False) for v in column
    ]
    return pd.Series(as_text, index=column.index, dtype="string")


def _percentiles(values: list[float]) -> tuple[float | None, float | None, float | None]:
    if not values:
        return None, None, None
    p50, p90, p99 = np.percentile(np.asarray(values, dtype=float), [50, 90, 99])
    return round(float(p50), 3), round(float(p90), 3), round(float(p99), 3)


def _latencies(manifest: RunManifest) -> tuple[list[float], list[float]]:
    """Per batch: receivedTime→eventTime (service latency) and submit→eventTime (turnaround)."""
    service: list[float] = []
    turnaround: list[float] = []
    for record in manifest.batches.values():
        if record.status not in (BatchStatus.COMPLETED, BatchStatus.FAILED):
            continue
        if record.completed_at is None:
            continue
        if record.received_time is not None:
            service.append((record.completed_at - record.received_time).total_seconds())
        if record.submitted_at is not None:
            turnaround.append((record.completed_at - record.submitted_at).total_seconds())
    return service, turnaround


def _encode(table: pd.DataFrame, fmt: OutputFormat) -> bytes:
    if fmt == "parquet":
        buffer = io.BytesIO()
        table.to_parquet(buffer, index=False)
        return buffer.getvalue()
    if fmt == "csv":
        return table.to_csv(index=False).encode("utf-8")
    if fmt == "jsonl":
        return str(table.to_json(orient="records", lines=True, force_ascii=False)).encode("utf-8")
    raise ValueError(f"output_format {fmt!r} is not one of parquet, csv, jsonl")


def aggregate_run(
    manifest: RunManifest,
    corpus: Corpus,
    profile: Profile,
    *,
    wall_time_s: float,
    output_format: OutputFormat = "parquet",
    local_dir: str | None = None,
) -> RunSummary:
    """Write results, failures.parquet and summary.json under runs/<run_key>/ (and local_dir)."""
    from tasks.aws import aws_client

    if output_format not in ("parquet", "csv", "jsonl"):
        raise ValueError(f"output_format {output_format!r} is not one of parquet, csv, jsonl")
    completed = [r for r in manifest.batches.values() if r.status is BatchStatus.COMPLETED]
    table = results_frame(manifest, corpus, read_outputs(completed, profile))
    counts = Counter(table["status"].dropna())
    if len(table) != corpus.size or sum(counts.values()) != corpus.size:
        raise RuntimeError(
            f"run {manifest.run_key}: {len(table)} result rows for {corpus.size} input rows; "
            "this is a bug in docflow's aggregation, please report it"
        )
    failures = table[table["status"] != "completed"].reset_index(drop=True)
    done = table["status"] == "completed"
    service, turnaround = _latencies(manifest)
    lat = _percentiles(service)
    tur = _percentiles(turnaround)
    hours = max(wall_time_s, 0.0) / 3600.0

    results_name = f"results.{output_format}"
    files: dict[str, bytes] = {"results.parquet": _encode(table, "parquet")}
    files[results_name] = _encode(table, output_format)
    files["failures.parquet"] = _encode(failures, "parquet")
    summary = RunSummary(
        run_key=manifest.run_key,
        endpoint=manifest.endpoint,
        documents=corpus.size,
        completed=counts.get("completed", 0),
        failed=counts.get("failed", 0),
        rejected=counts.get("rejected", 0),
        batches=len(manifest.batches),
        invocations=sum(r.attempts for r in manifest.batches.values()),
        wall_time_s=round(wall_time_s, 3),
        docs_per_s=round(corpus.size / wall_time_s, 3) if wall_time_s > 0 else 0.0,
        latency_p50_s=lat[0],
        latency_p90_s=lat[1],
        latency_p99_s=lat[2],
        turnaround_p50_s=tur[0],
        turnaround_p90_s=tur[1],
        turnaround_p99_s=tur[2],
        prompt_tokens=int(table.loc[done, "prompt_tokens"].fillna(0).sum()),
        completion_tokens=int(table.loc[done, "completion_tokens"].fillna(0).sum()),
        instance_type=profile.instance_type,
        instance_count=profile.instance_count,
        estimated_cost_usd=round(hours * profile.instance_count * profile.instance_hourly_usd, 4),
        notifications_received=manifest.notifications.received,
        duplicate_notifications=manifest.notifications.duplicates,
        unknown_notifications=manifest.notifications.unknown,
        top_failure_reasons=dict(Counter(failures["reason"].dropna()).most_common(5)),
        results_uri=run_uri(profile, manifest.run_key, results_name),
        failures_uri=run_uri(profile, manifest.run_key, "failures.parquet"),
        summary_uri=run_uri(profile, manifest.run_key, "summary.json"),
        local_results_path=str(Path(local_dir) / results_name) if local_dir else None,
    )
    files["summary.json"] = summary.model_dump_json(indent=2).encode("utf-8")

    s3 = aws_client("s3", profile)
    for name, body in files.items():
        bucket, key = split_s3_uri(run_uri(profile, manifest.run_key, name))
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    if local_dir:
        target = Path(local_dir)
        target.mkdir(parents=True, exist_ok=True)
        for name, body in files.items():
            (target / name).write_bytes(body)
    return summary


def _fmt(value: float | None, unit: str = "s") -> str:
    return "–" if value is None else f"{value:.2f} {unit}"


def summary_markdown(summary: RunSummary) -> str:
    """The run summary as Markdown (the Prefect markdown artifact)."""
    lines = [
        f"# Run `{summary.run_key}` on `{summary.endpoint}`",
        "",
        "| documents | completed | failed | rejected |",
        "|---:|---:|---:|---:|",
        f"| {summary.documents} | {summary.completed} | {summary.failed} | {summary.rejected} |",
        "",
        "| measure | value |",
        "|---|---:|",
        f"| wall time | {_fmt(summary.wall_time_s)} |",
        f"| documents per second | {summary.docs_per_s:.2f} |",
        f"| batches / invocations | {summary.batches} / {summary.invocations} |",
        f"| latency p50 / p90 / p99 (received → done) | {_fmt(summary.latency_p50_s)} / "
        f"{_fmt(summary.latency_p90_s)} / {_fmt(summary.latency_p99_s)} |",
        f"| turnaround p50 / p90 / p99 (submitted → done) | {_fmt(summary.turnaround_p50_s)} / "
        f"{_fmt(summary.turnaround_p90_s)} / {_fmt(summary.turnaround_p99_s)} |",
        f"| tokens in / out | {summary.prompt_tokens} / {summary.completion_tokens} |",
        f"| notifications (duplicates, unknown) | {summary.notifications_received} "
        f"({summary.duplicate_notifications}, {summary.unknown_notifications}) |",
        f"| estimated instance cost ({summary.instance_count} × {summary.instance_type}) "
        f"| ${summary.estimated_cost_usd:.4f} |",
        "",
        f"Results: `{summary.results_uri}`  ",
        f"Failures: `{summary.failures_uri}`",
    ]
    if summary.local_results_path:
        lines.append(f"  \nLocal copy: `{summary.local_results_path}`")
    if summary.top_failure_reasons:
        lines += [
            "",
            "## Top failure and rejection reasons",
            "",
            "| reason | documents |",
            "|---|---:|",
        ]
        for reason, count in summary.top_failure_reasons.items():
            lines.append(f"| {reason.replace('|', '/')[:200]} | {count} |")
    return "\n".join(lines) + "\n"
