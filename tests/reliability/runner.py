"""Run process_documents as its own OS process (to SIGKILL it, or to measure its peak RSS).

``python -m tests.reliability.runner <params.json> <result.json>``: the params are the flow's
keyword arguments; the result file gets the flow's return value plus ``peak_rss_mb`` (VmHWM).
"""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path


def main(params_path: str, result_path: str) -> int:
    """Run the flow with the given parameters and write its result and peak RSS."""
    from flows.process_documents import process_documents

    params = json.loads(Path(params_path).read_text())
    result = process_documents(**params)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(result_path).write_text(json.dumps({"result": result, "peak_rss_mb": peak_mb}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1], sys.argv[2]))
