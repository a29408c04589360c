"""teardown_endpoint over localcloud: scale to zero, delete everything made for it, keep the rest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from flows.deploy_endpoint import deploy_endpoint
from flows.teardown_endpoint import teardown_endpoint
from localcloud.testing.artifacts import upload_echo_model
from tasks.aws.clients import aws_client
from tasks.endpoint.autoscaling import alarm_name, resource_id
from tasks.settings import Profile
from tests.flows.endpoint_helpers import (
    FAST_WAIT,
    count_calls,
    invoke_once,
    mutations,
    profile_file,
)

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _deploy_two_versions(profile: Profile, path: str) -> list[str]:
    """Deploy v1 then v2, leaving two configs and two models behind; returns their names."""
    names = []
    for version in ("1", "2"):
        url = upload_echo_model(
            aws_client("s3", profile),
            profile.bucket,
            key=f"models/echo/v{version}/model.tar.gz",
            version=version,
        )
        names.append(deploy_endpoint(profile=path, model_data_url=url, **FAST_WAIT)["model_name"])
    return names


def test_delete_removes_endpoint_configs_models_and_scaling_but_keeps_data(
    profile: Profile, tmp_path: Path
) -> None:
    path = profile_file(profile, tmp_path)
    name = profile.endpoint_name
    models = _deploy_two_versions(profile, path)

    result = teardown_endpoint(profile=path, mode="delete", **FAST_WAIT)
    for made in models:
        assert f"DeleteEndpointConfig:{made}" in result["actions"]
        assert f"DeleteModel:{made}" in result["actions"]
    assert "DeleteEndpoint" in result["actions"]
    assert "DeregisterScalableTarget" in result["actions"]

    sm = aws_client("sagemaker", profile)
    with pytest.raises(ClientError, match="ould not find"):
        sm.describe_endpoint(EndpointName=name)
    for made in models:
        with pytest.raises(ClientError):
            sm.describe_endpoint_config(EndpointConfigName=made)
        with pytest.raises(ClientError):
            sm.describe_model(ModelName=made)
    aas = aws_client("application-autoscaling", profile)
    rid = resource_id(name)
    assert (
        aas.describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=[rid])[
            "ScalableTargets"
        ]
        == []
    )
    assert (
        aas.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=rid)[
            "ScalingPolicies"
        ]
        == []
    )
    cloudwatch = aws_client("cloudwatch", profile)
    assert cloudwatch.describe_alarms(AlarmNames=[alarm_name(name)])["MetricAlarms"] == []

    # kept: artifacts in S3 and the topics
    keys = aws_client("s3", profile).list_objects_v2(Bucket=profile.bucket, Prefix="models/")
    assert len(keys.get("Contents", [])) == 2
    # ListTopics pages 100 at a time, and the session's localcloud holds every test's topics.
    pages = aws_client("sns", profile).get_paginator("list_topics").paginate()
    topics = {t["TopicArn"].rsplit(":", 1)[1] for page in pages for t in page["Topics"]}
    assert {f"{name}-success", f"{name}-error"} <= topics

    # again: nothing to do, nothing fails
    with count_calls(profile) as calls:
        again = teardown_endpoint(profile=path, mode="delete", **FAST_WAIT)
    assert again["actions"] == []
    assert mutations(calls) == {}


def test_scale_to_zero_sets_desired_count_zero_once(profile: Profile, tmp_path: Path) -> None:
    path = profile_file(profile, tmp_path)
    url = upload_echo_model(aws_client("s3", profile), profile.bucket, version="1")
    deploy_endpoint(profile=path, model_data_url=url, **FAST_WAIT)

    result = teardown_endpoint(profile=path, mode="scale_to_zero", **FAST_WAIT)
    assert result["actions"] == ["UpdateEndpointWeightsAndCapacities"]
    described = aws_client("sagemaker", profile).describe_endpoint(
        EndpointName=profile.endpoint_name
    )
    (variant,) = described["ProductionVariants"]
    assert variant["DesiredInstanceCount"] == 0
    assert described["EndpointStatus"] == "InService"
    assert teardown_endpoint(profile=path, mode="scale_to_zero", **FAST_WAIT)["actions"] == []


def test_work_brings_a_scaled_to_zero_endpoint_back(
    profile: Profile, tmp_path: Path, localcloud: Any
) -> None:
    """The deployed alarm + step policy (run by localcloud's autoscaler) start an instance."""
    path = profile_file(profile, tmp_path)
    url = upload_echo_model(aws_client("s3", profile), profile.bucket, version="1")
    deploy_endpoint(profile=path, model_data_url=url, **FAST_WAIT)
    teardown_endpoint(profile=path, mode="scale_to_zero", **FAST_WAIT)
    assert localcloud.instance_pids(profile.endpoint_name) == []
    localcloud.faults.set(autoscale_time_scale=0.002)  # the alarm's 2 x 60 s -> 0.24 s
    try:
        assert invoke_once(profile, profile.endpoint_name, "wake up")["text"] == "v1:WAKE UP"
    finally:
        localcloud.faults.reset()
    sm = aws_client("sagemaker", profile)
    (variant,) = sm.describe_endpoint(EndpointName=profile.endpoint_name)["ProductionVariants"]
    assert variant["DesiredInstanceCount"] >= 1


def test_teardown_of_an_endpoint_that_never_existed_is_a_no_op(
    profile: Profile, tmp_path: Path
) -> None:
    path = profile_file(profile, tmp_path)
    for mode in ("scale_to_zero", "delete"):
        assert teardown_endpoint(profile=path, mode=mode, **FAST_WAIT)["actions"] == []


def test_scale_to_zero_needs_min_capacity_zero(profile: Profile, tmp_path: Path) -> None:
    floor = profile.model_copy(
        update={"autoscaling": profile.autoscaling.model_copy(update={"min_capacity": 1})}
    )
    with pytest.raises(ValueError, match="min_capacity"):
        teardown_endpoint(profile=profile_file(floor, tmp_path), mode="scale_to_zero", **FAST_WAIT)
