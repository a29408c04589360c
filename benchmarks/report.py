"""Render bench results as rich tables, check them against the targets, save them as JSON."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

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


def _fmt(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


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
    return out


def render(results: dict[str, Any], console: Console | None = None) -> None:
    """Print one table per section and one for the targets."""
    console = console or Console()
    if "overhead" in results:
        console.print(_overhead_table(results["overhead"]))
    if "model" in results:
        console.print(_model_table(results["model"]))
    if "completion" in results:
        console.print(_completion_table(results["completion"]))
    if "scaling" in results:
        console.print(_scaling_table(results["scaling"]))
    if results.get("targets"):
        console.print(_targets_table(results["targets"]))
    for name, error in results.get("errors", {}).items():
        console.print(f"[red]section {name} failed:[/red] {error}")


def _overhead_table(section: dict[str, Any]) -> Table:
    table = Table(
        title=f"1. Orchestration overhead, instant handler (cap {section['cap']}, batch {section['batch_size']})"
    )
    for col in (
        "docs",
        "contender",
        "docs/s",
        "API calls/doc",
        "peak RSS MiB",
        "wall s",
        "completed",
        "vs docflow",
    ):
        table.add_column(col, justify="right" if col not in ("contender",) else "left")
    for n, size in section["sizes"].items():
        ratios = {"naive": size["docflow_vs_naive"], "handwritten": size["docflow_vs_handwritten"]}
        for name, r in size["runs"].items():
            note = ""
            if r.get("extrapolated"):
                note = f" (stopped at {r['extra']['time_budget_s']:.0f} s budget; projected {r['projected_wall_s']:,.0f} s)"
            vs = f"docflow {_fmt(ratios[name], 2)}×" if name in ratios else ""
            table.add_row(
                f"{int(n):,}",
                name + note,
                _fmt(r["docs_per_s"]),
                _fmt(r["api_calls_per_doc"], 3),
                _fmt(r["peak_rss_mb"], 0),
                _fmt(r["wall_s"]),
                f"{r['docs_completed']:,}/{r['docs_in']:,}",
                vs,
            )
    return table


def _model_table(section: dict[str, Any]) -> Table:
    table = Table(
        title=(
            f"2. Model efficiency, {section['model_source']} on CPU ({section['documents']} docs, "
            f"batch {section['batch_size']}, max_new_tokens {section['max_new_tokens']})"
        )
    )
    cols = ("contender", "docs/s", "generated tokens/s", "wall s", "model CPU s", "completed")
    for col in cols:
        table.add_column(col, justify="left" if col == "contender" else "right")
    for name, r in section["runs"].items():
        table.add_row(
            name,
            _fmt(r["docs_per_s"], 2),
            _fmt(r["tokens_per_s"]),
            _fmt(r["wall_s"]),
            _fmt(r.get("instance_cpu_s", r.get("cpu_s"))),
            f"{r['docs_completed']}/{r['docs_in']}",
        )
    table.add_row(
        "end to end / model alone",
        _fmt(section["docs_per_s_ratio"], 3),
        _fmt(section["tokens_per_s_ratio"], 3),
        "",
        _fmt(section.get("model_cpu_s_ratio"), 3),
        "",
    )
    table.caption = "model CPU s: the endpoint instance's CPU seconds for docflow; the process's own for the model alone"
    return table


def _completion_table(section: dict[str, Any]) -> Table:
    table = Table(title="3. Completion detection: output written → docflow records the batch done")
    for col in ("docs", "batches", "p50 s", "p95 s", "max s"):
        table.add_column(col, justify="right")
    for n, s in section["sizes"].items():
        table.add_row(
            f"{int(n):,}",
            str(s["batches"]),
            _fmt(s["p50_s"], 3),
            _fmt(s["p95_s"], 3),
            _fmt(s["max_s"], 3),
        )
    return table


def _scaling_table(section: dict[str, Any]) -> Table:
    table = Table(title="4. Scaling, instant handler (docflow)")
    for col in ("docs", "docs/s", "peak RSS MiB", "RSS before run MiB", "wall s", "completed"):
        table.add_column(col, justify="right")
    for row in section["rows"]:
        table.add_row(
            f"{row['docs']:,}",
            _fmt(row["docs_per_s"]),
            _fmt(row["peak_rss_mb"], 0),
            _fmt(row["rss_before_run_mb"], 0),
            _fmt(row["wall_s"]),
            f"{row['docs_completed']:,}",
        )
    table.caption = f"largest/smallest: peak RSS {_fmt(section['rss_growth'], 2)}×, docs/s {_fmt(section['docs_per_s_change'], 2)}×"
    return table


def _targets_table(targets: list[dict[str, Any]]) -> Table:
    table = Table(title="Targets")
    for col in ("target", "threshold", "measured", "met"):
        table.add_column(col)
    for t in targets:
        sign = "≤" if t["at_most"] else "≥"
        met = {True: "[green]yes[/green]", False: "[red]no[/red]", None: "—"}[t["met"]]
        table.add_row(t["target"], f"{sign} {t['threshold']}", _fmt(t["value"], 3), met)
    return table


def save(results: dict[str, Any], directory: Path = RESULTS_DIR) -> Path:
    """Write ``<mode>-<UTC time>.json``, ``latest-<mode>.json`` and ``latest-<mode>.md``; returns the first."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    mode = results["meta"]["mode"]
    path = directory / f"{mode}-{stamp}.json"
    text = json.dumps(results, indent=2, default=str)
    path.write_text(text)
    (directory / f"latest-{mode}.json").write_text(text)
    (directory / f"latest-{mode}.md").write_text(markdown(results))
    return path


def markdown(results: dict[str, Any]) -> str:
    """The same tables as GitHub markdown, for docs/performance.md."""
    lines: list[str] = []
    meta = results["meta"]
    m = meta["machine"]
    lines.append(
        f"Mode `{meta['mode']}`, commit `{meta.get('commit')}`, {meta['started_at']}; "
        f"{m['cpu']}, {m['logical_cpus']} logical CPUs, {m['memory_gib']} GiB, {m['os']}, "
        f"Python {m['python']}; load average at start {', '.join(f'{x:.1f}' for x in m['load_average_at_start'])}."
    )
    if "overhead" in results:
        o = results["overhead"]
        lines += [
            "",
            f"**1. Orchestration overhead**, instant echo handler, cap {o['cap']} outstanding, batch {o['batch_size']}",
            "",
            "| docs | contender | docs/s | API calls/doc | peak RSS MiB | wall s | completed | docflow ÷ this |",
            "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for n, size in o["sizes"].items():
            ratios = {
                "naive": size["docflow_vs_naive"],
                "handwritten": size["docflow_vs_handwritten"],
            }
            for name, r in size["runs"].items():
                label = name
                if r.get("extrapolated"):
                    label += f" (stopped at {r['extra']['time_budget_s']:.0f} s budget; projected {r['projected_wall_s']:,.0f} s)"
                lines.append(
                    f"| {int(n):,} | {label} | {_fmt(r['docs_per_s'])} | {_fmt(r['api_calls_per_doc'], 3)} | "
                    f"{_fmt(r['peak_rss_mb'], 0)} | {_fmt(r['wall_s'])} | {r['docs_completed']:,} | "
                    f"{_fmt(ratios.get(name), 2) + '×' if name in ratios else ''} |"
                )
    if "model" in results:
        md = results["model"]
        lines += [
            "",
            f"**2. Model efficiency**, {md['model_source']} on CPU, {md['documents']} docs, batch "
            f"{md['batch_size']}, max_new_tokens {md['max_new_tokens']}, {md['torch_threads']} torch threads",
            "",
            "| contender | docs/s | generated tokens/s | wall s | model CPU s | completed |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for name, r in md["runs"].items():
            cpu = r.get("instance_cpu_s", r.get("cpu_s"))
            lines.append(
                f"| {name} | {_fmt(r['docs_per_s'], 3)} | {_fmt(r['tokens_per_s'], 2)} | {_fmt(r['wall_s'])} | {_fmt(cpu)} | {r['docs_completed']} |"
            )
        lines.append(
            f"| end to end ÷ model alone | {_fmt(md['docs_per_s_ratio'], 3)} | {_fmt(md['tokens_per_s_ratio'], 3)} | | {_fmt(md.get('model_cpu_s_ratio'), 3)} | |"
        )
    if "completion" in results:
        lines += [
            "",
            "**3. Completion detection** (notification eventTime → batch recorded completed in the manifest)",
            "",
            "| docs | batches | p50 s | p95 s | max s |",
            "| ---: | ---: | ---: | ---: | ---: |",
        ]
        for n, s in results["completion"]["sizes"].items():
            lines.append(
                f"| {int(n):,} | {s['batches']} | {_fmt(s['p50_s'], 3)} | {_fmt(s['p95_s'], 3)} | {_fmt(s['max_s'], 3)} |"
            )
    if "scaling" in results:
        sc = results["scaling"]
        lines += [
            "",
            "**4. Scaling**, docflow, instant echo handler",
            "",
            "| docs | docs/s | peak RSS MiB | RSS before run MiB | wall s |",
            "| ---: | ---: | ---: | ---: | ---: |",
        ]
        for row in sc["rows"]:
            lines.append(
                f"| {row['docs']:,} | {_fmt(row['docs_per_s'])} | {_fmt(row['peak_rss_mb'], 0)} | "
                f"{_fmt(row['rss_before_run_mb'], 0)} | {_fmt(row['wall_s'])} |"
            )
        lines.append(
            f"\nLargest ÷ smallest: peak RSS {_fmt(sc['rss_growth'], 2)}×, docs/s {_fmt(sc['docs_per_s_change'], 2)}×."
        )
    if results.get("targets"):
        lines += [
            "",
            "**Targets**",
            "",
            "| target | threshold | measured | met |",
            "| --- | --- | ---: | --- |",
        ]
        for t in results["targets"]:
            sign = "≤" if t["at_most"] else "≥"
            met = {True: "yes", False: "**no**", None: "—"}[t["met"]]
            lines.append(
                f"| {t['target']} | {sign} {t['threshold']} | {_fmt(t['value'], 3)} | {met} |"
            )
    for name, error in results.get("errors", {}).items():
        lines.append(f"\nSection `{name}` failed: {error}")
    return "\n".join(lines) + "\n"
