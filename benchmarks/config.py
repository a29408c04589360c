"""Sizes and limits of a bench run: the full one (`make bench`) and the quick one (`--quick`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from benchmarks.scaleout import ScaleoutConfig
from tasks.params.groups import DEFAULT_BATCH_SIZE


@dataclass(frozen=True)
class BenchConfig:
    """Everything that differs between the full and the quick bench."""

    name: str
    overhead_sizes: tuple[int, ...]
    scaling_sizes: tuple[int, ...]
    naive_budget_s: float
    model_docs: int
    model_new_tokens: int
    model_batch_size: int
    batch_size: int = DEFAULT_BATCH_SIZE  # docflow's default documents per payload
    cap: int = 8  # the local profile's max_outstanding_invocations
    contender_timeout_s: float = 3600.0
    model_source: str = "smollm2"
    # One torch thread for the endpoint and the model alone alike: on a shared 2-core machine,
    # 2 OpenMP threads under load ran SmolLM2 ~13x slower than 1 (spin-waiting on busy cores).
    model_threads: int = 1
    # Runs of docflow and the hand-written client per size, interleaved; the median is reported
    # (the naive client runs once: it is tens of times slower and stopped by its budget anyway).
    repeat: int = 3
    scaleout: ScaleoutConfig = field(default_factory=ScaleoutConfig)
    # The extraction section: files per format, and rendered pages for the OCR error rate.
    extraction_files: int = 20
    ocr_pages: int = 3
    sections: tuple[str, ...] = field(default=("overhead", "model", "completion", "scaling"))


FULL = BenchConfig(
    name="full",
    overhead_sizes=(2_000, 20_000),
    scaling_sizes=(2_000, 20_000, 100_000),
    naive_budget_s=300.0,
    model_docs=32,
    model_new_tokens=32,
    model_batch_size=8,
)

QUICK = BenchConfig(
    name="quick",
    overhead_sizes=(200, 1_000),
    scaling_sizes=(200, 1_000, 3_000),
    naive_budget_s=15.0,
    model_docs=4,
    model_new_tokens=8,
    model_batch_size=4,
    contender_timeout_s=600.0,
    repeat=1,
    extraction_files=5,
    ocr_pages=1,
)

TARGETS = {
    "docflow_vs_naive_docs_per_s": 10.0,
    "docflow_vs_handwritten_docs_per_s": 0.8,
    "end_to_end_vs_model_alone": 0.85,
    "completion_p95_s": 1.0,
    "rss_growth_largest_vs_smallest": 2.0,
    "docs_per_s_largest_vs_smallest": 0.8,
    "sessions_follow_up_speedup": 3.0,
    "scaleout_max_peak_rss_mib": 600.0,
    "scaleout_shard_rss_largest_vs_smallest": 1.25,
    "ocr_character_error_rate": 0.05,
}
