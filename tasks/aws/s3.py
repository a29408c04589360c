"""Small, generic S3 helpers: URIs, HEAD, sha256-addressed uploads that skip what is already there."""

from __future__ import annotations

import hashlib
import logging
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

SHA256_METADATA_KEY = "sha256"
# What S3 (and moto) answer a conditional PUT whose key already exists.
EXISTS_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})
MiB = 1024 * 1024
DEFAULT_TRANSFER_CONFIG = TransferConfig(
    multipart_threshold=64 * MiB,
    multipart_chunksize=64 * MiB,
    max_concurrency=8,
    use_threads=True,
)

_log = logging.getLogger(__name__)
LoggerLike = logging.Logger | logging.LoggerAdapter[Any]


class S3UriError(ValueError):
    """A string is not a usable s3:// URI; the message says what was expected."""


@dataclass(frozen=True)
class S3Uri:
    """A parsed ``s3://bucket/key`` location."""

    bucket: str
    key: str

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def join(self, *parts: str) -> S3Uri:
        """This location with ``parts`` appended as key segments."""
        segments = [self.key.rstrip("/")] if self.key else []
        segments += [p.strip("/") for p in parts if p.strip("/")]
        return S3Uri(self.bucket, "/".join(segments))


def parse_s3_uri(uri: str) -> S3Uri:
    """Split ``s3://bucket/key`` into bucket and key (the key may be empty or end with '/')."""
    if not isinstance(uri, str) or not uri.startswith("s3://"):
        raise S3UriError(f"{uri!r} is not an S3 URI; expected s3://<bucket>/<key>")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket:
        raise S3UriError(f"{uri!r} has no bucket; expected s3://<bucket>/<key>")
    if not (3 <= len(bucket) <= 63) or bucket != bucket.lower() or " " in bucket:
        raise S3UriError(
            f"{uri!r}: bucket {bucket!r} is not a valid S3 bucket name "
            "(3-63 lowercase letters, digits, dots or hyphens)"
        )
    return S3Uri(bucket, key)


def split_s3_uri(uri: str) -> tuple[str, str]:
    """(bucket, key) of an ``s3://bucket/key`` URI naming an object; S3UriError otherwise."""
    parsed = parse_s3_uri(uri)
    if not parsed.key:
        raise S3UriError(f"{uri!r} is not an s3://bucket/key URI")
    return parsed.bucket, parsed.key


def s3_uri(bucket: str, key: str) -> str:
    """The ``s3://bucket/key`` string for a bucket and key."""
    return str(S3Uri(bucket, key.lstrip("/")))


def sha256_file(path: Path, chunk_size: int = 8 * MiB) -> str:
    """Hex sha256 of a file, read in chunks (never the whole file in memory)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def head_object(client: Any, bucket: str, key: str) -> dict[str, Any] | None:
    """HeadObject's answer, or None when the object does not exist."""
    try:
        response: dict[str, Any] = client.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in {"404", "NoSuchKey", "NotFound"}:
            return None
        raise
    return response


class BucketNotFoundError(LookupError):
    """The bucket docflow was told to use does not exist or is not reachable with these credentials."""


def require_bucket(client: Any, bucket: str, hint: str = "") -> None:
    """Raise a clear error unless ``bucket`` exists and these credentials can reach it."""
    try:
        client.head_bucket(Bucket=bucket)
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        what = "does not exist" if code in {"404", "NoSuchBucket"} else f"is not reachable ({code})"
        advice = hint or "create it or point docflow at an existing bucket"
        raise BucketNotFoundError(f"S3 bucket {bucket!r} {what}; {advice}") from exc


def ensure_bucket(client: Any, bucket: str) -> bool:
    """Create ``bucket`` unless it exists (a first local run); True when it was created."""
    try:
        client.head_bucket(Bucket=bucket)
    except ClientError as exc:
        if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") != 404:
            raise
        client.create_bucket(Bucket=bucket)
        return True
    return False


def object_exists(client: Any, bucket: str, key: str) -> bool:
    """Whether ``s3://bucket/key`` exists."""
    return head_object(client, bucket, key) is not None


def stored_sha256(head: dict[str, Any] | None) -> str | None:
    """The sha256 docflow recorded in an object's metadata, if any."""
    if head is None:
        return None
    metadata = {k.lower(): v for k, v in (head.get("Metadata") or {}).items()}
    value = metadata.get(SHA256_METADATA_KEY)
    return str(value) if value else None


class TransferProgress:
    """A thread-safe boto3 transfer callback: a rich bar on a terminal, log lines otherwise."""

    def __init__(
        self,
        total: int,
        label: str,
        logger: LoggerLike | None = None,
        *,
        interactive: bool | None = None,
        log_every_fraction: float = 0.1,
    ) -> None:
        self.total = max(int(total), 0)
        self.label = label
        self.logger = logger or _log
        self.interactive = sys.stderr.isatty() if interactive is None else interactive
        self.transferred = 0
        self._step = max(int(self.total * log_every_fraction), 1)
        self._next_log = self._step
        self._lock = threading.Lock()
        self._progress: Any = None
        self._task_id: Any = None

    def __enter__(self) -> TransferProgress:
        if self.interactive:
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                transient=True,
            )
            self._progress.start()
            self._task_id = self._progress.add_task(self.label, total=self.total)
        return self

    def __call__(self, bytes_amount: int) -> None:
        """Record ``bytes_amount`` more bytes sent (boto3 calls this from its worker threads)."""
        with self._lock:
            self.transferred += bytes_amount
            if self._progress is not None:
                self._progress.update(self._task_id, completed=self.transferred)
                return
            if self.transferred >= self._next_log or self.transferred >= self.total:
                while self._next_log <= self.transferred:
                    self._next_log += self._step
                percent = 100.0 * self.transferred / self.total if self.total else 100.0
                self.logger.info(
                    "%s: %s of %s bytes (%.0f%%)",
                    self.label,
                    self.transferred,
                    self.total,
                    percent,
                )

    def __exit__(self, *exc_info: object) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def put_object_if_absent(
    client: Any, bucket: str, key: str, body: bytes, content_type: str | None = None
) -> bool:
    """One conditional PUT (``If-None-Match: *``): True when written, False when the key exists."""
    extra: dict[str, Any] = {"ContentType": content_type} if content_type else {}
    try:
        client.put_object(Bucket=bucket, Key=key, Body=body, IfNoneMatch="*", **extra)
    except ClientError as exc:
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = exc.response.get("Error", {}).get("Code")
        if status in (409, 412) or code in EXISTS_CODES:
            return False  # already there (or being written by a concurrent writer)
        raise
    return True


@dataclass(frozen=True)
class PutResult:
    """What a skip-if-present put did: where, how many bytes it sent, and whether it skipped."""

    uri: str
    sha256: str
    bytes_uploaded: int
    skipped: bool


def upload_file(
    client: Any,
    path: Path,
    bucket: str,
    key: str,
    *,
    metadata: dict[str, str] | None = None,
    content_type: str | None = None,
    transfer_config: TransferConfig | None = None,
    logger: LoggerLike | None = None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Upload a file (multipart and concurrent above the threshold) and return the bytes sent."""
    size = path.stat().st_size
    extra: dict[str, Any] = {}
    if metadata:
        extra["Metadata"] = metadata
    if content_type:
        extra["ContentType"] = content_type
    config = transfer_config or DEFAULT_TRANSFER_CONFIG
    if progress is not None:
        client.upload_file(
            str(path), bucket, key, ExtraArgs=extra, Config=config, Callback=progress
        )
        return size
    with TransferProgress(size, f"upload {s3_uri(bucket, key)}", logger) as bar:
        client.upload_file(str(path), bucket, key, ExtraArgs=extra, Config=config, Callback=bar)
    return size


def put_file_if_absent(
    client: Any,
    path: Path,
    bucket: str,
    key: str,
    *,
    sha256: str | None = None,
    content_type: str | None = None,
    transfer_config: TransferConfig | None = None,
    logger: LoggerLike | None = None,
) -> PutResult:
    """Upload ``path`` unless the key already holds an object with the same sha256 metadata."""
    log = logger or _log
    digest = sha256 or sha256_file(path)
    uri = s3_uri(bucket, key)
    existing = stored_sha256(head_object(client, bucket, key))
    if existing == digest:
        return PutResult(uri, digest, 0, True)
    if existing is not None:
        log.warning("%s holds different content (sha256 %s); replacing it", uri, existing)
    sent = upload_file(
        client,
        path,
        bucket,
        key,
        metadata={SHA256_METADATA_KEY: digest},
        content_type=content_type,
        transfer_config=transfer_config,
        logger=log,
    )
    return PutResult(uri, digest, sent, False)


def put_bytes_unless_same(
    client: Any,
    body: bytes,
    bucket: str,
    key: str,
    *,
    content_type: str | None = None,
) -> PutResult:
    """PutObject ``body`` unless the key already holds an object with the same sha256 metadata."""
    digest = hashlib.sha256(body).hexdigest()
    uri = s3_uri(bucket, key)
    if stored_sha256(head_object(client, bucket, key)) == digest:
        return PutResult(uri, digest, 0, True)
    extra: dict[str, Any] = {"ContentType": content_type} if content_type else {}
    client.put_object(
        Bucket=bucket, Key=key, Body=body, Metadata={SHA256_METADATA_KEY: digest}, **extra
    )
    return PutResult(uri, digest, len(body), False)
