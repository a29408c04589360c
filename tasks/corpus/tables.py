"""Rows of a table file (JSON Lines, CSV, Parquet), numbered from 1, with what cannot be a row
kept as a ``BadRow`` that says why (the corpus turns it into a rejected row)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from typing import IO, Any

CHUNK = 1 << 20  # bytes of a JSON Lines file read at a time
PARQUET_BATCH_ROWS = 4096  # Parquet records decoded at a time

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


def iter_table(uri: str, suffix: str, stream: IO[bytes]) -> Iterator[Row]:
    """Rows of a JSONL, CSV or Parquet file, read from ``stream`` a piece at a time.

    JSON Lines and CSV are read line by line, Parquet a record batch at a time, so only the row
    being handed out (and one batch of a Parquet file) is in memory. ``stream`` must be seekable
    for Parquet.
    """
    if suffix == ".jsonl":
        return _jsonl_rows(stream)
    if suffix == ".csv":
        return _csv_rows(uri, stream)
    if suffix == ".parquet":
        return _parquet_rows(uri, stream)
    raise CorpusError(f"corpus {uri} has an unsupported type {suffix!r}; use one of {SUPPORTED}")


def _lines(stream: IO[bytes]) -> Iterator[bytes]:
    """The stream's lines split on b"\\n" only (a final line without one included; a final blank
    one left out), read a chunk at a time."""
    rest = b""
    while chunk := stream.read(CHUNK):
        pieces = (rest + chunk).split(b"\n")
        rest = pieces.pop()
        yield from pieces
    if rest.strip():
        yield rest


def _jsonl_rows(stream: IO[bytes]) -> Iterator[Row]:
    """One row per line; undecodable, blank or invalid lines become bad rows."""
    for number, raw in enumerate(_lines(stream)):
        yield _jsonl_row(number, raw)


def _jsonl_row(number: int, raw: bytes) -> Row:
    if number == 0:
        raw = raw.removeprefix(b"\xef\xbb\xbf")
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return BadRow(
            f"line {number + 1} is not valid UTF-8 ({exc.reason} at byte {exc.start + 1}); "
            "re-save the file as UTF-8 or fix that line",
            raw=raw.decode("utf-8", errors="replace"),
        )
    if not line.strip():
        return BadRow(f"line {number + 1} is blank; remove it")
    try:
        value = json.loads(line)
    except json.JSONDecodeError as exc:
        return BadRow(
            f"line {number + 1} is not valid JSON ({exc.msg.removesuffix(' at')} at "
            f"column {exc.colno}); fix or remove that line",
            raw=line,
        )
    if not isinstance(value, dict):
        return BadRow(
            f"line {number + 1} is a JSON {type(value).__name__}, not an object; "
            "write one JSON object per line"
        )
    return value


def _csv_rows(uri: str, stream: IO[bytes]) -> Iterator[Row]:
    """One row per CSV record (header required); a record with undecodable bytes is a bad row."""
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape", newline="")
    try:
        reader = csv.DictReader(text)
        for number, record in enumerate(reader):
            yield _csv_row(number, record)
    except csv.Error as exc:
        raise CorpusError(f"corpus {uri} is not valid CSV: {exc}") from exc
    finally:
        text.detach()  # the caller owns (and closes) the stream


def _csv_row(number: int, record: dict[Any, Any]) -> Row:
    values = [v for v in record.values() if isinstance(v, str)]
    if any(_has_surrogates(v) for v in values):
        return BadRow(
            f"CSV row {number + 1} (after the header) has bytes that are not valid UTF-8; "
            "re-save the file as UTF-8"
        )
    if None in record:
        return BadRow(
            f"CSV row {number + 1} (after the header) has more fields than the header; "
            "quote fields that hold commas"
        )
    return dict(record)


def _has_surrogates(value: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in value)


def _parquet_rows(uri: str, stream: IO[bytes]) -> Iterator[Row]:
    """One row per Parquet record, as Python values, a record batch at a time."""
    import pyarrow.parquet as pq

    try:
        batches = pq.ParquetFile(stream).iter_batches(batch_size=PARQUET_BATCH_ROWS)
        for batch in batches:
            yield from batch.to_pylist()
    except CorpusError:
        raise
    except Exception as exc:  # pyarrow raises ArrowInvalid and friends
        raise CorpusError(f"corpus {uri} is not a readable Parquet file: {exc}") from exc
