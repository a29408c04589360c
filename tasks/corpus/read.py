"""One file of a folder corpus to documents: detected, opened through compression and archives,
extracted (with OCR where pages have no text), or rejected with its reason.

A plain file is one document; an archive is one per member (``bundle.zip!reports/q3.pdf``),
nested archives too (``a.zip!b.zip!c.txt``), within ``ArchiveLimits``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from typing import IO, Any

from tasks.corpus.archives import members
from tasks.corpus.compressed import decompress, inner_name
from tasks.corpus.formats import ocr as ocr_engine
from tasks.corpus.formats import office
from tasks.corpus.formats.detect import DOCUMENTS, Kind, by_suffix, detect
from tasks.corpus.formats.extract import _EXTRACTORS, MOVE, REMOVE, Extracted, Unreadable
from tasks.corpus.formats.pdf import pdf
from tasks.corpus.limits import Budget, LimitExceeded
from tasks.params.groups import ReadOptions

OTHER_SHARD = "(another shard's document: not read here)"
EXTRACTED = set(DOCUMENTS.values())  # formats that are one document, not a container
_NONE = Kind(None, "", "suffix")


@dataclass
class FileDocument:
    """One file (or archive member) of a folder corpus: its text and metadata, or the reason it
    yields no document."""

    name: str
    text: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None


def read_file(
    name: str,
    read: Callable[[str], bytes],
    options: ReadOptions | None = None,
    keep: Callable[[str], bool] | None = None,
    stream: Callable[[str], AbstractContextManager[IO[bytes]]] | None = None,
) -> Iterator[FileDocument]:
    """The documents of one corpus file: one, or one per archive member, each accounted for.

    ``keep`` (a shard's test on ids): a document it does not keep is yielded unread, as a row
    the loader drops, so a shard extracts (and OCRs) only its own files and members.
    ``stream`` (a seekable stream of a file): an archive named as one is read through it, a
    member at a time, never held whole.
    """
    options = options or ReadOptions()
    found = (by_suffix(name) or _NONE).format or ""
    plain = found in EXTRACTED  # a document by its suffix (.md, .pdf): no container to open
    if stream is not None and found.startswith("archive:") and options.archive_limits.max_depth:
        yield from _streamed_archive(name, found.removeprefix("archive:"), stream, options, keep)
        return
    if plain and keep is not None and not keep(name):
        yield FileDocument(name, reason=OTHER_SHARD)  # a plain document of another shard
        return
    try:
        data = read(name)
    except Exception as exc:  # OSError locally; botocore errors on S3
        yield FileDocument(
            name, reason=f"file {name!r} cannot be read ({exc}); fix its permissions {REMOVE}"
        )
        return
    if plain:  # the short path of most files: extracted as its suffix says
        yield _document(name, data, found, options)
    else:
        yield from expand(name, data, options, Budget(), 0, name, keep)


def _streamed_archive(
    name: str,
    kind: str,
    stream: Callable[[str], AbstractContextManager[IO[bytes]]],
    options: ReadOptions,
    keep: Callable[[str], bool] | None,
) -> Iterator[FileDocument]:
    """An archive corpus file's members, read from its stream one at a time."""
    budget = Budget()
    with ExitStack() as stack:
        try:
            handle = stack.enter_context(stream(name))
        except Exception as exc:  # CorpusError (local), botocore errors (S3)
            yield FileDocument(
                name, reason=f"file {name!r} cannot be read ({exc}); fix its permissions {REMOVE}"
            )
            return
        for member in members(name, kind, handle, options.archive_limits, budget):
            if member.data is None:
                yield FileDocument(member.doc_id, reason=member.reason)
            else:
                yield from expand(
                    member.doc_id, member.data, options, budget, 1, member.doc_id, keep
                )


def expand(
    doc_id: str,
    data: bytes,
    options: ReadOptions,
    budget: Budget,
    depth: int,
    detect_as: str,
    keep: Callable[[str], bool] | None = None,
) -> Iterator[FileDocument]:
    """``data`` (stored as ``doc_id``, typed as if named ``detect_as``) as documents."""
    if not data:
        yield _empty(doc_id)
        return
    base = {"path": doc_id, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    kind = detect(detect_as, data)
    fmt = kind.format
    if fmt is None:
        yield FileDocument(
            doc_id,
            reason=f"file {doc_id!r} is {kind.what}, which docflow does not read (it reads "
            f"{', '.join(sorted(set(DOCUMENTS.values())))}, any text, compressed files and "
            f"archives); convert it {REMOVE}",
            metadata=base,
        )
        return
    opener, _, codec = fmt.partition(":")
    if opener in ("archive", "compressed") and depth >= options.archive_limits.max_depth:
        reason = options.archive_limits.reason(
            f"file {doc_id!r}", "max_depth", f"is {kind.what} at depth {depth}"
        )
        yield FileDocument(doc_id, reason=reason, metadata=base)
        return
    if opener == "archive":
        for member in members(doc_id, codec, data, options.archive_limits, budget):
            if member.data is None:
                yield FileDocument(member.doc_id, reason=member.reason)
            else:
                yield from expand(
                    member.doc_id, member.data, options, budget, depth + 1, member.doc_id, keep
                )
        return
    if opener == "compressed":
        try:
            inner = decompress(doc_id, codec, data, options.archive_limits, budget)
        except LimitExceeded as exc:
            yield FileDocument(doc_id, reason=str(exc), metadata=base)
            return
        except Exception as exc:  # OSError, EOFError, lzma.LZMAError, zstandard.ZstdError
            yield FileDocument(
                doc_id,
                reason=f"file {doc_id!r} is damaged {codec} data ({type(exc).__name__}: {exc}); "
                f"{MOVE}",
                metadata=base,
            )
            return
        inner_as = inner_name(detect_as)
        for doc in expand(doc_id, inner, options, budget, depth + 1, inner_as, keep):
            if doc.name == doc_id and doc.metadata:  # the file itself, not an archive's member
                doc.metadata.update(base, compression=codec)
            yield doc
        return
    if keep is not None and not keep(doc_id):
        yield FileDocument(doc_id, reason=OTHER_SHARD)
        return
    yield _extracted(doc_id, data, fmt, options, base)


def _empty(doc_id: str) -> FileDocument:
    return FileDocument(doc_id, reason=f"file {doc_id!r} is empty (0 bytes); fill it in {REMOVE}")


def _document(doc_id: str, data: bytes, fmt: str, options: ReadOptions) -> FileDocument:
    """A file whose suffix names its document format, extracted as that (or rejected)."""
    if not data:
        return _empty(doc_id)
    base = {"path": doc_id, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    return _extracted(doc_id, data, fmt, options, base)


def _extracted(
    doc_id: str, data: bytes, fmt: str, options: ReadOptions, base: dict[str, Any]
) -> FileDocument:
    try:
        extracted = extract_format(doc_id, data, fmt, options)
    except Unreadable as exc:
        return FileDocument(doc_id, reason=str(exc), metadata=base)
    except Exception as exc:  # a library's own error on a damaged file
        return FileDocument(
            doc_id,
            reason=f"file {doc_id!r} could not be extracted ({type(exc).__name__}: {exc}); {MOVE}",
            metadata=base,
        )
    return FileDocument(doc_id, text=extracted.text, metadata={**base, **extracted.metadata()})


def extract_format(name: str, data: bytes, fmt: str, options: ReadOptions) -> Extracted:
    """The text of ``data`` read as ``fmt``; Unreadable says why there is none."""
    if fmt == "pdf":
        extracted = pdf(name, data, options.ocr)
    elif fmt == "image":
        extracted = ocr_engine.image(name, data, options.ocr)
    elif fmt.startswith("code:"):
        extracted = _EXTRACTORS["text"](name, data)
        extracted.format = fmt
    elif fmt in office.EXTRACTORS:
        extracted = office.EXTRACTORS[fmt](name, data)
    else:
        extracted = _EXTRACTORS[fmt](name, data)
    if not extracted.text.strip():
        raise Unreadable(
            f"file {name!r} has no text after extraction ({fmt}); add text to it {REMOVE}"
        )
    return extracted


__all__ = ["FileDocument", "ReadOptions", "expand", "read_file"]
