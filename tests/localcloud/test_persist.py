"""localcloud.persist: S3 kept in a folder across restarts of `docflow local up --state-dir`,
each save writing only what changed, a failed save keeping the last one."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3

from docflow.prefect_server import ChildProcess, free_port, spawn, wait_until
from localcloud.accounts import ACCESS_KEY, SECRET_KEY
from localcloud.persist import STOP_TIMEOUT_S, S3Snapshot


@contextmanager
def local_up(state_dir: Path, log: Path) -> Iterator[tuple[str, ChildProcess]]:
    """`docflow local up --state-dir` in its own process (moto's state is per process)."""
    port = free_port()
    before = log.read_text().count("localcloud is up") if log.exists() else 0
    child = spawn(
        "localcloud",
        [sys.executable, "-m", "docflow.cli", "local", "up", "--port", str(port)]
        + ["--state-dir", str(state_dir)],
        env={"PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1"},
        log_path=log,
    )
    try:
        wait_until(
            lambda: log.read_text().count("localcloud is up") > before,
            what="localcloud",
            timeout_s=60,
            child=child,
        )
        yield f"http://127.0.0.1:{port}", child
    finally:
        child.stop(timeout_s=STOP_TIMEOUT_S)  # SIGTERM: the last save, as `docflow ui` stops it


def _client(url: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    )


def test_a_save_writes_what_changed_and_the_next_localcloud_loads_it_all(tmp_path: Path) -> None:
    state, log = tmp_path / "state", tmp_path / "localcloud.log"
    with local_up(state, log) as (url, _):
        s3 = _client(url)
        s3.create_bucket(Bucket="kept")
        s3.create_bucket(Bucket="dropped")
        for i in range(5):
            s3.put_object(
                Bucket="kept",
                Key=f"runs/r/{i}.json",
                Body=f'{{"i": {i}}}'.encode(),
                ContentType="application/json",
                Metadata={"attempt": str(i)},
            )
        snapshot = S3Snapshot(url, state)
        assert snapshot.save() == (5, 5)
        assert snapshot.save() == (5, 0)  # nothing changed: nothing read again
        s3.put_object(Bucket="kept", Key="runs/r/0.json", Body=b'{"i": "changed"}')
        s3.delete_object(Bucket="kept", Key="runs/r/4.json")
        s3.put_object(Bucket="kept", Key="runs/r/new.bin", Body=b"\x00\x01")
        s3.delete_bucket(Bucket="dropped")
        assert snapshot.save() == (5, 2)
    assert f"5 S3 objects saved to {state} (0 written now)" in log.read_text()
    assert not (state / "s3" / "kept" / "runs" / "r" / "4.json").exists()
    assert not (state / "s3" / "dropped.meta.json").exists()
    assert not list((state / "s3").rglob(".*.partial"))

    with local_up(state, log) as (url, _):
        assert "(5 objects loaded)" in log.read_text()
        s3 = _client(url)
        listed = s3.list_objects_v2(Bucket="kept")["Contents"]
        assert sorted(o["Key"] for o in listed) == [
            "runs/r/0.json",
            "runs/r/1.json",
            "runs/r/2.json",
            "runs/r/3.json",
            "runs/r/new.bin",
        ]
        got = s3.get_object(Bucket="kept", Key="runs/r/1.json")
        assert json.loads(got["Body"].read()) == {"i": 1}
        assert (got["ContentType"], got["Metadata"]) == ("application/json", {"attempt": "1"})
        assert (
            s3.get_object(Bucket="kept", Key="runs/r/0.json")["Body"].read() == b'{"i": "changed"}'
        )
        assert S3Snapshot(url, state).save() == (5, 0)  # what was loaded is what is kept


def test_a_save_that_cannot_reach_s3_fails_and_keeps_the_last_one(tmp_path: Path) -> None:
    from localcloud.server import StateKeeper

    state = tmp_path / "state"
    with local_up(state, tmp_path / "localcloud.log") as (url, _):
        _client(url).create_bucket(Bucket="kept")
        _client(url).put_object(Bucket="kept", Key="a", Body=b"a")
    assert "1 S3 objects saved to" in (tmp_path / "localcloud.log").read_text()
    said = StateKeeper(url, state).save()  # that localcloud is gone
    assert said.startswith("S3 not saved (") and "the last save is kept" in said, said
    assert (state / "s3" / "kept" / "a").read_bytes() == b"a"
