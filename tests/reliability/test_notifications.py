"""Notifications delivered twice and shuffled, dropped, or published before the run's queue listened."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.reliability.ledger import ledger_of
from tests.runs import EndpointProbe, run_flow, write_corpus

pytestmark = pytest.mark.usefixtures("prefect_harness")

BATCH = 8


def test_every_notification_twice_and_shuffled(
    deploy_echo: Any, probe: EndpointProbe, localcloud: Any, tmp_path: Path
) -> None:
    """Load: 480 documents, 60 batches of 8; every notification published twice, half of them 1.5 s late."""
    dep = deploy_echo(cap=8)
    ids = write_corpus(tmp_path / "c.jsonl", 480)
    localcloud.faults.set(
        duplicate_notification_rate=1.0,
        delay_notification_rate=0.5,
        delay_notification_s=1.5,
        seed=7,
    )
    out = run_flow(dep, tmp_path / "c.jsonl", batch_size=BATCH)
    counters = localcloud.faults.counters()
    ledger = ledger_of(
        "notifications x2, shuffled",
        "480 docs / 60 batches, 100% duplicated, 50% delayed 1.5 s",
        out,
        ids,
        localcloud=localcloud,
        endpoint=dep.endpoint,
        duplicated=counters["duplicated_notifications"],
        delayed=counters["delayed_notifications"],
    )
    assert ledger.balanced, ledger.line()
    assert ledger.result_rows == 480 and ledger.completed == 480
    assert counters["duplicated_notifications"] == 60
    assert counters["delayed_notifications"] > 0
    # Each batch ended once: duplicates were recognised, never re-invoked or double-counted.
    assert out.result["batches"] == 60 and out.result["invocations"] == 60
    assert probe.accepted == 60
    assert 1 <= ledger.duplicate_notifications <= 60
    assert out.result["unknown_notifications"] == 0
    assert out.result["notifications_received"] - ledger.duplicate_notifications <= 60


def test_five_percent_of_notifications_dropped(
    deploy_echo: Any, probe: EndpointProbe, localcloud: Any, tmp_path: Path
) -> None:
    """Load: 800 documents, 100 batches of 8; 5 % of notifications never published."""
    dep = deploy_echo(cap=8)
    ids = write_corpus(tmp_path / "c.jsonl", 800)
    localcloud.faults.set(drop_notification_rate=0.05, seed=3)
    out = run_flow(dep, tmp_path / "c.jsonl", batch_size=BATCH, reconcile_every_s=2)
    dropped = localcloud.faults.counters()["dropped_notifications"]
    fanout = out.result["fanout"]
    ledger = ledger_of(
        "5% notifications dropped",
        "800 docs / 100 batches, 5% dropped",
        out,
        ids,
        localcloud=localcloud,
        endpoint=dep.endpoint,
        dropped=dropped,
        reconciled=fanout["reconciled"],
    )
    assert dropped > 0
    assert ledger.balanced, ledger.line()
    assert ledger.completed == 800
    # Every batch whose notification was lost was settled by looking in S3, not re-invoked.
    assert fanout["reconciled"] >= dropped
    assert out.result["invocations"] == 100 and probe.accepted == 100
    assert out.result["notifications_received"] == 100 - dropped


def test_queue_subscribed_only_after_50_invokes(
    deploy_echo: Any,
    probe: EndpointProbe,
    localcloud: Any,
    tmp_path: Path,
) -> None:
    """Load: 480 documents, 60 batches of 8; nothing reaches the run's queue until 50 invokes were accepted."""
    dep = deploy_echo(cap=8)
    ids = write_corpus(tmp_path / "c.jsonl", 480)
    # A late subscription: every notification published before the 50th accepted invoke is lost.
    localcloud.faults.set(drop_notification_rate=1.0)
    probe.when_accepted(50, lambda: localcloud.faults.set(drop_notification_rate=0.0))
    out = run_flow(dep, tmp_path / "c.jsonl", batch_size=BATCH, reconcile_every_s=2)
    dropped = localcloud.faults.counters()["dropped_notifications"]
    fanout = out.result["fanout"]
    ledger = ledger_of(
        "late subscription (after 50 invokes)",
        "480 docs / 60 batches, notifications lost until invoke #50",
        out,
        ids,
        localcloud=localcloud,
        endpoint=dep.endpoint,
        lost=dropped,
        reconciled=fanout["reconciled"],
    )
    assert dropped >= 40, "most of the first 50 results finished before the subscription"
    assert dropped <= 50 and out.result["notifications_received"] >= 10, "the subscription began"
    assert ledger.balanced, ledger.line()
    assert ledger.completed == 480
    assert fanout["reconciled"] >= dropped
    assert out.result["invocations"] == 60 and probe.accepted == 60
