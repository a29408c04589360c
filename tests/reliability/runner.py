"""Run process_documents as its own OS process (to SIGKILL it, or to measure its peak RSS).

``python -m tests.reliability.runner <params.json> <result.json>``: the params are the flow's
keyword arguments; the result file gets the flow's return value plus ``peak_rss_mb`` (VmHWM).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.runs import run_process


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM), in MB.

    Not ``ru_maxrss``: Linux carries that over from the parent across fork and exec, so a child
    of a 600 MB pytest would report at least 600 MB.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def main(params_path: str, result_path: str) -> int:
    """Run the flow with the given parameters and write its result and peak RSS."""
    params = json.loads(Path(params_path).read_text())
    result = run_process(**params)
    Path(result_path).write_text(json.dumps({"result": result, "peak_rss_mb": peak_rss_mb()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1], sys.argv[2]))
