"""Autoscaling over localcloud: target, two policies and the alarm; idempotent apply and removal."""

from __future__ import annotations

from typing import Any

from tasks.aws.clients import aws_client
from tasks.endpoint.autoscaling import (
    DIMENSION,
    alarm_name,
    apply_autoscaling,
    describe,
    policy_names,
    remove_autoscaling,
    resource_id,
    step_scaling_policy,
    target_tracking_policy,
)
from tasks.settings import Autoscaling, Profile


def _read_back(profile: Profile) -> dict[str, Any]:
    """What Application Auto Scaling and CloudWatch report, read with plain boto3 calls."""
    name = profile.endpoint_name
    aas = aws_client("application-autoscaling", profile)
    targets = aas.describe_scalable_targets(
        ServiceNamespace="sagemaker", ResourceIds=[resource_id(name)]
    )["ScalableTargets"]
    policies = aas.describe_scaling_policies(
        ServiceNamespace="sagemaker", ResourceId=resource_id(name)
    )["ScalingPolicies"]
    alarms = aws_client("cloudwatch", profile).describe_alarms(AlarmNames=[alarm_name(name)])[
        "MetricAlarms"
    ]
    return {"targets": targets, "policies": policies, "alarms": alarms}


def test_policy_documents_match_the_async_scaling_recipe() -> None:
    settings = Autoscaling()
    tracking = target_tracking_policy("ep", settings)
    metric = tracking["TargetTrackingScalingPolicyConfiguration"]["CustomizedMetricSpecification"]
    assert metric == {
        "MetricName": "ApproximateBacklogSizePerInstance",
        "Namespace": "AWS/SageMaker",
        "Dimensions": [{"Name": "EndpointName", "Value": "ep"}],
        "Statistic": "Average",
    }
    step = step_scaling_policy("ep", settings)["StepScalingPolicyConfiguration"]
    assert step["StepAdjustments"] == [{"MetricIntervalLowerBound": 0.0, "ScalingAdjustment": 1}]


def test_apply_creates_target_policies_and_alarm(profile: Profile) -> None:
    name = profile.endpoint_name
    actions = apply_autoscaling(profile, name)
    assert actions == [
        "RegisterScalableTarget",
        "PutScalingPolicy:TargetTrackingScaling",
        "PutScalingPolicy:StepScaling",
        "PutMetricAlarm",
    ]
    seen = _read_back(profile)
    (target,) = seen["targets"]
    assert target["ScalableDimension"] == DIMENSION
    assert (target["MinCapacity"], target["MaxCapacity"]) == (0, 2)
    policies = {p["PolicyName"]: p for p in seen["policies"]}
    tracking_name, step_name = policy_names(name)
    assert policies[tracking_name]["PolicyType"] == "TargetTrackingScaling"
    assert policies[step_name]["PolicyType"] == "StepScaling"
    (alarm,) = seen["alarms"]
    assert alarm["MetricName"] == "HasBacklogWithoutCapacity"
    assert alarm["Threshold"] == 1.0
    assert alarm["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
    assert alarm["Dimensions"] == [{"Name": "EndpointName", "Value": name}]
    assert alarm["AlarmActions"] == [policies[step_name]["PolicyARN"]]


def test_reapplying_changes_nothing_and_a_new_bound_changes_only_the_target(
    profile: Profile,
) -> None:
    name = profile.endpoint_name
    apply_autoscaling(profile, name)
    before = _read_back(profile)
    assert apply_autoscaling(profile, name) == []
    after = _read_back(profile)
    assert [p["PolicyARN"] for p in after["policies"]] == [
        p["PolicyARN"] for p in before["policies"]
    ]
    wider = profile.model_copy(
        update={"autoscaling": profile.autoscaling.model_copy(update={"max_capacity": 4})}
    )
    assert apply_autoscaling(wider, name) == ["RegisterScalableTarget"]
    assert _read_back(profile)["targets"][0]["MaxCapacity"] == 4


def test_remove_deletes_everything_and_is_safe_twice(profile: Profile) -> None:
    name = profile.endpoint_name
    apply_autoscaling(profile, name)
    removed = remove_autoscaling(profile, name)
    assert removed[0] == "DeleteAlarms"
    assert removed[-1] == "DeregisterScalableTarget"
    assert _read_back(profile) == {"targets": [], "policies": [], "alarms": []}
    assert remove_autoscaling(profile, name) == []
    assert describe(profile, name) == {"target": None, "policies": {}, "alarm": None}


def test_disabled_autoscaling_removes_it(profile: Profile) -> None:
    name = profile.endpoint_name
    apply_autoscaling(profile, name)
    off = profile.model_copy(
        update={"autoscaling": profile.autoscaling.model_copy(update={"enabled": False})}
    )
    assert "DeregisterScalableTarget" in apply_autoscaling(off, name)
    assert _read_back(profile)["targets"] == []
