"""The bench results as GitHub markdown, for docs/performance.md and results/latest-<mode>.md."""

from __future__ import annotations

from typing import Any

from benchmarks.formatting import floor_note
from benchmarks.formatting import fmt as _fmt


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
        if note := floor_note(o):
            lines += ["", note[0].upper() + note[1:] + "."]
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
