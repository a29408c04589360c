"""deploy_endpoint over localcloud: serve, redeploy as a no-op, update, and fail with the reason."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from flows.deploy_endpoint import deploy_endpoint
from localcloud.testing.artifacts import upload_echo_model
from tasks.aws.clients import aws_client
from tasks.endpoint.autoscaling import alarm_name, policy_names, resource_id
from tasks.endpoint.deploy import EndpointDeployError
from tasks.settings import Profile
from tests.flows.endpoint_helpers import (
    FAST_WAIT,
    count_calls,
    invoke_once,
    mutations,
    profile_file,
)

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _echo(profile: Profile, version: str) -> str:
    return upload_echo_model(
        aws_client("s3", profile),
        profile.bucket,
        key=f"models/echo/v{version}/model.tar.gz",
        version=version,
    )


def _status(profile: Profile) -> dict[str, Any]:
    return dict(
        aws_client("sagemaker", profile).describe_endpoint(EndpointName=profile.endpoint_name)
    )


def _limit(name: str) -> Any:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_global_concurrency_limit_by_name(name)


def test_deploy_redeploy_and_update(profile: Profile, tmp_path: Path) -> None:
    path = profile_file(profile, tmp_path)
    name = profile.endpoint_name

    first = deploy_endpoint(profile=path, model_data_url=_echo(profile, "1"), **FAST_WAIT)
    assert first["actions"][:2] == [f"CreateTopic:{name}-success", f"CreateTopic:{name}-error"]
    for action in ("CreateRole", "CreateModel", "CreateEndpointConfig", "CreateEndpoint"):
        assert action in first["actions"]
    described = _status(profile)
    assert described["EndpointStatus"] == "InService"
    assert described["EndpointConfigName"] == first["endpoint_config_name"]
    assert first["endpoint_config_name"].startswith(f"{name}-")
    assert invoke_once(profile, name, "hello world")["text"] == "v1:HELLO WORLD"

    # autoscaling is read back through the services' own APIs
    aas = aws_client("application-autoscaling", profile)
    targets = aas.describe_scalable_targets(
        ServiceNamespace="sagemaker", ResourceIds=[resource_id(name)]
    )["ScalableTargets"]
    assert [(t["MinCapacity"], t["MaxCapacity"]) for t in targets] == [(0, 2)]
    policies = aas.describe_scaling_policies(
        ServiceNamespace="sagemaker", ResourceId=resource_id(name)
    )["ScalingPolicies"]
    assert {p["PolicyName"] for p in policies} == set(policy_names(name))
    alarms = aws_client("cloudwatch", profile).describe_alarms(AlarmNames=[alarm_name(name)])
    assert len(alarms["MetricAlarms"]) == 1
    limit = _limit(f"sagemaker:{name}")
    assert limit.limit == profile.max_outstanding_invocations

    # the same spec again: no Create*/Update*/Put* call anywhere
    with count_calls(profile) as calls:
        again = deploy_endpoint(profile=path, model_data_url=_echo(profile, "1"), **FAST_WAIT)
    assert again["actions"] == []
    assert mutations(calls) == {}
    assert calls["DescribeEndpoint"] >= 1
    assert again["endpoint_config_name"] == first["endpoint_config_name"]

    # a new model: exactly one UpdateEndpoint, and the endpoint answers with it
    with count_calls(profile) as calls:
        updated = deploy_endpoint(profile=path, model_data_url=_echo(profile, "2"), **FAST_WAIT)
    assert updated["actions"] == ["CreateModel", "CreateEndpointConfig", "UpdateEndpoint"]
    assert mutations(calls) == {"CreateModel": 1, "CreateEndpointConfig": 1, "UpdateEndpoint": 1}
    assert _status(profile)["EndpointConfigName"] == updated["endpoint_config_name"]
    assert updated["endpoint_config_name"] != first["endpoint_config_name"]
    assert invoke_once(profile, name, "hello again")["text"] == "v2:HELLO AGAIN"


def test_failed_create_reports_the_reason_then_a_good_model_recovers(
    profile: Profile, tmp_path: Path
) -> None:
    path = profile_file(profile, tmp_path)
    model = _echo(profile, "1")
    with pytest.raises(EndpointDeployError, match="ECHO_FAIL_MODEL_FN") as caught:
        deploy_endpoint(
            profile=path, model_data_url=model, environment={"ECHO_FAIL_MODEL_FN": "1"}, **FAST_WAIT
        )
    described = _status(profile)
    assert described["EndpointStatus"] == "Failed"
    assert described["FailureReason"] in str(caught.value)

    fixed = deploy_endpoint(profile=path, model_data_url=model, **FAST_WAIT)
    assert "DeleteEndpoint" in fixed["actions"] and "CreateEndpoint" in fixed["actions"]
    assert _status(profile)["EndpointStatus"] == "InService"
    assert invoke_once(profile, profile.endpoint_name, "back")["text"] == "v1:BACK"


def test_failed_update_keeps_the_old_model_serving(profile: Profile, tmp_path: Path) -> None:
    path = profile_file(profile, tmp_path)
    model = _echo(profile, "1")
    good = deploy_endpoint(profile=path, model_data_url=model, **FAST_WAIT)
    with pytest.raises(EndpointDeployError, match="ECHO_FAIL_MODEL_FN") as caught:
        deploy_endpoint(
            profile=path, model_data_url=model, environment={"ECHO_FAIL_MODEL_FN": "1"}, **FAST_WAIT
        )
    assert good["endpoint_config_name"] in str(caught.value)
    described = _status(profile)
    assert described["EndpointStatus"] == "InService"
    assert described["EndpointConfigName"] == good["endpoint_config_name"]
    assert invoke_once(profile, profile.endpoint_name, "still here")["text"] == "v1:STILL HERE"


def test_missing_model_says_what_to_pass(profile: Profile, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="model_data_url"):
        deploy_endpoint(profile=profile_file(profile, tmp_path), **FAST_WAIT)


def test_new_instance_type_deregisters_scaling_around_the_update(
    profile: Profile, tmp_path: Path
) -> None:
    path = profile_file(profile, tmp_path)
    model = _echo(profile, "1")
    deploy_endpoint(profile=path, model_data_url=model, **FAST_WAIT)
    moved = deploy_endpoint(
        profile=path, model_data_url=model, instance_type="ml.g5.4xlarge", **FAST_WAIT
    )
    actions = moved["actions"]
    assert actions.index("DeregisterScalableTarget") < actions.index("UpdateEndpoint")
    assert actions.index("UpdateEndpoint") < actions.index("RegisterScalableTarget")
    config = aws_client("sagemaker", profile).describe_endpoint_config(
        EndpointConfigName=moved["endpoint_config_name"]
    )
    assert config["ProductionVariants"][0]["InstanceType"] == "ml.g5.4xlarge"
    assert invoke_once(profile, profile.endpoint_name, "moved")["text"] == "v1:MOVED"


def test_invocation_limit_is_created_then_updated() -> None:
    from tasks.endpoint.deploy import ensure_invocation_limit

    name = f"limit-test-{uuid.uuid4().hex[:6]}"
    assert ensure_invocation_limit(name, 3) == "created"
    assert ensure_invocation_limit(name, 3) == "unchanged"
    assert ensure_invocation_limit(name, 5) == "updated"
    assert _limit(f"sagemaker:{name}").limit == 5
