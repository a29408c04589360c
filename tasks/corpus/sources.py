"""Where a corpus comes from: one file, a folder, an S3 prefix or a glob of files (local or S3),
listed once and read a file at a time.

A ``Source`` names its files (relative names, in name order) and opens each as a seekable binary
stream: a local file directly, an S3 object through a temporary file on disk, so no process holds
a whole data file in memory whatever its size. ``scan_source`` reads every file once, streaming,
for the fingerprint and row count a sharded run's parent needs without loading any document.
"""

from __future__ import annotations

import csv
import fnmatch
import hashlib
import io
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import IO, Any

from pydantic import BaseModel

from tasks.corpus.archives import count_rows
from tasks.corpus.files import DATA_SUFFIXES, hidden, is_data_file, local_names
from tasks.corpus.formats.detect import by_suffix
from tasks.corpus.patterns import select
from tasks.corpus.tables import SUPPORTED, CorpusError
from tasks.settings import Profile

CHUNK = 1 << 20  # bytes read at a time while hashing or counting


@dataclass(frozen=True)
class Source:
    """A corpus source: its files and how to open or read one (``name`` relative to the source)."""

    uri: str
    names: list[str]
    open: Callable[[str], AbstractContextManager[IO[bytes]]]
    read: Callable[[str], bytes]
    single_table: bool = False  # the source is one .jsonl/.csv/.parquet file, not a folder
    root: str = ""  # what names are relative to, when not ``uri`` itself (a glob's folder)

    @property
    def data_files(self) -> list[str]:
        """The table files whose rows are documents (all of them, for a folder of tables)."""
        return [n for n in self.names if is_data_file(n)]

    def uri_of(self, name: str) -> str:
        """The URI of one file, for messages."""
        if self.single_table:
            return self.uri
        return f"{(self.root or self.uri).rstrip('/')}/{name}"


class SourceScan(BaseModel):
    """What one streaming pass over a source's bytes tells, without parsing documents."""

    fingerprint: str  # sha256 over every file's name and content, in name order
    rows: int  # table rows (lines, records) or document files: an upper bound on documents
    files: int
    bytes: int


def open_source(uri: str, profile: Profile | None = None) -> Source:
    """The source at ``uri`` (local path or s3:// URI); a clear CorpusError when it is unusable."""
    if uri.startswith("s3://"):
        return _s3_source(uri, profile)
    if is_glob(uri):
        return _local_glob(uri)
    path = Path(uri).expanduser()
    if path.is_dir():
        names = local_names(path)
        if not names:
            raise CorpusError(f"folder {uri} has no files; check the path given as `corpus`")
        return Source(uri, names, _local_opener(path), lambda n: (path / n).read_bytes())
    if not path.exists():
        raise CorpusError(
            f"corpus {uri} does not exist; give a path or s3:// URI to a {', '.join(SUPPORTED)}"
        )
    parent = path.parent
    single = path.suffix.lower() in DATA_SUFFIXES
    return Source(
        uri,
        [path.name],
        _local_opener(parent),
        lambda n: (parent / n).read_bytes(),
        single_table=single,
    )


def is_glob(uri: str) -> bool:
    """A pattern (``*``, ``?``, ``[…]``) naming several files, e.g. ``data/part-*.parquet``."""
    return any(ch in uri for ch in "*?[")


def _split_glob(pattern: str) -> tuple[str, str]:
    """The fixed folder before the first wildcard, and the rest of the pattern under it."""
    first = min(pattern.index(ch) for ch in "*?[" if ch in pattern)
    cut = pattern.rfind("/", 0, first) + 1
    return pattern[:cut], pattern[cut:]


def _matching(names: list[str], pattern: str, uri: str) -> list[str]:
    """``names`` that match ``pattern`` (``*`` also crosses folders), or a clear error."""
    chosen = sorted(n for n in names if fnmatch.fnmatchcase(n, pattern))
    if not chosen:
        raise CorpusError(f"no files match {uri}; check the pattern given as `corpus`")
    return chosen


def _local_glob(uri: str) -> Source:
    root_text, pattern = _split_glob(os.path.expanduser(uri))
    root = Path(root_text or ".")
    if not root.is_dir():
        raise CorpusError(f"corpus {uri}: folder {root} does not exist; check the path")
    names = _matching(local_names(root), pattern, uri)
    return Source(
        uri, names, _local_opener(root), lambda n: (root / n).read_bytes(), root=str(root)
    )


def _local_opener(root: Path) -> Callable[[str], AbstractContextManager[IO[bytes]]]:
    @contextmanager
    def opener(name: str) -> Iterator[IO[bytes]]:
        try:
            handle = (root / name).open("rb")
        except OSError as exc:
            raise CorpusError(f"corpus file {root / name} cannot be read: {exc}") from exc
        with handle:
            yield handle

    return opener


def _s3_source(uri: str, profile: Profile | None) -> Source:
    """One S3 object, or the objects under a prefix (hidden ones left out)."""
    from tasks.aws.clients import aws_client

    bucket, _, key = uri[len("s3://") :].partition("/")
    s3 = aws_client("s3", profile)
    pattern = ""
    if is_glob(key):
        key, pattern = _split_glob(key)
    suffix = PurePosixPath(key).suffix.lower()
    single = suffix in DATA_SUFFIXES and not pattern
    try:
        if single or (by_suffix(key) and not pattern):  # one object (which must exist)
            s3.head_object(Bucket=bucket, Key=key)
            prefix, _, name = key.rpartition("/")
            prefix = prefix + "/" if prefix else ""
            names = [name]
        else:
            prefix = key if not key or key.endswith("/") else key + "/"
            names = []
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                names += [o["Key"][len(prefix) :] for o in page.get("Contents", [])]
            names = sorted(
                n for n in names if n and not n.endswith("/") and not hidden(PurePosixPath(n).parts)
            )
            if pattern:
                names = _matching(names, pattern, uri)
            if not names:
                raise CorpusError(f"no objects under {uri}; check the bucket and prefix")
    except CorpusError:
        raise
    except Exception as exc:  # botocore's NoSuchKey/NoSuchBucket/AccessDenied and friends
        raise _s3_error(uri, _why(s3, bucket, exc)) from exc

    def read(name: str) -> bytes:
        return bytes(s3.get_object(Bucket=bucket, Key=prefix + name)["Body"].read())

    @contextmanager
    def opener(name: str) -> Iterator[IO[bytes]]:
        # Spooled to disk: a data file of any size streams through a few MiB of memory, and
        # Parquet readers get the seekable file they need.
        with tempfile.TemporaryFile() as spool:
            try:
                s3.download_fileobj(bucket, prefix + name, spool)
            except Exception as exc:
                raise _s3_error(f"s3://{bucket}/{prefix}{name}", _why(s3, bucket, exc)) from exc
            spool.seek(0)
            yield spool

    root = f"s3://{bucket}/{prefix}"
    return Source(uri, names, opener, read, single_table=single, root=root)


def _why(s3: Any, bucket: str, exc: Exception) -> Exception | str:
    """A HEAD's bare "404 Not Found" told apart: the bucket missing, or the object."""
    code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
    if code not in ("404", "NotFound"):
        return exc
    try:
        s3.head_bucket(Bucket=bucket)
    except Exception:
        return f"NoSuchBucket: the bucket {bucket!r} does not exist ({exc})"
    return f"NoSuchKey: no such object ({exc})"


def _s3_error(uri: str, exc: Exception | str) -> CorpusError:
    return CorpusError(
        f"corpus {uri} cannot be read from S3: {exc}; check the bucket and key exist "
        "and that the profile's credentials can read them"
    )


def select_source(
    source: Source, include: list[str] | None, exclude: list[str] | None
) -> tuple[Source, dict[str, int]]:
    """The source with only the files the include/exclude patterns keep, and how many each
    pattern left out; a CorpusError when they leave none."""
    if not include and not exclude:
        return source, {}
    names, counts = select(source.names, include, exclude)
    if not names:
        raise CorpusError(
            f"corpus {source.uri}: the include/exclude patterns leave no file ({counts}); "
            "check the flow parameters include and exclude"
        )
    return replace(source, names=names), counts


def scan_source(
    uri: str,
    profile: Profile | None = None,
    include: list[str] | None = None,
    exclude: list[str] | None = None,
) -> SourceScan:
    """Fingerprint and count a source in one streaming pass (no document is parsed or kept).

    Rows: non-blank lines of JSON Lines, records of CSV, rows of Parquet (from its footer), or
    one per document file (one per member of an archive, nested archives counted as one).
    """
    source, _ = select_source(open_source(uri, profile), include, exclude)
    tables = source.data_files
    digest = hashlib.sha256()
    rows = size = 0
    for name in tables or source.names:
        with source.open(name) as stream:
            file_digest, file_size = _hash_stream(stream)
            stream.seek(0)
            rows += _count_rows(name, stream) if tables else count_rows(name, stream)
        digest.update(f"{name}\0{file_size}\0{file_digest}\n".encode())
        size += file_size
    return SourceScan(
        fingerprint=digest.hexdigest(), rows=rows, files=len(tables or source.names), bytes=size
    )


def _hash_stream(stream: IO[bytes]) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    while chunk := stream.read(CHUNK):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def _count_rows(name: str, stream: IO[bytes]) -> int:
    suffix = PurePosixPath(name).suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return int(pq.ParquetFile(stream).metadata.num_rows)
        except Exception:  # unreadable: the shards report it; count it as one row
            return 1
    if suffix == ".csv":
        text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="replace", newline="")
        try:
            return max(0, sum(1 for _ in csv.reader(text)) - 1)  # less the header
        except csv.Error:
            return 1
        finally:
            text.detach()
    return sum(1 for line in stream if line.strip())
