"""Compressed single files (.gz, .bz2, .xz, .zst) read through, a piece at a time, under limits.

gzip, bz2 and lzma are the standard library's; zstandard (the reference binding of Facebook's
libzstd, wheels for every platform) reads .zst, which the standard library does not before 3.14.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
from typing import IO, Any

from tasks.corpus.limits import ArchiveLimits, Budget, LimitExceeded

CHUNK = 1 << 16  # bytes decompressed at a time


def open_compressed(codec: str, data: bytes | IO[bytes]) -> Any:
    """A binary stream of the decompressed bytes of ``data`` (bytes or a binary stream; nothing
    is decompressed yet)."""
    raw = io.BytesIO(data) if isinstance(data, bytes) else data
    if codec == "gzip":
        return gzip.GzipFile(fileobj=raw)
    if codec == "bzip2":
        return bz2.BZ2File(raw)
    if codec == "xz":
        return lzma.LZMAFile(raw)
    if codec == "zstd":
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
    raise ValueError(f"unknown compression {codec!r}")


def read_capped(
    stream: IO[bytes], stored: int, limits: ArchiveLimits, budget: Budget, what: str
) -> bytes:
    """All of ``stream`` (the uncompressed form of ``stored`` bytes), or LimitExceeded naming
    the first limit it would pass: max_member_bytes, max_total_bytes or max_ratio."""
    parts: list[bytes] = []
    size = 0
    while chunk := stream.read(CHUNK):
        size += len(chunk)
        limits.check_size(what, size, stored, budget)
        parts.append(chunk)
    budget.bytes += size
    return b"".join(parts)


def decompress(name: str, codec: str, data: bytes, limits: ArchiveLimits, budget: Budget) -> bytes:
    """The bytes a compressed file holds; LimitExceeded when a limit is passed, OSError/EOFError
    (and zstandard's ZstdError) when the data is damaged."""
    with open_compressed(codec, data) as stream:
        return read_capped(stream, len(data), limits, budget, f"file {name!r}")


def inner_name(name: str) -> str:
    """The name of what a compressed file holds: ``notes.txt.gz`` -> ``notes.txt``."""
    from tasks.corpus.formats.detect import COMPRESSED, suffix_of

    suffix = suffix_of(name)
    return name[: -len(suffix)] if suffix in COMPRESSED else name


__all__ = ["LimitExceeded", "decompress", "inner_name", "open_compressed", "read_capped"]
