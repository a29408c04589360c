"""end_to_end and `docflow demo` on localcloud: package a tiny Mistral, deploy it, process the sample corpus."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from docflow.demo import run_demo
from tasks.settings import Autoscaling, Profile
from tests.flows.endpoint_helpers import profile_file
from tests.tiny_models import make_tiny_model

SAMPLE = Path(__file__).resolve().parents[2] / "datasets" / "sample"
DOCS = 12


def test_demo_runs_the_whole_path(
    prefect_harness: None,
    profile: Profile,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DOCFLOW_CACHE_DIR", str(tmp_path / "cache"))
    tiny = make_tiny_model(tmp_path / "tiny-mistral", "mistral", context=2048)
    # The tiny tokenizer says 256; sample documents run to ~1,400 byte-level tokens.
    tok_config = tiny / "tokenizer_config.json"
    tok_config.write_text(
        json.dumps({**json.loads(tok_config.read_text()), "model_max_length": 2048})
    )
    # A slice of the sample corpus keeps the test quick on two shared cores.
    lines = (SAMPLE / "documents.jsonl").read_text().splitlines()[:DOCS]
    corpus = tmp_path / "sample"
    corpus.mkdir()
    (corpus / "documents.jsonl").write_text("\n".join(lines) + "\n")
    prof = profile.model_copy(
        update={
            "autoscaling": Autoscaling(enabled=False),
            "max_concurrent_invocations_per_instance": 2,
        }
    )
    path = profile_file(prof, tmp_path)
    results = tmp_path / "results"

    assert (
        run_demo(str(corpus), profile=path, model_source=str(tiny), results_dir=str(results)) == 0
    )

    table = pd.read_parquet(results / "results.parquet")
    documents = [json.loads(line) for line in lines]
    assert sorted(table["doc_id"]) == sorted(d["id"] for d in documents)
    assert (table["status"] == "completed").all(), table.loc[table["status"] != "completed"]
    assert (table["prompt_tokens"] > 0).all()
    summary: dict[str, Any] = json.loads((results / "summary.json").read_text())
    assert summary["documents"] == summary["completed"] == len(documents)
    printed = capsys.readouterr().out
    assert "completed" in printed
    assert str(results.resolve()) in printed.replace("\n", "")
