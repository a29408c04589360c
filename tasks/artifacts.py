"""Prefect artifact keys: the one rule for turning names into a key Prefect accepts."""

from __future__ import annotations

import re


def artifact_key(*parts: str) -> str:
    """``parts`` joined with dashes as a Prefect artifact key (lowercase letters, digits, dashes)."""
    key = re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")
    return re.sub(r"-{2,}", "-", key)
