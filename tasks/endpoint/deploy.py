"""SageMaker Model, EndpointConfig and Endpoint: create, update, find, wait, delete — idempotently."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from botocore.exceptions import ClientError, WaiterError

from tasks.aws.clients import aws_client
from tasks.endpoint.spec import (
    HASH_LENGTH,
    VARIANT_NAME,
    EndpointSpec,
    concurrency_limit_name,
    resource_head,
)
from tasks.settings import Profile

IN_PROGRESS = {"Creating", "Updating", "SystemUpdating", "RollingBack"}


class EndpointDeployError(RuntimeError):
    """SageMaker could not bring the endpoint to the requested config; carries its FailureReason."""


def _not_found(exc: ClientError) -> bool:
    """SageMaker answers a missing resource with ValidationException 'Could not find …'."""
    error = exc.response.get("Error", {})
    return error.get("Code") == "ValidationException" and "ould not find" in str(
        error.get("Message", "")
    )


def _already_exists(exc: ClientError) -> bool:
    """A concurrent deploy made it first: 'Cannot create already existing …'."""
    return "already existing" in str(exc.response.get("Error", {}).get("Message", ""))


def describe_endpoint(profile: Profile, name: str) -> dict[str, Any] | None:
    """DescribeEndpoint's answer, or None when there is no such endpoint."""
    try:
        return dict(aws_client("sagemaker", profile).describe_endpoint(EndpointName=name))
    except ClientError as exc:
        if _not_found(exc):
            return None
        raise


def _create_unless_exists(describe: Callable[[], object], create: Callable[[], object]) -> bool:
    """Describe, and create only when SageMaker says it is not there; True when created."""
    try:
        describe()
        return False
    except ClientError as exc:
        if not _not_found(exc):
            raise
    try:
        create()
    except ClientError as exc:
        if _already_exists(exc):  # created by a concurrent deploy in between
            return False
        raise
    return True


def ensure_model(profile: Profile, spec: EndpointSpec) -> bool:
    """Create the spec's Model unless it exists; True when created."""
    sm = aws_client("sagemaker", profile)
    return _create_unless_exists(
        lambda: sm.describe_model(ModelName=spec.resource_name),
        lambda: sm.create_model(**spec.create_model_request()),
    )


def ensure_endpoint_config(profile: Profile, spec: EndpointSpec) -> bool:
    """Create the spec's EndpointConfig unless it exists; True when created."""
    sm = aws_client("sagemaker", profile)
    return _create_unless_exists(
        lambda: sm.describe_endpoint_config(EndpointConfigName=spec.resource_name),
        lambda: sm.create_endpoint_config(**spec.create_endpoint_config_request()),
    )


def wait_in_service(
    profile: Profile, name: str, *, delay_s: int, max_attempts: int
) -> dict[str, Any]:
    """Wait with botocore's ``endpoint_in_service``; raise with SageMaker's FailureReason if it fails."""
    sm = aws_client("sagemaker", profile)
    try:
        sm.get_waiter("endpoint_in_service").wait(
            EndpointName=name, WaiterConfig={"Delay": delay_s, "MaxAttempts": max_attempts}
        )
    except WaiterError as exc:
        described = describe_endpoint(profile, name) or {}
        status = described.get("EndpointStatus", "missing")
        reason = described.get("FailureReason") or str(exc)
        raise EndpointDeployError(
            f"endpoint {name} is {status}, not InService: {reason}. Fix the model or config "
            "and run deploy_endpoint again (a Failed endpoint is deleted and re-created)"
        ) from exc
    return describe_endpoint(profile, name) or {}


def wait_deleted(profile: Profile, name: str, *, delay_s: int, max_attempts: int) -> None:
    """Wait with botocore's ``endpoint_deleted``; raise with the FailureReason if deletion fails."""
    sm = aws_client("sagemaker", profile)
    try:
        sm.get_waiter("endpoint_deleted").wait(
            EndpointName=name, WaiterConfig={"Delay": delay_s, "MaxAttempts": max_attempts}
        )
    except WaiterError as exc:
        described = describe_endpoint(profile, name) or {}
        raise EndpointDeployError(
            f"endpoint {name} was not deleted (status {described.get('EndpointStatus')}): "
            f"{described.get('FailureReason') or exc}; retry teardown_endpoint(mode='delete')"
        ) from exc


def delete_endpoint(profile: Profile, name: str) -> bool:
    """DeleteEndpoint unless it is already gone or going; True when a delete was requested."""
    current = describe_endpoint(profile, name)
    if current is None or current.get("EndpointStatus") == "Deleting":
        return False
    try:
        aws_client("sagemaker", profile).delete_endpoint(EndpointName=name)
    except ClientError as exc:
        if _not_found(exc):
            return False
        raise
    return True


def apply_endpoint(
    profile: Profile, spec: EndpointSpec, *, delay_s: int = 30, max_attempts: int = 120
) -> list[str]:
    """Bring the endpoint to the spec's config; returns the SageMaker calls made (empty: unchanged)."""
    name = spec.endpoint_name
    target = spec.resource_name
    sm = aws_client("sagemaker", profile)
    actions: list[str] = []
    if ensure_model(profile, spec):
        actions.append("CreateModel")
    if ensure_endpoint_config(profile, spec):
        actions.append("CreateEndpointConfig")

    current = describe_endpoint(profile, name)
    if current is not None and current.get("EndpointStatus") in IN_PROGRESS:
        current = _settle(profile, name, delay_s=delay_s, max_attempts=max_attempts)
    if current is not None and current.get("EndpointStatus") == "Deleting":
        wait_deleted(profile, name, delay_s=delay_s, max_attempts=max_attempts)
        current = None
    if current is not None and current.get("EndpointStatus") == "Failed":
        # A Failed endpoint never served; SageMaker cannot update it, only delete it.
        sm.delete_endpoint(EndpointName=name)
        actions.append("DeleteEndpoint")
        wait_deleted(profile, name, delay_s=delay_s, max_attempts=max_attempts)
        current = None

    if current is None:
        sm.create_endpoint(EndpointName=name, EndpointConfigName=target)
        actions.append("CreateEndpoint")
        wait_in_service(profile, name, delay_s=delay_s, max_attempts=max_attempts)
        return actions
    previous = current.get("EndpointConfigName")
    if previous == target:
        return actions
    sm.update_endpoint(EndpointName=name, EndpointConfigName=target)
    actions.append("UpdateEndpoint")
    done = wait_in_service(profile, name, delay_s=delay_s, max_attempts=max_attempts)
    if done.get("EndpointConfigName") != target:
        raise EndpointDeployError(
            f"update of endpoint {name} to {target} failed: "
            f"{done.get('FailureReason') or 'no reason given'}. The previous config "
            f"{previous} keeps serving; fix the model and run deploy_endpoint again"
        )
    return actions


def _settle(
    profile: Profile, name: str, *, delay_s: int, max_attempts: int
) -> dict[str, Any] | None:
    """Wait out an in-progress create/update so the next decision sees a stable state."""
    try:
        return wait_in_service(profile, name, delay_s=delay_s, max_attempts=max_attempts)
    except EndpointDeployError:
        return describe_endpoint(profile, name)


def current_instance_type(profile: Profile, name: str) -> str | None:
    """The instance type the endpoint's current config runs on, its first pool's with instance
    pools (None: no endpoint)."""
    current = describe_endpoint(profile, name)
    if current is None:
        return None
    from tasks.endpoint.usage import config_instance_types

    types = config_instance_types(profile, str(current["EndpointConfigName"]))
    return types[0] if types else None


def resource_pattern(endpoint_name: str) -> re.Pattern[str]:
    """Matches the Model and EndpointConfig names deploy_endpoint makes for this endpoint."""
    head = re.escape(resource_head(endpoint_name))
    return re.compile(rf"^{head}-[0-9a-f]{{{HASH_LENGTH}}}$")


def _list_names(
    profile: Profile, operation: str, key: str, name_key: str, contains: str
) -> list[str]:
    paginator = aws_client("sagemaker", profile).get_paginator(operation)
    names: list[str] = []
    for page in paginator.paginate(NameContains=contains):
        names.extend(str(item[name_key]) for item in page.get(key, []))
    return names


def delete_endpoint_resources(profile: Profile, endpoint_name: str) -> list[str]:
    """Delete every EndpointConfig and Model deploy_endpoint made for this endpoint."""
    sm = aws_client("sagemaker", profile)
    pattern = resource_pattern(endpoint_name)
    contains = resource_head(endpoint_name)
    deleted: list[str] = []
    configs = _list_names(
        profile, "list_endpoint_configs", "EndpointConfigs", "EndpointConfigName", contains
    )
    for name in sorted(n for n in configs if pattern.match(n)):
        try:
            sm.delete_endpoint_config(EndpointConfigName=name)
            deleted.append(f"DeleteEndpointConfig:{name}")
        except ClientError as exc:
            if not _not_found(exc):
                raise
    models = _list_names(profile, "list_models", "Models", "ModelName", contains)
    for name in sorted(n for n in models if pattern.match(n)):
        try:
            sm.delete_model(ModelName=name)
            deleted.append(f"DeleteModel:{name}")
        except ClientError as exc:
            if not _not_found(exc):
                raise
    return deleted


def scale_to_zero(profile: Profile, name: str) -> bool:
    """Set the variant's desired instance count to 0; False when there is nothing to scale."""
    current = describe_endpoint(profile, name)
    if current is None or current.get("EndpointStatus") != "InService":
        return False
    variants = {v.get("VariantName"): v for v in current.get("ProductionVariants", [])}
    variant = variants.get(VARIANT_NAME, {})
    if variant.get("DesiredInstanceCount", variant.get("CurrentInstanceCount")) == 0:
        return False
    aws_client("sagemaker", profile).update_endpoint_weights_and_capacities(
        EndpointName=name,
        DesiredWeightsAndCapacities=[{"VariantName": VARIANT_NAME, "DesiredInstanceCount": 0}],
    )
    return True


def ensure_invocation_limit(endpoint: str, limit: int) -> str:
    """Create or update the Prefect global concurrency limit ``sagemaker:<endpoint>``."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import (
        GlobalConcurrencyLimitCreate,
        GlobalConcurrencyLimitUpdate,
    )
    from prefect.exceptions import ObjectNotFound

    name = concurrency_limit_name(endpoint)
    with get_client(sync_client=True) as client:
        try:
            existing = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=name, limit=limit, active=True)
            )
            return "created"
        if existing.limit != limit or not existing.active:
            client.update_global_concurrency_limit(
                name, GlobalConcurrencyLimitUpdate(limit=limit, active=True)
            )
            return "updated"
    return "unchanged"
