"""A run's slots and demand kept on one background thread, so the run's loop never waits on the API.

The loop (``tasks.run.fanout.driver``) decides how many slots it wants and what demand to
publish; the calls that carry it out (take a lease, give one back, publish and read the demand)
each wait on the Prefect API, tens of milliseconds and more on a loaded server. Made on the loop
they held back submitting and recording results; they are made here instead, in the order asked,
on one thread (``Chores``), which also takes the loop's other API calls (cancel checks, progress).
A slot the loop stops using is uncounted at once and given back behind it; a slot taken counts
once its lease is granted, and wakes the loop.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Any

from tasks.capacity.limit import CapShare, Demand, fair_share

logger = logging.getLogger("docflow.capacity")


class Chores:
    """Calls made one after another on a background thread, in the caller's context.

    Prefect's settings (its API URL) and run context are context variables: each call runs in a
    copy of the context it was submitted from. A call that raises is raised again by ``check``.
    """

    def __init__(self, name: str = "docflow-api") -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=name)
        self._error: BaseException | None = None

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        """Queue ``fn(*args)`` behind the calls already queued."""
        future = self._pool.submit(contextvars.copy_context().run, fn, *args)
        future.add_done_callback(self._note)
        return future

    def _note(self, future: Future[Any]) -> None:
        if future.cancelled():
            return
        error = future.exception()
        if error is not None:
            logger.warning("a background API call failed: %s", error)
            if self._error is None:
                self._error = error

    def check(self) -> None:
        """Raise the first error of a call made so far."""
        if self._error is not None:
            raise self._error

    def drain(self) -> None:
        """Wait until every call queued so far has been made."""
        self._pool.submit(lambda: None).result()

    def __enter__(self) -> Chores:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._pool.shutdown(wait=True)


class SlotKeeper:
    """The run's ``CapShare`` and ``Demand``, changed on the ``Chores`` thread as the loop asks.

    ``held`` counts the slots whose lease is granted and not given back; only the loop uses them
    and only the loop gives them back (``shrink_to``), so what the loop has in flight never
    exceeds what it holds, while slots taken in the background only add to it.
    """

    def __init__(
        self,
        share: CapShare,
        demand: Demand,
        cap: int,
        chores: Chores,
        *,
        wake: Callable[[], None],
    ) -> None:
        self.share = share
        self.demand = demand
        self.cap = cap
        self.chores = chores
        self.wake = wake
        self.target = cap  # the run's fair share at the last demand read
        self.asked = 0  # the last want handed to ``publish``
        self.growing = False  # a grow is queued or under way

    @property
    def held(self) -> int:
        """Slots held now."""
        return self.share.held

    @property
    def published(self) -> int:
        """The want other runs see now (0 until the first publish is made)."""
        return self.demand.wanted

    def grow(self, n: int, *, timeout_s: float) -> None:
        """Take up to ``n`` more slots in the background (once one grow has ended, the next)."""
        if n <= 0 or self.growing:
            return
        self.growing = True
        self.chores.submit(self._grow, n, timeout_s)

    def _grow(self, n: int, timeout_s: float) -> None:
        try:
            self.share.grow(n, timeout_s=timeout_s, on_taken=self.wake)
        finally:
            self.growing = False

    def shrink_to(self, n: int) -> int:
        """Hold ``n`` slots from now on; the others are given back in the background."""
        leases = self.share.detach(n)
        if leases:
            self.chores.submit(self.share.release, leases)
        return len(leases)

    def publish(self, want: int) -> None:
        """Publish ``want`` and read everyone's, to size ``target``, in the background."""
        self.asked = want
        self.chores.submit(self._publish, want)

    def _publish(self, want: int) -> None:
        self.demand.set(want)
        target = fair_share(self.cap, want, self.demand.total())
        if target != self.target:
            self.target = target
            self.wake()
