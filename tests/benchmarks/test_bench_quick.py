"""`python -m benchmarks --quick` runs every section and writes sane numbers (no timing thresholds)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]

# Three minutes of benchmark on two cores: behind --bench, as make test keeps benchmarks out.
pytestmark = pytest.mark.bench


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run the quick bench once in its own process and load the JSON it saved."""
    out = tmp_path_factory.mktemp("bench-results")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--results-dir", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, (
        f"quick bench failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    )
    assert "Orchestration overhead" in proc.stdout  # the rich table was printed
    latest = out / "latest-quick.json"
    assert latest.is_file(), f"no latest-quick.json in {sorted(out.iterdir())}"
    return json.loads(latest.read_text())


def _sane_run(run: dict[str, Any]) -> None:
    assert run["docs_per_s"] > 0
    assert run["wall_s"] > 0
    assert run["peak_rss_mb"] > 0
    assert run["api_calls"]["total"] == sum(run["api_calls"]["by_op"].values())


def test_every_section_is_there_without_errors(quick_results: dict[str, Any]) -> None:
    assert quick_results["errors"] == {}
    for section in ("overhead", "model", "completion", "scaling", "targets", "meta"):
        assert section in quick_results
    assert quick_results["meta"]["mode"] == "quick"
    assert quick_results["meta"]["machine"]["logical_cpus"] >= 1


def test_overhead_counts_every_document_and_computes_ratios(quick_results: dict[str, Any]) -> None:
    sizes = quick_results["overhead"]["sizes"]
    assert [int(n) for n in sizes] == list(quick_results["meta"]["config"]["overhead_sizes"])
    for n, size in sizes.items():
        runs = size["runs"]
        assert set(runs) == {"docflow", "handwritten", "naive"}
        for name in ("docflow", "handwritten"):
            assert runs[name]["docs_completed"] == int(n), name
            assert runs[name]["docs_failed"] == 0, name
        naive = runs["naive"]
        attempted = naive["extra"]["docs_attempted"]
        assert naive["docs_completed"] == attempted > 0
        assert naive["extrapolated"] == (attempted < int(n))
        if naive["extrapolated"]:
            assert naive["projected_wall_s"] > naive["wall_s"]
        for run in runs.values():
            _sane_run(run)
        # Every naive document costs at least a put, an invoke and one get.
        assert naive["api_calls_per_doc"] >= 3
        assert runs["handwritten"]["api_calls_per_doc"] < naive["api_calls_per_doc"]
        assert (
            runs["docflow"]["api_calls"]["by_op"].get("sagemaker-runtime.InvokeEndpointAsync", 0)
            > 0
        )
        for key in (
            "docflow_vs_naive",
            "docflow_vs_handwritten",
            "docflow_without_prefect_floor_vs_handwritten",
        ):
            assert size[key] is not None and size[key] > 0
        for name in ("docflow", "handwritten"):
            assert len(runs[name]["repeats_docs_per_s"]) == quick_results["overhead"]["repeat"]
    # An empty flow run on the same Prefect server: a real run, shorter than docflow's smallest.
    floor = quick_results["overhead"]["prefect_floor_s"]
    first = next(iter(sizes.values()))["runs"]["docflow"]
    assert 0 < floor < first["wall_s"]


def test_model_section_compares_end_to_end_with_the_model_alone(
    quick_results: dict[str, Any],
) -> None:
    model = quick_results["model"]
    for name in ("docflow", "model_alone"):
        run = model["runs"][name]
        assert run["docs_completed"] == model["documents"], name
        assert run["generated_tokens"] > 0, name
        assert run["tokens_per_s"] > 0, name
        _sane_run(run)
    assert model["runs"]["model_alone"]["extra"]["torch_threads"] == model["torch_threads"]
    assert model["docs_per_s_ratio"] > 0
    assert model["tokens_per_s_ratio"] > 0
    assert model["runs"]["docflow"]["instance_cpu_s"] > 0  # the endpoint really ran the model
    assert model["model_cpu_s_ratio"] > 0


def test_completion_delays_cover_every_batch(quick_results: dict[str, Any]) -> None:
    batch = quick_results["meta"]["config"]["batch_size"]
    for n, stats in quick_results["completion"]["sizes"].items():
        run = quick_results["overhead"]["sizes"][n]["runs"]["docflow"]
        reconciled = run["extra"]["completed_without_notification"]
        assert stats["batches"] + reconciled == math.ceil(int(n) / batch)
        assert 0 <= stats["p50_s"] <= stats["p95_s"] <= stats["max_s"]


def test_scaling_rows_complete_and_growth_is_computed(quick_results: dict[str, Any]) -> None:
    scaling = quick_results["scaling"]
    sizes = list(quick_results["meta"]["config"]["scaling_sizes"])
    assert [row["docs"] for row in scaling["rows"]] == sizes
    for row in scaling["rows"]:
        assert row["docs_completed"] == row["docs"]
        assert row["docs_per_s"] > 0 and row["peak_rss_mb"] > 0
    assert scaling["rss_growth"] > 0 and scaling["docs_per_s_change"] > 0


def test_targets_are_reported_not_asserted(quick_results: dict[str, Any]) -> None:
    names = {t["target"] for t in quick_results["targets"]}
    assert names == {
        "docflow_vs_naive_docs_per_s",
        "docflow_vs_handwritten_docs_per_s",
        "end_to_end_vs_model_alone",
        "completion_p95_s",
        "rss_growth_largest_vs_smallest",
        "docs_per_s_largest_vs_smallest",
    }
    assert all(
        t["value"] is not None and t["met"] in (True, False) for t in quick_results["targets"]
    )
