"""Per-endpoint request counters: received, running now, max running observed, completed, failed."""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass


@dataclass
class EndpointStats:
    """Counters of one endpoint since it was created."""

    received: int = 0
    running: int = 0
    max_running: int = 0
    completed: int = 0
    failed: int = 0
    queued: int = 0


class Stats:
    """Thread-safe counters keyed by endpoint name."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_endpoint: dict[str, EndpointStats] = {}

    def _get(self, endpoint: str) -> EndpointStats:
        return self._by_endpoint.setdefault(endpoint, EndpointStats())

    def reset(self, endpoint: str) -> None:
        """Start an endpoint's counters from zero (on create)."""
        with self._lock:
            self._by_endpoint[endpoint] = EndpointStats()

    def received(self, endpoint: str) -> None:
        """One invocation accepted into the queue."""
        with self._lock:
            s = self._get(endpoint)
            s.received += 1
            s.queued += 1

    def dequeued(self, endpoint: str) -> None:
        """One invocation left the queue (to run, or expired)."""
        with self._lock:
            self._get(endpoint).queued -= 1

    def started(self, endpoint: str) -> None:
        """One invocation began running on an instance."""
        with self._lock:
            s = self._get(endpoint)
            s.running += 1
            s.max_running = max(s.max_running, s.running)

    def finished(self, endpoint: str, ok: bool, ran: bool = True) -> None:
        """One invocation reached a terminal state."""
        with self._lock:
            s = self._get(endpoint)
            if ran:
                s.running -= 1
            if ok:
                s.completed += 1
            else:
                s.failed += 1

    def snapshot(self) -> dict[str, dict[str, int]]:
        """All endpoints' counters."""
        with self._lock:
            return {name: asdict(s) for name, s in self._by_endpoint.items()}
