"""A real-time endpoint for tests: the real handler and a tiny model on localcloud, created with boto3."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from tasks.aws.clients import aws_client
from tasks.settings import Autoscaling, Profile
from tests.flows.endpoint_helpers import FAST_WAIT, profile_file
from tests.inference.test_in_localcloud import WAIT, _artifact
from tests.tiny_models import make_tiny_model


def deploy_realtime(
    profile: Profile,
    model_dir: Path,
    env: dict[str, str],
    instances: int = 2,
    image: str = "docflow-serving:local",
    wait: bool = True,
) -> str:
    """A real-time endpoint (no AsyncInferenceConfig) serving the real handler on ``model_dir``."""
    s3, sm = aws_client("s3", profile), aws_client("sagemaker", profile)
    tag = uuid.uuid4().hex[:6]
    key = f"models/{tag}/model.tar.gz"
    s3.put_object(Bucket=profile.bucket, Key=key, Body=_artifact(model_dir))
    sm.create_model(
        ModelName=f"rt-{tag}",
        ExecutionRoleArn="arn:aws:iam::123456789012:role/sm",
        PrimaryContainer={
            "Image": image,  # docflow's serving image: localcloud runs its real serve, which streams
            "ModelDataUrl": profile.s3_uri(key),
            "Environment": {"DOCFLOW_NUM_THREADS": "1", **env},
        },
    )
    sm.create_endpoint_config(
        EndpointConfigName=f"rt-{tag}",
        ProductionVariants=[
            {
                "VariantName": "AllTraffic",
                "ModelName": f"rt-{tag}",
                "InstanceType": "ml.g5.2xlarge",
                "InitialInstanceCount": instances,
            }
        ],
    )
    sm.create_endpoint(EndpointName=profile.endpoint_name, EndpointConfigName=f"rt-{tag}")
    if wait:
        waiter = sm.get_waiter("endpoint_in_service")
        waiter.wait(EndpointName=profile.endpoint_name, WaiterConfig=WAIT)
    return profile.endpoint_name


def deploy_tiny_realtime(
    profile: Profile, tmp_path: Path, *, instances: int = 2, cap: int = 4
) -> tuple[Profile, str]:
    """A tiny Llama (2,048-token context) on a real-time endpoint, deployed with the
    deploy_endpoint flow (endpoint_mode="realtime", which also creates the endpoint's global
    concurrency limit of ``cap`` slots on the flow's Prefect server); the profile and its file."""
    from flows.deploy_endpoint import deploy_endpoint

    model_dir = make_tiny_model(tmp_path / "model", "llama", context=2048)
    config = model_dir / "tokenizer_config.json"  # the tiny tokenizer says 256 tokens
    config.write_text(json.dumps({**json.loads(config.read_text()), "model_max_length": 2048}))
    key = "models/tiny-rt/model.tar.gz"
    aws_client("s3", profile).put_object(Bucket=profile.bucket, Key=key, Body=_artifact(model_dir))
    prof = profile.model_copy(
        update={
            "autoscaling": Autoscaling(enabled=False),
            "max_outstanding_invocations": cap,
            "instance_count": instances,
        }
    )
    path = profile_file(prof, tmp_path)
    out = deploy_endpoint(
        profile=path,
        model_data_url=prof.s3_uri(key),
        endpoint_mode="realtime",
        environment={"DOCFLOW_NUM_THREADS": "1"},
        **FAST_WAIT,
    )
    assert out["realtime_endpoint_name"] == prof.endpoint_name
    sm = aws_client("sagemaker", prof)
    endpoint_config = sm.describe_endpoint_config(EndpointConfigName=out["endpoint_config_name"])
    assert "AsyncInferenceConfig" not in endpoint_config
    return prof, path
