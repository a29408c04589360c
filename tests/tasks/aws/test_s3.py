"""tasks.aws.s3: URI parsing and progress (unit), HEAD and skip-if-present uploads over HTTP to localcloud."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from pathlib import Path

import pytest
from boto3.s3.transfer import TransferConfig

from tasks.aws.clients import aws_client
from tasks.aws.s3 import (
    BucketNotFoundError,
    MiB,
    S3Uri,
    S3UriError,
    TransferProgress,
    head_object,
    object_exists,
    parse_s3_uri,
    put_bytes_unless_same,
    put_file_if_absent,
    put_object_if_absent,
    require_bucket,
    s3_uri,
    sha256_file,
    stored_sha256,
)
from tasks.settings import Profile


def test_parse_s3_uri_splits_bucket_and_key() -> None:
    assert parse_s3_uri("s3://my-bucket/a/b/c.json") == S3Uri("my-bucket", "a/b/c.json")
    assert parse_s3_uri("s3://my-bucket") == S3Uri("my-bucket", "")
    assert parse_s3_uri("s3://my-bucket/prefix/") == S3Uri("my-bucket", "prefix/")


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("/tmp/file", "is not an S3 URI"),
        ("https://bucket/key", "is not an S3 URI"),
        ("s3://", "has no bucket"),
        ("s3:///key", "has no bucket"),
        ("s3://Upper/key", "not a valid S3 bucket name"),
        ("s3://ab/key", "not a valid S3 bucket name"),
    ],
)
def test_parse_s3_uri_rejects_bad_input_with_a_clear_message(uri: str, message: str) -> None:
    with pytest.raises(S3UriError, match=message):
        parse_s3_uri(uri)


def test_uri_join_and_format_round_trip() -> None:
    base = S3Uri("bkt", "")
    assert str(base.join("models", "/tiny/", "abc")) == "s3://bkt/models/tiny/abc"
    assert str(S3Uri("bkt", "models/").join("x.json")) == "s3://bkt/models/x.json"
    assert s3_uri("bkt", "/a/b") == "s3://bkt/a/b"
    assert parse_s3_uri(str(base.join("k"))) == S3Uri("bkt", "k")


def test_sha256_file_matches_hashlib(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 + 7)
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert sha256_file(path, chunk_size=1000) == hashlib.sha256(data).hexdigest()


def test_progress_logs_lines_when_not_a_terminal(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test-progress")
    with (
        caplog.at_level(logging.INFO, logger="test-progress"),
        TransferProgress(
            1000, "upload x", logger, interactive=False, log_every_fraction=0.25
        ) as bar,
    ):

        def advance() -> None:
            for _ in range(25):
                bar(10)

        threads = [threading.Thread(target=advance) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert bar.transferred == 1000
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4  # 25 %, 50 %, 75 %, 100 %: one line per step, not one per callback
    assert lines[-1] == "upload x: 1000 of 1000 bytes (100%)"


def test_progress_draws_a_rich_bar_on_a_terminal(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test-progress-tty")
    with caplog.at_level(logging.INFO, logger="test-progress-tty"):
        with TransferProgress(300, "upload y", logger, interactive=True) as bar:
            for _ in range(3):
                bar(100)
            assert bar._progress is not None
            assert bar._progress.tasks[0].completed == 300
        assert bar._progress is None  # stopped on exit
    assert caplog.records == []  # the bar replaces log lines


def test_head_object_is_none_for_a_missing_key(profile: Profile) -> None:
    s3 = aws_client("s3", profile)
    assert head_object(s3, profile.bucket, "nope/missing.bin") is None
    assert not object_exists(s3, profile.bucket, "nope/missing.bin")


def test_require_bucket_names_the_bucket_and_the_fix(profile: Profile) -> None:
    s3 = aws_client("s3", profile)
    require_bucket(s3, profile.bucket)
    with pytest.raises(
        BucketNotFoundError, match="'no-such-bucket-xyz' does not exist; set bucket"
    ):
        require_bucket(s3, "no-such-bucket-xyz", "set bucket in the profile")


def test_put_file_if_absent_uploads_once_then_skips(profile: Profile, tmp_path: Path) -> None:
    s3 = aws_client("s3", profile)
    path = tmp_path / "a.bin"
    path.write_bytes(b"hello docflow" * 100)
    first = put_file_if_absent(s3, path, profile.bucket, "blobs/a.bin")
    assert (first.bytes_uploaded, first.skipped) == (1300, False)
    assert first.uri == f"s3://{profile.bucket}/blobs/a.bin"
    head = head_object(s3, profile.bucket, "blobs/a.bin")
    assert stored_sha256(head) == hashlib.sha256(path.read_bytes()).hexdigest()
    second = put_file_if_absent(s3, path, profile.bucket, "blobs/a.bin")
    assert (second.bytes_uploaded, second.skipped) == (0, True)

    path.write_bytes(b"changed")
    third = put_file_if_absent(s3, path, profile.bucket, "blobs/a.bin")
    assert (third.bytes_uploaded, third.skipped) == (7, False)
    body = s3.get_object(Bucket=profile.bucket, Key="blobs/a.bin")["Body"].read()
    assert body == b"changed"


def test_an_object_without_sha256_metadata_is_replaced(profile: Profile, tmp_path: Path) -> None:
    s3 = aws_client("s3", profile)
    s3.put_object(Bucket=profile.bucket, Key="blobs/foreign", Body=b"someone else's")
    path = tmp_path / "mine"
    path.write_bytes(b"mine")
    result = put_file_if_absent(s3, path, profile.bucket, "blobs/foreign")
    assert result.bytes_uploaded == 4
    assert s3.get_object(Bucket=profile.bucket, Key="blobs/foreign")["Body"].read() == b"mine"


def test_large_upload_is_multipart_and_concurrent(profile: Profile, tmp_path: Path) -> None:
    s3 = aws_client("s3", profile)
    data = os.urandom(11 * MiB)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    config = TransferConfig(
        multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB, max_concurrency=3
    )
    result = put_file_if_absent(s3, path, profile.bucket, "big/big.bin", transfer_config=config)
    assert result.bytes_uploaded == len(data)
    head = head_object(s3, profile.bucket, "big/big.bin")
    assert head is not None
    assert head["ContentLength"] == len(data)
    assert head["ETag"].strip('"').endswith("-3")  # three parts: 5 + 5 + 1 MiB
    assert stored_sha256(head) == hashlib.sha256(data).hexdigest()
    again = put_file_if_absent(s3, path, profile.bucket, "big/big.bin", transfer_config=config)
    assert again.bytes_uploaded == 0


def test_put_bytes_skips_an_object_with_the_same_content(profile: Profile) -> None:
    s3 = aws_client("s3", profile)
    body = b'{"id": "doc-1", "prompt": "hi"}\n'
    first = put_bytes_unless_same(s3, body, profile.bucket, "runs/r1/inputs/a.jsonl")
    digest = hashlib.sha256(body).hexdigest()
    assert first.uri == f"s3://{profile.bucket}/runs/r1/inputs/a.jsonl" and first.sha256 == digest
    assert first.bytes_uploaded == len(body)
    again = put_bytes_unless_same(s3, body, profile.bucket, "runs/r1/inputs/a.jsonl")
    assert (again.uri, again.bytes_uploaded, again.skipped) == (first.uri, 0, True)
    changed = put_bytes_unless_same(s3, body + b"\n", profile.bucket, "runs/r1/inputs/a.jsonl")
    assert changed.bytes_uploaded == len(body) + 1 and not changed.skipped


def test_put_object_if_absent_never_overwrites(profile: Profile) -> None:
    s3 = aws_client("s3", profile)
    assert put_object_if_absent(s3, profile.bucket, "runs/r1/x.jsonl", b"one\n") is True
    assert put_object_if_absent(s3, profile.bucket, "runs/r1/x.jsonl", b"two\n") is False
    body = s3.get_object(Bucket=profile.bucket, Key="runs/r1/x.jsonl")["Body"].read()
    assert body == b"one\n"
