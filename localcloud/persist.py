"""localcloud's S3 kept on local disk across restarts (``docflow local up --state-dir DIR``).

moto keeps S3 in memory. With a state folder, localcloud loads every bucket and object from it
when it starts, and writes what changed back when it stops (SIGTERM or Ctrl-C, as `docflow ui`
stops it) and every ``SNAPSHOT_EVERY_S`` while it runs, so a run's manifests, staged inputs,
outputs and results outlive a restart of the stack and the run resumes with its run key. Only S3
is kept: queues, topics and endpoints are made again by deploy-endpoint and the run itself.

Layout: ``DIR/s3/<bucket>/<key>`` holds an object's bytes and ``DIR/s3/<bucket>.meta.json`` its
ETag, content type and user metadata per key. A save lists each bucket and reads only the objects
whose ETag changed, so it costs what changed, not what is kept. Each file is written to a
temporary name and renamed, objects before the metadata that names them, so a save cut short
leaves every object the metadata names whole. Written through the S3 API with boto3, as any
client, with timeouts: a request that hangs fails the save, and the last one stays.
"""

from __future__ import annotations

import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

SNAPSHOT_EVERY_S = 30.0
THREADS = 8  # objects read or written at once
REQUEST_TIMEOUT_S = 20.0  # one S3 request of a save or load
STOP_TIMEOUT_S = 120.0  # how long `docflow ui` lets localcloud save before it is killed

Meta = dict[str, dict[str, Any]]  # key -> {"ETag", "ContentType", "Metadata"}


def _s3(url: str, region: str) -> Any:
    import boto3
    from botocore.config import Config

    from localcloud.accounts import ACCESS_KEY, SECRET_KEY

    return boto3.client(
        "s3",
        config=Config(
            max_pool_connections=THREADS,
            connect_timeout=5,
            read_timeout=REQUEST_TIMEOUT_S,
            retries={"max_attempts": 3, "mode": "standard"},
        ),
        endpoint_url=url,
        region_name=region,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    )


def _write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(data)
    os.replace(partial, path)


def _read_meta(root: Path, bucket: str) -> Meta:
    try:
        meta: Meta = json.loads((root / f"{bucket}.meta.json").read_text())
    except (OSError, ValueError):
        return {}
    return meta


class S3Snapshot:
    """The S3 of one localcloud kept in ``folder / "s3"``, saved by what changed."""

    def __init__(self, url: str, folder: Path, region: str = "us-east-1") -> None:
        self.url = url
        self.region = region
        self.root = folder / "s3"
        self._client: Any = None

    def _s3(self) -> Any:
        """One client for every save (making one takes a second on a busy machine)."""
        if self._client is None:
            self._client = _s3(self.url, self.region)
        return self._client

    def saved_buckets(self) -> list[str]:
        """The buckets the folder holds."""
        return sorted(p.name.removesuffix(".meta.json") for p in self.root.glob("*.meta.json"))

    def save(self) -> tuple[int, int]:
        """Bring the folder up to date with S3; (objects kept, objects written now)."""
        s3 = self._s3()
        self.root.mkdir(parents=True, exist_ok=True)
        live = [b["Name"] for b in s3.list_buckets().get("Buckets", [])]
        kept = written = 0
        for bucket in live:
            meta, changed = self._save_bucket(s3, bucket)
            kept += len(meta)
            written += changed
        for gone in set(self.saved_buckets()) - set(live):
            (self.root / f"{gone}.meta.json").unlink(missing_ok=True)
            shutil.rmtree(self.root / gone, ignore_errors=True)
        return kept, written

    def _save_bucket(self, s3: Any, bucket: str) -> tuple[Meta, int]:
        old = _read_meta(self.root, bucket)
        listed = {
            item["Key"]: item["ETag"]
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for item in page.get("Contents", [])
        }
        stale = [key for key, etag in listed.items() if (old.get(key) or {}).get("ETag") != etag]

        def fetch(key: str) -> tuple[str, dict[str, Any]]:
            got = s3.get_object(Bucket=bucket, Key=key)
            _write(self.root / bucket / key, got["Body"].read())
            info = {"ContentType": got.get("ContentType"), "Metadata": got["Metadata"]}
            return key, {"ETag": got["ETag"], **info}

        with ThreadPoolExecutor(THREADS) as pool:
            fresh = dict(pool.map(fetch, stale))
        meta = {key: fresh.get(key) or old[key] for key in listed}
        (self.root / bucket).mkdir(parents=True, exist_ok=True)
        _write(self.root / f"{bucket}.meta.json", json.dumps(meta).encode())
        for key in set(old) - set(listed):  # deleted from S3: its file goes after the metadata
            (self.root / bucket / key).unlink(missing_ok=True)
        return meta, len(fresh)

    def load(self) -> int:
        """Create the saved buckets and objects in S3; objects loaded."""
        if not self.root.is_dir():
            return 0
        s3 = self._s3()
        loaded = 0
        for bucket in self.saved_buckets():
            s3.create_bucket(Bucket=bucket)
            meta = _read_meta(self.root, bucket)

            def put(item: tuple[str, dict[str, Any]], bucket: str = bucket) -> None:
                key, info = item
                extra: dict[str, Any] = {"Metadata": info.get("Metadata") or {}}
                if info.get("ContentType"):
                    extra["ContentType"] = info["ContentType"]
                body = (self.root / bucket / key).read_bytes()
                s3.put_object(Bucket=bucket, Key=key, Body=body, **extra)

            with ThreadPoolExecutor(THREADS) as pool:
                list(pool.map(put, meta.items()))
            loaded += len(meta)
        return loaded
