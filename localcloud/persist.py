"""localcloud's S3 kept on local disk across restarts (``docflow local up --state-dir DIR``).

moto keeps S3 in memory. With a state folder, localcloud loads every bucket and object from it
when it starts, and writes them back when it stops (SIGTERM or Ctrl-C, as `docflow ui` stops it)
and every ``SNAPSHOT_EVERY_S`` while it runs, so a run's manifests, staged inputs, outputs and
results outlive a restart of the stack and the run resumes with its run key. Only S3 is kept:
queues, topics and endpoints are made again by deploy-endpoint and the run itself.

Layout: ``DIR/s3/<bucket>/<key>`` holds an object's bytes and ``DIR/s3/<bucket>.meta.json``
its content type and user metadata per key. Written through the S3 API with boto3, as any client.
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
STOP_TIMEOUT_S = 120.0  # how long `docflow ui` lets localcloud save before it is killed


def _s3(url: str, region: str) -> Any:
    import boto3
    from botocore.config import Config

    from localcloud.accounts import ACCESS_KEY, SECRET_KEY

    return boto3.client(
        "s3",
        config=Config(max_pool_connections=THREADS),
        endpoint_url=url,
        region_name=region,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    )


def save_s3(url: str, folder: Path, region: str = "us-east-1") -> int:
    """Write every bucket and object of the localcloud at ``url`` to ``folder``; objects saved.

    Written to a new folder that then replaces the old one, so a snapshot cut short leaves the
    previous one whole.
    """
    s3 = _s3(url, region)
    target = folder / "s3"
    fresh = folder / "s3.new"
    shutil.rmtree(fresh, ignore_errors=True)
    fresh.mkdir(parents=True)
    saved = 0
    for bucket in s3.list_buckets().get("Buckets", []):
        name = bucket["Name"]
        keys = [
            item["Key"]
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name)
            for item in page.get("Contents", [])
        ]

        def save(key: str, name: str = name) -> tuple[str, dict[str, Any]]:
            got = s3.get_object(Bucket=name, Key=key)
            path = fresh / name / key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(got["Body"].read())
            return key, {"ContentType": got.get("ContentType"), "Metadata": got["Metadata"]}

        with ThreadPoolExecutor(THREADS) as pool:
            meta = dict(pool.map(save, keys))
        saved += len(meta)
        (fresh / name).mkdir(parents=True, exist_ok=True)
        (fresh / f"{name}.meta.json").write_text(json.dumps(meta))
    old = folder / "s3.old"
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(fresh, target)
    shutil.rmtree(old, ignore_errors=True)
    return saved


def load_s3(url: str, folder: Path, region: str = "us-east-1") -> int:
    """Create the buckets and objects saved in ``folder`` in the localcloud at ``url``; objects."""
    source = folder / "s3"
    if not source.is_dir():
        return 0
    s3 = _s3(url, region)
    loaded = 0
    for meta_file in sorted(source.glob("*.meta.json")):
        name = meta_file.name.removesuffix(".meta.json")
        s3.create_bucket(Bucket=name)
        meta = json.loads(meta_file.read_text())

        def put(item: tuple[str, dict[str, Any]], name: str = name) -> None:
            key, info = item
            extra: dict[str, Any] = {"Metadata": info.get("Metadata") or {}}
            if info.get("ContentType"):
                extra["ContentType"] = info["ContentType"]
            s3.put_object(Bucket=name, Key=key, Body=(source / name / key).read_bytes(), **extra)

        with ThreadPoolExecutor(THREADS) as pool:
            list(pool.map(put, meta.items()))
        loaded += len(meta)
    return loaded
