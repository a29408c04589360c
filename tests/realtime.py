"""A real-time endpoint for tests: the real handler and a tiny model on localcloud, created with boto3."""

from __future__ import annotations

import uuid
from pathlib import Path

from tasks.aws.clients import aws_client
from tasks.settings import Profile
from tests.inference.test_in_localcloud import WAIT, _artifact


def deploy_realtime(
    profile: Profile, model_dir: Path, env: dict[str, str], instances: int = 2
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
            "Image": "huggingface-pytorch-inference:local",
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
    sm.get_waiter("endpoint_in_service").wait(EndpointName=profile.endpoint_name, WaiterConfig=WAIT)
    return profile.endpoint_name
