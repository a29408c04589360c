"""`docflow runs list/show/fetch/retry` of a sharded run: one run with its totals and shards.

One sharded run (4 shards over the process workers of the session's Prefect server, two poisoned
documents the echo model refuses) serves every check, as it takes a minute to make.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from docflow.cli import main
from docflow.prefect_server import ensure_global_concurrency_limit
from tasks.endpoint.spec import concurrency_limit_name
from tasks.run.plan.manifest import load_manifest
from tasks.run.results.status import read_summary
from tests.pool import PoolStack, run_parent
from tests.runs import Deployment, EndpointProbe, unique_run_key, write_corpus

pytestmark = [pytest.mark.timeout(900), pytest.mark.usefixtures("faults")]

DOCS = 40
SHARDS = 4
POISON = {5, 31}


@pytest.fixture
def stack(prefect_pool: PoolStack) -> PoolStack:
    """The session's Prefect stack (tests/conftest.py SHARED_STACKS): `process-documents/sharded`."""
    return prefect_pool


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """`docflow ARGV…` in this process; its stdout (the exit code must be 0)."""
    capsys.readouterr()
    assert main(list(argv)) == 0
    return capsys.readouterr().out


def test_a_sharded_run_is_one_run_with_its_shards(
    stack: PoolStack,
    deploy_echo: Any,
    probe: EndpointProbe,
    tmp_path: Path,
    local_results: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    dep: Deployment = deploy_echo(cap=8, slots=4)
    ensure_global_concurrency_limit(stack.api_url, concurrency_limit_name(dep.endpoint), dep.cap)
    key = unique_run_key()
    corpus = tmp_path / "c.jsonl"
    ids = write_corpus(corpus, DOCS, poison=POISON, words=3)
    parameters = {
        "corpus": str(corpus),
        "profile": dep.profile_path,
        "endpoint": dep.endpoint,
        "run_key": key,
        "shards": SHARDS,
        "batch_size": 4,
        "max_attempts": 1,
        "max_new_tokens": 4,
    }
    parent = run_parent(stack.api_url, "process-documents/sharded", parameters)
    assert parent.state.is_completed(), parent.state
    shard_keys = [f"{key}.s{i:03d}of{SHARDS:03d}" for i in range(1, SHARDS + 1)]

    # show: the parent's totals, then one line per shard.
    shown = json.loads(cli(capsys, "runs", "show", key, "--profile", dep.profile_path, "--json"))
    assert shown["state"] == "completed_with_failures"
    assert shown["request_counts"] == {
        "total": DOCS,
        "processing": 0,
        "succeeded": DOCS - 2,
        "errored": 2,
        "canceled": 0,
        "rejected": 0,
    }
    assert [s["run_key"] for s in shown["shards"]] == shard_keys
    assert sum(s["request_counts"]["total"] for s in shown["shards"]) == DOCS
    assert shown["results_uri"].endswith(f"/{key}/results.parquet")
    text = cli(capsys, "runs", "show", key, "--profile", dep.profile_path)
    assert text.startswith(f"run {key}: completed_with_failures")
    assert f"shards    {SHARDS}:" in text and all(k in text for k in shard_keys)

    # list: the parent is a row, its shards indented beneath it.
    listed = cli(capsys, "runs", "list", "--profile", dep.profile_path).splitlines()
    row = next(i for i, line in enumerate(listed) if line.startswith(key + " "))
    assert listed[row].split()[1:5] == ["completed_with_failures", str(DOCS), str(DOCS - 2), "2"]
    assert [line.split()[0] for line in listed[row + 1 : row + 1 + SHARDS]] == shard_keys
    assert all(line.startswith("  ") for line in listed[row + 1 : row + 1 + SHARDS])

    # The local profile's copy of the merged table: every document once.
    merged = pd.read_parquet(local_results / key / "results.parquet")
    assert sorted(merged["doc_id"]) == sorted(ids)
    assert (merged["status"] == "failed").sum() == 2
    assert json.loads((local_results / key / "summary.json").read_text())["completed"] == DOCS - 2

    # fetch: the merged results and the parent's summary.
    fetched = tmp_path / "fetched"
    cli(capsys, "runs", "fetch", key, "--profile", dep.profile_path, "--to", str(fetched))
    assert {"results.parquet", "summary.json"} <= {p.name for p in fetched.iterdir()}
    assert len(pd.read_parquet(fetched / "results.parquet")) == DOCS

    # retry: only the shards with failures run again (the echo model refuses the poisoned
    # documents again), and the parent is summed up and merged again.
    before = {k: load_manifest(k, dep.profile) for k in shard_keys}
    failing = {k for k, m in before.items() if m and m.document_counts()["failed"]}
    assert 1 <= len(failing) <= 2
    accepted = probe.accepted
    retried = json.loads(cli(capsys, "runs", "retry", key, "--profile", dep.profile_path, "--json"))
    assert retried["request_counts"]["succeeded"] == DOCS - 2
    assert retried["request_counts"]["errored"] == 2
    assert probe.accepted - accepted == len(POISON)  # each poisoned document's batch, once more
    after = {k: load_manifest(k, dep.profile) for k in shard_keys}
    for k in shard_keys:
        old, new = before[k], after[k]
        assert old is not None and new is not None
        attempts = sum(b.attempts for b in new.batches.values())
        assert attempts - sum(b.attempts for b in old.batches.values()) == (k in failing) * (
            len(POISON) if len(failing) == 1 else 1
        )
    summary = read_summary(dep.profile, key)
    assert summary is not None and summary["completed"] == DOCS - 2 and summary["failed"] == 2
