"""Local runs also land on disk: <local_results_dir>/<run key>/ with results, failures, summary."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from tasks.settings import load_profile
from tests.runs import Deployment, run_flow, write_corpus

pytestmark = pytest.mark.usefixtures("prefect_harness", "faults")


def test_a_local_run_lands_in_results_run_key(
    deploy_echo: Callable[..., Deployment], tmp_path: Path, local_results: Path
) -> None:
    dep = deploy_echo()
    assert load_profile("local").local_results_dir == str(local_results)  # the session's folder
    write_corpus(tmp_path / "c.jsonl", 6, poison={2})
    outcome = run_flow(dep, tmp_path / "c.jsonl", batch_size=3, run_key="ondisk1")
    folder = local_results / "ondisk1"
    assert sorted(p.name for p in folder.iterdir()) == [
        "failures.parquet",
        "results.parquet",
        "summary.json",
    ]
    # The same table as in S3, one row per input row.
    pd.testing.assert_frame_equal(pd.read_parquet(folder / "results.parquet"), outcome.table)
    assert len(pd.read_parquet(folder / "failures.parquet")) == outcome.result["failed"] >= 1
    saved = json.loads((folder / "summary.json").read_text())
    assert saved["local_results_path"] == str(folder / "results.parquet")
    assert saved["completed"] + saved["failed"] == 6


def test_the_aws_profile_keeps_results_in_s3_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DOCFLOW_LOCAL_RESULTS_DIR")
    assert load_profile("aws").local_results_dir is None
    assert load_profile("local").local_results_dir == "results"
