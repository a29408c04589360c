"""What driving a run took: submission rounds, invocations, retries, recoveries, the cap's slots."""

from __future__ import annotations

from pydantic import BaseModel, Field

from tasks.endpoint.usage import EndpointUsage


class DriveStats(BaseModel):
    """What driving the run took."""

    waves: int = Field(0, description="Submission rounds (a refill of one or more batches).")
    invocations: int = 0
    invoke_errors: int = 0
    reconciled: int = 0
    retries: int = 0
    splits: int = 0
    expired: int = 0
    deadline_failed: int = 0
    canceled_documents: int = Field(
        0, description="Documents unfinished when the flow run was cancelled (resume runs them)."
    )
    slots_held_max: int = Field(0, description="Most slots of the shared cap held at once.")
    slots_released: int = Field(
        0, description="Slots given back mid-run (the tail draining, or another run's fair share)."
    )
    usage: EndpointUsage | None = Field(
        None, description="The endpoint's instances, metered while the run was driven."
    )
