"""Prefect's own cost of one flow run: an empty flow, on the same server as docflow's runs.

Not a competitor: the floor under any Prefect flow (creating the run, its state changes, the
heartbeat thread's shutdown), reported next to docflow so its fixed cost is not taken for ours.
"""

from __future__ import annotations

from typing import Any

from benchmarks.spec import ContenderSpec, Outcome
from tasks.settings import Profile


def prepare(spec: ContenderSpec, profile: Profile) -> dict[str, Any]:
    """Define the empty flow (not timed)."""
    from prefect import flow

    @flow(name="bench-empty-flow")
    def empty() -> int:
        return 0

    return {"flow": empty}


def run(spec: ContenderSpec, profile: Profile, prepared: dict[str, Any]) -> Outcome:
    """One run of the empty flow."""
    prepared["flow"]()
    return Outcome(docs_completed=0)
