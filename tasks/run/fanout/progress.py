"""Progress while a run waits: a Prefect progress artifact and, in a terminal, a rich progress bar."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
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
        submit: Callable[..., object] | None = None,
    ) -> None:
        self.total = max(total, 0)
        self.key = key
        self.description = description
        self.interval_s = interval_s
        self.terminal = sys.stdout.isatty() if terminal is None else terminal
        self.done = 0
        # Makes the artifact's API calls (on a background thread: ``tasks.capacity.keeper.Chores``).
        self._call: Callable[..., object] = submit or (lambda fn, *args: fn(*args))
        self._artifact_id: UUID | None = None
        self._last_update = 0.0
        self._shown = -1
        self.artifact_updates = 0
        self._bar: Any = None
        self._task_id: Any = None

    def percent(self) -> float:
        """Finished share of the total, in percent (100 for an empty run)."""
        if self.total == 0:
            return 100.0
        return round(100.0 * min(self.done, self.total) / self.total, 1)

    def __enter__(self) -> RunProgress:
        if _in_run_context():
            self._shown = int(self.percent())
            self._call(self._create, self._shown)
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
        """Set the number of finished documents; the artifact changes only with the whole percentage.

        At most 101 updates a run, each at least ``interval_s`` apart (``force``: now, if changed).
        """
        self.done = done
        if self._bar is not None:
            self._bar.update(self._task_id, completed=min(done, self.total))
        now = time.monotonic()
        shown = int(self.percent())
        if self._shown < 0 or shown == self._shown:  # no artifact (outside a run), or no change
            return
        if force or now - self._last_update >= self.interval_s:
            self._call(self._send, shown)
            self._shown = shown
            self._last_update = now
            self.artifact_updates += 1

    def _create(self, shown: int) -> None:
        from prefect.artifacts import create_progress_artifact

        made = create_progress_artifact(
            progress=float(shown), key=self.key, description=self.description
        )
        self._artifact_id = made if isinstance(made, UUID) else None

    def _send(self, shown: int) -> None:
        if self._artifact_id is None:  # it could not be made
            return
        from prefect.artifacts import update_progress_artifact

        update_progress_artifact(self._artifact_id, progress=float(shown))

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


class ProgressLog:
    """A progress line in the run's log every ``step_pct`` percent or ``every_s`` seconds, whichever is first.

    Each line: documents done (completed, failed) of the total, documents in flight, documents per
    second over this attempt, and the time left at that rate.
    """

    def __init__(
        self,
        total: int,
        *,
        done_before: int = 0,
        step_pct: float = 5.0,
        every_s: float = 60.0,
        clock: Any = time.monotonic,
    ) -> None:
        self.total = max(total, 0)
        self.step_pct = step_pct
        self.every_s = every_s
        self._clock = clock
        self._started = clock()
        self._done_before = done_before
        self._last_pct = 100.0 * done_before / self.total if self.total else 100.0
        self._last_at = self._started

    def line(self, completed: int, failed: int, in_flight: int) -> str | None:
        """The line to log now, or None until the next step or interval."""
        now = self._clock()
        done = completed + failed
        pct = 100.0 * done / self.total if self.total else 100.0
        if pct < self._last_pct + self.step_pct and now - self._last_at < self.every_s:
            return None
        self._last_pct, self._last_at = pct, now
        elapsed = now - self._started
        rate = (done - self._done_before) / elapsed if elapsed > 0 else 0.0
        left = self.total - done
        eta = f"{left / rate:.0f} s" if rate > 0 else "unknown"
        return (
            f"progress {pct:.0f} %: {done}/{self.total} documents done ({completed} completed, "
            f"{failed} failed), {in_flight} in flight, {rate:.1f} docs/s, ETA {eta}"
        )
