"""Subprocess entry point: run one contender, measure it, write the result JSON.

``python -m benchmarks.contender SPEC.json RESULT.json``. Each contender runs in its own
process so its peak RSS and API-call count are its own.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks.metrics import ApiCallCounter, current_rss_mb, peak_rss_mb

CONTENDERS = {
    "naive": "benchmarks.naive_client",
    "handwritten": "benchmarks.handwritten_client",
    "docflow": "benchmarks.docflow_client",
    "model_alone": "benchmarks.model_alone",
    "prefect_floor": "benchmarks.prefect_floor",
}


def measure(spec_path: Path) -> dict[str, Any]:
    """Import the contender, run it once, and return its outcome with wall time, calls and RSS."""
    counter = ApiCallCounter().install()  # before any botocore session exists
    from benchmarks.spec import ContenderSpec
    from tasks.settings import load_profile

    spec = ContenderSpec.load(spec_path)
    if spec.contender not in CONTENDERS:
        raise SystemExit(
            f"unknown contender {spec.contender!r}; choose one of {sorted(CONTENDERS)}"
        )
    module = importlib.import_module(CONTENDERS[spec.contender])
    profile = load_profile()
    prepared = module.prepare(spec, profile)  # not timed: model loading, imports of the flow
    rss_before = current_rss_mb()
    profile_to = os.environ.get("BENCH_PROFILE")
    profiler = _start_profiler() if profile_to else None
    cpu_before = os.times()
    started = time.perf_counter()
    outcome = module.run(spec, profile, prepared)
    wall = time.perf_counter() - started
    cpu_after = os.times()
    if profiler is not None and profile_to:
        profiler.stop()
        Path(profile_to).write_text(profiler.output_text(unicode=True, show_all=False))
        # The whole session too (every thread's frames): ``pyinstrument --load FILE`` renders it again.
        profiler.last_session.save(str(Path(profile_to).with_suffix(".pyisession")))
    calls = counter.snapshot()
    result: dict[str, Any] = {
        "contender": spec.contender,
        "docs_in": spec.n_docs,
        **asdict(outcome),
        "wall_s": wall,
        "cpu_s": (cpu_after.user - cpu_before.user) + (cpu_after.system - cpu_before.system),
        "api_calls": calls,
        "rss_before_run_mb": rss_before,
        "peak_rss_mb": peak_rss_mb(),
    }
    return result


def _start_profiler() -> Any:
    """A pyinstrument profiler of the main thread (``pip install pyinstrument`` to use --profile)."""
    try:
        from pyinstrument import Profiler
    except ImportError as exc:
        raise SystemExit(
            "--profile needs pyinstrument: .venv/bin/pip install pyinstrument"
        ) from exc
    profiler = Profiler(interval=0.005)
    profiler.start()
    return profiler


def main(argv: list[str]) -> int:
    """Run the spec in argv[0] and write the measurement to argv[1]."""
    if len(argv) != 2:
        print("usage: python -m benchmarks.contender SPEC.json RESULT.json", file=sys.stderr)
        return 2
    result = measure(Path(argv[0]))
    Path(argv[1]).write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
