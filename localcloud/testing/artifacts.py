"""Build the echo model artifact (a real model.tar.gz) and upload it to S3 (or localcloud)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

ECHO_SOURCE = Path(__file__).with_name("echo_inference.py")


def echo_model_files(version: str | None = None, env_fail: bool = False) -> dict[str, bytes]:
    """The artifact's files: ``code/inference.py``, ``code/requirements.txt``, ``echo.json``.

    ``env_fail=True`` writes ``"fail": true`` into echo.json, so ``model_fn`` raises on load.
    """
    weights: dict[str, Any] = {"version": version}
    if env_fail:
        weights["fail"] = True
    return {
        "code/inference.py": ECHO_SOURCE.read_bytes(),
        "code/requirements.txt": b"# the echo model needs only the standard library\n",
        "echo.json": json.dumps(weights).encode(),
    }


def build_echo_artifact(version: str | None = None, env_fail: bool = False) -> bytes:
    """A model.tar.gz (bytes, in memory) holding the echo handler and its weights file."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in echo_model_files(version, env_fail).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def upload_echo_model(
    s3: Any,
    bucket: str,
    key: str = "models/echo/model.tar.gz",
    version: str | None = None,
    env_fail: bool = False,
) -> str:
    """Upload the echo model.tar.gz with the boto3 S3 client ``s3``; returns its URI (a ``ModelDataUrl``)."""
    s3.put_object(Bucket=bucket, Key=key, Body=build_echo_artifact(version, env_fail))
    return f"s3://{bucket}/{key}"


def upload_echo_prefix(
    s3: Any,
    bucket: str,
    prefix: str = "models/echo-uncompressed",
    version: str | None = None,
    env_fail: bool = False,
) -> str:
    """Upload the echo model uncompressed under a prefix; returns ``s3://bucket/prefix/`` (``S3Prefix``)."""
    prefix = prefix.strip("/")
    for name, data in echo_model_files(version, env_fail).items():
        s3.put_object(Bucket=bucket, Key=f"{prefix}/{name}", Body=data)
    return f"s3://{bucket}/{prefix}/"
