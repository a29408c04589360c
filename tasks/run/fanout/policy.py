"""How hard and how long a run is driven, as data: the way botocore's waiters are definitions.

``POLLING`` holds the timing of the driver's loop (fixed for every run); ``DriveOptions`` holds
what a run's parameters decide (attempts, reconcile interval, expiry and the overall deadline),
derived from the flow's parameters in one place (``DriveOptions.from_parameters``).
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, Field

from tasks.aws.sagemaker_runtime import (
    DEFAULT_INVOCATION_TIMEOUT_S,
    DEFAULT_REQUEST_TTL_S,
    MAX_INVOCATION_TIMEOUT_S,
)


@dataclass(frozen=True)
class PollingPolicy:
    """The driver loop's timing; every field is a wait or a bound, named for what it paces."""

    idle_wait_s: float = 0.5  # longest wait on the inbox while batches are in flight
    busy_wait_s: float = 0.05  # wait on the inbox while nothing is in flight
    staging_wait_s: float = 0.01  # a slot is free but the next payload is still being staged
    drain_wait_s: float = 0.1  # once every batch is terminal, wait for late repeats to delete
    progress_every_s: float = 0.5
    grow_every_s: float = 0.5  # while holding slots, how often to ask for more of the shared cap
    first_grow_wait_s: float = 5.0  # holding no slot yet: how long one ask may wait for one
    share_every_s: float = 0.5  # how often a run publishes its demand and reads everyone's
    cancel_every_s: float = 1.0  # how often the driver asks Prefect whether its run is cancelled
    meter_every_s: float = 5.0  # how often the endpoint's running instances are sampled (cost)
    reconcile_max_interval_s: float = 60.0  # reconcile back-off ceiling while S3 shows nothing
    poll_errors_tolerated: int = 5  # consecutive failed receives before the run fails
    poll_error_base_s: float = 0.2
    poll_error_max_s: float = 5.0
    stage_lookahead: int = 64  # pending batches looked at for a staged one, beyond free slots
    # Invocations return in milliseconds and are paced by invoke_rate_per_second: a larger cap
    # needs more slots held, not more threads (botocore's connection pool is 64).
    max_invoker_threads: int = 32

    def poll_error_backoff_s(self, failures: int) -> float:
        """The wait after ``failures`` failed receives in a row."""
        return min(self.poll_error_max_s, self.poll_error_base_s * 2**failures)


POLLING = PollingPolicy()


class DriveOptions(BaseModel):
    """How hard and how long to drive one run; ``from_parameters`` derives expiry and deadline."""

    max_attempts: int = Field(3, ge=1)
    poll_wait_s: int = Field(1, ge=0, le=20)
    reconcile_every_s: float = Field(10.0, gt=0)
    reconcile_after_s: float = Field(5.0, ge=0)
    save_every_s: float = Field(10.0, gt=0)
    expiry_s: float = Field(gt=0)
    deadline_s: float = Field(gt=0)

    @classmethod
    def from_parameters(
        cls,
        *,
        max_attempts: int,
        request_ttl_s: int | None,
        invocation_timeout_s: int | None,
        reconcile_every_s: float,
        deadline_s: float | None,
    ) -> DriveOptions:
        """The options a run's flow parameters mean (every default spelled out here)."""
        ttl_s = request_ttl_s or DEFAULT_REQUEST_TTL_S
        timeout_s = invocation_timeout_s or DEFAULT_INVOCATION_TIMEOUT_S
        longest_timeout = timeout_s * 2 ** (max_attempts - 1)
        # Every attempt may wait its TTL in the queue and its timeout running.
        default_deadline = float((ttl_s + timeout_s) * max_attempts + 300)
        return cls(
            max_attempts=max_attempts,
            reconcile_every_s=reconcile_every_s,
            reconcile_after_s=min(5.0, reconcile_every_s),
            expiry_s=ttl_s + longest_timeout + 60,
            deadline_s=deadline_s or default_deadline,
        )

    def timeout_for(self, base_s: int | None, attempt: int) -> int | None:
        """The invocation timeout of an attempt: doubled on each re-invoke of an expired request."""
        if base_s is None:
            return None
        return min(MAX_INVOCATION_TIMEOUT_S, base_s * 2 ** (attempt - 1))
