"""Aggregate a run: stream the input rows in chunks, join each to its batch outputs, write tables.

Memory grows with a chunk of input rows, not with the corpus: each chunk reads only the outputs
of the batches its documents are in, becomes one Arrow record batch appended to Parquet (and
CSV/JSONL) files on local disk, and the files are uploaded from disk when the last chunk is in.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel

from tasks.aws.s3 import split_s3_uri
from tasks.run.corpus import Corpus, Document, Rejected
from tasks.run.layout import run_uri
from tasks.run.manifest import BatchRecord, BatchStatus, RunManifest
from tasks.settings import Profile

if TYPE_CHECKING:
    from tasks.run.spool import OutputSpool

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
_INT_COLUMNS = ("row", "prompt_tokens", "completion_tokens")
_READ_WORKERS = 16
CHUNK_ROWS = 5000
PREVIEW_TEXT_CHARS = 200


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


@dataclass
class _Output:
    """What one batch's output object said about each of its documents."""

    lines: dict[str, dict[str, Any]] = field(default_factory=dict)
    unparsed: int = 0
    error: str | None = None


def read_output(record: BatchRecord, profile: Profile, spool: OutputSpool | None = None) -> _Output:
    """Parse a completed batch's output object (one JSON line per document).

    The spool's local copy is used when it has one; otherwise the object is read from S3.
    """
    try:
        body = _output_body(record.output_uri, profile, spool)
    except Exception as exc:  # NoSuchKey, access errors: the batch's documents fail with this
        return _Output(error=f"output object {record.output_uri} could not be read: {exc}")
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


def parse_output(body: bytes) -> _Output:
    """The result lines of an output object, by document id (the first line for an id wins)."""
    out = _Output()
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
) -> dict[str, _Output]:
    """Read the outputs of the given batches concurrently (thread pool over the spool / S3)."""
    if not records:
        return {}
    workers = min(_READ_WORKERS, len(records))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="read-output") as pool:
        outputs = pool.map(lambda r: read_output(r, profile, spool), records)
        return {r.batch_id: o for r, o in zip(records, outputs, strict=True)}


class _OutputCache:
    """The parsed outputs one chunk needs; a batch shared with the previous chunk is kept."""

    def __init__(self, profile: Profile, spool: OutputSpool | None) -> None:
        self._profile = profile
        self._spool = spool
        self._held: dict[str, _Output] = {}

    def for_chunk(self, records: list[BatchRecord]) -> dict[str, _Output]:
        """The outputs of ``records``; outputs no longer needed are dropped before any read."""
        wanted = {r.batch_id for r in records}
        self._held = {b: o for b, o in self._held.items() if b in wanted}
        missing = [r for r in records if r.batch_id not in self._held]
        self._held.update(read_outputs(missing, self._profile, self._spool))
        return self._held


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


# --- the table's schema, decided from the whole corpus before the first chunk ----------------


@dataclass
class _MetaStats:
    """What one metadata column holds across the corpus's documents."""

    kinds: set[type] = field(default_factory=set)
    nulls: bool = False  # some document has None/NaN there
    missing: bool = False  # some document has no such key


@dataclass(frozen=True)
class _Column:
    """One output column: its Arrow type, pandas dtype, and whether values become JSON text."""

    name: str
    arrow: pa.DataType
    dtype: str
    as_json: bool = False


def _prefixed(metadata: dict[str, Any]) -> dict[str, Any]:
    """Metadata as columns; a key that clashes with a result column gets a metadata_ prefix."""
    return {(f"metadata_{k}" if k in COLUMNS else str(k)): v for k, v in metadata.items()}


def _is_null(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _scan_metadata(documents: list[Document]) -> dict[str, _MetaStats]:
    """Per metadata column (in order of first appearance): value types, nulls, missing keys."""
    stats: dict[str, _MetaStats] = {}
    for index, doc in enumerate(documents):
        meta = _prefixed(doc.metadata)
        for name, value in meta.items():
            column = stats.get(name)
            if column is None:
                column = stats[name] = _MetaStats(missing=index > 0)
            if _is_null(value):
                column.nulls = True
            else:
                column.kinds.add(type(value))
        for name, column in stats.items():
            if name not in meta:
                column.missing = True
    return stats


def _meta_column(name: str, stats: _MetaStats, rejected_rows: bool) -> _Column:
    """A metadata column Parquet can store: one scalar type, else JSON text.

    The types are the ones the pandas-built table had: ints with any null are float64, bools
    with any null are object, a column of only None is Arrow null (float64 if a key was missing).
    """
    kinds = {float} if stats.kinds == {int, float} else stats.kinds  # pandas made it float64
    gaps = stats.nulls or stats.missing or rejected_rows
    if not kinds:
        if stats.missing:
            return _Column(name, pa.float64(), "float64")
        return _Column(name, pa.null(), "object")
    kind = next(iter(kinds)) if len(kinds) == 1 else None
    if kind is str:
        return _Column(name, pa.large_string(), "str")
    if kind is bool:
        return _Column(name, pa.bool_(), "object" if gaps else "bool")
    if kind is int and not gaps:
        return _Column(name, pa.int64(), "int64")
    if kind in (int, float):
        return _Column(name, pa.float64(), "float64")
    # Mixed types, lists and dicts; also datetimes, decimals, bytes: JSON text.
    return _Column(name, pa.large_string(), "string", as_json=True)


def _columns(corpus: Corpus) -> list[_Column]:
    """The fixed result columns, then one column per metadata key."""
    fixed = [
        _Column(c, pa.int64(), "Int64")
        if c in _INT_COLUMNS
        else _Column(c, pa.large_string(), "string")
        for c in COLUMNS
    ]
    stats = _scan_metadata(corpus.documents)
    rejected_rows = bool(corpus.rejected)
    return fixed + [_meta_column(n, s, rejected_rows) for n, s in stats.items()]


def _schema(columns: list[_Column]) -> pa.Schema:
    """The Arrow schema, with the pandas metadata that restores each column's dtype on read."""
    prototype = pd.DataFrame({c.name: pd.Series([], dtype=c.dtype) for c in columns})
    arrow = pa.schema([pa.field(c.name, c.arrow) for c in columns])
    return pa.Table.from_pandas(prototype, schema=arrow, preserve_index=False).schema


# --- walking the input rows in chunks --------------------------------------------------------


def _row_order(corpus: Corpus) -> np.ndarray:
    """Positions in documents + rejected, stably sorted by input row (rows without one last)."""
    last = np.iinfo(np.int64).max
    rows = [d.row for d in corpus.documents] + [r.row for r in corpus.rejected]
    keys = np.fromiter((last if r is None else r for r in rows), dtype=np.int64, count=len(rows))
    return np.argsort(keys, kind="stable")


def _chunks(corpus: Corpus, chunk_rows: int) -> Iterator[list[Document | Rejected]]:
    """The input rows in row order, ``chunk_rows`` at a time (one empty chunk for no rows)."""
    order = _row_order(corpus)
    documents, rejected = corpus.documents, corpus.rejected
    for start in range(0, max(len(order), 1), chunk_rows):
        yield [
            documents[p] if p < len(documents) else rejected[p - len(documents)]
            for p in order[start : start + chunk_rows].tolist()
        ]


def _leaves(manifest: RunManifest) -> dict[str, BatchRecord]:
    """The leaf batch of each batched document: a non-split batch, a completed one preferred."""
    leaf_of: dict[str, BatchRecord] = {}
    for record in manifest.batches.values():
        if record.status is BatchStatus.SPLIT:
            continue
        for doc_id in record.doc_ids:
            known = leaf_of.get(doc_id)
            if known is None or (
                record.status is BatchStatus.COMPLETED and known.status is not BatchStatus.COMPLETED
            ):
                leaf_of[doc_id] = record
    return leaf_of


def _late_rejects(manifest: RunManifest, corpus: Corpus) -> dict[str, Rejected]:
    """Documents the run rejected after loading (too big for a payload), by id."""
    # manifest.rejected may repeat the corpus's own rejections; those rows are already counted.
    early = {(r.doc_id, r.row, r.reason) for r in corpus.rejected}
    return {
        r.doc_id: r
        for r in manifest.rejected
        if r.doc_id is not None and (r.doc_id, r.row, r.reason) not in early
    }


@dataclass
class _Joiner:
    """Turns a chunk of input rows into result rows (one dict per row, in the chunk's order).

    ``leaves`` maps each batched document to its leaf batch (found once for the whole run);
    ``outputs`` reads each chunk's batch outputs.
    """

    manifest: RunManifest
    late: dict[str, Rejected]
    leaves: dict[str, BatchRecord]
    outputs: _OutputCache

    def rows(self, chunk: list[Document | Rejected]) -> list[dict[str, Any]]:
        """Result rows of ``chunk``; reads the outputs of its documents' completed batches."""
        leaves = {e.doc_id: self.leaves.get(e.doc_id) for e in chunk if isinstance(e, Document)}
        completed = {
            r.batch_id: r
            for r in leaves.values()
            if r is not None and r.status is BatchStatus.COMPLETED
        }
        outputs = self.outputs.for_chunk(list(completed.values()))
        return [
            self._document(e, leaves[e.doc_id], outputs)
            if isinstance(e, Document)
            else {"row": e.row, "doc_id": e.doc_id, "status": "rejected", "reason": e.reason}
            for e in chunk
        ]

    def _document(
        self, doc: Document, leaf: BatchRecord | None, outputs: dict[str, _Output]
    ) -> dict[str, Any]:
        if leaf is not None:
            outcome = _outcome(doc.doc_id, leaf, outputs.get(leaf.batch_id))
        elif doc.doc_id in self.late:
            reason = self.late[doc.doc_id].reason
            outcome = {"doc_id": doc.doc_id, "status": "rejected", "reason": reason}
        else:
            reason = f"document is in no batch of run {self.manifest.run_key}"
            outcome = {"doc_id": doc.doc_id, "status": "failed", "reason": reason}
        return {"row": doc.row, **_prefixed(doc.metadata), **outcome}


def _as_int(value: Any) -> int | None:
    """A token count or row number as an int (None when absent or not a whole number)."""
    if value is None or isinstance(value, int):
        return None if value is None else int(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if number.is_integer() else None


def _as_text(value: Any) -> str | None:
    return None if _is_null(value) else str(value)


def _as_json(value: Any) -> str | None:
    return None if _is_null(value) else json.dumps(value, default=str, ensure_ascii=False)


def _cell(column: _Column, value: Any) -> Any:
    if column.name in _INT_COLUMNS:
        return _as_int(value)
    if column.name in COLUMNS:
        return _as_text(value)
    return _as_json(value) if column.as_json else value


def _to_table(rows: list[dict[str, Any]], columns: list[_Column], schema: pa.Schema) -> pa.Table:
    """The chunk's rows as an Arrow table of exactly ``schema`` (NaN stored as null)."""
    arrays = [
        pa.array([_cell(c, row.get(c.name)) for row in rows], type=c.arrow, from_pandas=True)
        for c in columns
    ]
    return pa.Table.from_arrays(arrays, schema=schema)


# --- writing, counting and previewing the chunks ---------------------------------------------


class _TableFiles:
    """results.parquet, failures.parquet and results.<fmt>, appended to chunk by chunk on disk."""

    def __init__(self, folder: Path, schema: pa.Schema, output_format: OutputFormat) -> None:
        self.folder = folder
        self.results_name = f"results.{output_format}"
        self._format = output_format
        self._results = pq.ParquetWriter(folder / "results.parquet", schema)
        self._failures = pq.ParquetWriter(folder / "failures.parquet", schema)
        self._text = None if output_format == "parquet" else (folder / self.results_name).open("wb")
        self._header = True

    def write(self, table: pa.Table) -> pa.Table:
        """Append a chunk to every file; returns its failure rows."""
        failures = table.filter(pc.not_equal(table["status"], "completed"))
        self._results.write_table(table)
        self._failures.write_table(failures)
        if self._text is not None:
            self._text.write(_encode_text(table.to_pandas(), self._format, header=self._header))
            self._header = False
        return failures

    def close(self) -> None:
        """Finish the Parquet footers and flush the text file."""
        self._results.close()
        self._failures.close()
        if self._text is not None:
            self._text.close()

    def names(self) -> list[str]:
        """The files written, in upload order."""
        return list(dict.fromkeys(["results.parquet", self.results_name, "failures.parquet"]))


def _encode_text(frame: pd.DataFrame, fmt: OutputFormat, *, header: bool) -> bytes:
    """A chunk as CSV (header only on the first chunk) or JSON lines."""
    if fmt == "csv":
        return frame.to_csv(index=False, header=header).encode("utf-8")
    if frame.empty:
        return b""
    text = str(frame.to_json(orient="records", lines=True, force_ascii=False))
    return (text if text.endswith("\n") else text + "\n").encode("utf-8")


@dataclass
class _Totals:
    """Counts and sums accumulated over the chunks for the summary."""

    rows: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasons: Counter[str] = field(default_factory=Counter)

    def add(self, table: pa.Table) -> None:
        """Count one written chunk."""
        self.rows += table.num_rows
        columns = ("status", "reason", "prompt_tokens", "completion_tokens")
        for status, reason, prompt, completion in zip(
            *(table[c].to_pylist() for c in columns), strict=True
        ):
            if status is not None:
                self.statuses[status] += 1
            if status == "completed":
                self.prompt_tokens += prompt or 0
                self.completion_tokens += completion or 0
            elif reason is not None:
                self.reasons[reason] += 1


@dataclass
class Preview:
    """The first rows of the results and of the failures, ready for a Prefect table artifact.

    JSON-friendly: None for nulls, text longer than 200 characters cut to 200 plus "…".
    """

    results: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)

    def add(self, table: pa.Table, failures: pa.Table, limit: int) -> None:
        """Take rows from a chunk until each list has ``limit``."""
        self.results += _preview_rows(table, limit - len(self.results))
        self.failures += _preview_rows(failures, limit - len(self.failures))


def _preview_rows(table: pa.Table, n: int) -> list[dict[str, Any]]:
    if n <= 0:
        return []
    rows = table.slice(0, n).to_pylist()
    return [{k: _shorten(v) for k, v in row.items()} for row in rows]


def _shorten(value: Any) -> Any:
    if isinstance(value, str) and len(value) > PREVIEW_TEXT_CHARS:
        return value[:PREVIEW_TEXT_CHARS] + "…"
    return value


# --- the aggregation --------------------------------------------------------------------------


def aggregate_run(
    manifest: RunManifest,
    corpus: Corpus,
    profile: Profile,
    *,
    wall_time_s: float,
    output_format: OutputFormat = "parquet",
    local_dir: str | None = None,
    preview_rows: int = 0,
    spool: OutputSpool | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> tuple[RunSummary, Preview]:
    """Write results, failures.parquet and summary.json under runs/<run_key>/ (and local_dir).

    Streams the input rows ``chunk_rows`` at a time; returns the summary and the first
    ``preview_rows`` result and failure rows. Batch outputs come from ``spool`` when it has them.
    """
    if output_format not in ("parquet", "csv", "jsonl"):
        raise ValueError(f"output_format {output_format!r} is not one of parquet, csv, jsonl")
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be at least 1, not {chunk_rows}")
    columns = _columns(corpus)
    schema = _schema(columns)
    joiner = _Joiner(
        manifest, _late_rejects(manifest, corpus), _leaves(manifest), _OutputCache(profile, spool)
    )
    totals, preview = _Totals(), Preview()
    with tempfile.TemporaryDirectory(prefix="docflow-aggregate-") as tmp:
        files = _TableFiles(Path(tmp), schema, output_format)
        try:
            for chunk in _chunks(corpus, chunk_rows):
                table = _to_table(joiner.rows(chunk), columns, schema)
                failures = files.write(table)
                totals.add(table)
                preview.add(table, failures, preview_rows)
        finally:
            files.close()
        _check_rows(manifest, corpus, totals)
        summary = _summary(manifest, corpus, profile, totals, wall_time_s, files, local_dir)
        (files.folder / "summary.json").write_text(
            summary.model_dump_json(indent=2), encoding="utf-8"
        )
        _publish(files.folder, [*files.names(), "summary.json"], profile, manifest, local_dir)
    return summary, preview


def _check_rows(manifest: RunManifest, corpus: Corpus, totals: _Totals) -> None:
    """Every input row has exactly one result row."""
    if totals.rows != corpus.size or sum(totals.statuses.values()) != corpus.size:
        raise RuntimeError(
            f"run {manifest.run_key}: {totals.rows} result rows for {corpus.size} input rows; "
            "this is a bug in docflow's aggregation, please report it"
        )


def _summary(
    manifest: RunManifest,
    corpus: Corpus,
    profile: Profile,
    totals: _Totals,
    wall_time_s: float,
    files: _TableFiles,
    local_dir: str | None,
) -> RunSummary:
    """The run's summary from the streamed totals and the manifest's timings."""
    service, turnaround = _latencies(manifest)
    lat = _percentiles(service)
    tur = _percentiles(turnaround)
    hours = max(wall_time_s, 0.0) / 3600.0
    return RunSummary(
        run_key=manifest.run_key,
        endpoint=manifest.endpoint,
        documents=corpus.size,
        completed=totals.statuses.get("completed", 0),
        failed=totals.statuses.get("failed", 0),
        rejected=totals.statuses.get("rejected", 0),
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
        prompt_tokens=totals.prompt_tokens,
        completion_tokens=totals.completion_tokens,
        instance_type=profile.instance_type,
        instance_count=profile.instance_count,
        estimated_cost_usd=round(hours * profile.instance_count * profile.instance_hourly_usd, 4),
        notifications_received=manifest.notifications.received,
        duplicate_notifications=manifest.notifications.duplicates,
        unknown_notifications=manifest.notifications.unknown,
        top_failure_reasons=dict(totals.reasons.most_common(5)),
        results_uri=run_uri(profile, manifest.run_key, files.results_name),
        failures_uri=run_uri(profile, manifest.run_key, "failures.parquet"),
        summary_uri=run_uri(profile, manifest.run_key, "summary.json"),
        local_results_path=str(Path(local_dir) / files.results_name) if local_dir else None,
    )


def _publish(
    folder: Path, names: list[str], profile: Profile, manifest: RunManifest, local_dir: str | None
) -> None:
    """Upload the files from disk (managed transfer) and copy them to ``local_dir``."""
    from tasks.aws.clients import aws_client

    s3 = aws_client("s3", profile)
    for name in names:
        bucket, key = split_s3_uri(run_uri(profile, manifest.run_key, name))
        s3.upload_file(str(folder / name), bucket, key)
    if local_dir:
        target = Path(local_dir)
        target.mkdir(parents=True, exist_ok=True)
        for name in names:
            shutil.copyfile(folder / name, target / name)


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
