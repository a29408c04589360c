"""1 % poison documents: each isolated by halving and reported within the attempt bound; the run completes."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from tests.reliability.ledger import ledger_of
from tests.runs import EndpointProbe, run_flow, write_corpus

pytestmark = pytest.mark.usefixtures("prefect_harness")

DOCS = 1000
BATCH = 16
MAX_ATTEMPTS = 3


def test_one_percent_poison_documents(
    deploy_echo: Any, probe: EndpointProbe, localcloud: Any, tmp_path: Path
) -> None:
    """Load: 1,000 documents in 63 batches of 16; every 100th (10 documents) makes the model raise."""
    dep = deploy_echo(cap=8, slots=2)
    poison = {i for i in range(DOCS) if i % 100 == 37}
    ids = write_corpus(tmp_path / "c.jsonl", DOCS, poison=poison)
    out = run_flow(dep, tmp_path / "c.jsonl", batch_size=BATCH, max_attempts=MAX_ATTEMPTS)
    batches = math.ceil(DOCS / BATCH)
    extra = out.result["invocations"] - batches
    ledger = ledger_of(
        "1% poison documents",
        f"{DOCS} docs / {batches} batches of {BATCH}, 10 poison, max_attempts {MAX_ATTEMPTS}",
        out,
        ids,
        localcloud=localcloud,
        endpoint=dep.endpoint,
        extra_invocations=extra,
        splits=out.result["fanout"]["splits"],
    )
    assert ledger.balanced, ledger.line()
    # The run completed and says how many failed: exactly the poison documents.
    assert out.result["failed"] == len(poison) and out.result["completed"] == DOCS - len(poison)
    failed = out.table[out.table["status"] == "failed"]
    assert set(failed["doc_id"]) == {ids[i] for i in poison}
    for doc_id, reason in zip(failed["doc_id"], failed["reason"], strict=True):
        assert f"failed after {MAX_ATTEMPTS} attempts" in reason, reason
        assert f"poison document {doc_id!r}" in reason, reason
    # Attempt bound per poisoned batch: both halves at each of log2(16) levels, then the
    # single document's remaining attempts.
    per_batch = 2 * math.ceil(math.log2(BATCH)) + (MAX_ATTEMPTS - 1)
    assert 0 < extra <= len(poison) * per_batch, extra
    assert probe.accepted == out.result["invocations"]
    assert out.result["fanout"]["splits"] == len(poison) * math.ceil(math.log2(BATCH))
