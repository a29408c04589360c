"""Short RequestTTLSeconds with a slow instance: every expired request is re-invoked or reported."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.reliability.ledger import ledger_of
from tests.runs import EndpointProbe, run_flow, write_corpus

pytestmark = pytest.mark.usefixtures("prefect_harness")

DOCS = 200
BATCH = 4


def test_expired_requests_are_reinvoked_or_reported(
    deploy_echo: Any, probe: EndpointProbe, localcloud: Any, tmp_path: Path
) -> None:
    """Load: 200 documents, 50 batches of 4 at 50 ms a document on one slot, cap 8; TTL 60 s scaled to 0.6 s."""
    dep = deploy_echo(cap=8, slots=1, environment={"ECHO_SLEEP_S": "0.05"})
    ids = write_corpus(tmp_path / "c.jsonl", DOCS)
    localcloud.faults.set(ttl_scale=0.01)
    out = run_flow(dep, tmp_path / "c.jsonl", batch_size=BATCH, request_ttl_s=60, max_attempts=3)
    fanout = out.result["fanout"]
    ledger = ledger_of(
        "short TTL, slow instance",
        f"{DOCS} docs / 50 batches of {BATCH}, 0.2 s per request on 1 slot, TTL 0.6 s",
        out,
        ids,
        localcloud=localcloud,
        endpoint=dep.endpoint,
        expired_in_queue=probe.not_run,
        reinvoked_expired=fanout["expired"],
        splits=fanout["splits"],
    )
    assert probe.not_run > 0, "no request expired; shorten the TTL"
    assert ledger.balanced, ledger.line()
    # None silently lost: each document completed, or failed with a reason that says it expired.
    failed = out.table[out.table["status"] == "failed"]
    for reason in failed["reason"]:
        assert "RequestTTLSeconds" in reason, reason
    # Expiry is the queue's fault, not the documents': re-invoke the same batch, never halve it.
    assert fanout["expired"] >= 1
    assert fanout["splits"] == 0
    assert out.result["invocations"] == probe.accepted
