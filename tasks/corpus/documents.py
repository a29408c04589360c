"""Load a corpus (JSONL, CSV, Parquet, folder of documents; local or s3://) into validated documents."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import PurePosixPath
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tasks.corpus.files import FileDocument, is_data_file, not_read_beside_data, read_documents
from tasks.corpus.sources import Source, open_source, select_source
from tasks.corpus.tables import SUPPORTED, BadRow, CorpusError, Row, iter_table
from tasks.params.groups import DEFAULT_MAX_DOC_BYTES, ColumnOptions, ReadOptions
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

    @classmethod
    def of(cls, columns: ColumnOptions, messages_column: str | None = None) -> ColumnMapping:
        """The mapping a flow's column group names (the messages column instead of the text)."""
        return cls(
            id=columns.id_column,
            text=messages_column or columns.text_column,
            metadata=columns.metadata_columns,
            messages=messages_column is not None,
        )


class Corpus(BaseModel):
    """A loaded corpus: accepted documents in input order, rejected rows, and a fingerprint."""

    source: str
    fingerprint: str
    documents: list[Document]
    rejected: list[Rejected]
    # Files beside the table files of a folder (a README): not rows, each named with its reason.
    ignored: list[str] = Field(default_factory=list)
    # Files left out by the include/exclude patterns: how many each pattern left out.
    excluded: dict[str, int] = Field(default_factory=dict)

    @property
    def size(self) -> int:
        """Input rows: accepted plus rejected."""
        return len(self.documents) + len(self.rejected)


def corpus_fingerprint(documents: Iterable[Document]) -> str:
    """sha256 over the documents' canonical JSON (id, text, metadata), in order."""
    digest = hashlib.sha256()
    for doc in documents:
        digest.update(_fingerprint_line(doc))
    return digest.hexdigest()


def _fingerprint_line(doc: Document) -> bytes:
    line = json.dumps(
        [doc.doc_id, doc.text, doc.metadata],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        default=str,
    )
    return line.encode("utf-8") + b"\n"


def load_corpus(
    uri: str,
    mapping: ColumnMapping | None = None,
    *,
    max_doc_bytes: int = DEFAULT_MAX_DOC_BYTES,
    profile: Profile | None = None,
    keep: Callable[[str], bool] | None = None,
    report_ignored: bool = True,
    options: ReadOptions | None = None,
) -> Corpus:
    """Read and validate a corpus; bad rows become Rejected, only an unusable source raises.

    ``uri``: a local path or s3:// URI of a .jsonl, .csv or .parquet file, or of a folder (prefix)
    holding such files (read in name order) or else documents: every file, recursively, is one
    row (id = relative path), read and extracted one at a time (``tasks.corpus.files``).
    Rows are numbered from 1 (``Document.row``/``Rejected.row``; a JSONL row is its line).

    Files are read a piece at a time (``tasks.corpus.sources``); with ``keep`` (a shard's test on a
    row's id, or ``row N`` for a row without one) only the rows it keeps are validated and held,
    so loading one shard of a big corpus holds that shard only. Every copy of an id is in the
    same shard, so duplicates are still found. ``report_ignored``: name the files beside the
    table files (only one shard of a sharded run does). ``options``: include/exclude patterns,
    OCR and archive limits of a folder's files (``tasks.corpus.read``).
    """
    mapping = mapping or ColumnMapping()
    if max_doc_bytes < 1:
        raise CorpusError(
            f"max_doc_bytes must be at least 1, got {max_doc_bytes}; set the flow parameter "
            "max_doc_bytes to the largest document text in bytes"
        )
    options = options or ReadOptions()
    source, excluded = select_source(open_source(uri, profile), options.include, options.exclude)
    tables = source.data_files
    if source.single_table and not tables:
        suffix = PurePosixPath(uri).suffix.lower()
        raise CorpusError(
            f"corpus {uri} has an unsupported type {suffix!r}; use one of {SUPPORTED}"
        )
    if not tables:  # document files: id = relative path, text = extracted text
        mapping = ColumnMapping()
    loader = _Loader(mapping, max_doc_bytes, keep)
    rows = _table_rows(source, tables) if tables else _document_rows(source, options, keep)
    for row in rows:
        loader.add(row)
    if tables:
        if loader.rows == 0:
            raise CorpusError(
                f"corpus {uri} has no rows; point it at a non-empty {', '.join(SUPPORTED)}"
            )
        _check_columns(uri, loader.columns, mapping)
    return Corpus(
        source=uri,
        fingerprint=loader.fingerprint.hexdigest(),
        documents=loader.documents,
        rejected=loader.rejected,
        ignored=loader.ignored if report_ignored else [],
        excluded=excluded if report_ignored else {},
    )


class _Loader:
    """Validates rows one at a time into documents and rejected rows (those ``keep`` keeps)."""

    def __init__(
        self, mapping: ColumnMapping, max_doc_bytes: int, keep: Callable[[str], bool] | None
    ) -> None:
        self.mapping = mapping
        self.max_doc_bytes = max_doc_bytes
        self.keep = keep or (lambda _key: True)
        self.documents: list[Document] = []
        self.rejected: list[Rejected] = []
        self.ignored: list[str] = []
        self.columns: set[str] = set()  # every column any row has (for a wrong column name)
        self.fingerprint = hashlib.sha256()  # corpus_fingerprint of the kept documents, as added
        self.rows = 0
        self.seen: dict[str, int] = {}

    def add(self, row: Row) -> None:
        """Validate the next input row (numbered from 1; files ignored beside tables are not rows)."""
        if isinstance(row, BadRow) and row.ignored:
            self.ignored.append(row.reason)
            return
        self.rows += 1
        index, mapping = self.rows, self.mapping
        if isinstance(row, BadRow):
            doc_id = row.doc_id or _readable_id(row.raw, mapping.id)
            if self.keep(doc_id if doc_id is not None else f"row {index}"):
                self.rejected.append(Rejected(doc_id=doc_id, row=index, reason=row.reason))
            return
        self.columns.update(row)
        doc_id, problem = _doc_id(row.get(mapping.id), mapping.id)
        if not self.keep(doc_id if doc_id is not None else f"row {index}"):
            return
        if doc_id is None:
            self.rejected.append(Rejected(row=index, reason=problem))
            return
        text = row.get(mapping.text)
        if mapping.messages and isinstance(text, list | tuple):
            text = json.dumps(list(text), ensure_ascii=False, default=str)
        reason = _text_problem(text, mapping.text, self.max_doc_bytes)
        if reason is None and doc_id in self.seen:
            reason = (
                f"duplicate id {doc_id!r}: row {self.seen[doc_id]} already has it (the first "
                f"occurrence is kept); ids must be unique: fix the column {mapping.id!r} or set "
                "the flow parameter id_column to a unique column"
            )
        if reason is not None:
            self.rejected.append(Rejected(doc_id=doc_id, row=index, reason=reason))
            return
        assert isinstance(text, str)
        self.seen[doc_id] = index
        document = Document(doc_id=doc_id, text=text, metadata=_metadata(row, mapping), row=index)
        self.documents.append(document)
        self.fingerprint.update(_fingerprint_line(document))


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


def _check_columns(uri: str, present: set[str], mapping: ColumnMapping) -> None:
    """A mapping column that no row has is a usage error, not a bad row."""
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


def _table_rows(source: Source, tables: list[str]) -> Iterator[Row]:
    """Every row of the source's table files in name order, each file streamed; then a row
    ``ignored`` for every other file beside them (rejected with its reason, never read)."""
    for name in tables:
        with source.open(name) as stream:
            suffix = PurePosixPath(name).suffix.lower()
            for row in iter_table(source.uri_of(name), suffix, stream):
                if isinstance(row, BadRow) and len(tables) > 1:
                    row = BadRow(f"{name}: {row.reason}", row.doc_id, row.raw)
                yield row
    for name in source.names:
        if not is_data_file(name):
            yield BadRow(not_read_beside_data(name), doc_id=name, ignored=True)


def _document_rows(
    source: Source, options: ReadOptions, keep: Callable[[str], bool] | None
) -> Iterator[Row]:
    """A folder's document files (an archive's members): each read and extracted as its row is
    consumed; those ``keep`` does not keep are rows left unread."""
    files = read_documents(source.names, source.read, options, keep, source.open)
    return (_file_row(f) for f in files)


def _file_row(file: FileDocument) -> Row:
    """A document file as a row (id = its relative path, metadata = its format's), or a bad row."""
    if file.text is None:
        return BadRow(file.reason or f"file {file.name!r} yields no text", doc_id=file.name)
    return {"id": file.name, "text": file.text, **file.metadata}
