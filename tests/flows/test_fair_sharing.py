"""Two runs on one endpoint: a run holds only the slots it uses, so a small run never waits for a big one to end."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.runs import Deployment, EndpointProbe, InvokeCounter, run_flow, write_corpus

pytestmark = pytest.mark.usefixtures("prefect_harness", "faults")

BIG_BATCHES = 160


class InvokeOrder(InvokeCounter):
    """InferenceIds in the order the endpoint accepted their InvokeEndpointAsync."""

    def __init__(self, profile_path: str) -> None:
        super().__init__(profile_path)
        self.order: list[str] = []

    def _count(self, http_response: Any, parsed: dict[str, Any], **kwargs: Any) -> None:
        super()._count(http_response, parsed, **kwargs)
        if http_response.status_code < 300:
            with self._lock:
                self.order.append(parsed["InferenceId"])


def test_a_small_run_gets_slots_while_a_big_run_is_in_flight(
    deploy_echo: Callable[..., Deployment], probe: EndpointProbe, tmp_path: Path
) -> None:
    """Load: a 160-batch run holding the whole cap of 4; a one-batch run starts after its 10th invoke."""
    dep = deploy_echo(cap=4, slots=2, environment={"ECHO_SLEEP_S": "0.1"})
    write_corpus(tmp_path / "big.jsonl", BIG_BATCHES)
    write_corpus(tmp_path / "small.jsonl", 2, prefix="small")
    big_started = threading.Event()
    probe.when_accepted(10, big_started.set)
    with InvokeOrder(dep.profile_path) as calls, ThreadPoolExecutor(2) as pool:
        big = pool.submit(run_flow, dep, tmp_path / "big.jsonl", batch_size=1, run_key="fairbig")
        assert big_started.wait(120), "the big run never reached its 10th invocation"
        small = pool.submit(
            run_flow, dep, tmp_path / "small.jsonl", batch_size=2, run_key="fairsmall"
        )
        small_result = small.result(timeout=300).result
        big_result = big.result(timeout=300).result
    assert small_result["completed"] == 2
    assert big_result["completed"] == BIG_BATCHES
    first_small = next(i for i, id_ in enumerate(calls.order) if id_.startswith("fairsmall-"))
    big_after = sum(1 for id_ in calls.order[first_small:] if id_.startswith("fairbig-"))
    # The small run's batch went in while the big run still had much of its work to invoke:
    # with whole leases it waited for the big run's last invocation (big_after == 0).
    assert big_after >= 4 * dep.cap, (
        f"the small run got its first slot with only {big_after} big-run invocations to go"
    )
    # Slots came back one by one (the big run made room, then drained its tail) and the two
    # runs together never had more invocations outstanding than the cap.
    assert big_result["fanout"]["slots_released"] >= 1
    assert big_result["fanout"]["slots_held_max"] <= dep.cap
    assert probe.max_outstanding <= dep.cap
