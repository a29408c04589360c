"""Folder and S3-prefix corpora: every file listed once, each read and extracted one at a time."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path, PurePosixPath
from typing import IO

from tasks.corpus.read import FileDocument, read_file
from tasks.params.groups import ReadOptions

DATA_SUFFIXES = (".jsonl", ".csv", ".parquet")
__all__ = ["FileDocument", "ReadOptions", "read_document", "read_documents"]


def hidden(parts: Iterable[str]) -> bool:
    """A path with a part starting with '.' (.git, .DS_Store), which a folder corpus skips."""
    return any(part.startswith(".") for part in parts)


def local_names(root: Path) -> list[str]:
    """Relative POSIX paths of the files under ``root``, recursively, hidden ones left out.

    Anything but a folder is listed (a link to a file, a broken link: reading it says why);
    linked folders are not entered. ``os.walk`` (scandir) costs ~0.6 us a file where
    ``Path.rglob`` with ``relative_to`` cost ~13 us, as much as reading a small text file.
    """
    names: list[str] = []
    top = str(root)
    for folder, folders, files in os.walk(top):
        folders[:] = [f for f in folders if not f.startswith(".")]
        rel = os.path.relpath(folder, top)
        prefix = "" if rel == os.curdir else rel.replace(os.sep, "/") + "/"
        names.extend(prefix + f for f in files if not f.startswith("."))
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


def read_documents(
    names: Iterable[str],
    read: Callable[[str], bytes],
    options: ReadOptions | None = None,
    keep: Callable[[str], bool] | None = None,
    stream: Callable[[str], AbstractContextManager[IO[bytes]]] | None = None,
) -> Iterator[FileDocument]:
    """Each file in ``names`` order, extracted while only its own bytes are held; an archive
    yields one document per member (tasks.corpus.read), read through ``stream`` when given;
    ``keep``: a shard's own only."""
    for name in names:
        yield from read_file(name, read, options, keep, stream)


def read_document(
    name: str, read: Callable[[str], bytes], options: ReadOptions | None = None
) -> FileDocument:
    """One file that is one document (not an archive): read, hashed and extracted, or rejected."""
    return next(iter(read_file(name, read, options)))
