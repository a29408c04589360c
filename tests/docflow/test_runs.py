"""`docflow runs list/show/retry` end to end: poisoned documents fail, retry re-runs exactly those."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from docflow.cli import main
from tasks.aws.clients import aws_client
from tasks.aws.s3 import split_s3_uri
from tasks.run.plan.layout import run_uri
from tasks.run.plan.manifest import BatchStatus, load_manifest
from tasks.settings import load_profile
from tests.runs import Deployment, InvokeCounter, run_flow, unique_run_key, write_corpus

pytestmark = pytest.mark.usefixtures("prefect_harness", "faults")

DOCS = 30
POISON = {3, 17}
ATTEMPTS = 2


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run `docflow ARGV…` in this process; its stdout."""
    capsys.readouterr()
    assert main(list(argv)) == 0
    return capsys.readouterr().out


def test_list_show_and_retry_the_failed_documents(
    deploy_echo: Callable[..., Deployment], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Load: 30 documents in batches of 4, two poisoned (the echo model refuses them), 2 attempts."""
    dep = deploy_echo()
    path = dep.profile_path
    prof = load_profile(path)
    corpus = tmp_path / "c.jsonl"
    ids = write_corpus(corpus, DOCS, poison=POISON)
    key = unique_run_key()
    first = run_flow(dep, corpus, batch_size=4, run_key=key, max_attempts=ATTEMPTS)
    assert (first.result["completed"], first.result["failed"]) == (DOCS - 2, 2)

    listed = cli(capsys, "runs", "list", "--profile", path)
    line = next(x for x in listed.splitlines() if x.startswith(key))
    assert line.split()[1:7] == ["completed_with_failures", "30", "28", "2", "0", "0"]
    shown = json.loads(cli(capsys, "runs", "show", key, "--profile", path, "--json"))
    assert shown["request_counts"] == {
        "total": 30,
        "processing": 0,
        "succeeded": 28,
        "errored": 2,
        "canceled": 0,
        "rejected": 0,
    }
    assert shown["progress_pct"] == 100.0 and shown["retryable"] is True
    assert sum(shown["failures_by_reason"].values()) == 2
    assert all("__POISON__" in r or "poison" in r for r in shown["failures_by_reason"])
    assert shown["results_uri"] == run_uri(prof, key, "results.parquet")
    assert "retry with: docflow runs retry" in cli(capsys, "runs", "show", key, "--profile", path)

    manifest = load_manifest(key, prof)
    assert manifest is not None
    failed = {r.inference_id for r in manifest.batches.values() if r.status is BatchStatus.FAILED}
    assert len(failed) == 2  # each poisoned document alone in its batch after the splits

    # A reason no failure has: nothing is re-run.
    with InvokeCounter(path) as none:
        cli(capsys, "runs", "retry", key, "--profile", path, "--only-reason", "no such reason")
    assert none.total == 0

    # Fix nothing and retry: exactly the failed batches run again, each with a fresh budget.
    with InvokeCounter(path) as counter:
        after = json.loads(cli(capsys, "runs", "retry", key, "--profile", path, "--json"))
    assert set(counter.by_id) == failed
    assert counter.total == len(failed) * ATTEMPTS
    assert after["request_counts"]["succeeded"] == 28 and after["request_counts"]["errored"] == 2

    bucket, obj = split_s3_uri(run_uri(prof, key, "results.parquet"))
    body = aws_client("s3", prof).get_object(Bucket=bucket, Key=obj)["Body"].read()
    table = pd.read_parquet(io.BytesIO(body))
    assert len(table) == DOCS and sorted(table["doc_id"]) == sorted(ids)
    failed_rows = table[table["status"] == "failed"]
    assert sorted(failed_rows["doc_id"]) == sorted(ids[i] for i in POISON)
    # The rows were replaced: their reasons now count the retry's attempts too.
    assert failed_rows["reason"].str.contains(f"after {2 * ATTEMPTS} attempts").all()

    # The results on local disk.
    fetched = json.loads(
        cli(
            capsys, "runs", "fetch", key, "--profile", path, "--to", str(tmp_path / "got"), "--json"
        )
    )
    assert fetched["files"] == ["failures.parquet", "results.parquet", "summary.json"]
    local = pd.read_parquet(tmp_path / "got" / "results.parquet")
    assert (
        local.sort_values("doc_id")
        .reset_index(drop=True)
        .equals(table.sort_values("doc_id").reset_index(drop=True))
    )
    assert json.loads((tmp_path / "got" / "summary.json").read_text())["failed"] == 2


def test_show_names_a_missing_run(
    localcloud: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], profile: Any
) -> None:
    from tests.flows.endpoint_helpers import profile_file

    path = profile_file(profile, tmp_path)
    assert main(["runs", "show", "nosuchrun", "--profile", path]) == 2
    assert "no run 'nosuchrun'" in capsys.readouterr().err
