"""Wires the SageMaker emulator's backend to its HTTP routes."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from localcloud.faults import Faults
from localcloud.stats import Stats


class SageMakerService:
    """The emulator as one object: a WSGI app plus lifecycle (shutdown, instance PIDs)."""

    def __init__(
        self, url: str, region: str, faults: Faults, stats: Stats, credentials: tuple[str, str]
    ) -> None:
        self.url = url
        self.region = region
        self.faults = faults
        self.stats = stats
        self.credentials = credentials

    def wsgi(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        """WSGI entry point (placeholder until the emulator lands)."""
        start_response(
            "500 Internal Server Error", [("Content-Type", "application/x-amz-json-1.1")]
        )
        return [b'{"__type": "InternalFailure", "message": "SageMaker emulator not built yet"}']

    def shutdown(self) -> None:
        """Stop every instance process."""

    def instance_pids(self, endpoint_name: str | None = None) -> list[int]:
        """PIDs of live instance processes."""
        return []
