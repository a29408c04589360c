"""Load a corpus (JSONL, CSV, Parquet, folder of .txt/.md; local or s3://) into validated documents."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tasks.settings import Profile

SUPPORTED = (".jsonl", ".csv", ".parquet", "folder of .txt/.md or of data files")
_TEXT_SUFFIXES = (".txt", ".md")
_DATA_SUFFIXES = (".jsonl", ".csv", ".parquet")


class CorpusError(ValueError):
    """The corpus source itself is unusable (missing, unreadable, empty, wrong columns)."""


class Document(BaseModel):
    """One accepted input document."""

    model_config = ConfigDict(extra="forbid")

    doc_id: str
    text: str
    metadata: dict[str, Any] = Field(default_factory=dict)
    row: int | None = None


class Rejected(BaseModel):
    """An input row that will not be sent to the model, and why."""

    model_config = ConfigDict(extra="forbid")

    doc_id: str | None = None
    row: int | None = None
    reason: str


class ColumnMapping(BaseModel):
    """Which input columns hold the id, the text and the metadata (None: all other columns)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = "id"
    text: str = "text"
    metadata: list[str] | None = None


class Corpus(BaseModel):
    """A loaded corpus: accepted documents in input order, rejected rows, and a fingerprint."""

    source: str
    fingerprint: str
    documents: list[Document]
    rejected: list[Rejected]

    @property
    def size(self) -> int:
        """Input rows: accepted plus rejected."""
        return len(self.documents) + len(self.rejected)


class _Bad:
    """A row that failed before it had columns (bad bytes, bad JSON)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


_Row = dict[str, Any] | _Bad


def corpus_fingerprint(documents: list[Document]) -> str:
    """sha256 over the documents' canonical JSON (id, text, metadata), in order."""
    digest = hashlib.sha256()
    for doc in documents:
        line = json.dumps(
            [doc.doc_id, doc.text, doc.metadata],
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
            default=str,
        )
        digest.update(line.encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def load_corpus(
    uri: str,
    mapping: ColumnMapping | None = None,
    *,
    max_doc_bytes: int = 100_000,
    profile: Profile | None = None,
) -> Corpus:
    """Read and validate a corpus; bad rows become Rejected, only an unusable source raises.

    ``uri``: a local path or s3:// URI of a .jsonl, .csv or .parquet file, or of a folder (prefix)
    holding such files (read in name order) or else .txt/.md files (id = relative path).
    """
    mapping = mapping or ColumnMapping()
    if max_doc_bytes < 1:
        raise CorpusError(f"max_doc_bytes must be at least 1, got {max_doc_bytes}")
    rows, is_folder = _read_rows(uri, profile)
    if not rows:
        raise CorpusError(
            f"corpus {uri} has no rows; point it at a non-empty {', '.join(SUPPORTED)}"
        )
    if is_folder:
        mapping = ColumnMapping()  # text files: id = relative path, text = content
    else:
        _check_columns(uri, rows, mapping)
    documents, rejected = validate_rows(rows, mapping, max_doc_bytes=max_doc_bytes)
    return Corpus(
        source=uri,
        fingerprint=corpus_fingerprint(documents),
        documents=documents,
        rejected=rejected,
    )


def validate_rows(
    rows: list[_Row], mapping: ColumnMapping, *, max_doc_bytes: int
) -> tuple[list[Document], list[Rejected]]:
    """Turn raw rows into documents, each bad row into exactly one Rejected with its reason."""
    documents: list[Document] = []
    rejected: list[Rejected] = []
    seen: dict[str, int] = {}
    for index, row in enumerate(rows):
        if isinstance(row, _Bad):
            rejected.append(Rejected(row=index, reason=row.reason))
            continue
        doc_id, problem = _doc_id(row.get(mapping.id), mapping.id)
        if doc_id is None:
            rejected.append(Rejected(row=index, reason=problem))
            continue
        text = row.get(mapping.text)
        reason = _text_problem(text, mapping.text, max_doc_bytes)
        if reason is None and doc_id in seen:
            reason = (
                f"duplicate id {doc_id!r}: row {seen[doc_id]} already has it; ids must be unique"
            )
        if reason is not None:
            rejected.append(Rejected(doc_id=doc_id, row=index, reason=reason))
            continue
        assert isinstance(text, str)
        seen[doc_id] = index
        documents.append(
            Document(doc_id=doc_id, text=text, metadata=_metadata(row, mapping), row=index)
        )
    return documents, rejected


def _doc_id(value: Any, column: str) -> tuple[str | None, str]:
    """The id as a string, or None and the reason it is unusable."""
    if isinstance(value, bool):
        return None, f"id in column {column!r} is a boolean ({value}); use a string or integer"
    if isinstance(value, int):
        return str(value), ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value)), ""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None, f"missing id (column {column!r} is absent or empty)"
    if isinstance(value, str):
        return value.strip(), ""
    kind = type(value).__name__
    return None, f"id in column {column!r} is a {kind}; use a string or integer"


def _text_problem(text: Any, column: str, max_doc_bytes: int) -> str | None:
    """Why the text cannot be used, or None when it can."""
    if text is None:
        return f"missing text (column {column!r} is absent or null)"
    if not isinstance(text, str):
        return f"text in column {column!r} is a {type(text).__name__}, not a string"
    if not text.strip():
        return f"empty text (column {column!r} is empty or whitespace); fill in the text or remove the row"
    size = len(text.encode("utf-8"))
    if size > max_doc_bytes:
        return (
            f"text is {size} bytes, over max_doc_bytes={max_doc_bytes}; "
            "split the document or raise max_doc_bytes"
        )
    return None


def _metadata(row: dict[str, Any], mapping: ColumnMapping) -> dict[str, Any]:
    """The metadata columns of a row (all other columns unless the mapping names them)."""
    if mapping.metadata is None:
        return {k: v for k, v in row.items() if k not in (mapping.id, mapping.text)}
    return {k: row.get(k) for k in mapping.metadata}


def _check_columns(uri: str, rows: list[_Row], mapping: ColumnMapping) -> None:
    """A mapping column that no row has is a usage error, not a bad row."""
    present: set[str] = set()
    for row in rows:
        if isinstance(row, dict):
            present.update(row)
    if not present:
        return  # every row is bad; each gets its own Rejected
    wanted = [mapping.id, mapping.text, *(mapping.metadata or [])]
    missing = [c for c in wanted if c not in present]
    if missing:
        raise CorpusError(
            f"corpus {uri} has no column {', '.join(repr(c) for c in missing)}; its columns are "
            f"{sorted(present)}; pass ColumnMapping(id=..., text=..., metadata=[...]) to map them"
        )


# --- reading sources -------------------------------------------------------------------------


def _read_rows(uri: str, profile: Profile | None) -> tuple[list[_Row], bool]:
    """Raw rows of the source and whether they come from text files (id = relative path)."""
    if uri.startswith("s3://"):
        return _read_s3(uri, profile)
    path = Path(uri).expanduser()
    if path.is_dir():
        files = {
            p.relative_to(path).as_posix(): p
            for p in path.rglob("*")
            if p.is_file() and not _hidden(p.relative_to(path).parts)
        }
        return _folder_rows(uri, list(files), lambda rel: files[rel].read_bytes())
    if not path.exists():
        raise CorpusError(
            f"corpus {uri} does not exist; give a path or s3:// URI to a {', '.join(SUPPORTED)}"
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CorpusError(f"corpus {uri} cannot be read: {exc}") from exc
    return _parse(uri, path.suffix.lower(), data), False


def _hidden(parts: tuple[str, ...]) -> bool:
    return any(part.startswith(".") for part in parts)


def _folder_rows(
    uri: str, names: list[str], read: Callable[[str], bytes]
) -> tuple[list[_Row], bool]:
    """A folder's data files (.jsonl/.csv/.parquet) if it has any, else its .txt/.md files."""
    data_files = sorted(n for n in names if PurePosixPath(n).suffix.lower() in _DATA_SUFFIXES)
    if data_files:
        rows: list[_Row] = []
        for name in data_files:
            for row in _parse(
                f"{uri.rstrip('/')}/{name}", PurePosixPath(name).suffix.lower(), read(name)
            ):
                if isinstance(row, _Bad) and len(data_files) > 1:
                    row = _Bad(f"{name}: {row.reason}")
                rows.append(row)
        return rows, False
    text_files = sorted(n for n in names if PurePosixPath(n).suffix.lower() in _TEXT_SUFFIXES)
    if not text_files:
        raise CorpusError(
            f"folder {uri} has no .jsonl, .csv, .parquet, .txt or .md files; check the path"
        )
    return _text_rows((n, read(n)) for n in text_files), True


def _read_s3(uri: str, profile: Profile | None) -> tuple[list[_Row], bool]:
    """Rows from one S3 object, or from the objects under a prefix (as for a folder)."""
    from tasks.aws.clients import aws_client

    bucket, _, key = uri[len("s3://") :].partition("/")
    s3 = aws_client("s3", profile)
    suffix = PurePosixPath(key).suffix.lower()

    def read(name: str) -> bytes:
        return bytes(s3.get_object(Bucket=bucket, Key=prefix + name)["Body"].read())

    try:
        if suffix in _DATA_SUFFIXES:
            prefix = ""
            return _parse(uri, suffix, read(key)), False
        prefix = key if not key or key.endswith("/") else key + "/"
        names: list[str] = []
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            names += [o["Key"][len(prefix) :] for o in page.get("Contents", [])]
        names = [n for n in names if n and not _hidden(PurePosixPath(n).parts)]
        if not names:
            raise CorpusError(f"no objects under {uri}; check the bucket and prefix")
        return _folder_rows(uri, names, read)
    except CorpusError:
        raise
    except Exception as exc:  # botocore's NoSuchKey/NoSuchBucket/AccessDenied and friends
        raise CorpusError(
            f"corpus {uri} cannot be read from S3: {exc}; check the bucket and key exist "
            "and that the profile's credentials can read them"
        ) from exc


def _text_rows(items: Iterator[tuple[str, bytes]]) -> list[_Row]:
    """One row per text file: id = relative path, text = its UTF-8 content."""
    rows: list[_Row] = []
    for rel, data in items:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            rows.append(
                _Bad(
                    f"file {rel!r} is not valid UTF-8 ({exc.reason} at byte {exc.start}); "
                    "re-save it as UTF-8"
                )
            )
            continue
        rows.append({"id": rel, "text": text.removeprefix("\ufeff"), "path": rel})
    return rows


def _parse(uri: str, suffix: str, data: bytes) -> list[_Row]:
    """Rows of a JSONL, CSV or Parquet file."""
    if suffix == ".jsonl":
        return _jsonl_rows(data)
    if suffix == ".csv":
        return _csv_rows(uri, data)
    if suffix == ".parquet":
        return _parquet_rows(uri, data)
    raise CorpusError(f"corpus {uri} has an unsupported type {suffix!r}; use one of {SUPPORTED}")


def _jsonl_rows(data: bytes) -> list[_Row]:
    """One row per non-blank line; undecodable or invalid lines become bad rows."""
    rows: list[_Row] = []
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
                _Bad(
                    f"line {number + 1} is not valid UTF-8 ({exc.reason} at byte {exc.start}); "
                    "re-save the file as UTF-8 or fix that line"
                )
            )
            continue
        if not line.strip():
            rows.append(_Bad(f"line {number + 1} is blank"))
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            rows.append(
                _Bad(
                    f"line {number + 1} is not valid JSON ({exc.msg} at column {exc.colno}); "
                    "fix or remove that line"
                )
            )
            continue
        if not isinstance(value, dict):
            rows.append(_Bad(f"line {number + 1} is a JSON {type(value).__name__}, not an object"))
            continue
        rows.append(value)
    return rows


def _csv_rows(uri: str, data: bytes) -> list[_Row]:
    """One row per CSV record (header required); a record with undecodable bytes is a bad row."""
    text = data.removeprefix(b"\xef\xbb\xbf").decode("utf-8", errors="surrogateescape")
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        records = list(reader)
    except csv.Error as exc:
        raise CorpusError(f"corpus {uri} is not valid CSV: {exc}") from exc
    rows: list[_Row] = []
    for number, record in enumerate(records):
        values = [v for v in record.values() if isinstance(v, str)]
        if any(_has_surrogates(v) for v in values):
            rows.append(
                _Bad(
                    f"CSV record {number} has bytes that are not valid UTF-8; re-save the file as UTF-8"
                )
            )
            continue
        if None in record:
            rows.append(_Bad(f"CSV record {number} has more fields than the header"))
            continue
        rows.append(dict(record))
    return rows


def _has_surrogates(value: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in value)


def _parquet_rows(uri: str, data: bytes) -> list[_Row]:
    """One row per Parquet record, as Python values."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(data))
    except Exception as exc:  # pyarrow raises ArrowInvalid and friends
        raise CorpusError(f"corpus {uri} is not a readable Parquet file: {exc}") from exc
    return list(table.to_pylist())
