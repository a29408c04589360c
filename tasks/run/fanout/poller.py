"""Long-polling a run's SQS queue on a background thread, so submitting never waits behind a poll."""

from __future__ import annotations

import queue as queue_module
import threading

from tasks.run.fanout.notifications import Received
from tasks.run.fanout.policy import POLLING
from tasks.run.fanout.run_queue import RunQueue, delete, receive
from tasks.settings import Profile


class QueuePoller:
    """Long-polls the run's queue on a background thread so submitting never waits behind a poll.

    Messages land in an inbox for the run's loop; their receipt handles come back through
    ``ack`` once the loop has recorded their effect, and only then are they deleted.
    """

    def __init__(self, profile: Profile, run_queue: RunQueue, *, wait_s: int) -> None:
        self.profile = profile
        self.queue = run_queue
        self.wait_s = wait_s
        self.inbox: queue_module.Queue[Received | None] = queue_module.Queue()
        self._acked: queue_module.Queue[str] = queue_module.Queue()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="docflow-sqs-poller", daemon=True)

    def __enter__(self) -> QueuePoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        # The thread ends after its current long poll (at most ``wait_s``); the run does not wait
        # for it. Whatever that poll still takes is left undeleted and comes back after the
        # visibility timeout, where a resumed run would see it again.
        self._stop.set()
        self._delete_acked()

    def take(self, timeout_s: float) -> list[Received]:
        """Messages received so far, waiting up to ``timeout_s`` for the first (or a ``wake``).

        Raises when polling has failed for good.
        """
        if self._error is not None:
            raise RuntimeError(f"polling the run's queue failed: {self._error}") from self._error
        items: list[Received | None] = []
        try:
            items.append(
                self.inbox.get(timeout=timeout_s) if timeout_s > 0 else self.inbox.get_nowait()
            )
        except queue_module.Empty:
            return []
        while True:
            try:
                items.append(self.inbox.get_nowait())
            except queue_module.Empty:
                return [m for m in items if m is not None]

    def wake(self) -> None:
        """End a ``take`` that is waiting now (an invocation has returned)."""
        self.inbox.put(None)

    def ack(self, receipt_handles: list[str]) -> None:
        """Hand back messages whose effect is recorded, to be deleted."""
        for handle in receipt_handles:
            self._acked.put(handle)

    def _delete_acked(self) -> None:
        handles: list[str] = []
        while True:
            try:
                handles.append(self._acked.get_nowait())
            except queue_module.Empty:
                break
        if handles:
            delete(self.profile, self.queue, handles)

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                self._delete_acked()
                received = receive(self.profile, self.queue, wait_s=self.wait_s)
                if self._stop.is_set():
                    return
                for message in received:
                    self.inbox.put(message)
                failures = 0
            except Exception as exc:  # surfaced to the run's loop once it keeps failing
                failures += 1
                if failures >= POLLING.poll_errors_tolerated:
                    self._error = exc
                    return
                self._stop.wait(POLLING.poll_error_backoff_s(failures))
