"""Application Auto Scaling acts on a localcloud endpoint: idle -> scale in to zero, work -> scale from zero."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tasks.aws.clients import aws_client
from tasks.settings import Profile
from tests.localcloud.helpers import deploy_echo, jsonl, receive, topics_and_queue

DIMENSION = "sagemaker:variant:DesiredInstanceCount"


def _wait_for(check: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.2)


def _autoscale(profile: Profile, name: str) -> None:
    """The set-up AWS-FACTS.md describes: target tracking on backlog + step policy from zero."""
    aas = aws_client("application-autoscaling", profile)
    rid = f"endpoint/{name}/variant/AllTraffic"
    common = {"ServiceNamespace": "sagemaker", "ResourceId": rid, "ScalableDimension": DIMENSION}
    aas.register_scalable_target(MinCapacity=0, MaxCapacity=2, **common)
    dims = [{"Name": "EndpointName", "Value": name}]
    aas.put_scaling_policy(
        PolicyName=f"{name}-backlog",
        PolicyType="TargetTrackingScaling",
        TargetTrackingScalingPolicyConfiguration={
            "TargetValue": 2.0,
            "CustomizedMetricSpecification": {
                "MetricName": "ApproximateBacklogSizePerInstance",
                "Namespace": "AWS/SageMaker",
                "Dimensions": dims,
                "Statistic": "Average",
            },
            "ScaleInCooldown": 600,
            "ScaleOutCooldown": 60,
        },
        **common,
    )
    step_arn = aas.put_scaling_policy(
        PolicyName=f"{name}-from-zero",
        PolicyType="StepScaling",
        StepScalingPolicyConfiguration={
            "AdjustmentType": "ChangeInCapacity",
            "StepAdjustments": [{"MetricIntervalLowerBound": 0.0, "ScalingAdjustment": 1}],
            "Cooldown": 60,
        },
        **common,
    )["PolicyARN"]
    aws_client("cloudwatch", profile).put_metric_alarm(
        AlarmName=f"{name}-backlog-without-capacity",
        MetricName="HasBacklogWithoutCapacity",
        Namespace="AWS/SageMaker",
        Dimensions=dims,
        Statistic="Average",
        Period=60,
        EvaluationPeriods=2,
        Threshold=1.0,
        ComparisonOperator="GreaterThanOrEqualToThreshold",
        AlarmActions=[step_arn],
    )


def test_idle_endpoint_scales_to_zero_and_work_brings_it_back(
    profile: Profile, localcloud: Any
) -> None:
    ok, err, queue = topics_and_queue(profile)
    name = deploy_echo(profile, topics=(ok, err))
    sm = aws_client("sagemaker", profile)

    def desired() -> int:
        variant = sm.describe_endpoint(EndpointName=name)["ProductionVariants"][0]
        return int(variant["DesiredInstanceCount"])

    localcloud.faults.set(autoscale_time_scale=0.002)  # 15 min of low backlog -> 1.8 s
    try:
        _autoscale(profile, name)
        _wait_for(lambda: desired() == 0)
        _wait_for(lambda: localcloud.instance_pids(name) == [])
        rt = aws_client("sagemaker-runtime", profile)
        for i in range(3):
            rt.invoke_endpoint_async(
                EndpointName=name,
                Body=jsonl({"id": f"w{i}", "prompt": "wake"}),
                ContentType="application/jsonlines",
                InferenceId=f"w{i}",
            )
        notes = receive(profile, queue, 3)
        assert sorted(n["inferenceId"] for n in notes) == ["w0", "w1", "w2"]
        assert all(n["invocationStatus"] == "Completed" for n in notes)
        assert desired() >= 1
    finally:
        localcloud.faults.reset()
        aws_client("application-autoscaling", profile).deregister_scalable_target(
            ServiceNamespace="sagemaker",
            ResourceId=f"endpoint/{name}/variant/AllTraffic",
            ScalableDimension=DIMENSION,
        )
    sm.delete_endpoint(EndpointName=name)


def test_step_capacity_adjustment_types() -> None:
    from localcloud.applicationautoscaling.autoscaler import step_capacity

    steps = [
        {"MetricIntervalLowerBound": 0.0, "MetricIntervalUpperBound": 5.0, "ScalingAdjustment": 1},
        {"MetricIntervalLowerBound": 5.0, "ScalingAdjustment": 3},
    ]
    assert (
        step_capacity(0, {"AdjustmentType": "ChangeInCapacity", "StepAdjustments": steps}, 0.0) == 1
    )
    assert (
        step_capacity(1, {"AdjustmentType": "ChangeInCapacity", "StepAdjustments": steps}, 9.0) == 4
    )
    assert step_capacity(2, {"AdjustmentType": "ExactCapacity", "StepAdjustments": steps}, 1.0) == 1
    percent = {"AdjustmentType": "PercentChangeInCapacity", "StepAdjustments": steps}
    assert step_capacity(4, {**percent, "MinAdjustmentMagnitude": 2}, 1.0) == 6
    assert step_capacity(4, percent, -1.0) is None
