"""README.md's links into the repository (the docs site's pages, mostly) point at files and
headings that exist: `make docs` checks the site's own links, not the README's."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _anchor(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.lstrip("#").strip().lower())
    return text.replace(" ", "-")


def test_every_relative_link_and_anchor_of_the_readme_exists() -> None:
    readme = ROOT / "README.md"
    links = re.findall(r"\]\(([^)\s]+)\)", readme.read_text())
    local = [link for link in links if not link.startswith(("http://", "https://"))]
    assert len(local) > 20
    for link in local:
        path, _, anchor = link.partition("#")
        target = ROOT / path if path else readme
        assert target.exists(), f"README links to {link}: no such file"
        if anchor and target.is_file():
            headings = [line for line in target.read_text().splitlines() if line.startswith("#")]
            assert anchor in {_anchor(h) for h in headings}, f"README links to {link}: no heading"


def test_the_readme_stays_short() -> None:
    assert len((ROOT / "README.md").read_text().splitlines()) < 350  # the rest is the docs site
