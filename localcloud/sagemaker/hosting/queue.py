"""An endpoint's request queue: invocations wait here until an instance slot takes them."""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

# A response stream's chunks: bytes, then None at the end or the exception that broke it.
Chunks = queue.SimpleQueue[bytes | BaseException | None]


@dataclass
class Reply:
    """A real-time invocation's answer; ``chunks`` carries a response stream's body."""

    status: int
    body: bytes
    content_type: str
    headers: dict[str, str] = field(default_factory=dict)
    instance_id: str = ""
    instance_pid: int = 0
    chunks: Chunks | None = None
    session_gone: bool = False  # the session's instance is gone: a ValidationError, not ModelError


@dataclass
class Invocation:
    """One accepted request, async (results to S3 + SNS) or real-time (``reply`` future)."""

    inference_id: str
    body: bytes | None
    input_location: str | None
    content_type: str | None
    accept: str | None
    custom_attributes: str | None
    ttl_s: float
    timeout_s: float
    output_location: str | None = None
    failure_location: str | None = None
    failure_location_reported: bool = False
    success_topic: str | None = None
    error_topic: str | None = None
    include_response: bool = False
    reply: Future[Reply] | None = None
    session_id: str | None = None  # X-Amzn-SageMaker-Session-Id (NEW_SESSION or an id)
    target: Any = None  # the InstanceProcess holding the session: only its slots take it
    stream: bool = False  # InvokeEndpointWithResponseStream
    received: datetime = field(default_factory=lambda: datetime.now(UTC))
    received_mono: float = field(default_factory=time.monotonic)

    def expired(self, ttl_scale: float) -> bool:
        """True once the request has waited longer than RequestTTLSeconds (times the test clock scale)."""
        return time.monotonic() - self.received_mono > self.ttl_s * ttl_scale


class RequestQueue:
    """FIFO with blocking take, put-back at the front, and removal of expired requests."""

    def __init__(self) -> None:
        self._items: deque[Invocation] = deque()
        self._cond = threading.Condition()

    def put(self, item: Invocation) -> None:
        """Append a new request."""
        with self._cond:
            self._items.append(item)
            self._cond.notify_all()

    def put_front(self, item: Invocation) -> None:
        """Give a request back (a slot took it but may not run it)."""
        with self._cond:
            self._items.appendleft(item)
            self._cond.notify_all()

    def take(self, timeout_s: float, instance: Any = None) -> Invocation | None:
        """The oldest request ``instance`` may run (untargeted or sticky to it), or None."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                for item in self._items:
                    if item.target is None or item.target is instance:
                        self._items.remove(item)
                        return item
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

    def remove_where(self, predicate: Callable[[Invocation], bool]) -> list[Invocation]:
        """Take out every request ``predicate`` holds for."""
        with self._cond:
            found = [item for item in self._items if predicate(item)]
            for item in found:
                self._items.remove(item)
            return found

    def remove_expired(self, ttl_scale: float) -> list[Invocation]:
        """Take out every request whose TTL has passed."""
        with self._cond:
            expired = [item for item in self._items if item.expired(ttl_scale)]
            for item in expired:
                self._items.remove(item)
            return expired

    def drain(self) -> list[Invocation]:
        """Take out everything."""
        with self._cond:
            items = list(self._items)
            self._items.clear()
            return items

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)
