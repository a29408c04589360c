"""Soak (run with --soak): every fault at once on a larger corpus, and single SIGKILLs at 30/60/90 %."""

from __future__ import annotations

import math
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.reliability.ledger import ledger_of, read_results
from tests.reliability.test_process_kill import (
    finish,
    free_slots_of_killed_run,
    kill_at,
    start_flow,
)
from tests.runs import EndpointProbe, RunOutcome, run_flow, unique_run_key, write_corpus

pytestmark = [pytest.mark.soak, pytest.mark.usefixtures("prefect_harness")]


def test_every_fault_at_once(
    deploy_echo: Any, probe: EndpointProbe, localcloud: Any, tmp_path: Path
) -> None:
    """Load: 5,000 documents in 313 batches of 16, 2 instances; 10 % throttled, 5 % of notifications
    dropped, 20 % duplicated, 20 % delayed 2 s, 1 % of requests kill their instance, 0.5 % poison."""
    dep = deploy_echo(cap=8, slots=2, instances=2)
    docs = 5000
    poison = {i for i in range(docs) if i % 200 == 99}
    ids = write_corpus(tmp_path / "c.jsonl", docs, poison=poison)
    localcloud.faults.set(
        throttle_rate=0.1,
        drop_notification_rate=0.05,
        duplicate_notification_rate=0.2,
        delay_notification_rate=0.2,
        delay_notification_s=2.0,
        kill_instance_rate=0.01,
        seed=42,
    )
    out = run_flow(dep, tmp_path / "c.jsonl", batch_size=16, reconcile_every_s=3)
    counters = localcloud.faults.counters()
    ledger = ledger_of(
        "every fault at once",
        f"{docs} docs / {math.ceil(docs / 16)} batches of 16, 6 fault kinds",
        out,
        ids,
        localcloud=localcloud,
        endpoint=dep.endpoint,
        **counters,
    )
    assert ledger.balanced, ledger.line()
    failed = set(out.table.loc[out.table["status"] == "failed", "doc_id"])
    # Only poison documents may fail; a healthy one failing would need three deaths in a row.
    assert failed <= {ids[i] for i in poison}, failed - {ids[i] for i in poison}
    assert {ids[i] for i in poison} <= failed
    assert out.result["invocations"] <= probe.accepted


@pytest.mark.parametrize("fraction", [0.3, 0.6, 0.9])
def test_single_sigkill_then_resume(
    deploy_echo: Any, probe: EndpointProbe, localcloud: Any, tmp_path: Path, fraction: float
) -> None:
    """Load: 2,000 documents in 125 batches of 16, cap 8; one SIGKILL at the given share of invokes."""
    dep = deploy_echo(cap=8, slots=2)
    ids = write_corpus(tmp_path / "c.jsonl", 2000)
    params = {
        "corpus": str(tmp_path / "c.jsonl"),
        "profile": dep.profile_path,
        "run_key": unique_run_key(),
        "batch_size": 16,
        "max_new_tokens": 16,
    }
    started = time.monotonic()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        proc, _ = start_flow(params, tmp_path, "killed")
        procs.append(proc)
        at = kill_at(proc, probe, int(fraction * 125))
        in_flight = probe.outstanding
        free_slots_of_killed_run(dep.endpoint)
        proc, result_path = start_flow(params, tmp_path, "resumed")
        procs.append(proc)
        data = finish(proc, result_path, tmp_path, "resumed")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)
    result = data["result"]
    outcome = RunOutcome(result, read_results(result, dep.profile), time.monotonic() - started)
    extra = probe.accepted - 125
    ledger = ledger_of(
        f"sigkill at {int(fraction * 100)}% + resume",
        "2000 docs / 125 batches of 16, cap 8",
        outcome,
        ids,
        localcloud=localcloud,
        endpoint=dep.endpoint,
        killed_at_accepted=at,
        in_flight=in_flight,
        extra_invocations=extra,
    )
    assert ledger.balanced and ledger.completed == 2000, ledger.line()
    assert 0 <= extra <= dep.cap
