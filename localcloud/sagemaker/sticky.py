"""Sticky-session routing: which instance holds which session, as SageMaker's router keeps it.

The container opens a session by answering a ``NEW_SESSION`` request with
``X-Amzn-SageMaker-Session-Id: <id>; Expires=...``; the router then sends every request with
that id to the same instance, and forgets the id when the container answers with
``X-Amzn-SageMaker-Closed-Session-Id``. A request for a session whose instance is gone is
refused at once (never queued for an instance that cannot answer).
"""

from __future__ import annotations

import threading
from typing import Any

SESSION_HEADER = "X-Amzn-SageMaker-Session-Id"
CLOSED_HEADER = "X-Amzn-SageMaker-Closed-Session-Id"
NEW_SESSION = "NEW_SESSION"


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
        self._routes: dict[str, Any] = {}
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
        """Learn from the container's answer: a session opened on ``instance``, or one closed."""
        lowered = {k.lower(): v for k, v in headers.items()}
        opened = lowered.get(SESSION_HEADER.lower())
        closed = lowered.get(CLOSED_HEADER.lower())
        with self._lock:
            if session_id == NEW_SESSION and opened:
                self._routes[session_id_of(opened)] = instance
            if closed:
                self._routes.pop(session_id_of(closed), None)
