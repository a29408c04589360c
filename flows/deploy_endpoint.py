"""Deploy or refresh the SageMaker endpoint(s): topics, role, model, config, endpoint, scaling.

Async (process_documents), real-time (ask_documents, ``docflow ask``: sessions and streaming), or
both side by side (``endpoint_mode``).
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.aws.clients import aws_client
from tasks.aws.iam import ensure_execution_role
from tasks.aws.sagemaker_runtime import DEFAULT_INVOCATION_TIMEOUT_S
from tasks.endpoint.autoscaling import apply_autoscaling, remove_autoscaling
from tasks.endpoint.deploy import apply_endpoint, current_instance_type, ensure_invocation_limit
from tasks.endpoint.spec import (
    EndpointSpec,
    build_endpoint_spec,
    realtime_endpoint_name,
    resolve_image_uri,
    validate_endpoint_name,
)
from tasks.endpoint.topics import ensure_endpoint_topics
from tasks.model.packaging import latest_artifact
from tasks.settings import Profile, load_profile


@task(name="ensure-topics")
def ensure_topics_task(profile: Profile, endpoint_name: str) -> dict[str, Any]:
    """Create-or-find the endpoint's success and error SNS topics."""
    return ensure_endpoint_topics(profile, endpoint_name)


@task(name="ensure-execution-role")
def ensure_role_task(profile: Profile, endpoint_name: str, image_uri: str) -> dict[str, Any]:
    """Create-or-find the narrow SageMaker execution role rendered from deployments/iam."""
    arn, actions = ensure_execution_role(profile, endpoint_name=endpoint_name, image_uri=image_uri)
    return {"arn": arn, "actions": actions}


@task(name="apply-endpoint")
def apply_endpoint_task(
    profile: Profile, spec_json: dict[str, Any], delay_s: int, max_attempts: int
) -> list[str]:
    """Create, update or leave the endpoint so it runs the spec's config; waits for InService."""
    spec = EndpointSpec.model_validate(spec_json)
    actions: list[str] = []
    if current_instance_type(profile, spec.endpoint_name) not in {None, spec.instance_type}:
        # SageMaker rejects an update that changes the instance type of a scaled variant;
        # apply-autoscaling registers it again afterwards.
        actions += remove_autoscaling(profile, spec.endpoint_name)
    return actions + apply_endpoint(profile, spec, delay_s=delay_s, max_attempts=max_attempts)


@task(name="apply-autoscaling")
def apply_autoscaling_task(profile: Profile, endpoint_name: str) -> list[str]:
    """Scalable target, target tracking, step scaling and the scale-from-zero alarm."""
    return apply_autoscaling(profile, endpoint_name)


@task(name="ensure-invocation-limit")
def ensure_invocation_limit_task(endpoint_name: str, limit: int) -> str:
    """The global concurrency limit process_documents acquires with strict=True."""
    return ensure_invocation_limit(endpoint_name, limit)


@task(name="latest-packaged-model", cache_policy=NO_CACHE)
def latest_packaged(profile: Profile) -> str:
    """The model URL of the newest artifact package_model uploaded (logged), else a clear error."""
    found = latest_artifact(aws_client("s3", profile), profile)
    where = profile.s3_uri(profile.prefixes.models)
    if found is None:
        raise ValueError(
            f"deploy_endpoint needs model_data_url: no packaged model under {where}/; run "
            "package_model first, or pass model_data_url='s3://…/model.tar.gz' (or "
            "model_artifact=<the dict package_model returned>)"
        )
    get_run_logger().info(
        "model_data_url not given: using the latest packaged artifact %s (%s, %s, packaged %s)",
        found.model_data_url,
        found.name,
        found.source,
        found.created_at,
    )
    return found.model_data_url


@flow(name="deploy-endpoint", flow_run_name="deploy-{profile}")
def deploy_endpoint(
    profile: str = "local",
    model_data_url: str | None = None,
    model_artifact: dict[str, Any] | None = None,
    endpoint_name: str | None = None,
    image_uri: str | None = None,
    instance_type: str | None = None,
    instance_types: list[str] | None = None,
    instance_count: int | None = None,
    max_concurrent_invocations_per_instance: int | None = None,
    invocation_timeout_s: int = DEFAULT_INVOCATION_TIMEOUT_S,
    environment: dict[str, str] | None = None,
    create_role: bool = False,
    wait_delay_s: int = 30,
    wait_max_attempts: int = 120,
    endpoint_mode: str | None = None,
) -> dict[str, Any]:
    """Deploy the model to the async endpoint, or update it, or do nothing when it already matches.

    Args:
        profile: deployment profile name (deployments/<name>.yaml) or path to a YAML file.
        model_data_url: s3://…/model.tar.gz, or an uncompressed prefix ending in '/'; default:
            the latest artifact package_model uploaded to the profile's bucket.
        model_artifact: the dict package_model returned (used when model_data_url is not given).
        endpoint_name: overrides the profile's endpoint_name.
        image_uri: container image; default: the profile's, else the Hugging Face PyTorch
            image of the profile's serving stack (transformers 5.5.3) for the region and instance
            type, resolved offline from the SageMaker SDK v3 tables (sagemaker-core).
        instance_type: overrides the profile's (default ml.g5.2xlarge).
        instance_types: instance pools: up to 5 instance types in priority order; SageMaker
            starts the first that has capacity (at create, scale-out and scale-in). Overrides
            instance_type; all must run the same image.
        instance_count: initial instance count; overrides the profile's.
        max_concurrent_invocations_per_instance: overrides the profile's.
        invocation_timeout_s: the model server's per-request timeout (1-3600 s).
        environment: extra environment variables for the model container.
        create_role: create (or update) the narrow execution role even when the profile names one.
        wait_delay_s: seconds between DescribeEndpoint polls while waiting.
        wait_max_attempts: polls before giving up.
        endpoint_mode: ``async``, ``realtime`` (the endpoint is real-time: InvokeEndpoint,
            streaming, sticky sessions; no autoscaling) or ``both`` (async at the endpoint name,
            real-time beside it at ``<endpoint_name>-rt``); default: the profile's.

    Returns:
        endpoint_name, endpoint_config_name, model_name, spec_hash, topics, role, and
        ``actions``: every Create*/Update*/Put* call made (empty when nothing changed);
        ``realtime_endpoint_name`` when a real-time endpoint was deployed.
    """
    logger = get_run_logger()
    prof = load_profile(profile)
    model = model_data_url or model_artifact or latest_packaged(prof)
    name = validate_endpoint_name(endpoint_name or prof.endpoint_name)
    itype = instance_types[0] if instance_types else instance_type or prof.instance_type
    image = (
        image_uri
        or prof.image_uri
        or resolve_image_uri(prof.region, itype, stack=prof.serving_stack)
    )
    actions: list[str] = []

    topics = ensure_topics_task(prof, name)
    actions += [f"CreateTopic:{t}" for t in topics["created"]]

    role_arn = prof.execution_role_arn
    if create_role or role_arn is None:
        role = ensure_role_task(prof, name, image)
        role_arn = role["arn"]
        actions += role["actions"]

    mode = endpoint_mode or prof.endpoint_mode
    if mode not in ("async", "realtime", "both"):
        raise ValueError(f"endpoint_mode={mode!r}: use 'async', 'realtime' or 'both'")
    targets = [(name, mode == "realtime")]
    if mode == "both":
        targets.append((validate_endpoint_name(realtime_endpoint_name(name)), True))
    specs: list[EndpointSpec] = []
    for target, realtime in targets:
        spec = build_endpoint_spec(
            prof,
            model=model,
            execution_role_arn=str(role_arn),
            success_topic_arn=topics["success_topic_arn"],
            error_topic_arn=topics["error_topic_arn"],
            endpoint_name=target,
            image_uri=image,
            instance_type=itype,
            instance_types=instance_types,
            instance_count=instance_count,
            max_concurrent_invocations_per_instance=max_concurrent_invocations_per_instance,
            invocation_timeout_s=invocation_timeout_s,
            environment=environment,
            realtime=realtime,
        )
        kind = "real-time" if realtime else "async"
        logger.info("%s endpoint %s: spec %s (image %s)", kind, target, spec.resource_name, image)
        actions += apply_endpoint_task(
            prof, spec.model_dump(mode="json"), wait_delay_s, wait_max_attempts
        )
        if not realtime:  # scaling on the async backlog (and from zero) is for async endpoints
            actions += apply_autoscaling_task(prof, target)
        limit = ensure_invocation_limit_task(target, prof.max_outstanding_invocations)
        if limit != "unchanged":
            actions.append(f"ConcurrencyLimit:{limit}")
        logger.info(
            "endpoint %s is InService on %s; actions: %s",
            target,
            spec.resource_name,
            actions or "none",
        )
        specs.append(spec)
    spec = specs[0]
    realtime_names = [s.endpoint_name for s in specs if s.realtime]
    return {
        "endpoint_name": name,
        "endpoint_config_name": spec.resource_name,
        "model_name": spec.resource_name,
        "spec_hash": spec.spec_hash(),
        "image_uri": spec.image_uri,
        "execution_role_arn": role_arn,
        "success_topic_arn": topics["success_topic_arn"],
        "error_topic_arn": topics["error_topic_arn"],
        "actions": actions,
        **({"realtime_endpoint_name": realtime_names[0]} if realtime_names else {}),
    }


if __name__ == "__main__":
    deploy_endpoint(profile="local", model_data_url="s3://docflow-local/models/echo/model.tar.gz")
