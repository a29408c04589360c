"""An endpoint instance killed mid-request: the request fails, the flow retries it, nothing is lost."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.reliability.ledger import ledger_of
from tests.runs import EndpointProbe, run_flow, write_corpus

pytestmark = pytest.mark.usefixtures("prefect_harness")

DOCS = 400
BATCH = 8


def test_instance_sigkilled_mid_request(
    deploy_echo: Any, probe: EndpointProbe, localcloud: Any, tmp_path: Path
) -> None:
    """Load: 400 documents, 50 batches of 8 at 50 ms a document; the only instance is SIGKILLed while it runs one."""
    dep = deploy_echo(cap=8, slots=2, environment={"ECHO_SLEEP_S": "0.05"})
    ids = write_corpus(tmp_path / "c.jsonl", DOCS)
    killed: list[int] = []

    def kill_when_busy() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            running = localcloud.stats.snapshot().get(dep.endpoint, {}).get("running", 0)
            if probe.accepted >= 10 and running >= 1:
                for pid in localcloud.instance_pids(dep.endpoint):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_when_busy, daemon=True)
    killer.start()
    out = run_flow(dep, tmp_path / "c.jsonl", batch_size=BATCH)
    killer.join(timeout=5)
    stats = localcloud.stats.snapshot()[dep.endpoint]
    fanout = out.result["fanout"]
    ledger = ledger_of(
        "instance SIGKILL mid-request",
        f"{DOCS} docs / 50 batches of {BATCH}, 1 instance x 2 slots, killed once",
        out,
        ids,
        localcloud=localcloud,
        endpoint=dep.endpoint,
        killed_pids=len(killed),
        endpoint_failures=stats["failed"],
        retries=fanout["retries"],
        splits=fanout["splits"],
    )
    assert killed, "the instance was never seen busy"
    assert stats["failed"] >= 1, "no request was in flight when the instance died"
    assert ledger.balanced, ledger.line()
    assert ledger.completed == DOCS
    # The failed requests were sent again (whole or halved) and completed on the replacement.
    assert out.result["invocations"] > 50
    assert localcloud.instance_pids(dep.endpoint) and not set(killed) & set(
        localcloud.instance_pids(dep.endpoint)
    )


def test_instances_dying_at_random(
    deploy_echo: Any, probe: EndpointProbe, localcloud: Any, tmp_path: Path
) -> None:
    """Load: 400 documents, 50 batches of 8, 2 instances; each request has a 4 % chance of killing its instance."""
    dep = deploy_echo(cap=8, slots=2, instances=2)
    ids = write_corpus(tmp_path / "c.jsonl", DOCS)
    localcloud.faults.set(kill_instance_rate=0.04, seed=2)
    out = run_flow(dep, tmp_path / "c.jsonl", batch_size=BATCH)
    deaths = localcloud.faults.counters()["killed_instances"]
    ledger = ledger_of(
        "instances die at random",
        f"{DOCS} docs / 50 batches of {BATCH}, 2 instances, 4% of requests kill theirs",
        out,
        ids,
        localcloud=localcloud,
        endpoint=dep.endpoint,
        deaths=deaths,
    )
    assert deaths >= 1
    assert ledger.balanced, ledger.line()
    assert ledger.completed == DOCS
    assert out.result["invocations"] == probe.accepted > 50
