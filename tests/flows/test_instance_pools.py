"""Instance pools: deploy_endpoint(instance_types=[...]) deploys a variant with InstancePools in
priority order; localcloud serves it on the first type, and a run's cost is metered per pool."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from flows.deploy_endpoint import deploy_endpoint
from localcloud.testing.artifacts import upload_echo_model
from tasks.aws.clients import aws_client
from tasks.endpoint.spec import EndpointSpecError
from tasks.settings import Autoscaling, Profile
from tests.flows.endpoint_helpers import FAST_WAIT, profile_file
from tests.runs import Deployment, run_flow, write_corpus

pytestmark = pytest.mark.usefixtures("prefect_harness", "faults")

POOLS = ["ml.g6.2xlarge", "ml.g5.2xlarge", "ml.g6e.2xlarge"]


def test_deploy_with_instance_pools_and_a_run_metered_on_the_first_pool(
    profile: Profile, tmp_path: Path
) -> None:
    prof = profile.model_copy(
        update={
            "autoscaling": Autoscaling(enabled=False),
            "instance_hourly_usd_by_type": (("ml.g6.2xlarge", 0.98),),
        }
    )
    path = profile_file(prof, tmp_path)
    url = upload_echo_model(aws_client("s3", prof), prof.bucket, version="1")
    deployed = deploy_endpoint(profile=path, model_data_url=url, instance_types=POOLS, **FAST_WAIT)
    sm = aws_client("sagemaker", prof)
    config = sm.describe_endpoint_config(EndpointConfigName=deployed["endpoint_config_name"])
    (variant,) = config["ProductionVariants"]
    assert "InstanceType" not in variant
    assert variant["InstancePools"] == [
        {"InstanceType": t, "Priority": i} for i, t in enumerate(POOLS, start=1)
    ]
    (summary,) = sm.describe_endpoint(EndpointName=prof.endpoint_name)["ProductionVariants"]
    assert summary["InstancePools"] == [
        {"InstanceType": "ml.g6.2xlarge", "CurrentInstanceCount": 1},
        {"InstanceType": "ml.g5.2xlarge", "CurrentInstanceCount": 0},
        {"InstanceType": "ml.g6e.2xlarge", "CurrentInstanceCount": 0},
    ]
    # The same pools again: nothing to do.
    again = deploy_endpoint(profile=path, model_data_url=url, instance_types=POOLS, **FAST_WAIT)
    assert again["actions"] == []

    write_corpus(tmp_path / "c.jsonl", 4)
    dep = Deployment(prof, path, prof.endpoint_name, url, prof.max_outstanding_invocations)
    result = run_flow(dep, tmp_path / "c.jsonl", batch_size=2).result
    assert result["completed"] == 4
    assert result["instance_type"] == "ml.g6.2xlarge"  # not the profile's ml.g5.2xlarge
    assert result["estimated_cost_usd"] == pytest.approx(
        result["instance_seconds"] / 3600 * 0.98, abs=1e-6
    )


def test_more_than_five_pools_is_an_error_naming_the_parameter(
    profile: Profile, tmp_path: Path
) -> None:
    path = profile_file(profile, tmp_path)
    six = ["ml.g5.xlarge", "ml.g5.2xlarge", "ml.g5.4xlarge", "ml.g6.xlarge", "ml.g6.2xlarge"]
    with pytest.raises(EndpointSpecError, match="instance_types .* at most 5"):
        deploy_endpoint(
            profile=path, model_data_url="s3://b/m.tar.gz", instance_types=[*six, "ml.g6e.xlarge"]
        )


def _config(client: Any, name: str, variant: dict[str, Any]) -> None:
    client.create_endpoint_config(
        EndpointConfigName=name,
        ProductionVariants=[{"VariantName": "AllTraffic", "ModelName": "m", **variant}],
    )


def test_localcloud_checks_instance_pools_as_aws_does(profile: Profile, localcloud: Any) -> None:
    sm = boto3.client("sagemaker", endpoint_url=localcloud.url, region_name=profile.region)
    both = {
        "InstanceType": "ml.g5.2xlarge",
        "InstancePools": [{"InstanceType": "ml.g6.2xlarge", "Priority": 1}],
    }
    twice = {
        "InstancePools": [
            {"InstanceType": "ml.g6.2xlarge", "Priority": 1},
            {"InstanceType": "ml.g5.2xlarge", "Priority": 1},
        ]
    }
    for variant, message in ((both, "not both"), (twice, "its own Priority")):
        with pytest.raises(ClientError, match=message):
            _config(sm, "pools-bad", variant)
