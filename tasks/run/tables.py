"""Rows of a table file (JSON Lines, CSV, Parquet), numbered from 1, with what cannot be a row
kept as a ``BadRow`` that says why (the corpus turns it into a rejected row)."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

SUPPORTED = (
    ".jsonl",
    ".csv",
    ".parquet",
    "folder of documents (.pdf, .docx, .html, .eml, .md, .txt) or of data files",
)


class CorpusError(ValueError):
    """The corpus source itself is unusable (missing, unreadable, empty, wrong columns)."""


class BadRow:
    """A row that failed before it had columns (bad bytes, bad JSON, an unreadable file).

    ``doc_id``: the id when known (a file's path); ``raw``: the line, to find a readable id in.
    """

    def __init__(
        self, reason: str, doc_id: str | None = None, raw: str | None = None, ignored: bool = False
    ) -> None:
        self.reason = reason
        self.doc_id = doc_id
        self.raw = raw
        self.ignored = ignored  # not a row: a file beside the table files of a folder


Row = dict[str, Any] | BadRow


def parse_table(uri: str, suffix: str, data: bytes) -> list[Row]:
    """Rows of a JSONL, CSV or Parquet file."""
    if suffix == ".jsonl":
        return _jsonl_rows(data)
    if suffix == ".csv":
        return _csv_rows(uri, data)
    if suffix == ".parquet":
        return _parquet_rows(uri, data)
    raise CorpusError(f"corpus {uri} has an unsupported type {suffix!r}; use one of {SUPPORTED}")


def _jsonl_rows(data: bytes) -> list[Row]:
    """One row per non-blank line; undecodable or invalid lines become bad rows."""
    rows: list[Row] = []
    lines = data.split(b"\n")
    if lines and lines[-1].strip() == b"":
        lines.pop()
    for number, raw in enumerate(lines):
        if number == 0:
            raw = raw.removeprefix(b"\xef\xbb\xbf")
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            rows.append(
                BadRow(
                    f"line {number + 1} is not valid UTF-8 ({exc.reason} at byte {exc.start + 1}); "
                    "re-save the file as UTF-8 or fix that line",
                    raw=raw.decode("utf-8", errors="replace"),
                )
            )
            continue
        if not line.strip():
            rows.append(BadRow(f"line {number + 1} is blank; remove it"))
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            rows.append(
                BadRow(
                    f"line {number + 1} is not valid JSON ({exc.msg.removesuffix(' at')} at "
                    f"column {exc.colno}); fix or remove that line",
                    raw=line,
                )
            )
            continue
        if not isinstance(value, dict):
            rows.append(
                BadRow(
                    f"line {number + 1} is a JSON {type(value).__name__}, not an object; "
                    "write one JSON object per line"
                )
            )
            continue
        rows.append(value)
    return rows


def _csv_rows(uri: str, data: bytes) -> list[Row]:
    """One row per CSV record (header required); a record with undecodable bytes is a bad row."""
    text = data.removeprefix(b"\xef\xbb\xbf").decode("utf-8", errors="surrogateescape")
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        records = list(reader)
    except csv.Error as exc:
        raise CorpusError(f"corpus {uri} is not valid CSV: {exc}") from exc
    rows: list[Row] = []
    for number, record in enumerate(records):
        values = [v for v in record.values() if isinstance(v, str)]
        if any(_has_surrogates(v) for v in values):
            rows.append(
                BadRow(
                    f"CSV row {number + 1} (after the header) has bytes that are not valid UTF-8; "
                    "re-save the file as UTF-8"
                )
            )
            continue
        if None in record:
            rows.append(
                BadRow(
                    f"CSV row {number + 1} (after the header) has more fields than the header; "
                    "quote fields that hold commas"
                )
            )
            continue
        rows.append(dict(record))
    return rows


def _has_surrogates(value: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in value)


def _parquet_rows(uri: str, data: bytes) -> list[Row]:
    """One row per Parquet record, as Python values."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(data))
    except Exception as exc:  # pyarrow raises ArrowInvalid and friends
        raise CorpusError(f"corpus {uri} is not a readable Parquet file: {exc}") from exc
    return list(table.to_pylist())
