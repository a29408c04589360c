"""scale_to_zero: the endpoint goes to 0 instances after a run, but never while another run holds slots."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tasks.aws.clients import aws_client
from tasks.settings import load_profile
from tests.runs import Deployment, EndpointProbe, run_flow, write_corpus

pytestmark = pytest.mark.usefixtures("prefect_harness", "faults")


def desired_instances(dep: Deployment) -> int:
    described = aws_client("sagemaker", load_profile(dep.profile_path)).describe_endpoint(
        EndpointName=dep.endpoint
    )
    return int(described["ProductionVariants"][0]["DesiredInstanceCount"])


def test_scaled_to_zero_by_the_last_run_only(
    deploy_echo: Callable[..., Deployment], probe: EndpointProbe, tmp_path: Path
) -> None:
    """Load: a 120-batch run and a one-batch run beside it, both with scale_to_zero=True."""
    dep = deploy_echo(cap=4, slots=2, environment={"ECHO_SLEEP_S": "0.1"})
    assert desired_instances(dep) == 1
    write_corpus(tmp_path / "big.jsonl", 120)
    write_corpus(tmp_path / "small.jsonl", 2, prefix="small")
    big_started = threading.Event()
    probe.when_accepted(10, big_started.set)
    with ThreadPoolExecutor(1) as pool:
        big = pool.submit(
            run_flow, dep, tmp_path / "big.jsonl", batch_size=1, run_key="zbig", scale_to_zero=True
        )
        assert big_started.wait(120), "the big run never reached its 10th invocation"
        small = run_flow(
            dep, tmp_path / "small.jsonl", batch_size=2, run_key="zsmall", scale_to_zero=True
        )
        assert not big.done(), "the big run ended before the small one; raise its load"
        # The small run ended while the big one held slots: the endpoint was left alone.
        assert small.result["endpoint_after_run"].startswith("kept: other runs hold")
        assert desired_instances(dep) == 1
        big_result = big.result(timeout=300).result
    assert big_result["completed"] == 120 and small.result["completed"] == 2
    assert big_result["endpoint_after_run"] == "scaled to zero instances"
    assert desired_instances(dep) == 0
