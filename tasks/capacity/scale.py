"""Pay only for what ran: scale the endpoint to zero instances when a run ends and no other run needs it."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.endpoint.spec import concurrency_limit_name, demand_limit_name
from tasks.settings import Profile


def slots_in_use(endpoint: str) -> int:
    """Slots of the endpoint's shared cap held, plus slots wanted, by every run now."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    total = 0
    with get_client(sync_client=True) as client:
        for name in (concurrency_limit_name(endpoint), demand_limit_name(endpoint)):
            try:
                total += int(client.read_global_concurrency_limit_by_name(name).active_slots)
            except ObjectNotFound:
                continue
    return total


@task(name="scale-to-zero", cache_policy=NO_CACHE)
def scale_to_zero_if_idle(profile: Profile, endpoint: str) -> str:
    """Set the endpoint's desired instance count to 0 unless another run holds or wants slots of it.

    Checked after this run gave its own slots back; a run starting right after finds the endpoint
    at zero and waits for autoscaling's scale-out from zero (when the profile enables it).
    """
    from tasks.endpoint.deploy import scale_to_zero

    logger = get_run_logger()
    busy = slots_in_use(endpoint)
    if busy:
        note = f"kept: other runs hold or want {busy} slots of {concurrency_limit_name(endpoint)}"
    elif scale_to_zero(profile, endpoint):
        note = "scaled to zero instances"
    else:
        note = "already at zero instances (or not in service)"
    logger.info("endpoint %s after the run: %s", endpoint, note)
    return note
