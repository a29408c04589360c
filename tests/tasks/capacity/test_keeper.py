"""tasks.capacity.keeper: the run's slots and demand changed on a background thread, on a real server."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest

from tasks.capacity.keeper import Chores, SlotKeeper
from tasks.capacity.limit import CapacityError, cap_share


def _limit(endpoint: str, limit: int) -> None:
    from tasks.endpoint.deploy import ensure_invocation_limit

    ensure_invocation_limit(endpoint, limit)


def _active(name: str) -> int:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return int(client.read_global_concurrency_limit_by_name(name).active_slots)


def test_slots_are_taken_and_given_back_behind_the_loop(prefect_harness: Any) -> None:
    endpoint = f"keep-{uuid.uuid4().hex[:8]}"
    _limit(endpoint, 4)
    woken = threading.Semaphore(0)
    with Chores() as chores, cap_share(endpoint) as (share, demand):
        keeper = SlotKeeper(share, demand, 4, chores, wake=woken.release)
        keeper.grow(3, timeout_s=0)
        keeper.grow(3, timeout_s=0)  # a grow is under way: not asked twice
        for _ in range(3):  # each slot wakes the loop as it is taken
            assert woken.acquire(timeout=30)
        chores.drain()
        assert keeper.held == 3 and not keeper.growing
        assert _active(share.name) == 3
        # Given back: no longer held at once (the loop may not use it), released behind.
        assert keeper.shrink_to(1) == 2
        assert keeper.held == 1
        chores.drain()
        assert _active(share.name) == 1
        # The demand is published and read in the background; the fair share follows it.
        keeper.publish(4)
        assert keeper.asked == 4
        chores.drain()
        assert keeper.published == 4 and keeper.target == 4
        with cap_share(endpoint) as (other_share, other_demand):
            other = SlotKeeper(other_share, other_demand, 4, chores, wake=lambda: None)
            other.publish(4)  # a second run wanting as much: each gets half on its next read
            keeper.publish(4)
            chores.drain()
            assert keeper.target == 2
        chores.check()
    assert _active(share.name) == 0


def test_a_failed_call_is_raised_on_the_loop(prefect_harness: Any) -> None:
    endpoint = f"nokeep-{uuid.uuid4().hex[:8]}"  # no limit was made for it
    with Chores() as chores, cap_share(endpoint) as (share, demand):
        keeper = SlotKeeper(share, demand, 4, chores, wake=lambda: None)
        keeper.grow(1, timeout_s=0)
        chores.drain()
        assert not keeper.growing
        with pytest.raises(CapacityError, match="deploy-endpoint"):
            chores.check()


def test_calls_run_in_order_in_the_callers_context() -> None:
    import contextvars

    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    seen: list[tuple[int, str]] = []
    with Chores() as chores:
        for i in range(5):
            var.set(f"v{i}")
            chores.submit(lambda i=i: seen.append((i, var.get())))
        chores.drain()
    assert seen == [(i, f"v{i}") for i in range(5)]
