"""Background staging (tasks.run.fanout.staging) and the output spool (tasks.run.fanout.spool) on localcloud S3."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from botocore.exceptions import ClientError

import tasks.run.fanout.staging
from tasks.aws.clients import aws_client
from tasks.run.fanout.spool import OutputSpool
from tasks.run.fanout.staging import PayloadStager, StagingError
from tasks.run.plan.batching import BatchPayload
from tasks.run.plan.layout import input_key
from tasks.settings import Profile


def payloads(n: int) -> list[BatchPayload]:
    return [
        BatchPayload(batch_id=f"b{i:03d}", doc_ids=[f"d{i}"], body=b'{"id":"d%d"}\n' % i)
        for i in range(n)
    ]


def body_at(profile: Profile, key: str) -> bytes:
    return bytes(
        aws_client("s3", profile).get_object(Bucket=profile.bucket, Key=key)["Body"].read()
    )


def test_stager_puts_every_payload_and_keeps_existing_objects(profile: Profile) -> None:
    batch = payloads(20)
    existing = input_key(profile, "stg1", batch[3].batch_id)
    aws_client("s3", profile).put_object(Bucket=profile.bucket, Key=existing, Body=b"first\n")
    stager = PayloadStager(profile, "stg1", batch, workers=4)
    assert not stager.is_staged("b000") and stager.is_staged("not-mine")
    assert stager.run() == 19  # one key was already there: its object is kept, not replaced
    assert stager.finished and all(stager.is_staged(p.batch_id) for p in batch)
    assert body_at(profile, existing) == b"first\n"
    assert body_at(profile, input_key(profile, "stg1", "b007")) == batch[7].body


def test_stager_stages_in_order_and_reports_each_payload_as_it_lands(
    profile: Profile, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    real_put = tasks.run.fanout.staging.put_staged

    def slow_after_first_two(prof: Profile, item: Any) -> int:
        if not item.key.endswith(("b000.jsonl", "b001.jsonl")):
            release.wait(10)
        return real_put(prof, item)

    monkeypatch.setattr(tasks.run.fanout.staging, "put_staged", slow_after_first_two)
    stager = PayloadStager(profile, "stg2", payloads(6), workers=2)
    thread = threading.Thread(target=stager.run)
    thread.start()
    try:
        for _ in range(200):
            if stager.is_staged("b000") and stager.is_staged("b001"):
                break
            threading.Event().wait(0.02)
        assert stager.is_staged("b000") and stager.is_staged("b001")
        assert not stager.finished and not stager.is_staged("b005")
    finally:
        release.set()
        thread.join(10)
    assert stager.finished


def test_a_denied_put_stops_staging_with_the_reason(
    profile: Profile, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_put = tasks.run.fanout.staging.put_staged

    def deny_b002(prof: Profile, item: Any) -> int:
        if item.key.endswith("b002.jsonl"):
            error = {"Error": {"Code": "AccessDenied", "Message": "no s3:PutObject"}}
            raise ClientError(error, "PutObject")  # type: ignore[arg-type]
        return real_put(prof, item)

    monkeypatch.setattr(tasks.run.fanout.staging, "put_staged", deny_b002)
    stager = PayloadStager(profile, "stg3", payloads(40), workers=1)
    with pytest.raises(StagingError, match=r"b002 .*AccessDenied: no s3:PutObject.*same run_key"):
        stager.run()
    assert stager.is_staged("b001") and not stager.is_staged("b002")
    assert not stager.is_staged("b039")  # workers stop at the first failure: nothing is skipped
    with pytest.raises(StagingError):
        stager.check()


def test_spool_serves_fetched_outputs_and_none_for_the_rest(profile: Profile) -> None:
    s3 = aws_client("s3", profile)
    s3.put_object(Bucket=profile.bucket, Key="outputs/spool/a.out", Body=b'{"id":"a"}\n')
    here = f"s3://{profile.bucket}/outputs/spool/a.out"
    gone = f"s3://{profile.bucket}/outputs/spool/missing.out"
    with OutputSpool(profile) as spool:
        spool.fetch(here)
        spool.fetch(gone)
        assert spool.read(here) == b'{"id":"a"}\n'
        assert spool.read(gone) is None  # the aggregation goes to S3 and reports the error
        assert spool.read(f"s3://{profile.bucket}/never-fetched") is None
        # Downloaded: read where it is needed; failed or never fetched: not ready (S3 is asked).
        assert spool.ready(here)
        assert not spool.ready(gone) and not spool.ready(f"s3://{profile.bucket}/never-fetched")
        s3.delete_object(Bucket=profile.bucket, Key="outputs/spool/a.out")
        assert spool.read(here) == b'{"id":"a"}\n'  # served from disk, not S3
        folder = spool.path_for(here).parent
    assert not folder.exists()  # removed with the spool
