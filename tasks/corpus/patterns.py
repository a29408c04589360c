"""include / exclude patterns on a folder's (or prefix's) files, every exclusion counted.

Patterns are glob-style on the path relative to the folder, as in .gitignore: ``*`` and ``?``
stay within one folder, ``**`` crosses folders (``build/**``), and a pattern without ``/``
matches the name in any folder (``*.png``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable

NOT_INCLUDED = "(not matched by include)"


@functools.cache
def _regex(pattern: str) -> re.Pattern[str]:
    """The regular expression of one pattern (anchored at both ends)."""
    text = pattern.strip().lstrip("/")
    if text.endswith("/"):
        text += "**"  # a folder: everything under it
    out, index = [], 0
    while index < len(text):
        if text.startswith("**/", index):
            out.append("(?:.*/)?")
            index += 3
        elif text.startswith("**", index):
            out.append(".*")
            index += 2
        elif text[index] == "*":
            out.append("[^/]*")
            index += 1
        elif text[index] == "?":
            out.append("[^/]")
            index += 1
        elif text[index] == "[":
            end = text.find("]", index + 1)
            if end < 0:
                out.append(re.escape(text[index]))
                index += 1
            else:
                out.append(text[index : end + 1].replace("[!", "[^"))
                index = end + 1
        else:
            out.append(re.escape(text[index]))
            index += 1
    prefix = "" if "/" in text.rstrip("*") else "(?:.*/)?"
    return re.compile(prefix + "".join(out) + r"\Z")


def matches(pattern: str, name: str) -> bool:
    """Whether ``name`` (a relative POSIX path) matches ``pattern``."""
    return _regex(pattern).match(name) is not None


def select(
    names: Iterable[str], include: list[str] | None, exclude: list[str] | None
) -> tuple[list[str], dict[str, int]]:
    """The names kept, and how many each pattern left out (the first exclude pattern that
    matches a file counts it; files matching no include pattern count under NOT_INCLUDED)."""
    kept: list[str] = []
    counts: dict[str, int] = {}
    for name in names:
        if include and not any(matches(p, name) for p in include):
            counts[NOT_INCLUDED] = counts.get(NOT_INCLUDED, 0) + 1
            continue
        hit = next((p for p in exclude or [] if matches(p, name)), None)
        if hit is not None:
            counts[hit] = counts.get(hit, 0) + 1
            continue
        kept.append(name)
    return kept, counts
