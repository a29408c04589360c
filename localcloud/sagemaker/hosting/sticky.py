"""Sticky-session routing: which instance holds which session, as SageMaker's router keeps it.

The container opens a session by answering a ``NEW_SESSION`` request with
``X-Amzn-SageMaker-Session-Id: <id>; Expires=...``; the router then sends every request with
that id to the same instance. A closed session keeps its route, so a late request for it reaches
the instance that can say it was closed (the table keeps the newest ``MAX_ROUTES`` ids). A
request for a session whose instance is gone is refused at once (never queued for an instance
that cannot answer).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

SESSION_HEADER = "X-Amzn-SageMaker-Session-Id"
CLOSED_HEADER = "X-Amzn-SageMaker-Closed-Session-Id"
NEW_SESSION = "NEW_SESSION"
MAX_ROUTES = 100_000


class SessionGone(Exception):
    """The session's instance no longer exists; the message says to open a new session."""


def session_id_of(header_value: str) -> str:
    """``<id>; Expires=...`` -> ``<id>``."""
    return header_value.split(";")[0].strip()


def gone_message(session_id: str, instance_id: str) -> str:
    """The refusal for a session whose instance went away."""
    return (
        f"Session {session_id} is no longer available: instance {instance_id} that held it is "
        "gone (replaced or scaled in). Open a new one with SessionId=NEW_SESSION."
    )


class SessionRoutes:
    """Session id -> the instance (``InstanceProcess``) that opened it."""

    def __init__(self) -> None:
        self._routes: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def target(self, session_id: str | None) -> Any:
        """The instance a request must run on (None: any), or SessionGone."""
        if not session_id or session_id == NEW_SESSION:
            return None
        with self._lock:
            instance = self._routes.get(session_id)
        if instance is not None and not instance.alive():
            raise SessionGone(gone_message(session_id, instance.id))
        return instance

    def observe(self, session_id: str | None, headers: dict[str, str], instance: Any) -> None:
        """Learn from the container's answer: a session opened on ``instance``."""
        lowered = {k.lower(): v for k, v in headers.items()}
        opened = lowered.get(SESSION_HEADER.lower())
        if session_id != NEW_SESSION or not opened:
            return
        with self._lock:
            self._routes[session_id_of(opened)] = instance
            while len(self._routes) > MAX_ROUTES:
                self._routes.popitem(last=False)
