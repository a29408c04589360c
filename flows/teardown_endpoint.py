"""Stop paying for the endpoint: scale it to zero, or delete it and everything deploy made for it."""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow, get_run_logger, task

from tasks.endpoint.autoscaling import remove_autoscaling
from tasks.endpoint.deploy import (
    delete_endpoint,
    delete_endpoint_resources,
    describe_endpoint,
    scale_to_zero,
    wait_deleted,
    wait_in_service,
)
from tasks.endpoint.spec import validate_endpoint_name
from tasks.settings import Profile, load_profile

KEPT = (
    "model artifacts and results in S3, the success/error SNS topics, the execution role "
    "and the Prefect concurrency limit are kept"
)


@task(name="scale-to-zero")
def scale_to_zero_task(
    profile: Profile, endpoint_name: str, delay_s: int, max_attempts: int
) -> list[str]:
    """UpdateEndpointWeightsAndCapacities to 0 instances (needs autoscaling min_capacity 0)."""
    if profile.autoscaling.enabled and profile.autoscaling.min_capacity != 0:
        raise ValueError(
            f"endpoint {endpoint_name} cannot scale to zero while autoscaling.min_capacity is "
            f"{profile.autoscaling.min_capacity}; set it to 0 in the profile and deploy again, "
            "or use mode='delete'"
        )
    if not scale_to_zero(profile, endpoint_name):
        return []
    wait_in_service(profile, endpoint_name, delay_s=delay_s, max_attempts=max_attempts)
    return ["UpdateEndpointWeightsAndCapacities"]


@task(name="delete-endpoint")
def delete_endpoint_task(
    profile: Profile, endpoint_name: str, delay_s: int, max_attempts: int
) -> list[str]:
    """Delete scaling, the endpoint (waiting until it is gone), and its configs and models."""
    actions = remove_autoscaling(profile, endpoint_name)
    if delete_endpoint(profile, endpoint_name):
        actions.append("DeleteEndpoint")
    if describe_endpoint(profile, endpoint_name) is not None:
        wait_deleted(profile, endpoint_name, delay_s=delay_s, max_attempts=max_attempts)
    actions += delete_endpoint_resources(profile, endpoint_name)
    return actions


@flow(name="teardown-endpoint", flow_run_name="{mode}-{profile}")
def teardown_endpoint(
    profile: str = "local",
    mode: Literal["scale_to_zero", "delete"] = "scale_to_zero",
    endpoint_name: str | None = None,
    wait_delay_s: int = 30,
    wait_max_attempts: int = 120,
) -> dict[str, Any]:
    """Scale the endpoint to zero instances, or delete it; idempotent and safe when already gone.

    Args:
        profile: deployment profile name (deployments/<name>.yaml) or path to a YAML file.
        mode: "scale_to_zero" keeps the endpoint (it comes back when work arrives);
            "delete" removes endpoint, configs, models, alarm, scaling policies and target.
        endpoint_name: overrides the profile's endpoint_name.
        wait_delay_s: seconds between DescribeEndpoint polls while waiting.
        wait_max_attempts: polls before giving up.

    Returns:
        endpoint_name, mode, ``actions`` (every call that changed something) and what was kept.
    """
    logger = get_run_logger()
    prof = load_profile(profile)
    name = validate_endpoint_name(endpoint_name or prof.endpoint_name)
    if mode == "scale_to_zero":
        actions = scale_to_zero_task(prof, name, wait_delay_s, wait_max_attempts)
    elif mode == "delete":
        actions = delete_endpoint_task(prof, name, wait_delay_s, wait_max_attempts)
    else:
        raise ValueError(f"mode {mode!r} is not one of 'scale_to_zero', 'delete'")
    logger.info("teardown of %s (%s): %s; %s", name, mode, actions or "nothing to do", KEPT)
    return {"endpoint_name": name, "mode": mode, "actions": actions, "kept": KEPT}


if __name__ == "__main__":
    teardown_endpoint(profile="local", mode="delete")
