"""The endpoint's shared cap on outstanding invocations: a Prefect global concurrency limit.

The limit is named by ``tasks.endpoint.spec.concurrency_limit_name`` and created by the
deploy-endpoint flow; every run on the endpoint takes its slots from it, so two runs never have
more invocations outstanding between them than the endpoint was sized for.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from uuid import UUID

from tasks.capacity.leases import LeaseBook, LimitMissing
from tasks.endpoint.spec import concurrency_limit_name, demand_limit_name

# Prefect's shortest lease (renewed every 20 s while held): a killed run's slots return within
# about a minute (lease + the server's 15 s repossessor loop), not the default five.
SLOT_LEASE_S = 60
FREE_POLL_S = 0.2
# Slots of the demand limit: more than all runs on one endpoint can ever want between them.
DEMAND_LIMIT = 1_000_000


class CapacityError(RuntimeError):
    """The endpoint's shared concurrency limit is missing; the message says how to create it."""


def wait_for_free(name: str, n: int, wait_s: float) -> int:
    """Poll limit ``name`` until ``n`` slots are free or ``wait_s`` passes; returns the free slots.

    Asking the server first keeps a contended acquire out of Prefect's polling back-off, which
    also logs every timeout as an error; a missing limit answers ``n`` so the strict acquire
    that follows raises the clear error.
    """
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    deadline = time.monotonic() + wait_s
    with get_client(sync_client=True) as client:
        while True:
            try:
                limit = client.read_global_concurrency_limit_by_name(name)
            except ObjectNotFound:
                return n
            free = int(limit.limit) - int(limit.active_slots)
            if free >= n or time.monotonic() >= deadline:
                return max(0, free)
            time.sleep(FREE_POLL_S)


class CapShare:
    """The run's share of the endpoint's global concurrency limit, held one slot per lease.

    Each slot is its own one-slot lease, renewed while held, so concurrent runs never exceed the
    limit between them, a killed run's slots return when their leases lapse, and the run gives
    back exactly the slots it no longer uses (a batch ended and nothing is waiting, or another
    run needs its fair share) instead of holding a whole lease to its end.
    """

    def __init__(self, endpoint: str, book: LeaseBook | None = None) -> None:
        self.name = concurrency_limit_name(endpoint)
        self._book = book or LeaseBook(lease_s=SLOT_LEASE_S)
        self._leases: list[UUID] = []
        # grow may run on another thread than detach (tasks.capacity.keeper): the list is shared.
        self._lock = threading.Lock()

    @property
    def held(self) -> int:
        """Slots this run holds now."""
        with self._lock:
            return len(self._leases)

    def grow(self, n: int, *, timeout_s: float, on_taken: Callable[[], None] | None = None) -> int:
        """Take up to ``n`` more slots: as many as are free once one is (within ``timeout_s``).

        ``on_taken`` is called after each slot is taken (it is usable from then on).
        """
        if n <= 0:
            return 0
        # Not waiting: take until the limit says none is free (a read first would cost a call).
        take = n if timeout_s <= 0 else min(n, wait_for_free(self.name, 1, timeout_s))
        taken = 0
        for _ in range(take):
            try:
                lease = self._book.take(self.name, 1)
            except LimitMissing as exc:
                raise CapacityError(
                    f"global concurrency limit {self.name!r} does not exist: run the "
                    "deploy-endpoint flow (it creates the limit) or create it with "
                    f"`prefect gcl create {self.name} --limit <max outstanding invocations>`"
                ) from exc
            if lease is None:  # none free now (another run took it since the read)
                break
            with self._lock:
                self._leases.append(lease)
            taken += 1
            if on_taken is not None:
                on_taken()
        return taken

    def detach(self, n: int) -> list[UUID]:
        """Stop counting slots beyond ``n`` as held, at once; ``release`` gives them back."""
        with self._lock:
            keep = max(n, 0)
            detached, self._leases = self._leases[keep:], self._leases[:keep]
        return detached[::-1]  # the newest first, as they were taken back before

    def release(self, leases: list[UUID]) -> None:
        """Give ``leases`` (from ``detach``) back to the limit."""
        for lease in leases:
            self._book.release(lease)

    def shrink_to(self, n: int) -> int:
        """Give back slots until ``n`` are held; returns the slots released."""
        detached = self.detach(n)
        self.release(detached)
        return len(detached)

    def close(self) -> None:
        """Give back every slot still held."""
        self.shrink_to(0)


def fair_share(cap: int, want: int, demand: int) -> int:
    """The slots a run wanting ``want`` may hold when all runs on the endpoint want ``demand``.

    Everyone gets what they want while the cap covers it; beyond that each run gets its share
    of the cap in proportion to what it wants, and at least one slot, so a small run started
    beside a big one is never starved until the big one ends.
    """
    want = max(0, min(want, cap))
    if want == 0 or demand <= cap:
        return want
    return max(1, cap * want // max(demand, want))


class Demand:
    """What this run wants of the shared cap, published as slots held on ``sagemaker:<endpoint>:demand``.

    The demand limit is effectively unbounded (every run's want fits); its active slots are the
    sum of what the runs on the endpoint want now, and a killed run's want lapses with its lease.
    """

    def __init__(self, endpoint: str, book: LeaseBook | None = None) -> None:
        self.name = demand_limit_name(endpoint)
        self.wanted = 0
        self._book = book or LeaseBook(lease_s=SLOT_LEASE_S)
        self._lease: UUID | None = None

    def set(self, want: int) -> None:
        """Publish ``want`` (the new lease is taken before the old one goes: the sum never dips)."""
        if want == self.wanted:
            return
        lease = None
        if want > 0:
            try:
                lease = self._book.take(self.name, want)
            except LimitMissing:
                self._create_limit()
                lease = self._book.take(self.name, want)
        if self._lease is not None:
            self._book.release(self._lease)
        self._lease, self.wanted = lease, want if lease is not None else 0

    def total(self) -> int:
        """What every run on the endpoint wants now (this one included)."""
        active = self._book.active_slots(self.name)
        return self.wanted if active is None else active

    def close(self) -> None:
        """Withdraw this run's demand."""
        if self._lease is not None:
            self._book.release(self._lease)
        self._lease, self.wanted = None, 0

    def _create_limit(self) -> None:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
        from prefect.exceptions import ObjectAlreadyExists

        with get_client(sync_client=True) as client, suppress(ObjectAlreadyExists):
            # Another run may have created it first.
            client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=self.name, limit=DEMAND_LIMIT, active=True)
            )


@contextmanager
def cap_share(endpoint: str) -> Iterator[tuple[CapShare, Demand]]:
    """A CapShare and the run's Demand that always give their leases back, even when the run fails."""
    book = LeaseBook(lease_s=SLOT_LEASE_S)
    share, demand = CapShare(endpoint, book), Demand(endpoint, book)
    try:
        yield share, demand
    finally:
        share.close()
        demand.close()
        book.close()


def read_invocation_limit(endpoint: str) -> int | None:
    """The shared cap on outstanding invocations for ``endpoint``, or None when the limit is missing."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            found = client.read_global_concurrency_limit_by_name(concurrency_limit_name(endpoint))
        except ObjectNotFound:
            return None
    return int(found.limit) if found.active else None


def require_invocation_limit(endpoint: str) -> int:
    """The shared cap for ``endpoint``; a CapacityError that says how to create it when missing."""
    limit = read_invocation_limit(endpoint)
    if not limit:
        name = concurrency_limit_name(endpoint)
        raise CapacityError(
            f"global concurrency limit {name!r} is missing or inactive: run the deploy-endpoint "
            f"flow for {endpoint!r} (it creates the limit) or "
            f"`prefect gcl create {name} --limit <max outstanding invocations>`"
        )
    return limit
