"""The endpoint's shared cap on outstanding invocations: a Prefect global concurrency limit.

The limit is named by ``tasks.endpoint.spec.concurrency_limit_name`` and created by the
deploy-endpoint flow; every run on the endpoint takes its slots from it, so two runs never have
more invocations outstanding between them than the endpoint was sized for.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from tasks.endpoint.spec import concurrency_limit_name

# Prefect's shortest lease (renewed every 45 s while held): a killed run's slots return within
# about a minute (lease + the server's 15 s repossessor loop), not the default five.
SLOT_LEASE_S = 60
FREE_POLL_S = 0.2
ACQUIRE_AFTER_CHECK_S = 5.0


class CapacityError(RuntimeError):
    """The endpoint's shared concurrency limit is missing; the message says how to create it."""


def enter_lease(name: str, occupy: int, wait_s: float) -> ExitStack | None:
    """Take ``occupy`` slots of limit ``name`` as one renewed lease (None: not free in time)."""
    from prefect.concurrency._asyncio import ConcurrencySlotAcquisitionError
    from prefect.concurrency.sync import concurrency

    stack = ExitStack()
    try:
        stack.enter_context(
            concurrency(
                name,
                occupy=occupy,
                strict=True,
                timeout_seconds=max(wait_s, ACQUIRE_AFTER_CHECK_S),
                raise_on_lease_renewal_failure=False,
                lease_duration=SLOT_LEASE_S,
            )
        )
    except TimeoutError:
        stack.close()
        return None
    except ConcurrencySlotAcquisitionError as exc:
        stack.close()
        raise CapacityError(
            f"global concurrency limit {name!r} does not exist: run the deploy-endpoint "
            "flow (it creates the limit) or create it with "
            f"`prefect gcl create {name} --limit <max outstanding invocations>` ({exc})"
        ) from exc
    return stack


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
    """The run's share of the endpoint's global concurrency limit, held for the run as a few leases.

    Each lease is one ``strict`` acquisition of several slots, renewed while held, so concurrent
    runs never exceed the limit between them and a killed run's slots return when its lease
    lapses. The run paces invocations locally inside what it holds and refills a slot the moment
    a batch ends; it takes more slots only as they come free and gives whole leases back when
    its remaining work no longer needs them.
    """

    def __init__(self, endpoint: str) -> None:
        self.name = concurrency_limit_name(endpoint)
        self._leases: list[tuple[ExitStack, int]] = []

    @property
    def held(self) -> int:
        """Slots this run holds now."""
        return sum(size for _, size in self._leases)

    def grow(self, n: int, *, timeout_s: float) -> int:
        """Take up to ``n`` more slots as one lease: as many as are free once one is (within ``timeout_s``)."""
        if n <= 0:
            return 0
        take = min(n, wait_for_free(self.name, 1, timeout_s))
        if take <= 0:
            return 0
        stack = enter_lease(self.name, take, 0.0)
        if stack is None:
            return 0
        self._leases.append((stack, take))
        return take

    def shrink_to(self, n: int) -> int:
        """Give back whole leases while at least ``n`` slots stay held; returns the slots released."""
        released = 0
        for lease in sorted(self._leases, key=lambda item: item[1]):
            stack, size = lease
            if self.held - size < n:
                continue
            stack.close()
            self._leases.remove(lease)
            released += size
        return released

    def close(self) -> None:
        """Give back every lease still held."""
        for stack, _ in self._leases:
            stack.close()
        self._leases.clear()


@contextmanager
def cap_share(endpoint: str) -> Iterator[CapShare]:
    """A CapShare that always gives its leases back, even when the run fails."""
    share = CapShare(endpoint)
    try:
        yield share
    finally:
        share.close()


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
