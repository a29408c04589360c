"""What the harness hands a contender subprocess, and what it hands back (both plain JSON)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class EndpointInfo:
    """The async endpoint under test, as its endpoint config describes it."""

    name: str
    bucket: str
    output_path: str
    failure_path: str
    success_topic: str
    error_topic: str


@dataclass(frozen=True)
class ContenderSpec:
    """One contender's run: which client, which corpus, which endpoint, under which limits."""

    contender: str
    corpus: str
    n_docs: int
    batch_size: int
    cap: int
    endpoint: EndpointInfo
    run_id: str
    time_budget_s: float | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    poll_interval_s: float = 1.0
    model_dir: str | None = None
    threads: int | None = None

    def dump(self, path: Path) -> None:
        """Write the spec as JSON."""
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path) -> ContenderSpec:
        """Read a spec written by ``dump``."""
        data = json.loads(path.read_text())
        data["endpoint"] = EndpointInfo(**data["endpoint"])
        return cls(**data)


@dataclass
class Outcome:
    """What a contender reports about its own run (the harness adds timing, calls and RSS)."""

    docs_completed: int
    docs_failed: int = 0
    generated_tokens: int = 0
    extrapolated: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
