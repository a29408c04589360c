"""Load a corpus (JSONL, CSV, Parquet, folder of documents; local or s3://) into validated documents."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tasks.run.extract import supported
from tasks.run.files import (
    DATA_SUFFIXES,
    FileDocument,
    is_data_file,
    local_names,
    not_read_beside_data,
    read_documents,
)
from tasks.run.tables import SUPPORTED, BadRow, CorpusError, Row, parse_table
from tasks.settings import Profile


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
    # The text column holds chat messages (a list, or its JSON text): kept as JSON text.
    messages: bool = False


class Corpus(BaseModel):
    """A loaded corpus: accepted documents in input order, rejected rows, and a fingerprint."""

    source: str
    fingerprint: str
    documents: list[Document]
    rejected: list[Rejected]
    # Files beside the table files of a folder (a README): not rows, each named with its reason.
    ignored: list[str] = Field(default_factory=list)

    @property
    def size(self) -> int:
        """Input rows: accepted plus rejected."""
        return len(self.documents) + len(self.rejected)


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
    holding such files (read in name order) or else documents: every file, recursively, is one
    row (id = relative path), read and extracted one at a time (``tasks.run.files``).
    Rows are numbered from 1 (``Document.row``/``Rejected.row``; a JSONL row is its line).
    """
    mapping = mapping or ColumnMapping()
    if max_doc_bytes < 1:
        raise CorpusError(
            f"max_doc_bytes must be at least 1, got {max_doc_bytes}; set the flow parameter "
            "max_doc_bytes to the largest document text in bytes"
        )
    rows, is_folder = _read_rows(uri, profile)
    ignored: list[str] = []
    if is_folder:
        mapping = ColumnMapping()  # document files: id = relative path, text = extracted text
    else:
        table = list(rows)
        ignored = [r.reason for r in table if isinstance(r, BadRow) and r.ignored]
        rows = table = [r for r in table if not (isinstance(r, BadRow) and r.ignored)]
        if not table:
            raise CorpusError(
                f"corpus {uri} has no rows; point it at a non-empty {', '.join(SUPPORTED)}"
            )
        _check_columns(uri, table, mapping)
    documents, rejected = validate_rows(rows, mapping, max_doc_bytes=max_doc_bytes)
    return Corpus(
        source=uri,
        fingerprint=corpus_fingerprint(documents),
        documents=documents,
        rejected=rejected,
        ignored=ignored,
    )


def validate_rows(
    rows: Iterable[Row], mapping: ColumnMapping, *, max_doc_bytes: int
) -> tuple[list[Document], list[Rejected]]:
    """Turn raw rows into documents, each bad row into exactly one Rejected with its reason.

    Rows are numbered from 1; ``row`` is the results table's unique key (ids may repeat there).
    """
    documents: list[Document] = []
    rejected: list[Rejected] = []
    seen: dict[str, int] = {}
    for index, row in enumerate(rows, start=1):
        if isinstance(row, BadRow):
            doc_id = row.doc_id or _readable_id(row.raw, mapping.id)
            rejected.append(Rejected(doc_id=doc_id, row=index, reason=row.reason))
            continue
        doc_id, problem = _doc_id(row.get(mapping.id), mapping.id)
        if doc_id is None:
            rejected.append(Rejected(row=index, reason=problem))
            continue
        text = row.get(mapping.text)
        if mapping.messages and isinstance(text, list | tuple):
            text = json.dumps(list(text), ensure_ascii=False, default=str)
        reason = _text_problem(text, mapping.text, max_doc_bytes)
        if reason is None and doc_id in seen:
            reason = (
                f"duplicate id {doc_id!r}: row {seen[doc_id]} already has it (the first "
                f"occurrence is kept); ids must be unique: fix the column {mapping.id!r} or set "
                "the flow parameter id_column to a unique column"
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


def _readable_id(raw: str | None, column: str) -> str | None:
    """The id of a broken JSONL line when its ``"<column>": <string or integer>`` pair is intact."""
    if not raw:
        return None
    match = re.search(rf'"{re.escape(column)}"\s*:\s*("(?:[^"\\\n]|\\.)*"|-?\d+)(?=\s*[,}}])', raw)
    if match is None:
        return None
    try:
        value = json.loads(match.group(1))
    except json.JSONDecodeError:
        return None
    doc_id, _ = _doc_id(value, column)
    return doc_id


def _doc_id(value: Any, column: str) -> tuple[str | None, str]:
    """The id as a string, or None and the reason it is unusable."""
    if isinstance(value, bool):
        return None, (
            f"id in column {column!r} is a boolean ({value}); use a string or integer, or set "
            "the flow parameter id_column to another column"
        )
    if isinstance(value, int):
        return str(value), ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value)), ""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None, (
            f"missing id (column {column!r} is absent or empty); fill it in, or set the flow "
            "parameter id_column to the column that holds the ids"
        )
    if isinstance(value, str):
        return value.strip(), ""
    kind = type(value).__name__
    return None, (
        f"id in column {column!r} is a {kind}; use a string or integer, or set the flow "
        "parameter id_column to another column"
    )


def _text_problem(text: Any, column: str, max_doc_bytes: int) -> str | None:
    """Why the text cannot be used, or None when it can."""
    if text is None:
        return (
            f"missing text (column {column!r} is absent or null); fill it in, or set the flow "
            "parameter text_column to the column that holds the text"
        )
    if not isinstance(text, str):
        return (
            f"text in column {column!r} is a {type(text).__name__}, not a string; set the flow "
            "parameter text_column to the column that holds the text"
        )
    if not text.strip():
        return f"empty text (column {column!r} is empty or whitespace); fill in the text or remove the row"
    size = len(text.encode("utf-8"))
    if size > max_doc_bytes:
        return (
            f"text is {size} bytes, over max_doc_bytes={max_doc_bytes}; "
            "split the document or raise the flow parameter max_doc_bytes"
        )
    return None


def _metadata(row: dict[str, Any], mapping: ColumnMapping) -> dict[str, Any]:
    """The metadata columns of a row (all other columns unless the mapping names them)."""
    if mapping.metadata is None:
        return {k: v for k, v in row.items() if k not in (mapping.id, mapping.text)}
    return {k: row.get(k) for k in mapping.metadata}


def _check_columns(uri: str, rows: list[Row], mapping: ColumnMapping) -> None:
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
            f"{sorted(present)}; set the flow parameters id_column, text_column (and "
            "metadata_columns) to the columns that hold the id, the text (and the metadata)"
        )


# --- reading sources -------------------------------------------------------------------------


def _read_rows(uri: str, profile: Profile | None) -> tuple[Iterable[Row], bool]:
    """Raw rows of the source and whether they come from document files (id = relative path)."""
    if uri.startswith("s3://"):
        return _read_s3(uri, profile)
    path = Path(uri).expanduser()
    if path.is_dir():
        return _folder_rows(uri, local_names(path), lambda rel: (path / rel).read_bytes())
    if not path.exists():
        raise CorpusError(
            f"corpus {uri} does not exist; give a path or s3:// URI to a {', '.join(SUPPORTED)}"
        )
    if path.is_file() and supported(path.name):  # one document: a folder of one file
        return _folder_rows(uri, [path.name], lambda rel: (path.parent / rel).read_bytes())
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CorpusError(f"corpus {uri} cannot be read: {exc}") from exc
    return parse_table(uri, path.suffix.lower(), data), False


def _hidden(parts: tuple[str, ...]) -> bool:
    return any(part.startswith(".") for part in parts)


def _folder_rows(
    uri: str, names: list[str], read: Callable[[str], bytes]
) -> tuple[Iterable[Row], bool]:
    """A folder's data files (.jsonl/.csv/.parquet) if it has any, else its documents.

    Every other file is a row too: rejected beside data files, else extracted or rejected
    with its reason (``tasks.run.files``), one file at a time as the rows are consumed.
    """
    names = sorted(names)
    if not names:
        raise CorpusError(f"folder {uri} has no files; check the path given as `corpus`")
    data_files = [n for n in names if is_data_file(n)]
    if data_files:
        rows: list[Row] = []
        for name in data_files:
            for row in parse_table(
                f"{uri.rstrip('/')}/{name}", PurePosixPath(name).suffix.lower(), read(name)
            ):
                if isinstance(row, BadRow) and len(data_files) > 1:
                    row = BadRow(f"{name}: {row.reason}", row.doc_id, row.raw)
                rows.append(row)
        others = [n for n in names if not is_data_file(n)]
        rows += [BadRow(not_read_beside_data(n), doc_id=n, ignored=True) for n in others]
        return rows, False
    return (_file_row(f) for f in read_documents(names, read)), True


def _file_row(file: FileDocument) -> Row:
    """A document file as a row (id = its relative path, metadata = its format's), or a bad row."""
    if file.text is None:
        return BadRow(file.reason or f"file {file.name!r} yields no text", doc_id=file.name)
    return {"id": file.name, "text": file.text, **file.metadata}


def _read_s3(uri: str, profile: Profile | None) -> tuple[Iterable[Row], bool]:
    """Rows from one S3 object, or from the objects under a prefix (as for a folder)."""
    from tasks.aws.clients import aws_client

    bucket, _, key = uri[len("s3://") :].partition("/")
    s3 = aws_client("s3", profile)
    suffix = PurePosixPath(key).suffix.lower()

    def read(name: str) -> bytes:
        return bytes(s3.get_object(Bucket=bucket, Key=prefix + name)["Body"].read())

    try:
        if suffix in DATA_SUFFIXES:
            prefix = ""
            return parse_table(uri, suffix, read(key)), False
        if supported(key):  # one document: a folder of one object (which must exist)
            s3.head_object(Bucket=bucket, Key=key)
            prefix, _, name = key.rpartition("/")
            prefix = prefix + "/" if prefix else ""
            return _folder_rows(uri, [name], read)
        prefix = key if not key or key.endswith("/") else key + "/"
        names: list[str] = []
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            names += [o["Key"][len(prefix) :] for o in page.get("Contents", [])]
        names = [
            n for n in names if n and not n.endswith("/") and not _hidden(PurePosixPath(n).parts)
        ]
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
