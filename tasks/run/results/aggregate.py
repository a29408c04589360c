"""Aggregate a run: stream the input rows in chunks, join each to its batch outputs, write tables.

Memory grows with a chunk of input rows, not with the corpus: each chunk reads only the outputs
of the batches its documents are in, becomes one Arrow record batch appended to Parquet (and
CSV/JSONL) files on local disk, and the files are uploaded from disk when the last chunk is in.
"""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.aws.s3 import split_s3_uri
from tasks.corpus.documents import Corpus
from tasks.endpoint.usage import EndpointUsage
from tasks.run.long.split import LongDocuments
from tasks.run.plan.layout import run_uri
from tasks.run.plan.manifest import RunManifest
from tasks.run.request.columns import Column, arrow_schema, result_columns, to_table
from tasks.run.request.typed_answers import Answers
from tasks.run.results.join import RowJoiner, input_chunks, late_rejects, leaf_batches
from tasks.run.results.outputs import OutputCache
from tasks.run.results.summary import RunSummary, Totals, build_summary
from tasks.settings import Profile

if TYPE_CHECKING:
    from tasks.run.fanout.spool import OutputSpool

OutputFormat = Literal["parquet", "csv", "jsonl"]
CHUNK_ROWS = 5000
PREVIEW_TEXT_CHARS = 200
# Added when a run truncates or splits long documents: tokens cut (truncate), chunks (map_reduce).
LONG_COLUMNS = [Column("tokens_cut", pa.int64(), "Int64"), Column("chunks", pa.int64(), "Int64")]


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
    joiner = RowJoiner(
        manifest,
        late_rejects(manifest, corpus),
        leaf_batches(manifest),
        OutputCache(profile, spool),
        plan=long_documents,
        kind=kind,
        reduce_leaves=leaf_batches(reduce_manifest) if reduce_manifest else {},
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
            for chunk in input_chunks(corpus, chunk_rows):
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
