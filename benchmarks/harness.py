"""Run each contender in its own subprocess and derive the reported rates from its measurement."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.spec import ContenderSpec

REPO_ROOT = Path(__file__).resolve().parent.parent


class ContenderError(RuntimeError):
    """A contender subprocess failed; the message carries the tail of its log."""


def derive(result: dict[str, Any]) -> dict[str, Any]:
    """Add documents/s, tokens/s, API calls per document and, for a budgeted run, the projection."""
    wall = max(result["wall_s"], 1e-9)
    done = result["docs_completed"]
    result["docs_per_s"] = done / wall
    result["tokens_per_s"] = result.get("generated_tokens", 0) / wall
    result["api_calls_per_doc"] = result["api_calls"]["total"] / max(
        done + result["docs_failed"], 1
    )
    if result.get("extrapolated"):
        result["projected_wall_s"] = result["docs_in"] / max(result["docs_per_s"], 1e-9)
    return result


def run_contender(spec: ContenderSpec, env: dict[str, str], *, timeout_s: float) -> dict[str, Any]:
    """Run ``spec`` in a fresh interpreter with ``env`` added; return the derived measurement."""
    with tempfile.TemporaryDirectory(prefix=f"bench-{spec.contender}-") as tmp:
        spec_path = Path(tmp) / "spec.json"
        out_path = Path(tmp) / "result.json"
        log_path = Path(tmp) / "log.txt"
        spec.dump(spec_path)
        child_env = {**os.environ, **env, "PYTHONPATH": str(REPO_ROOT)}
        with log_path.open("w") as log:
            try:
                proc = subprocess.run(
                    [sys.executable, "-m", "benchmarks.contender", str(spec_path), str(out_path)],
                    cwd=REPO_ROOT,
                    env=child_env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    timeout=timeout_s,
                    check=False,
                )
            except subprocess.TimeoutExpired as exc:
                raise ContenderError(
                    f"{spec.contender} did not finish within {timeout_s:.0f} s; "
                    f"log tail:\n{_tail(log_path)}"
                ) from exc
        if proc.returncode != 0 or not out_path.exists():
            raise ContenderError(
                f"{spec.contender} exited with {proc.returncode}; log tail:\n{_tail(log_path)}"
            )
        result = json.loads(out_path.read_text())
        result["run_id"] = spec.run_id
        result["batch_size"] = spec.batch_size
        result["cap"] = spec.cap
        return derive(result)


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def ratio(a: float, b: float) -> float | None:
    """a / b, or None when b is zero."""
    return a / b if b else None
