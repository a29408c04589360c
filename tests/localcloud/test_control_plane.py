"""SageMaker control plane over HTTP: state machine, waiters, AWS error shapes and messages."""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

import pytest
from botocore.exceptions import ClientError, WaiterError

from localcloud.testing.artifacts import upload_echo_model, upload_echo_prefix
from tasks.aws.clients import aws_client
from tasks.settings import Profile
from tests.localcloud.helpers import FAST_WAIT, deploy_echo, echo_config, jsonl


def _error(call: Any, **kwargs: Any) -> dict[str, Any]:
    with pytest.raises(ClientError) as info:
        call(**kwargs)
    error: dict[str, Any] = dict(info.value.response["Error"])
    error["status"] = info.value.response["ResponseMetadata"]["HTTPStatusCode"]
    return error


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_lifecycle_waiters_list_and_delete_stops_processes(
    profile: Profile, localcloud: Any
) -> None:
    sm = aws_client("sagemaker", profile)
    name = deploy_echo(profile, instances=2, wait=False)
    assert sm.describe_endpoint(EndpointName=name)["EndpointStatus"] == "Creating"
    sm.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig=FAST_WAIT)
    described = sm.describe_endpoint(EndpointName=name)
    assert described["EndpointArn"].endswith(f":endpoint/{name}")
    assert described["ProductionVariants"][0]["CurrentInstanceCount"] == 2
    assert any(e["EndpointName"] == name for e in sm.list_endpoints(NameContains=name)["Endpoints"])
    config = described["EndpointConfigName"]
    model = sm.describe_endpoint_config(EndpointConfigName=config)["ProductionVariants"][0][
        "ModelName"
    ]
    assert sm.describe_model(ModelName=model)["PrimaryContainer"]["Image"] == "echo:latest"
    assert any(
        c["EndpointConfigName"] == config for c in sm.list_endpoint_configs()["EndpointConfigs"]
    )
    assert any(m["ModelName"] == model for m in sm.list_models(NameContains=model)["Models"])
    pids = localcloud.instance_pids(name)
    assert len(pids) == 2 and all(_pid_alive(p) for p in pids)

    in_use = _error(sm.delete_endpoint_config, EndpointConfigName=config)
    assert in_use["Code"] == "ValidationException" and "in use" in in_use["Message"]

    sm.delete_endpoint(EndpointName=name)
    sm.get_waiter("endpoint_deleted").wait(EndpointName=name, WaiterConfig=FAST_WAIT)
    assert not any(_pid_alive(p) for p in pids)
    missing = _error(sm.describe_endpoint, EndpointName=name)
    assert missing["Code"] == "ValidationException" and missing["status"] == 400
    assert (
        missing["Message"]
        == f'Could not find endpoint "arn:aws:sagemaker:us-east-1:123456789012:endpoint/{name}".'
    )
    sm.delete_endpoint_config(EndpointConfigName=config)
    sm.delete_model(ModelName=model)
    assert "Could not find model" in _error(sm.describe_model, ModelName=model)["Message"]
    assert (
        "Could not find endpoint configuration"
        in _error(sm.describe_endpoint_config, EndpointConfigName=config)["Message"]
    )


def test_error_shapes(profile: Profile) -> None:
    sm = aws_client("sagemaker", profile)
    rt = aws_client("sagemaker-runtime", profile)
    uri = upload_echo_model(aws_client("s3", profile), profile.bucket, "models/e.tar.gz")
    model = f"m-{uuid.uuid4().hex[:8]}"
    sm.create_model(ModelName=model, PrimaryContainer={"Image": "i", "ModelDataUrl": uri})
    dup = _error(
        sm.create_model, ModelName=model, PrimaryContainer={"Image": "i", "ModelDataUrl": uri}
    )
    assert dup["Code"] == "ValidationException" and dup["Message"].startswith(
        "Cannot create already existing model"
    )

    no_data = _error(
        sm.create_model,
        ModelName=f"m-{uuid.uuid4().hex[:8]}",
        PrimaryContainer={"Image": "i", "ModelDataUrl": profile.s3_uri("models/absent.tar.gz")},
    )
    assert no_data["Code"] == "ValidationException"
    assert no_data["Message"].startswith("Could not access model data at s3://")

    bad_type = _error(
        sm.create_endpoint_config,
        EndpointConfigName=f"c-{uuid.uuid4().hex[:8]}",
        ProductionVariants=[
            {
                "VariantName": "v",
                "ModelName": model,
                "InstanceType": "ml.nope.large",
                "InitialInstanceCount": 1,
            }
        ],
    )
    assert bad_type["Code"] == "ValidationException"
    assert (
        "Value 'ml.nope.large' at 'productionVariants.1.member.instanceType' failed to satisfy constraint"
        in bad_type["Message"]
    )
    assert "ml.g6.xlarge" in bad_type["Message"]
    no_model = _error(
        sm.create_endpoint_config,
        EndpointConfigName=f"c-{uuid.uuid4().hex[:8]}",
        ProductionVariants=[
            {
                "VariantName": "v",
                "ModelName": "ghost",
                "InstanceType": "ml.g6.xlarge",
                "InitialInstanceCount": 1,
            }
        ],
    )
    assert (
        no_model["Message"]
        == 'Could not find model "arn:aws:sagemaker:us-east-1:123456789012:model/ghost".'
    )
    no_config = _error(
        sm.create_endpoint, EndpointName=f"e-{uuid.uuid4().hex[:8]}", EndpointConfigName="ghost"
    )
    assert "Could not find endpoint configuration" in no_config["Message"]

    unknown = _error(rt.invoke_endpoint_async, EndpointName="ghost", InputLocation="s3://b/k")
    assert unknown["Code"] == "ValidationError" and unknown["status"] == 400
    assert unknown["Message"] == "Endpoint ghost of account 123456789012 not found."

    realtime = deploy_echo(profile, name=f"{profile.endpoint_name}-rt", asynchronous=False)
    not_async = _error(
        rt.invoke_endpoint_async, EndpointName=realtime, InputLocation=profile.s3_uri("x")
    )
    assert not_async["Code"] == "ValidationError" and "AsyncInferenceConfig" in not_async["Message"]
    dup_ep = _error(
        sm.create_endpoint,
        EndpointName=realtime,
        EndpointConfigName=sm.describe_endpoint(EndpointName=realtime)["EndpointConfigName"],
    )
    assert dup_ep["Message"].startswith("Cannot create already existing endpoint")

    asynchronous = deploy_echo(profile, name=f"{profile.endpoint_name}-as")
    both = _error(
        rt.invoke_endpoint_async,
        EndpointName=asynchronous,
        InputLocation=profile.s3_uri("x"),
        Body=b"{}",
    )
    assert (
        both["Code"] == "ValidationError"
        and "InputLocation and Body cannot both be specified" in both["Message"]
    )
    no_async = echo_config(profile, sm, model, asynchronous=False)
    dropped = _error(sm.update_endpoint, EndpointName=asynchronous, EndpointConfigName=no_async)
    assert "AsyncInferenceConfig parameter cannot be removed" in dropped["Message"]
    for ep in (realtime, asynchronous):
        sm.delete_endpoint(EndpointName=ep)


def test_model_fn_failure_fails_endpoint_and_update_keeps_old_config(profile: Profile) -> None:
    sm = aws_client("sagemaker", profile)
    rt = aws_client("sagemaker-runtime", profile)
    broken = deploy_echo(
        profile,
        name=f"{profile.endpoint_name}-bad",
        environment={"ECHO_FAIL_MODEL_FN": "1"},
        wait=False,
    )
    with pytest.raises(WaiterError):
        sm.get_waiter("endpoint_in_service").wait(EndpointName=broken, WaiterConfig=FAST_WAIT)
    failed = sm.describe_endpoint(EndpointName=broken)
    assert failed["EndpointStatus"] == "Failed"
    assert "ECHO_FAIL_MODEL_FN=1" in failed["FailureReason"]

    # Uncompressed S3Prefix model (ModelDataSource) serves; then an update to a model that cannot load.
    name = profile.endpoint_name
    prefix = upload_echo_prefix(
        aws_client("s3", profile), profile.bucket, "models/raw", version="7"
    )
    model = f"raw-{uuid.uuid4().hex[:6]}"
    sm.create_model(
        ModelName=model,
        PrimaryContainer={
            "Image": "i",
            "ModelDataSource": {
                "S3DataSource": {
                    "S3Uri": prefix,
                    "S3DataType": "S3Prefix",
                    "CompressionType": "None",
                }
            },
        },
    )
    good_config = echo_config(profile, sm, model, asynchronous=False)
    sm.create_endpoint(EndpointName=name, EndpointConfigName=good_config)
    sm.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig=FAST_WAIT)
    body = jsonl({"id": "a", "prompt": "abc"})
    assert (
        b"v7:ABC"
        in rt.invoke_endpoint(EndpointName=name, Body=body, ContentType="application/jsonlines")[
            "Body"
        ].read()
    )

    bad_uri = upload_echo_model(
        aws_client("s3", profile), profile.bucket, "models/bad.tar.gz", env_fail=True
    )
    bad_model = f"bad-{uuid.uuid4().hex[:6]}"
    sm.create_model(ModelName=bad_model, PrimaryContainer={"Image": "i", "ModelDataUrl": bad_uri})
    sm.update_endpoint(
        EndpointName=name,
        EndpointConfigName=echo_config(profile, sm, bad_model, asynchronous=False),
    )
    updating = sm.describe_endpoint(EndpointName=name)
    assert updating["EndpointStatus"] == "Updating"
    assert "PendingDeploymentSummary" in updating
    in_progress = _error(sm.update_endpoint, EndpointName=name, EndpointConfigName=good_config)
    assert in_progress["Message"].startswith("Cannot update in-progress endpoint")
    sm.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig=FAST_WAIT)
    after = sm.describe_endpoint(EndpointName=name)
    assert after["EndpointConfigName"] == good_config
    assert "fail=true" in after["FailureReason"]
    assert (
        b"v7:ABC"
        in rt.invoke_endpoint(EndpointName=name, Body=body, ContentType="application/jsonlines")[
            "Body"
        ].read()
    )
    for ep in (broken, name):
        sm.delete_endpoint(EndpointName=ep)
    time.sleep(0.1)
