"""The bench results as rich tables, one per section and one for the targets."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks.constrained import constrained_table, labels_table
from benchmarks.extraction import extraction_table
from benchmarks.formatting import floor_note
from benchmarks.formatting import fmt as _fmt
from benchmarks.scaleout import scaleout_table
from benchmarks.serving import serving_table
from benchmarks.sessions import sessions_table


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
    if "serving" in results:
        console.print(serving_table(results["serving"]))
    if "sessions" in results:
        console.print(sessions_table(results["sessions"]))
    if "constrained" in results:
        console.print(constrained_table(results["constrained"]))
        if "classify" in results["constrained"]:
            console.print(labels_table(results["constrained"]))
    if "scaleout" in results:
        console.print(scaleout_table(results["scaleout"]))
    if "extraction" in results:
        console.print(extraction_table(results["extraction"]))
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
    table.caption = floor_note(section)
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
