"""Process-local measurements: API calls counted by botocore event hooks, and peak RSS."""

from __future__ import annotations

import resource
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any


class ApiCallCounter:
    """Counts every AWS API call (``before-call.*.*``) made by any botocore client in this process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.http_attempts = 0

    def install(self) -> ApiCallCounter:
        """Register on botocore's built-in handler list, so every session made later counts.

        Must run before the first boto3 session is created in this process.
        """
        from botocore import handlers

        handlers.BUILTIN_HANDLERS.append(("before-call.*.*", self._on_call))
        handlers.BUILTIN_HANDLERS.append(("before-send.*.*", self._on_send))
        return self

    def _on_call(self, event_name: str = "", **_: Any) -> None:
        # event_name is "before-call.<service>.<Operation>"
        op = event_name.split(".", 1)[1]
        with self._lock:
            self.calls[op] += 1

    def _on_send(self, **_: Any) -> None:
        with self._lock:
            self.http_attempts += 1

    def snapshot(self) -> dict[str, Any]:
        """Totals and a per-operation breakdown (sorted, most frequent first)."""
        with self._lock:
            by_op = dict(self.calls.most_common())
            return {
                "total": sum(by_op.values()),
                "http_attempts": self.http_attempts,
                "by_op": by_op,
            }


def _status_kb(field: str) -> float | None:
    status = Path("/proc/self/status")
    if not status.exists():
        return None
    for line in status.read_text().splitlines():
        if line.startswith(field + ":"):
            return float(line.split()[1])
    return None


def peak_rss_mb() -> float:
    """Peak resident set size of this process image, in MiB.

    Linux: VmHWM, which (unlike ru_maxrss) is not inherited from the parent across fork/exec.
    """
    hwm = _status_kb("VmHWM")
    if hwm is not None:
        return hwm / 1024
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / (1024 * 1024) if sys.platform == "darwin" else maxrss / 1024


def current_rss_mb() -> float:
    """Current resident set size of this process, in MiB."""
    import psutil

    return float(psutil.Process().memory_info().rss) / (1024 * 1024)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation; values must not be empty."""
    if not values:
        raise ValueError("percentile of no values: the run recorded no completions")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)
