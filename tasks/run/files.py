"""Folder and S3-prefix corpora: every file listed once, each read and extracted one at a time."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from tasks.run.extract import MOVE, REMOVE, Unreadable, extract, supported, unsupported_reason

DATA_SUFFIXES = (".jsonl", ".csv", ".parquet")


@dataclass
class FileDocument:
    """One file of a folder corpus: its text and metadata, or the reason it yields no document."""

    name: str
    text: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None


def hidden(parts: Iterable[str]) -> bool:
    """A path with a part starting with '.' (.git, .DS_Store), which a folder corpus skips."""
    return any(part.startswith(".") for part in parts)


def local_names(root: Path) -> list[str]:
    """Relative POSIX paths of the files under ``root``, recursively, hidden ones left out."""
    names = []
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if not hidden(rel.parts) and (path.is_file() or not path.is_dir()):
            names.append(rel.as_posix())
    return sorted(names)


def is_data_file(name: str) -> bool:
    """A table file (.jsonl/.csv/.parquet) whose rows are documents."""
    return PurePosixPath(name).suffix.lower() in DATA_SUFFIXES


def not_read_beside_data(name: str) -> str:
    """Why a document file in a folder of table files is rejected, and what to do."""
    return (
        f"file {name!r} was not read: this folder holds table files (.jsonl, .csv, .parquet), "
        "whose rows are the documents; to run documents, give their own folder as `corpus`"
    )


def read_documents(names: Iterable[str], read: Callable[[str], bytes]) -> Iterator[FileDocument]:
    """Each file in ``names`` order, extracted while only its own bytes are held.

    Files of an unsupported type are rejected without being read.
    """
    for name in names:
        yield read_document(name, read)


def read_document(name: str, read: Callable[[str], bytes]) -> FileDocument:
    """One file: read, hashed and extracted; a rejection reason instead when it cannot be."""
    if supported(name) is None:
        return FileDocument(name, reason=unsupported_reason(name))
    try:
        data = read(name)
    except Exception as exc:  # OSError locally; botocore errors on S3
        return FileDocument(
            name, reason=f"file {name!r} cannot be read ({exc}); fix its permissions {REMOVE}"
        )
    base = {"path": name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    try:
        extracted = extract(name, data)
    except Unreadable as exc:
        return FileDocument(name, reason=str(exc), metadata=base)
    except Exception as exc:  # a library's own error on a damaged file
        return FileDocument(
            name,
            reason=f"file {name!r} could not be extracted ({type(exc).__name__}: {exc}); {MOVE}",
            metadata=base,
        )
    return FileDocument(name, text=extracted.text, metadata={**base, **extracted.metadata()})
