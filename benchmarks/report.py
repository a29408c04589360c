"""Bench results: the machine they ran on, the targets they meet, the files they are saved to."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.config import TARGETS

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def machine_info() -> dict[str, Any]:
    """The machine a bench ran on: CPU model and count, memory, OS, Python, load."""
    import psutil

    cpu = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "load_average_at_start": list(os.getloadavg()),
    }


def git_commit() -> str | None:
    """The commit the bench ran on (None outside a git checkout)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() or None


def check_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target the results can speak to: its threshold, the measured value, met or not."""
    out: list[dict[str, Any]] = []

    def add(name: str, value: float | None, *, at_most: bool = False) -> None:
        threshold = TARGETS[name]
        met = None if value is None else (value <= threshold if at_most else value >= threshold)
        out.append(
            {"target": name, "threshold": threshold, "value": value, "at_most": at_most, "met": met}
        )

    if "overhead" in results:
        first = next(iter(results["overhead"]["sizes"].values()))
        add("docflow_vs_naive_docs_per_s", first["docflow_vs_naive"])
        add("docflow_vs_handwritten_docs_per_s", first["docflow_vs_handwritten"])
    if "model" in results:
        add("end_to_end_vs_model_alone", results["model"]["docs_per_s_ratio"])
    if "completion" in results:
        worst = max(s["p95_s"] for s in results["completion"]["sizes"].values())
        add("completion_p95_s", worst, at_most=True)
    if "scaling" in results:
        add("rss_growth_largest_vs_smallest", results["scaling"]["rss_growth"], at_most=True)
        add("docs_per_s_largest_vs_smallest", results["scaling"]["docs_per_s_change"])
    if "sessions" in results:
        add("sessions_follow_up_speedup", results["sessions"]["follow_up_speedup"])
    if "extraction" in results and results["extraction"].get("ocr"):
        add("ocr_character_error_rate", results["extraction"]["ocr"]["cer"], at_most=True)
    if "scaleout" in results:
        section = results["scaleout"]
        add("scaleout_max_peak_rss_mib", section["max_peak_rss_mib"], at_most=True)
        add(
            "scaleout_shard_rss_largest_vs_smallest",
            section["shard_rss_largest_vs_smallest"],
            at_most=True,
        )
    return out


def save(results: dict[str, Any], directory: Path = RESULTS_DIR) -> Path:
    """Write ``<mode>-<UTC time>.json``, ``latest-<mode>.json`` and ``latest-<mode>.md``; returns the first."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    mode = results["meta"]["mode"]
    path = directory / f"{mode}-{stamp}.json"
    text = json.dumps(results, indent=2, default=str)
    path.write_text(text)
    (directory / f"latest-{mode}.json").write_text(text)
    from benchmarks.markdown import markdown

    (directory / f"latest-{mode}.md").write_text(markdown(results))
    return path
