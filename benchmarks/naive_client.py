"""The naive client of the AWS async-inference walkthrough: one document per request, poll S3."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from botocore.exceptions import ClientError

from benchmarks.corpus import payload_line, read_corpus
from benchmarks.s3uri import count_results, split
from benchmarks.spec import ContenderSpec, Outcome
from tasks.aws.clients import aws_client
from tasks.settings import Profile

# A document whose output has not appeared after this long is counted as failed.
_GIVE_UP_S = 300.0


def _one(spec: ContenderSpec, profile: Profile, doc_id: str, text: str) -> tuple[int, int]:
    """Put the input, InvokeEndpointAsync, poll get_object every poll_interval_s until it exists."""
    s3 = aws_client("s3", profile)
    runtime = aws_client("sagemaker-runtime", profile)
    key = f"bench/naive/{spec.run_id}/input/{doc_id}.jsonl"
    s3.put_object(
        Bucket=profile.bucket, Key=key, Body=payload_line(doc_id, text, spec.parameters).encode()
    )
    resp = runtime.invoke_endpoint_async(
        EndpointName=spec.endpoint.name,
        InputLocation=f"s3://{profile.bucket}/{key}",
        ContentType="application/jsonlines",
    )
    bucket, out_key = split(resp["OutputLocation"])
    deadline = time.monotonic() + _GIVE_UP_S
    while time.monotonic() < deadline:
        try:
            body = s3.get_object(Bucket=bucket, Key=out_key)["Body"].read()
        except ClientError as exc:
            if exc.response["Error"]["Code"] not in ("NoSuchKey", "404"):
                raise
            time.sleep(spec.poll_interval_s)
            continue
        done, failed, _ = count_results(body)
        return done, failed
    return 0, 1


def prepare(spec: ContenderSpec, profile: Profile) -> None:
    """Nothing to do before the clock starts: reading the corpus is part of the run."""


def run(spec: ContenderSpec, profile: Profile, prepared: None = None) -> Outcome:
    """Process the corpus one document at a time with ``spec.cap`` threads, within the time budget."""
    docs = list(read_corpus(Path(spec.corpus)))[: spec.n_docs]
    lock = threading.Lock()
    cursor = iter(docs)
    totals = [0, 0]
    started = time.monotonic()
    budget = spec.time_budget_s

    def worker() -> None:
        while True:
            if budget is not None and time.monotonic() - started > budget:
                return
            with lock:
                item = next(cursor, None)
            if item is None:
                return
            done, failed = _one(spec, profile, *item)
            with lock:
                totals[0] += done
                totals[1] += failed

    with ThreadPoolExecutor(max_workers=spec.cap) as pool:
        futures = [pool.submit(worker) for _ in range(spec.cap)]
        for fut in futures:
            fut.result()
    attempted = totals[0] + totals[1]
    return Outcome(
        docs_completed=totals[0],
        docs_failed=totals[1],
        extrapolated=attempted < len(docs),
        extra={"docs_attempted": attempted, "time_budget_s": budget},
    )
