"""tasks.run.fanout.reconcile: a batch's output or failure object found in S3 when its notification is lost."""

from __future__ import annotations

from tasks.aws.clients import aws_client
from tasks.run.fanout.reconcile import ResultLookup, look_up_results
from tasks.settings import Profile


def test_reconcile_finds_outputs_and_failures(profile: Profile) -> None:
    s3 = aws_client("s3", profile)
    s3.put_object(Bucket=profile.bucket, Key="async-outputs/r/a.a1.out", Body=b'{"id":"1"}\n')
    s3.put_object(
        Bucket=profile.bucket,
        Key="async-failures/r/b.a1-error.out",
        Body=b"ExpiredRequest: the request waited longer than RequestTTLSeconds",
    )
    pending = [
        ResultLookup(
            batch_id=name,
            output_uri=profile.s3_uri(f"async-outputs/r/{name}.a1.out"),
            failure_uri=profile.s3_uri(f"async-failures/r/{name}.a1-error.out"),
        )
        for name in ("a", "b", "c")
    ]
    outcomes = {o.batch_id: o for o in look_up_results(profile, pending)}
    assert set(outcomes) == {"a", "b"}
    assert outcomes["a"].status == "completed" and outcomes["a"].source == "reconcile"
    assert outcomes["a"].event_time is not None
    assert outcomes["b"].status == "failed" and outcomes["b"].expired
    assert "RequestTTLSeconds" in (outcomes["b"].reason or "")
