"""20 % of InvokeEndpointAsync calls throttled (503): all submitted, validation errors never retried, cap kept."""

from __future__ import annotations

import threading
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tasks.aws.clients import aws_client
from tasks.settings import load_profile
from tests.reliability.ledger import ledger_of
from tests.runs import Deployment, EndpointProbe, run_flow, write_corpus

pytestmark = pytest.mark.usefixtures("prefect_harness")

BATCH = 8


class Sends(Counter[str]):
    """HTTP requests sent, and per InferenceId the status code of each answer in order."""

    def __init__(self) -> None:
        super().__init__()
        self.answers: dict[str, list[int]] = defaultdict(list)


@contextmanager
def count_sends(dep: Deployment) -> Iterator[Sends]:
    """Count HTTP requests (first tries and retries) of the runtime client the flow itself uses."""
    sends = Sends()
    lock = threading.Lock()
    local = threading.local()
    op = "sagemaker-runtime.InvokeEndpointAsync"

    def on_send(request: Any, **_: Any) -> None:
        local.inference_id = request.headers.get("X-Amzn-SageMaker-Inference-Id")
        with lock:
            sends["InvokeEndpointAsync"] += 1

    def on_answer(response_dict: Any, **_: Any) -> None:
        code = response_dict["status_code"] if response_dict else 0
        inference_id = getattr(local, "inference_id", None)
        if isinstance(inference_id, bytes):
            inference_id = inference_id.decode()
        with lock:
            sends.answers[str(inference_id)].append(int(code))

    client = aws_client("sagemaker-runtime", load_profile(dep.profile_path))
    client.meta.events.register(f"before-send.{op}", on_send)
    client.meta.events.register(f"response-received.{op}", on_answer)
    try:
        yield sends
    finally:
        client.meta.events.unregister(f"before-send.{op}", on_send)
        client.meta.events.unregister(f"response-received.{op}", on_answer)


def test_twenty_percent_throttled(
    deploy_echo: Any, probe: EndpointProbe, localcloud: Any, tmp_path: Path
) -> None:
    """Load: 800 documents, 100 batches of 8, cap 8; every invoke has a 20 % chance of a 503."""
    dep = deploy_echo(cap=8, slots=4)
    ids = write_corpus(tmp_path / "c.jsonl", 800)
    localcloud.faults.set(throttle_rate=0.2, seed=11)
    with count_sends(dep) as sends:
        out = run_flow(dep, tmp_path / "c.jsonl", batch_size=BATCH)
    throttled = localcloud.faults.counters()["throttled"]
    ledger = ledger_of(
        "20% invokes throttled",
        "800 docs / 100 batches, cap 8, 20% of calls 503",
        out,
        ids,
        localcloud=localcloud,
        endpoint=dep.endpoint,
        throttled=throttled,
        http_sends=sends["InvokeEndpointAsync"],
        max_outstanding=probe.max_outstanding,
    )
    assert throttled >= 10
    assert ledger.balanced, ledger.line()
    assert ledger.completed == 800
    # Every batch was accepted exactly once; every throttled call was retried until accepted.
    assert probe.accepted == 100 and out.result["invocations"] == 100
    assert sends["InvokeEndpointAsync"] == 100 + throttled
    assert probe.max_outstanding <= dep.cap


def test_request_ttl_below_the_minimum_fails_every_batch_without_a_call(
    deploy_echo: Any, probe: EndpointProbe, localcloud: Any, tmp_path: Path
) -> None:
    """Load: 160 documents, 20 batches of 8; RequestTTLSeconds=30 (AWS's minimum is 60)."""
    dep = deploy_echo(cap=8)
    ids = write_corpus(tmp_path / "c.jsonl", 160)
    with count_sends(dep) as sends:
        out = run_flow(dep, tmp_path / "c.jsonl", batch_size=BATCH, request_ttl_s=30)
    ledger = ledger_of(
        "RequestTTLSeconds=30",
        "160 docs / 20 batches, an invalid parameter",
        out,
        ids,
        localcloud=localcloud,
        endpoint=dep.endpoint,
        http_sends=sends["InvokeEndpointAsync"],
    )
    assert ledger.balanced, ledger.line()
    # botocore rejects the parameter before sending; each batch fails once, with the reason.
    assert ledger.failed == 160 and probe.accepted == 0 and sends["InvokeEndpointAsync"] == 0
    assert out.result["invocations"] == 20
    reasons = set(out.table["reason"])
    assert len(reasons) == 1
    (reason,) = reasons
    assert "RequestTTLSeconds" in reason and "60" in reason, reason


def test_validation_errors_are_never_retried(
    deploy_echo: Any, probe: EndpointProbe, localcloud: Any, tmp_path: Path
) -> None:
    """Load: 320 documents, 40 batches of 8, 20 % of calls 503; the endpoint is deleted after 10 invokes."""
    dep = deploy_echo(cap=8, environment={"ECHO_SLEEP_S": "0.02"})
    ids = write_corpus(tmp_path / "c.jsonl", 320)
    localcloud.faults.set(throttle_rate=0.2, seed=5)
    ten = threading.Event()
    probe.when_accepted(10, ten.set)

    def delete_endpoint() -> None:
        if ten.wait(120):
            aws_client("sagemaker", dep.profile).delete_endpoint(EndpointName=dep.endpoint)

    deleter = threading.Thread(target=delete_endpoint, daemon=True)
    deleter.start()
    with count_sends(dep) as sends:
        out = run_flow(dep, tmp_path / "c.jsonl", batch_size=BATCH)
    deleter.join(timeout=10)
    throttled = localcloud.faults.counters()["throttled"]
    answers = sends.answers
    rejected_400 = [i for i, codes in answers.items() if 400 in codes]
    ledger = ledger_of(
        "endpoint deleted mid-run under throttling",
        "320 docs / 40 batches, 20% of calls 503, endpoint deleted after 10 invokes",
        out,
        ids,
        localcloud=localcloud,
        endpoint=dep.endpoint,
        throttled=throttled,
        http_sends=sends["InvokeEndpointAsync"],
        answered_400=len(rejected_400),
    )
    assert ledger.balanced, ledger.line()
    assert ledger.failed > 0 and rejected_400
    # Every request that got a 400 was never sent again; every 503 was.
    for inference_id in rejected_400:
        codes = answers[inference_id]
        assert codes.count(400) == 1 and codes[-1] == 400, (inference_id, codes)
    assert sends["InvokeEndpointAsync"] == probe.accepted + throttled + len(rejected_400)
    for reason in out.table.loc[out.table["status"] == "failed", "reason"]:
        assert "ValidationError" in reason or "endpoint was deleted" in reason, reason
