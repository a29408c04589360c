"""Members of .zip and .tar (.tar.gz, .tar.bz2, .tar.xz, .tar.zst) archives, one at a time.

Each member is yielded with its bytes (read a piece at a time, never past the limits) or with
the reason it is not read; hidden members (a part starting with '.') are left out as in folders.
The standard library's zipfile and tarfile read them (tarfile in stream mode: one pass, no
seeking, so a .tar.gz is decompressed once).
"""

from __future__ import annotations

import io
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import IO

from tasks.corpus.compressed import open_compressed, read_capped
from tasks.corpus.limits import ArchiveLimits, Budget, LimitExceeded


@dataclass
class Member:
    """One archive member: its id (``bundle.zip!reports/q3.pdf``) and its bytes, or a reason."""

    doc_id: str
    data: bytes | None = None
    reason: str | None = None


def members(
    doc_id: str, kind: str, data: bytes | IO[bytes], limits: ArchiveLimits, budget: Budget
) -> Iterator[Member]:
    """Every member of the archive ``doc_id`` (``kind`` zip, tar or tar:zstd), in stored order.

    ``data``: the archive's bytes, or a seekable binary stream of them (a corpus file, which is
    then never held whole). A damaged archive ends with a Member whose id is the archive's own
    and whose reason says so.
    """
    if isinstance(data, bytes):
        data = io.BytesIO(data)
    try:
        if kind == "zip":
            yield from _zip(doc_id, data, limits, budget)
        else:
            yield from _tar(doc_id, kind, data, limits, budget)
    except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError, ValueError) as exc:
        yield Member(
            doc_id,
            reason=f"archive {doc_id!r} is damaged or not a {kind.split(':')[0]} archive "
            f"({type(exc).__name__}: {exc}); members before the damage are read, the rest "
            "cannot be; repair it or move it out of the folder given as `corpus`",
        )


def _hidden(name: str) -> bool:
    return any(part.startswith(".") for part in PurePosixPath(name).parts)


def _counted(member_id: str, limits: ArchiveLimits, budget: Budget) -> str | None:
    """Count one more member; the max_members reason once the count passes it."""
    budget.members += 1
    if budget.members > limits.max_members:
        return limits.reason(
            f"member {member_id!r}", "max_members", f"is member {budget.members} of the file"
        )
    return None


def _zip(doc_id: str, data: IO[bytes], limits: ArchiveLimits, budget: Budget) -> Iterator[Member]:
    with zipfile.ZipFile(data) as archive:
        for info in archive.infolist():
            if info.is_dir() or _hidden(info.filename):
                continue
            member_id = f"{doc_id}!{info.filename}"
            reason = _counted(member_id, limits, budget)
            if reason is None and info.flag_bits & 0x1:
                reason = (
                    f"member {member_id!r} is encrypted (the zip needs a password); extract it "
                    "and give the files instead, or move the archive out of the folder given as "
                    "`corpus`"
                )
            if reason is not None:
                yield Member(member_id, reason=reason)
                continue
            try:
                with archive.open(info) as stream:
                    body = read_capped(
                        stream, info.compress_size, limits, budget, f"member {member_id!r}"
                    )
            except LimitExceeded as exc:
                yield Member(member_id, reason=str(exc))
                continue
            except (zipfile.BadZipFile, NotImplementedError, OSError, EOFError) as exc:
                yield Member(
                    member_id,
                    reason=f"member {member_id!r} cannot be read ({type(exc).__name__}: {exc}); "
                    "repair the archive or move it out of the folder given as `corpus`",
                )
                continue
            yield Member(member_id, body)


def _tar(
    doc_id: str, kind: str, data: IO[bytes], limits: ArchiveLimits, budget: Budget
) -> Iterator[Member]:
    stored = data.seek(0, io.SEEK_END)
    data.seek(0)
    raw = open_compressed("zstd", data) if kind == "tar:zstd" else data
    with tarfile.open(fileobj=raw, mode="r|*") as archive:
        for info in archive:
            if info.isdir() or _hidden(info.name):
                continue
            member_id = f"{doc_id}!{info.name}"
            reason = _counted(member_id, limits, budget)
            if reason is None and not info.isfile():
                reason = (
                    f"member {member_id!r} is a link or special file, not a file; docflow reads "
                    "only the files of an archive"
                )
            if reason is None:
                stream = archive.extractfile(info)
                assert stream is not None  # a regular file
                try:
                    # A tar member's ratio is over the whole archive's stored bytes.
                    body = read_capped(stream, stored, limits, budget, f"member {member_id!r}")
                except LimitExceeded as exc:
                    reason = str(exc)
                else:
                    yield Member(member_id, body)
                    continue
            yield Member(member_id, reason=reason)


def count_rows(name: str, stream: IO[bytes]) -> int:
    """Rows a corpus file makes: its archive members (top level; 1 when unreadable), else 1.

    What a sharded run's parent sizes its shards by, without extracting anything.
    """
    from tasks.corpus.formats.detect import by_suffix

    kind = by_suffix(name)
    if kind is None or kind.format is None or not kind.format.startswith("archive:"):
        return 1
    try:
        if kind.format == "archive:zip":
            with zipfile.ZipFile(stream) as archive:
                infos = archive.infolist()
                return max(1, sum(not i.is_dir() and not _hidden(i.filename) for i in infos))
        raw = (
            open_compressed("zstd", stream.read()) if kind.format == "archive:tar:zstd" else stream
        )
        with tarfile.open(fileobj=raw, mode="r|*") as tar:
            return max(1, sum(not i.isdir() and not _hidden(i.name) for i in tar))
    except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError, ValueError):
        return 1
