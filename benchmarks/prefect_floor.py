"""Prefect's own cost of one flow run: an empty flow, on the same server as docflow's runs.

Not a competitor: the floor under any Prefect flow (creating the run, its state changes, the
heartbeat thread's shutdown), reported next to docflow so its fixed cost is not taken for ours.
"""

from __future__ import annotations

from typing import Any

from benchmarks.spec import ContenderSpec, Outcome
from tasks.settings import Profile


def import_engine() -> None:
    """Import what Prefect imports on a process's first flow call (not timed, as the flow's own
    imports are not): its flow and task engines, and FastAPI's encoder for the flow's parameters
    (about 0.45 s of the first flow run's parameters on the bench's machine)."""
    import fastapi.encoders  # noqa: F401
    import prefect.flow_engine  # noqa: F401
    import prefect.task_engine  # noqa: F401


def prepare(spec: ContenderSpec, profile: Profile) -> dict[str, Any]:
    """Define the empty flow (not timed)."""
    from prefect import flow

    import_engine()

    @flow(name="bench-empty-flow")
    def empty() -> int:
        return 0

    return {"flow": empty}


def run(spec: ContenderSpec, profile: Profile, prepared: dict[str, Any]) -> Outcome:
    """One run of the empty flow."""
    prepared["flow"]()
    return Outcome(docs_completed=0)
