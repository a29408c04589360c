"""Peak RSS of the flow process stays within a stated budget: 2,000 documents by default, 20,000 in the soak."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.reliability.ledger import ledger_of, read_results
from tests.reliability.test_process_kill import finish, start_flow
from tests.runs import EndpointProbe, RunOutcome, write_corpus

pytestmark = pytest.mark.usefixtures("prefect_harness")

# Budget = a fixed base (Python, Prefect, boto3, pandas, pyarrow imported and a flow running)
# plus a per-document allowance (corpus, manifest, results table in memory). Measured (VmHWM,
# 20-word documents): 242 MB at 100 documents, 270 MB at 2,000, 351 MB at 20,000.
BASE_MB = 300.0
PER_DOC_KB = 8.0


def budget_mb(docs: int) -> float:
    """The stated peak-RSS budget for a run of ``docs`` documents."""
    return BASE_MB + docs * PER_DOC_KB / 1024


def measure(
    deploy_echo: Any, probe: EndpointProbe, localcloud: Any, tmp_path: Path, docs: int
) -> None:
    dep = deploy_echo(cap=16, slots=4, rate=500.0)
    corpus = tmp_path / "c.jsonl"
    ids = write_corpus(corpus, docs, words=20)
    params = {
        "corpus": str(corpus),
        "profile": dep.profile_path,
        "batch_size": 32,
        "max_new_tokens": 16,
    }
    started = time.monotonic()
    proc, result_path = start_flow(params, tmp_path, "rss")
    data = finish(proc, result_path, tmp_path, "rss")
    result = data["result"]
    outcome = RunOutcome(result, read_results(result, dep.profile), time.monotonic() - started)
    peak = float(data["peak_rss_mb"])
    ledger = ledger_of(
        "memory",
        f"{docs} docs / batches of 32",
        outcome,
        ids,
        localcloud=localcloud,
        endpoint=dep.endpoint,
        peak_rss_mb=round(peak, 1),
        budget_mb=round(budget_mb(docs), 1),
    )
    assert ledger.balanced, ledger.line()
    assert ledger.completed == docs
    assert peak <= budget_mb(docs), (
        f"peak RSS {peak:.0f} MB over the {budget_mb(docs):.0f} MB budget"
    )


def test_peak_rss_2000_documents(
    deploy_echo: Any, probe: EndpointProbe, localcloud: Any, tmp_path: Path
) -> None:
    """Load: 2,000 documents of 20 words in batches of 32; budget 300 MB + 8 kB a document (316 MB)."""
    measure(deploy_echo, probe, localcloud, tmp_path, 2000)


@pytest.mark.soak
def test_peak_rss_20000_documents(
    deploy_echo: Any, probe: EndpointProbe, localcloud: Any, tmp_path: Path
) -> None:
    """Load: 20,000 documents of 20 words in batches of 32; budget 300 MB + 8 kB a document (456 MB)."""
    measure(deploy_echo, probe, localcloud, tmp_path, 20000)
