"""Tables as Markdown, so extraction prompts can read rows and columns."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any


def cell_text(value: Any) -> str:
    """A cell as one line of Markdown (pipes escaped, line breaks as spaces)."""
    if value is None:
        return ""
    return " ".join(str(value).split()).replace("|", "\\|")


def markdown_table(rows: Iterable[Sequence[Any]]) -> str:
    """A Markdown table: the first row is the header; short rows are padded, empty rows dropped."""
    cells = [[cell_text(v) for v in row] for row in rows]
    cells = [row for row in cells if any(row)]
    if not cells:
        return ""
    width = max(len(row) for row in cells)
    # Trailing columns empty in every row are left out (spreadsheets report a used range).
    while width > 1 and all(len(row) < width or not row[width - 1] for row in cells):
        width -= 1
    padded = [(row + [""] * width)[:width] for row in cells]
    lines = ["| " + " | ".join(padded[0]) + " |", "|" + " --- |" * width]
    lines += ["| " + " | ".join(row) + " |" for row in padded[1:]]
    return "\n".join(lines)
