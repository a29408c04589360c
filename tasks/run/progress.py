"""Progress while a run waits: a Prefect progress artifact and, in a terminal, a rich progress bar."""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import Any
from uuid import UUID


def _in_run_context() -> bool:
    """True inside a Prefect flow or task run (where artifacts can be attached)."""
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


class RunProgress:
    """Reports documents finished out of a total, throttled to one artifact update per interval."""

    def __init__(
        self,
        total: int,
        *,
        key: str | None = None,
        description: str = "documents finished",
        interval_s: float = 2.0,
        terminal: bool | None = None,
    ) -> None:
        self.total = max(total, 0)
        self.key = key
        self.description = description
        self.interval_s = interval_s
        self.terminal = sys.stdout.isatty() if terminal is None else terminal
        self.done = 0
        self._artifact_id: UUID | None = None
        self._last_update = 0.0
        self._bar: Any = None
        self._task_id: Any = None

    def percent(self) -> float:
        """Finished share of the total, in percent (100 for an empty run)."""
        if self.total == 0:
            return 100.0
        return round(100.0 * min(self.done, self.total) / self.total, 1)

    def __enter__(self) -> RunProgress:
        if _in_run_context():
            from prefect.artifacts import create_progress_artifact

            made = create_progress_artifact(
                progress=self.percent(), key=self.key, description=self.description
            )
            self._artifact_id = made if isinstance(made, UUID) else None
        if self.terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

            self._bar = Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                transient=False,
            )
            self._bar.start()
            self._task_id = self._bar.add_task(self.description, total=self.total)
        return self

    def update(self, done: int, *, force: bool = False) -> None:
        """Set the number of finished documents; the artifact is refreshed at most every interval."""
        self.done = done
        if self._bar is not None:
            self._bar.update(self._task_id, completed=min(done, self.total))
        now = time.monotonic()
        if self._artifact_id is not None and (force or now - self._last_update >= self.interval_s):
            from prefect.artifacts import update_progress_artifact

            update_progress_artifact(self._artifact_id, progress=self.percent())
            self._last_update = now

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.update(self.done, force=True)
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
