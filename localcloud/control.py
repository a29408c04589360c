"""The ``/_localcloud/`` HTTP API: the fault switchboard, per-endpoint stats and a health check."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from werkzeug.wrappers import Request, Response

from localcloud.faults import Faults
from localcloud.stats import Stats


def _json(data: Any, status: int = 200) -> Response:
    return Response(json.dumps(data, indent=1), status=status, mimetype="application/json")


class ControlApp:
    """GET/PUT/DELETE ``/_localcloud/faults``, GET ``/_localcloud/stats``, ``/instances`` (PIDs), ``/health``."""

    def __init__(
        self,
        faults: Faults,
        stats: Stats,
        instances: Callable[[], dict[str, list[int]]] | None = None,
    ) -> None:
        self.faults = faults
        self.stats = stats
        self.instances = instances or dict

    def handle(self, request: Request) -> Response:
        """Serve one control request."""
        path = request.path.rstrip("/")
        if path == "/_localcloud/health":
            return _json({"status": "ok"})
        if path == "/_localcloud/stats" and request.method == "GET":
            return _json(self.stats.snapshot())
        if path == "/_localcloud/instances" and request.method == "GET":
            return _json(self.instances())
        if path == "/_localcloud/faults":
            if request.method == "GET":
                return _json(self.faults.snapshot())
            if request.method == "DELETE":
                return _json(self.faults.reset())
            if request.method in ("PUT", "POST"):
                try:
                    changes = json.loads(request.get_data() or b"{}")
                    if not isinstance(changes, dict):
                        raise ValueError('send a JSON object such as {"throttle_rate": 0.5}')
                    if changes.pop("reset", False):
                        self.faults.reset()
                    return _json(self.faults.set(**changes))
                except ValueError as exc:
                    return _json({"error": str(exc)}, status=400)
            return _json({"error": "use GET, PUT (JSON settings) or DELETE (reset)"}, status=405)
        return _json(
            {
                "error": f"no such path {request.path}; try /_localcloud/faults or /_localcloud/stats"
            },
            status=404,
        )

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        """WSGI entry point."""
        return self.handle(Request(environ))(environ, start_response)
