"""Code that runs inside the model container; packaging ships these two files under ``code/``."""

from __future__ import annotations

from pathlib import Path

HANDLER = Path(__file__).with_name("inference.py")
REQUIREMENTS = Path(__file__).with_name("requirements.txt")
