"""How numbers read in the benchmark tables (terminal and Markdown): one format, one footnote."""

from __future__ import annotations

from typing import Any


def fmt(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def floor_note(section: dict[str, Any]) -> str:
    """The overhead section's footnote: repeats, and Prefect's own per-run floor next to docflow."""
    if "prefect_floor_s" not in section:
        return ""
    parts = [
        f"median of {section.get('repeat', 1)} interleaved runs of docflow and the hand-written "
        "client (the naive client once)",
        f"Prefect's floor, an empty flow run on the same server: {section['prefect_floor_s']:.2f} s",
    ]
    for n, size in section["sizes"].items():
        value = size.get("docflow_without_prefect_floor_vs_handwritten")
        if value is not None:
            parts.append(f"docflow without that floor ÷ hand-written at {int(n):,}: {value:.2f}×")
    return "; ".join(parts)
