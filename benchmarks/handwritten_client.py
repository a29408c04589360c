"""The best hand-written client: batched JSONL payloads, a cap on in-flight requests, SQS events."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.corpus import chunk, payload_line, read_corpus
from benchmarks.s3uri import count_results, split
from benchmarks.spec import ContenderSpec, Outcome
from tasks.aws.clients import aws_client
from tasks.settings import Profile

_WAIT_S = 20  # SQS long poll
_GIVE_UP_S = 600.0  # no notification for this long: stop and count the rest as failed


class _Subscription:
    """A queue subscribed (raw delivery, filtered on the inference-id prefix) to both topics."""

    def __init__(self, spec: ContenderSpec, profile: Profile, prefix: str) -> None:
        self.sqs = aws_client("sqs", profile, read_timeout_s=_WAIT_S + 10)
        self.sns = aws_client("sns", profile)
        self.url = self.sqs.create_queue(QueueName=f"bench-hw-{spec.run_id}")["QueueUrl"]
        arn = self.sqs.get_queue_attributes(QueueUrl=self.url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        topics = [spec.endpoint.success_topic, spec.endpoint.error_topic]
        policy = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"Service": "sns.amazonaws.com"},
                    "Action": "sqs:SendMessage",
                    "Resource": arn,
                    "Condition": {"ArnEquals": {"aws:SourceArn": topics}},
                }
            ],
        }
        self.sqs.set_queue_attributes(QueueUrl=self.url, Attributes={"Policy": json.dumps(policy)})
        self.subscriptions = [
            self.sns.subscribe(
                TopicArn=topic,
                Protocol="sqs",
                Endpoint=arn,
                Attributes={
                    "RawMessageDelivery": "true",
                    "FilterPolicyScope": "MessageBody",
                    "FilterPolicy": json.dumps({"inferenceId": [{"prefix": prefix}]}),
                },
                ReturnSubscriptionArn=True,
            )["SubscriptionArn"]
            for topic in topics
        ]

    def receive(self) -> list[dict[str, Any]]:
        """Long-poll up to 10 messages and delete them (their effect is recorded by the caller first)."""
        resp = self.sqs.receive_message(
            QueueUrl=self.url, MaxNumberOfMessages=10, WaitTimeSeconds=_WAIT_S
        )
        return list(resp.get("Messages", []))

    def delete(self, messages: list[dict[str, Any]]) -> None:
        """Delete received messages in one call."""
        if messages:
            entries = [
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)
            ]
            self.sqs.delete_message_batch(QueueUrl=self.url, Entries=entries)

    def close(self) -> None:
        """Unsubscribe and delete the queue."""
        for sub in self.subscriptions:
            self.sns.unsubscribe(SubscriptionArn=sub)
        self.sqs.delete_queue(QueueUrl=self.url)


def _raise_first_error(futures: list[Future[None]], stop: threading.Event) -> None:
    """Stop at once when a submission failed, instead of waiting for notifications that never come."""
    for fut in futures:
        if fut.done() and fut.exception() is not None:
            stop.set()
            fut.result()


def prepare(spec: ContenderSpec, profile: Profile) -> None:
    """Nothing to do before the clock starts: reading the corpus is part of the run."""


def run(spec: ContenderSpec, profile: Profile, prepared: None = None) -> Outcome:
    """Stage batches, invoke them all under ``spec.cap``, consume notifications, read outputs."""
    docs = list(read_corpus(Path(spec.corpus)))[: spec.n_docs]
    batches = chunk(docs, spec.batch_size)
    prefix = f"hw{spec.run_id}"[:40]
    s3 = aws_client("s3", profile)
    runtime = aws_client("sagemaker-runtime", profile)
    sub = _Subscription(spec, profile, prefix)
    slots = threading.Semaphore(spec.cap)
    sizes = {f"{prefix}-{i}": len(b) for i, b in enumerate(batches)}
    lock = threading.Lock()
    totals = {"done": 0, "failed": 0, "tokens": 0}
    terminal: set[str] = set()
    stop = threading.Event()  # set when the run gives up, so no submitter waits for a slot forever

    def submit(index: int, batch: list[tuple[str, str]]) -> None:
        key = f"bench/handwritten/{spec.run_id}/input/{index}.jsonl"
        body = "\n".join(payload_line(d, t, spec.parameters) for d, t in batch) + "\n"
        s3.put_object(Bucket=profile.bucket, Key=key, Body=body.encode())
        while not slots.acquire(timeout=0.5):
            if stop.is_set():
                return
        runtime.invoke_endpoint_async(
            EndpointName=spec.endpoint.name,
            InputLocation=f"s3://{profile.bucket}/{key}",
            InferenceId=f"{prefix}-{index}",
            ContentType="application/jsonlines",
        )

    def read(location: str) -> None:
        bucket, key = split(location)
        done, failed, tokens = count_results(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        with lock:
            totals["done"] += done
            totals["failed"] += failed
            totals["tokens"] += tokens

    reads: list[Future[None]] = []
    try:
        with (
            ThreadPoolExecutor(max_workers=2 * spec.cap) as submitters,
            ThreadPoolExecutor(max_workers=spec.cap) as readers,
        ):
            submitted = [submitters.submit(submit, i, b) for i, b in enumerate(batches)]
            last_event = time.monotonic()
            while len(terminal) < len(batches) and time.monotonic() - last_event < _GIVE_UP_S:
                _raise_first_error(submitted, stop)
                messages = sub.receive()
                for msg in messages:
                    event = json.loads(msg["Body"])
                    inference_id = event.get("inferenceId")
                    if event.get("eventName") != "InferenceResult" or inference_id not in sizes:
                        continue
                    if inference_id in terminal:
                        continue  # at-least-once delivery: ignore repeats
                    terminal.add(inference_id)
                    slots.release()
                    if event.get("invocationStatus") == "Completed":
                        reads.append(
                            readers.submit(read, event["responseParameters"]["outputLocation"])
                        )
                    else:
                        with lock:
                            totals["failed"] += sizes[inference_id]
                    last_event = time.monotonic()
                sub.delete(messages)
            stop.set()  # a no-op when every batch was invoked
            for fut in submitted + reads:
                fut.result()
    finally:
        sub.close()
    missing = sum(n for i, n in sizes.items() if i not in terminal)
    return Outcome(
        docs_completed=totals["done"],
        docs_failed=totals["failed"] + missing,
        generated_tokens=totals["tokens"],
        extra={"batches": len(batches)},
    )
