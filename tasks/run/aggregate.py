"""Aggregate a run: stream the input rows in chunks, join each to its batch outputs, write tables.

Memory grows with a chunk of input rows, not with the corpus: each chunk reads only the outputs
of the batches its documents are in, becomes one Arrow record batch appended to Parquet (and
CSV/JSONL) files on local disk, and the files are uploaded from disk when the last chunk is in.
"""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.aws.s3 import split_s3_uri
from tasks.endpoint.usage import EndpointUsage
from tasks.run.answers import AnswerError, Answers
from tasks.run.columns import Column, arrow_schema, prefixed, result_columns, to_table
from tasks.run.combine import combine_chunks
from tasks.run.corpus import Corpus, Document, Rejected
from tasks.run.layout import run_uri
from tasks.run.long_documents import LongDocuments
from tasks.run.manifest import BatchRecord, BatchStatus, RunManifest
from tasks.run.outputs import BatchOutput, OutputCache
from tasks.run.summary import RunSummary, Totals, build_summary
from tasks.settings import Profile

if TYPE_CHECKING:
    from tasks.run.spool import OutputSpool

OutputFormat = Literal["parquet", "csv", "jsonl"]
CHUNK_ROWS = 5000
PREVIEW_TEXT_CHARS = 200
# Added when a run truncates or splits long documents: tokens cut (truncate), chunks (map_reduce).
LONG_COLUMNS = [Column("tokens_cut", pa.int64(), "Int64"), Column("chunks", pa.int64(), "Int64")]


def _outcome(
    doc_id: str,
    record: BatchRecord,
    output: BatchOutput | None,
    canceled: str | None = None,
    answers: Answers | None = None,
) -> dict[str, Any]:
    """The result columns of one batched document (``canceled``: why the run was cancelled).

    With ``answers``, a completed document's text is parsed into the typed answer columns; one
    whose text is not a valid answer is failed with the reason, never stored half-parsed.
    """
    row: dict[str, Any] = {"doc_id": doc_id, "batch_id": record.batch_id}
    if record.status is BatchStatus.FAILED:
        return row | {"status": "failed", "reason": record.reason or "batch failed"}
    if record.status is not BatchStatus.COMPLETED and canceled is not None:
        reason = (
            f"{canceled} while batch {record.batch_id} was {record.status.value}; "
            "resume the run with the same run_key to run it"
        )
        return row | {"status": "canceled", "reason": reason}
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
    typed: dict[str, Any] = {}
    if answers is not None:
        try:
            typed = answers.parse(line.get("text"))
        except AnswerError as exc:
            return row | {"status": "failed", "reason": f"invalid answer: {exc}"}
    return (
        typed
        | row
        | {
            "status": "completed",
            "text": line.get("text"),
            "prompt_tokens": line.get("prompt_tokens"),
            "completion_tokens": line.get("completion_tokens"),
            "finish_reason": line.get("finish_reason"),
        }
    )


# --- the table's schema, decided from the whole corpus before the first chunk ----------------


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
    outputs: OutputCache
    plan: LongDocuments | None = None
    kind: str = "summarize"
    reduce_leaves: dict[str, BatchRecord] = field(default_factory=dict)
    answers: Answers | None = None

    def rows(self, chunk: list[Document | Rejected]) -> list[dict[str, Any]]:
        """Result rows of ``chunk``; reads the outputs of its documents' completed batches."""
        pieces = self.plan.chunks if self.plan else {}
        wanted = [
            i for e in chunk if isinstance(e, Document) for i in pieces.get(e.doc_id, [e.doc_id])
        ]
        leaves = {i: self.leaves.get(i) for i in wanted}
        reduce = {
            e.doc_id: self.reduce_leaves.get(e.doc_id)
            for e in chunk
            if isinstance(e, Document) and e.doc_id in pieces
        }
        completed = {
            r.batch_id: r
            for r in [*leaves.values(), *reduce.values()]
            if r is not None and r.status is BatchStatus.COMPLETED
        }
        outputs = self.outputs.for_chunk(list(completed.values()))
        return [
            self._long(e, leaves, reduce.get(e.doc_id), outputs)
            if isinstance(e, Document) and e.doc_id in pieces
            else self._document(e, leaves[e.doc_id], outputs)
            if isinstance(e, Document)
            else {"row": e.row, "doc_id": e.doc_id, "status": "rejected", "reason": e.reason}
            for e in chunk
        ]

    def _long(
        self,
        doc: Document,
        leaves: dict[str, BatchRecord | None],
        reduce_leaf: BatchRecord | None,
        outputs: dict[str, BatchOutput],
    ) -> dict[str, Any]:
        """A map_reduce document: its chunks' outcomes combined into one row."""
        assert self.plan is not None
        canceled = self.manifest.canceled
        chunk_rows = []
        for piece in self.plan.chunks[doc.doc_id]:
            leaf = leaves.get(piece)
            chunk_rows.append(
                {
                    "status": "failed",
                    "reason": f"chunk is in no batch of run {self.manifest.run_key}",
                }
                if leaf is None
                else _outcome(piece, leaf, outputs.get(leaf.batch_id), canceled)
            )
        reduce_row = None
        if reduce_leaf is not None:
            reduce_row = _outcome(
                doc.doc_id, reduce_leaf, outputs.get(reduce_leaf.batch_id), canceled
            )
        combined = combine_chunks(self.kind, chunk_rows, reduce_row, self.answers)
        typed = {name for name, _ in self.answers.columns()} if self.answers else set()
        return {"row": doc.row, **prefixed(doc.metadata, typed), "doc_id": doc.doc_id, **combined}

    def _document(
        self, doc: Document, leaf: BatchRecord | None, outputs: dict[str, BatchOutput]
    ) -> dict[str, Any]:
        cut = self.plan.tokens_cut.get(doc.doc_id) if self.plan else None
        if cut is not None:
            return {**self._row(doc, leaf, outputs), "tokens_cut": cut}
        return self._row(doc, leaf, outputs)

    def _row(
        self, doc: Document, leaf: BatchRecord | None, outputs: dict[str, BatchOutput]
    ) -> dict[str, Any]:
        if leaf is not None:
            outcome = _outcome(
                doc.doc_id,
                leaf,
                outputs.get(leaf.batch_id),
                self.manifest.canceled,
                self.answers,
            )
        elif doc.doc_id in self.late:
            reason = self.late[doc.doc_id].reason
            outcome = {"doc_id": doc.doc_id, "status": "rejected", "reason": reason}
        else:
            reason = f"document is in no batch of run {self.manifest.run_key}"
            outcome = {"doc_id": doc.doc_id, "status": "failed", "reason": reason}
        typed = {name for name, _ in self.answers.columns()} if self.answers else set()
        return {"row": doc.row, **prefixed(doc.metadata, typed), **outcome}


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
    if isinstance(value, dt.date):  # a date answer column: JSON has no dates
        return value.isoformat()
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
    long_documents: LongDocuments | None = None,
    kind: str = "summarize",
    reduce_manifest: RunManifest | None = None,
    usage: EndpointUsage | None = None,
    answers: Answers | None = None,
) -> tuple[RunSummary, Preview]:
    """Write results, failures.parquet and summary.json under runs/<run_key>/ (and local_dir).

    Streams the input rows ``chunk_rows`` at a time; returns the summary and the first
    ``preview_rows`` result and failure rows. Batch outputs come from ``spool`` when it has them.
    ``answers``: typed answer columns parsed from each completed text (extract, classify).
    """
    if output_format not in ("parquet", "csv", "jsonl"):
        raise ValueError(f"output_format {output_format!r} is not one of parquet, csv, jsonl")
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be at least 1, not {chunk_rows}")
    columns = result_columns(corpus, answers)
    if long_documents is not None and long_documents.mode != "reject":
        columns += LONG_COLUMNS
    schema = arrow_schema(columns)
    joiner = _Joiner(
        manifest,
        _late_rejects(manifest, corpus),
        _leaves(manifest),
        OutputCache(profile, spool),
        plan=long_documents,
        kind=kind,
        reduce_leaves=_leaves(reduce_manifest) if reduce_manifest else {},
        answers=answers,
    )
    if reduce_manifest is not None:  # the summary counts the reduce step's batches too
        manifest = manifest.model_copy(
            update={"batches": {**manifest.batches, **reduce_manifest.batches}}
        )
    totals, preview = Totals(), Preview()
    with tempfile.TemporaryDirectory(prefix="docflow-aggregate-") as tmp:
        files = _TableFiles(Path(tmp), schema, output_format)
        try:
            for chunk in _chunks(corpus, chunk_rows):
                table = to_table(joiner.rows(chunk), columns, schema)
                failures = files.write(table)
                totals.add(table)
                preview.add(table, failures, preview_rows)
        finally:
            files.close()
        _check_rows(manifest, corpus, totals)
        summary = build_summary(
            manifest,
            corpus.size,
            profile,
            totals,
            wall_time_s,
            files.results_name,
            local_dir,
            usage,
        )
        if corpus.excluded:  # files the include/exclude patterns left out, per pattern
            summary = summary.model_copy(update={"excluded": corpus.excluded})
        (files.folder / "summary.json").write_text(
            summary.model_dump_json(indent=2), encoding="utf-8"
        )
        _publish(files.folder, [*files.names(), "summary.json"], profile, manifest, local_dir)
    return summary, preview


def _check_rows(manifest: RunManifest, corpus: Corpus, totals: Totals) -> None:
    """Every input row has exactly one result row."""
    if totals.rows != corpus.size or sum(totals.statuses.values()) != corpus.size:
        raise RuntimeError(
            f"run {manifest.run_key}: {totals.rows} result rows for {corpus.size} input rows; "
            "this is a bug in docflow's aggregation, please report it"
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
