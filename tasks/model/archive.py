"""The model archive: a deterministic model.tar.gz of the model files and the container code,
built once per content fingerprint (cached on local disk) and described file by file."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import struct
import tarfile
import tempfile
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from pydantic import BaseModel, ConfigDict, ValidationError

from tasks.aws.s3 import (
    LoggerLike,
    TransferProgress,
    sha256_file,
)
from tasks.model.folder import ModelSourceError, default_cache_dir, model_files

DEFAULT_CODE_DIR = Path(__file__).resolve().parents[2] / "inference"


CODE_REQUIRED = ("inference.py", "requirements.txt")
# In inference/ but not the handler's: docflow's serving image carries its own server
# (docker/serving/Dockerfile), which loads the artifact's code/ like the Hugging Face toolkit does.
IMAGE_ONLY = ("container_server.py",)


ARCHIVE_NAME = "model.tar.gz"


DIGEST_CHARS = 16


# Weights barely compress; level 1 is several times faster than 6 for about the same size.
GZIP_LEVEL = 1


# Everything besides the files' content that decides the archive's bytes.
ARCHIVE_FORMAT = f"docflow-tar-v1 gnu gzip-{GZIP_LEVEL} zlib-{zlib.ZLIB_RUNTIME_VERSION}"


_DTYPE_NAMES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}


class PackagingError(ValueError):
    """The model or its inference code cannot be packaged; the message says what to fix."""


class FileEntry(BaseModel):
    """One file inside the artifact."""

    model_config = ConfigDict(frozen=True)

    name: str
    bytes: int
    sha256: str


class WeightsSummary(BaseModel):
    """What the safetensors headers say about the weights (read without loading them)."""

    model_config = ConfigDict(frozen=True)

    dtype: str
    parameter_count: int
    tensor_count: int


class ArchiveRecord(BaseModel):
    """What an archive built from given content turned out to be (cached so re-runs skip gzip)."""

    fingerprint: str
    sha256: str
    bytes: int


class BuiltArchive(BaseModel):
    """A model.tar.gz described by its content; ``archive_path`` is None until it is written."""

    model_config = ConfigDict(frozen=True)

    name: str
    source: str
    model_dir: str
    code_dir: str
    archive_path: str | None
    fingerprint: str
    sha256: str
    bytes: int
    uncompressed_bytes: int
    files: list[FileEntry]
    architecture: str
    model_type: str
    dtype: str
    parameter_count: int


def summarize_weights(model_dir: Path, names: list[str]) -> WeightsSummary:
    """Dominant dtype and parameter count from the safetensors headers (no tensor is loaded)."""
    dtype_params: Counter[str] = Counter()
    tensors = 0
    for name in names:
        if not name.endswith(".safetensors"):
            continue
        with (model_dir / name).open("rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(length))
        for key, info in header.items():
            if key == "__metadata__":
                continue
            count = 1
            for dim in info["shape"]:
                count *= int(dim)
            dtype_params[info["dtype"]] += count
            tensors += 1
    if not dtype_params:
        raise PackagingError(f"{model_dir} has no safetensors tensors to package")
    dominant = dtype_params.most_common(1)[0][0]
    return WeightsSummary(
        dtype=_DTYPE_NAMES.get(dominant, dominant.lower()),
        parameter_count=sum(dtype_params.values()),
        tensor_count=tensors,
    )


def code_files(code_dir: Path) -> list[str]:
    """The inference code files to ship under code/: inference.py, sibling modules, requirements.txt."""
    missing = [n for n in CODE_REQUIRED if not (code_dir / n).is_file()]
    if missing:
        raise PackagingError(
            f"{code_dir} lacks {', '.join(missing)}; the model container needs code/inference.py "
            "(model_fn, input_fn, predict_fn, output_fn) and code/requirements.txt"
        )
    # code/ is put on sys.path, not imported as a package: sibling modules ship, __init__.py not.
    modules = {
        p.name
        for p in code_dir.glob("*.py")
        if p.is_file() and p.name != "__init__.py" and p.name not in IMAGE_ONLY
    }
    names = modules | set(CODE_REQUIRED)
    return sorted(names)


def archive_members(model_dir: Path, code_dir: Path) -> list[tuple[str, Path]]:
    """(name in the archive, local file) pairs, sorted: model files at the root, code under code/."""
    try:
        names = model_files(model_dir)
    except ModelSourceError as exc:
        raise PackagingError(str(exc)) from exc
    members = [(n, model_dir / n) for n in names]
    members += [(f"code/{n}", code_dir / n) for n in code_files(code_dir)]
    vendor = code_dir / "vendor"  # requirements installed at packaging time (tasks.model.vendor)
    if vendor.is_dir():
        members += [
            (f"code/{p.relative_to(code_dir).as_posix()}", p)
            for p in vendor.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts
        ]
    return sorted(members)


def _tarinfo(name: str, size: int, *, directory: bool = False) -> tarfile.TarInfo:
    """A TarInfo with fixed owner, mode and time, so equal content gives equal bytes."""
    info = tarfile.TarInfo(name)
    info.size = 0 if directory else size
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode = 0o755 if directory else 0o644
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


class _HashingWriter(io.RawIOBase):
    """A write-only file that hashes and counts what passes through it to another file."""

    def __init__(self, sink: IO[bytes]) -> None:
        self.sink = sink
        self.digest = hashlib.sha256()
        self.count = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self.digest.update(view)
        self.sink.write(view)
        self.count += len(view)
        return len(view)


def scan_members(members: list[tuple[str, Path]]) -> list[FileEntry]:
    """Name, size and sha256 of every member (one read of each file)."""
    return [FileEntry(name=n, bytes=p.stat().st_size, sha256=sha256_file(p)) for n, p in members]


def content_fingerprint(entries: list[FileEntry]) -> str:
    """sha256 over the archive format and every member's name, size and sha256."""
    digest = hashlib.sha256(ARCHIVE_FORMAT.encode() + b"\n")
    for e in entries:
        digest.update(f"{e.name}\0{e.bytes}\0{e.sha256}\n".encode())
    return digest.hexdigest()


class _CountingReader(io.RawIOBase):
    """A read-only file that reports how many bytes were read (for progress while compressing)."""

    def __init__(self, source: IO[bytes], progress: Callable[[int], None]) -> None:
        self.source = source
        self.progress = progress

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self.source.read(size)
        self.progress(len(data))
        return data


def write_archive(
    members: list[tuple[str, Path]],
    out: Path,
    level: int = GZIP_LEVEL,
    progress: Callable[[int], None] | None = None,
) -> tuple[str, int]:
    """Stream ``members`` into a deterministic tar.gz at ``out``; return (sha256, bytes)."""
    dirs = sorted({n.rsplit("/", 1)[0] for n, _ in members if "/" in n})
    entries: list[tuple[str, Path | None]] = [(d, None) for d in dirs]
    entries += list(members)
    with out.open("wb") as raw:
        hashing = _HashingWriter(raw)
        # filename="" and mtime=0 keep the gzip header free of names and clocks.
        with (
            gzip.GzipFile(
                filename="", mode="wb", fileobj=hashing, compresslevel=level, mtime=0
            ) as gz,
            tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar,
        ):
            for name, path in sorted(entries, key=lambda m: m[0]):
                if path is None:
                    tar.addfile(_tarinfo(name, 0, directory=True))
                    continue
                with path.open("rb") as fh:
                    reader = _CountingReader(fh, progress) if progress else fh
                    tar.addfile(_tarinfo(name, path.stat().st_size), reader)
    return hashing.digest.hexdigest(), hashing.count


def _write_with_progress(
    members: list[tuple[str, Path]],
    out: Path,
    entries: list[FileEntry],
    logger: LoggerLike | None,
) -> tuple[str, int]:
    total = sum(e.bytes for e in entries)
    with TransferProgress(total, f"compress {out.name}", logger) as bar:
        return write_archive(members, out, progress=bar)


def _record_path(cache_dir: Path | None, fingerprint: str) -> Path:
    return (cache_dir or default_cache_dir()) / "archives" / f"{fingerprint}.json"


def load_record(cache_dir: Path | None, fingerprint: str) -> ArchiveRecord | None:
    """The cached record for archives of this content, if one was built here before."""
    path = _record_path(cache_dir, fingerprint)
    try:
        record = ArchiveRecord.model_validate_json(path.read_bytes())
    except (OSError, ValidationError):
        return None
    return record if record.fingerprint == fingerprint else None


def save_record(cache_dir: Path | None, record: ArchiveRecord) -> None:
    """Remember what archive this content builds to (atomic write)."""
    path = _record_path(cache_dir, record.fingerprint)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(record.model_dump_json())
    tmp.replace(path)


def build_archive(
    model_dir: Path,
    *,
    name: str,
    source: str,
    code_dir: Path | None = None,
    work_dir: Path | None = None,
    cache_dir: Path | None = None,
    reuse: bool = True,
    logger: LoggerLike | None = None,
) -> BuiltArchive:
    """Describe (and unless a cached record already knows its sha256, build) model.tar.gz.

    The tarball is written to a fresh temp folder under ``work_dir``; with ``reuse`` and a
    record for the same content, nothing is written and ``archive_path`` is None:
    ``upload_archive`` writes it only if S3 lacks it.
    """
    code = (code_dir or DEFAULT_CODE_DIR).resolve()
    members = archive_members(model_dir, code)
    entries = scan_members(members)
    fingerprint = content_fingerprint(entries)
    config = json.loads((model_dir / "config.json").read_text())
    weights = summarize_weights(model_dir, [n for n, _ in members])
    architectures = config.get("architectures") or []
    record = load_record(cache_dir, fingerprint) if reuse else None
    archive: Path | None = None
    if record is None:
        out_dir = Path(tempfile.mkdtemp(prefix="docflow-package-", dir=work_dir))
        archive = out_dir / ARCHIVE_NAME
        try:
            digest, size = _write_with_progress(members, archive, entries, logger)
        except BaseException:
            shutil.rmtree(out_dir, ignore_errors=True)
            raise
        record = ArchiveRecord(fingerprint=fingerprint, sha256=digest, bytes=size)
        save_record(cache_dir, record)
    return BuiltArchive(
        name=name,
        source=source,
        model_dir=str(model_dir),
        code_dir=str(code),
        archive_path=str(archive) if archive else None,
        fingerprint=fingerprint,
        sha256=record.sha256,
        bytes=record.bytes,
        uncompressed_bytes=sum(e.bytes for e in entries),
        files=entries,
        architecture=str(architectures[0]) if architectures else "unknown",
        model_type=str(config.get("model_type", "unknown")),
        dtype=weights.dtype,
        parameter_count=weights.parameter_count,
    )


def ensure_written(
    built: BuiltArchive, work_dir: Path | None = None, logger: LoggerLike | None = None
) -> BuiltArchive:
    """``built`` with its tarball on local disk, writing it again from the same content if needed."""
    if built.archive_path and Path(built.archive_path).is_file():
        return built
    members = archive_members(Path(built.model_dir), Path(built.code_dir))
    out_dir = Path(tempfile.mkdtemp(prefix="docflow-package-", dir=work_dir))
    archive = out_dir / ARCHIVE_NAME
    try:
        digest, _ = _write_with_progress(members, archive, built.files, logger)
        if digest != built.sha256:
            raise PackagingError(
                f"{built.model_dir} changed while packaging (sha256 {built.sha256[:16]}… became "
                f"{digest[:16]}…); run package_model again"
            )
    except BaseException:
        shutil.rmtree(out_dir, ignore_errors=True)
        raise
    return built.model_copy(update={"archive_path": str(archive)})


def discard_archive(built: BuiltArchive) -> None:
    """Remove the temp folder a written archive lives in (nothing when it was never written)."""
    if built.archive_path:
        shutil.rmtree(Path(built.archive_path).parent, ignore_errors=True)
