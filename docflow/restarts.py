"""Which children of `docflow ui` are started again when they die, and how often.

A worker is one of several that take the pool's flow runs: when one dies (SIGKILL, out of
memory) the server, localcloud and the other workers go on, and it is started again under a new
worker name (the dead one goes offline), so a sharded run re-runs the shards it held on whichever
worker takes them. The
server, PostgreSQL and localcloud hold the stack's state: when one of them dies the stack stops.
"""

from __future__ import annotations

import re
import time
from collections import deque

MAX_RESTARTS = 5  # of one child within WINDOW_S: more is a crash loop, and the stack stops
WINDOW_S = 300.0
_WORKER = re.compile(r"^prefect worker (\d+)$")


def worker_number(child_name: str) -> int | None:
    """The worker's number when ``child_name`` names a worker of the stack (else None)."""
    match = _WORKER.match(child_name)
    return int(match[1]) if match else None


class Restarts:
    """Restarts per child, refused once one has been started again MAX_RESTARTS times lately."""

    def __init__(self, limit: int = MAX_RESTARTS, window_s: float = WINDOW_S) -> None:
        self.limit = limit
        self.window_s = window_s
        self._times: dict[str, deque[float]] = {}
        self._total: dict[str, int] = {}

    def allow(self, name: str, now: float | None = None) -> bool:
        """Count a restart of ``name`` and say whether it may happen."""
        now = time.monotonic() if now is None else now
        times = self._times.setdefault(name, deque())
        while times and now - times[0] > self.window_s:
            times.popleft()
        if len(times) >= self.limit:
            return False
        times.append(now)
        self._total[name] = self._total.get(name, 0) + 1
        return True

    def total(self, name: str) -> int:
        """Restarts of ``name`` since the stack started (names each restarted worker)."""
        return self._total.get(name, 0)

    def count(self, name: str) -> int:
        """Restarts of ``name`` within the window."""
        return len(self._times.get(name, ()))
