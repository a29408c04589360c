"""Scale an async endpoint to and from zero: scalable target, two policies, one CloudWatch alarm."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from tasks.aws.clients import aws_client
from tasks.endpoint.spec import VARIANT_NAME
from tasks.settings import Autoscaling, Profile

NAMESPACE = "sagemaker"
DIMENSION = "sagemaker:variant:DesiredInstanceCount"
METRIC_NAMESPACE = "AWS/SageMaker"
_NOT_FOUND = {"ObjectNotFoundException", "ValidationException", "ResourceNotFound"}


def resource_id(endpoint_name: str, variant: str = VARIANT_NAME) -> str:
    """Application Auto Scaling's id of the endpoint's variant."""
    return f"endpoint/{endpoint_name}/variant/{variant}"


def policy_names(endpoint_name: str) -> tuple[str, str]:
    """The target-tracking and the step-scaling (scale from zero) policy names."""
    return f"{endpoint_name}-backlog-per-instance", f"{endpoint_name}-scale-from-zero"


def alarm_name(endpoint_name: str) -> str:
    """The alarm that fires the step policy when requests wait and no instance runs."""
    return f"{endpoint_name}-has-backlog-without-capacity"


def _dimensions(endpoint_name: str) -> list[dict[str, str]]:
    return [{"Name": "EndpointName", "Value": endpoint_name}]


def scalable_target(endpoint_name: str, settings: Autoscaling) -> dict[str, Any]:
    """RegisterScalableTarget's arguments."""
    return {
        "ServiceNamespace": NAMESPACE,
        "ResourceId": resource_id(endpoint_name),
        "ScalableDimension": DIMENSION,
        "MinCapacity": settings.min_capacity,
        "MaxCapacity": settings.max_capacity,
    }


def target_tracking_policy(endpoint_name: str, settings: Autoscaling) -> dict[str, Any]:
    """PutScalingPolicy's arguments for tracking ApproximateBacklogSizePerInstance."""
    return {
        "PolicyName": policy_names(endpoint_name)[0],
        "ServiceNamespace": NAMESPACE,
        "ResourceId": resource_id(endpoint_name),
        "ScalableDimension": DIMENSION,
        "PolicyType": "TargetTrackingScaling",
        "TargetTrackingScalingPolicyConfiguration": {
            "TargetValue": float(settings.target_backlog_per_instance),
            "CustomizedMetricSpecification": {
                "MetricName": "ApproximateBacklogSizePerInstance",
                "Namespace": METRIC_NAMESPACE,
                "Dimensions": _dimensions(endpoint_name),
                "Statistic": "Average",
            },
            "ScaleInCooldown": settings.scale_in_cooldown_s,
            "ScaleOutCooldown": settings.scale_out_cooldown_s,
        },
    }


def step_scaling_policy(endpoint_name: str, settings: Autoscaling) -> dict[str, Any]:
    """PutScalingPolicy's arguments for adding one instance when the alarm fires (from zero)."""
    return {
        "PolicyName": policy_names(endpoint_name)[1],
        "ServiceNamespace": NAMESPACE,
        "ResourceId": resource_id(endpoint_name),
        "ScalableDimension": DIMENSION,
        "PolicyType": "StepScaling",
        "StepScalingPolicyConfiguration": {
            "AdjustmentType": "ChangeInCapacity",
            "StepAdjustments": [{"MetricIntervalLowerBound": 0.0, "ScalingAdjustment": 1}],
            "Cooldown": settings.scale_out_cooldown_s,
            "MetricAggregationType": "Average",
        },
    }


def backlog_alarm(endpoint_name: str, step_policy_arn: str) -> dict[str, Any]:
    """PutMetricAlarm's arguments: HasBacklogWithoutCapacity >= 1 triggers the step policy."""
    return {
        "AlarmName": alarm_name(endpoint_name),
        "AlarmDescription": f"Scale docflow endpoint {endpoint_name} up from zero",
        "MetricName": "HasBacklogWithoutCapacity",
        "Namespace": METRIC_NAMESPACE,
        "Dimensions": _dimensions(endpoint_name),
        "Statistic": "Average",
        "Period": 60,
        "EvaluationPeriods": 2,
        "DatapointsToAlarm": 2,
        "Threshold": 1.0,
        "ComparisonOperator": "GreaterThanOrEqualToThreshold",
        "TreatMissingData": "missing",
        "ActionsEnabled": True,
        "AlarmActions": [step_policy_arn],
    }


def _differs(wanted: dict[str, Any], current: dict[str, Any] | None) -> bool:
    """True when any field we set has another value (or is absent) in what AWS describes."""
    if current is None:
        return True
    return any(_normalise(current.get(k)) != _normalise(v) for k, v in wanted.items())


def _normalise(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _normalise(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalise(v) for v in value]
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return float(value)
    return value


def describe(profile: Profile, endpoint_name: str) -> dict[str, Any]:
    """The endpoint's scalable target, scaling policies (by name) and alarm, as AWS reports them."""
    aas = aws_client("application-autoscaling", profile)
    rid = resource_id(endpoint_name)
    targets = aas.describe_scalable_targets(
        ServiceNamespace=NAMESPACE, ResourceIds=[rid], ScalableDimension=DIMENSION
    )["ScalableTargets"]
    policies = aas.describe_scaling_policies(
        ServiceNamespace=NAMESPACE, ResourceId=rid, ScalableDimension=DIMENSION
    )["ScalingPolicies"]
    alarms = aws_client("cloudwatch", profile).describe_alarms(
        AlarmNames=[alarm_name(endpoint_name)]
    )["MetricAlarms"]
    return {
        "target": targets[0] if targets else None,
        "policies": {p["PolicyName"]: p for p in policies},
        "alarm": alarms[0] if alarms else None,
    }


def apply_autoscaling(profile: Profile, endpoint_name: str) -> list[str]:
    """Make target, policies and alarm match the profile; returns the calls made (empty: unchanged)."""
    settings = profile.autoscaling
    if not settings.enabled:
        return remove_autoscaling(profile, endpoint_name)
    aas = aws_client("application-autoscaling", profile)
    current = describe(profile, endpoint_name)
    actions: list[str] = []

    target = scalable_target(endpoint_name, settings)
    if _differs(target, current["target"]):
        aas.register_scalable_target(**target)
        actions.append("RegisterScalableTarget")

    step_arn = ""
    for wanted in (
        target_tracking_policy(endpoint_name, settings),
        step_scaling_policy(endpoint_name, settings),
    ):
        existing = current["policies"].get(wanted["PolicyName"])
        if _differs(wanted, existing):
            arn = aas.put_scaling_policy(**wanted)["PolicyARN"]
            actions.append(f"PutScalingPolicy:{wanted['PolicyType']}")
        else:
            arn = existing["PolicyARN"] if existing else ""
        if wanted["PolicyType"] == "StepScaling":
            step_arn = str(arn)

    alarm = backlog_alarm(endpoint_name, step_arn)
    if _differs(alarm, current["alarm"]):
        aws_client("cloudwatch", profile).put_metric_alarm(**alarm)
        actions.append("PutMetricAlarm")
    return actions


def _ignore_missing(exc: ClientError) -> None:
    if exc.response.get("Error", {}).get("Code") not in _NOT_FOUND:
        raise exc


def remove_autoscaling(profile: Profile, endpoint_name: str) -> list[str]:
    """Delete the alarm, both policies and the scalable target; safe when they are already gone."""
    aas = aws_client("application-autoscaling", profile)
    current = describe(profile, endpoint_name)
    actions: list[str] = []
    if current["alarm"] is not None:
        aws_client("cloudwatch", profile).delete_alarms(AlarmNames=[alarm_name(endpoint_name)])
        actions.append("DeleteAlarms")
    for name in (n for n in policy_names(endpoint_name) if n in current["policies"]):
        try:
            aas.delete_scaling_policy(
                PolicyName=name,
                ServiceNamespace=NAMESPACE,
                ResourceId=resource_id(endpoint_name),
                ScalableDimension=DIMENSION,
            )
            actions.append(f"DeleteScalingPolicy:{name}")
        except ClientError as exc:
            _ignore_missing(exc)
    if current["target"] is not None:
        try:
            aas.deregister_scalable_target(
                ServiceNamespace=NAMESPACE,
                ResourceId=resource_id(endpoint_name),
                ScalableDimension=DIMENSION,
            )
            actions.append("DeregisterScalableTarget")
        except ClientError as exc:
            _ignore_missing(exc)
    return actions
