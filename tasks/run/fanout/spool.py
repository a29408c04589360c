"""Download batch outputs while the run is still waiting, so aggregation reads them from local disk.

The fan-out hands each completed batch's output URI to ``OutputSpool.fetch`` as soon as its
notification is recorded; a small thread pool copies the object into a temporary folder. The
aggregation then asks ``read(uri)`` first and goes to S3 only for what the spool does not have
(a resumed run, a download that failed, a batch found by reconciliation). Nothing is held in
memory: each output goes straight to a file.
"""

from __future__ import annotations

import hashlib
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from tasks.aws.s3 import split_s3_uri
from tasks.settings import Profile

SPOOL_WORKERS = 4


class OutputSpool:
    """A temporary folder of downloaded output objects, filled in the background."""

    def __init__(self, profile: Profile, *, workers: int = SPOOL_WORKERS) -> None:
        self.profile = profile
        self._dir = tempfile.TemporaryDirectory(prefix="docflow-outputs-")
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="docflow-spool")
        self._pending: dict[str, Future[bool]] = {}

    def __enter__(self) -> OutputSpool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop downloading and remove the folder."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._dir.cleanup()

    def path_for(self, uri: str) -> Path:
        """Where the object at ``uri`` is (or will be) kept."""
        return Path(self._dir.name) / hashlib.sha256(uri.encode()).hexdigest()

    def fetch(self, uri: str) -> None:
        """Start downloading ``uri`` unless it is already downloaded or on its way."""
        if uri not in self._pending:
            self._pending[uri] = self._pool.submit(self._download, uri)

    def ready(self, uri: str) -> bool:
        """Whether the object at ``uri`` is downloaded (``read`` returns it without waiting)."""
        future = self._pending.get(uri)
        return future is not None and future.done() and not future.cancelled() and future.result()

    def read(self, uri: str) -> bytes | None:
        """The object's bytes when the spool has them (waiting for a download under way), else None."""
        future = self._pending.get(uri)
        if future is None or not future.result():
            return None
        return self.path_for(uri).read_bytes()

    def _download(self, uri: str) -> bool:
        from tasks.aws.clients import aws_client

        target = self.path_for(uri)
        partial = target.with_suffix(".part")
        try:
            bucket, key = split_s3_uri(uri)
            body = aws_client("s3", self.profile).get_object(Bucket=bucket, Key=key)["Body"]
            with partial.open("wb") as fh:
                for chunk in iter(lambda: body.read(1 << 20), b""):
                    fh.write(chunk)
            partial.replace(target)
        except Exception:  # the aggregation reads it from S3 and reports any error itself
            partial.unlink(missing_ok=True)
            return False
        return True
