"""Cancelling a run through Prefect: the driver asks the API whether its flow run is being cancelled.

A flow run cancelled from the UI, ``prefect flow-run cancel`` or the API is moved to
``Cancelling``; the driver sees that within ``cancel_every_s``, stops invoking, and leaves every
unfinished batch in the manifest as it was (pending, or submitted with its result still to come
in S3), so the same run key resumes the run. The unfinished documents are reported as
``canceled`` in the results and counted in the summary. A deployment's runner cancels by
terminating the flow's process (SIGTERM, Prefect's ``TerminationSignal``): the driver treats that
as the same cancel when the flow run is being cancelled, so the results are still written.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from uuid import UUID

CANCEL_STATES = frozenset({"CANCELLING", "CANCELLED"})


def current_flow_run_id() -> UUID | None:
    """The id of the flow run this code runs in (from a task or the flow), or None outside Prefect."""
    from prefect.context import FlowRunContext, TaskRunContext

    task_ctx = TaskRunContext.get()
    if task_ctx is not None and task_ctx.task_run.flow_run_id is not None:
        return task_ctx.task_run.flow_run_id
    flow_ctx = FlowRunContext.get()
    if flow_ctx is not None and flow_ctx.flow_run is not None:
        return flow_ctx.flow_run.id
    return None


class CancelWatch:
    """Reads the flow run's state at most every ``every_s``; remembers a cancel once it saw one."""

    def __init__(self, flow_run_id: UUID | None, *, every_s: float) -> None:
        self.flow_run_id = flow_run_id
        self.every_s = every_s
        self.reason: str | None = None
        self._last = time.monotonic()  # the first look after ``every_s``: the run starts at once
        self._looking = False  # a look submitted by ``poll`` is not made yet
        self._client: Any = None

    def requested(self, *, now: bool = False) -> str | None:
        """Why the run is being cancelled, or None while it is not (``now``: ask the API now)."""
        if self.reason is not None or self.flow_run_id is None:
            return self.reason
        at = time.monotonic()
        if not now and at - self._last < self.every_s:
            return None
        self._last = at
        self._look()
        return self.reason

    def poll(self, submit: Callable[[Callable[[], None]], object]) -> str | None:
        """``requested`` without waiting: when a look is due, ``submit`` makes it in the background;
        a cancel it sees is returned from the next call on."""
        if self.reason is not None or self.flow_run_id is None or self._looking:
            return self.reason
        at = time.monotonic()
        if at - self._last >= self.every_s:
            self._last = at
            self._looking = True
            submit(self._look)
        return self.reason

    def _look(self) -> None:
        """Read the flow run's state; remember a cancel."""
        assert self.flow_run_id is not None
        try:
            state = self._api().read_flow_run(self.flow_run_id).state
        finally:
            self._looking = False
        if state is not None and state.type.value in CANCEL_STATES:
            self.reason = f"flow run {self.flow_run_id} was cancelled ({state.name})"

    def _api(self) -> Any:
        """One API client for every look (a new one each second cost a TLS context and a connection)."""
        if self._client is None:
            from prefect.client.orchestration import get_client

            self._client = get_client(sync_client=True)
            self._client.__enter__()
        return self._client

    def close(self) -> None:
        """Close the API client (a later look opens another)."""
        if self._client is not None:
            self._client.__exit__(None, None, None)
            self._client = None
