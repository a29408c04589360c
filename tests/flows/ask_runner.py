"""Run ask_documents as its own OS process (to SIGKILL it): ``python -m tests.flows.ask_runner <params.json> <result.json>``."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(params_path: str, result_path: str) -> int:
    """Run the flow with the given keyword arguments and write its result."""
    from tests.runs import run_ask

    result = run_ask(**json.loads(Path(params_path).read_text()))
    Path(result_path).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1], sys.argv[2]))
