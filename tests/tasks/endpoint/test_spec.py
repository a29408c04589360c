"""EndpointSpec: built from a profile, stable hash, SageMaker-valid names, offline image URI."""

from __future__ import annotations

import hashlib
import json
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tasks.endpoint.spec import (
    EndpointSpec,
    EndpointSpecError,
    build_endpoint_spec,
    model_location,
    realtime_endpoint_name,
    resolve_image_uri,
)
from tasks.settings import load_profile

TOPICS: dict[str, Any] = {
    "success_topic_arn": "arn:aws:sns:us-east-1:123456789012:docflow-llm-success",
    "error_topic_arn": "arn:aws:sns:us-east-1:123456789012:docflow-llm-error",
}
ROLE = "arn:aws:iam::123456789012:role/docflow-docflow-llm-sagemaker"
IMAGE = "763104351884.dkr.ecr.us-east-1.amazonaws.com/huggingface-pytorch-inference:x"


def _spec(**overrides: object) -> EndpointSpec:
    profile = load_profile("local")
    kwargs: dict = {
        "model": "s3://docflow-local/models/echo/model.tar.gz",
        "execution_role_arn": ROLE,
        "image_uri": IMAGE,
        **TOPICS,
    }
    kwargs.update(overrides)
    return build_endpoint_spec(profile, **kwargs)


def test_spec_takes_profile_defaults_and_output_paths() -> None:
    spec = _spec()
    assert spec.endpoint_name == "docflow-llm"
    assert spec.instance_type == "ml.g5.2xlarge"
    assert spec.max_concurrent_invocations_per_instance == 2
    assert spec.s3_output_path == "s3://docflow-local/async-outputs"
    assert spec.s3_failure_path == "s3://docflow-local/async-failures"
    config = spec.create_endpoint_config_request()
    output = config["AsyncInferenceConfig"]["OutputConfig"]
    assert output["NotificationConfig"] == {
        "SuccessTopic": TOPICS["success_topic_arn"],
        "ErrorTopic": TOPICS["error_topic_arn"],
    }
    assert "KmsKeyId" not in output
    variant = config["ProductionVariants"][0]
    assert variant["ModelName"] == spec.resource_name == config["EndpointConfigName"]
    assert variant["VariantName"] == "AllTraffic"


def test_hash_is_stable_and_changes_with_the_model() -> None:
    a, b = _spec(), _spec()
    assert a.spec_hash() == b.spec_hash()
    assert a.resource_name == b.resource_name
    assert re.fullmatch(r"docflow-llm-[0-9a-f]{10}", a.resource_name)
    other = _spec(model="s3://docflow-local/models/echo/v2/model.tar.gz")
    assert other.resource_name != a.resource_name
    assert _spec(environment={"A": "1"}).resource_name != a.resource_name
    # dict order never changes the hash
    assert (
        _spec(environment={"A": "1", "B": "2"}).spec_hash()
        == _spec(environment={"B": "2", "A": "1"}).spec_hash()
    )


def test_long_endpoint_names_give_valid_resource_names() -> None:
    name = "e" * 51 + "-" + "f" * 11  # 63 chars; the cut falls on the hyphen
    spec = _spec(endpoint_name=name)
    assert len(spec.resource_name) <= 63
    assert re.fullmatch(r"[a-zA-Z0-9](-*[a-zA-Z0-9])*", spec.resource_name)


@pytest.mark.parametrize("bad", ["has_underscore", "-leading", "x" * 64, "trailing-"])
def test_invalid_endpoint_names_are_rejected_with_advice(bad: str) -> None:
    with pytest.raises(EndpointSpecError, match="endpoint_name"):
        _spec(endpoint_name=bad)


def test_model_location_from_artifact_dict_or_uri() -> None:
    artifact = {
        "model_data_url": "s3://b/models/m/abc/model.tar.gz",
        "uncompressed_prefix": "s3://b/models/m/abc/uncompressed",
    }
    assert model_location(artifact) == "s3://b/models/m/abc/uncompressed/"
    assert model_location({"model_data_url": "s3://b/m.tar.gz"}) == "s3://b/m.tar.gz"
    with pytest.raises(EndpointSpecError, match="package_model"):
        model_location({"name": "m"})


def test_compressed_and_uncompressed_models_map_to_the_right_container_fields() -> None:
    compressed = _spec().create_model_request()["PrimaryContainer"]
    assert compressed["ModelDataUrl"].endswith("model.tar.gz")
    assert "ModelDataSource" not in compressed
    prefix = _spec(model="s3://docflow-local/models/m/abc/uncompressed/")
    container = prefix.create_model_request()["PrimaryContainer"]
    assert container["ModelDataSource"]["S3DataSource"] == {
        "S3Uri": "s3://docflow-local/models/m/abc/uncompressed/",
        "S3DataType": "S3Prefix",
        "CompressionType": "None",
    }
    assert container["Environment"]["SAGEMAKER_MODEL_SERVER_TIMEOUT"] == "900"


@pytest.mark.parametrize("bad", ["/tmp/model.tar.gz", "s3://b/model.zip", "s3://"])
def test_bad_model_locations_say_what_to_pass(bad: str) -> None:
    with pytest.raises(EndpointSpecError, match="model.tar.gz"):
        _spec(model=bad)


def test_kms_key_goes_into_the_output_config() -> None:
    profile = load_profile("local").model_copy(update={"kms_key_id": "1234abcd"})
    spec = build_endpoint_spec(
        profile,
        model="s3://b/model.tar.gz",
        execution_role_arn=ROLE,
        image_uri=IMAGE,
        **TOPICS,
    )
    output = spec.create_endpoint_config_request()["AsyncInferenceConfig"]["OutputConfig"]
    assert output["KmsKeyId"] == "1234abcd"


@pytest.mark.parametrize(
    ("region", "instance"), [("us-east-1", "ml.g5.2xlarge"), ("eu-west-1", "ml.g5.2xlarge")]
)
def test_image_uri_resolves_offline_for_the_region(
    region: str, instance: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise OSError("network access attempted while resolving the image URI")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    uri = resolve_image_uri(region, instance)
    assert uri == (
        f"763104351884.dkr.ecr.{region}.amazonaws.com/huggingface-pytorch-inference:"
        "2.6.0-transformers5.5.3-gpu-py312-cu124-ubuntu22.04"
    )
    older = resolve_image_uri(region, instance, transformers_version="4.51.3")
    assert older.endswith(":2.6.0-transformers4.51.3-gpu-py312-cu124-ubuntu22.04")


def test_the_aws_profile_deploys_the_transformers_5_image_offline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise OSError("network access attempted while resolving the image URI")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    profile = load_profile("aws")
    assert profile.serving_stack == "huggingface" and profile.image_uri is None
    spec = build_endpoint_spec(
        profile, model="s3://b/model.tar.gz", execution_role_arn=ROLE, **TOPICS
    )
    assert spec.image_uri == (
        f"763104351884.dkr.ecr.{profile.region}.amazonaws.com/huggingface-pytorch-inference:"
        "2.6.0-transformers5.5.3-gpu-py312-cu124-ubuntu22.04"
    )
    given = build_endpoint_spec(
        profile, model="s3://b/model.tar.gz", execution_role_arn=ROLE, image_uri=IMAGE, **TOPICS
    )
    assert given.image_uri == IMAGE  # image_uri still overrides


def test_an_unknown_serving_stack_is_refused_by_name() -> None:
    with pytest.raises(EndpointSpecError, match="'vllm'.*planned"):
        resolve_image_uri("us-east-1", "ml.g5.2xlarge", stack="vllm")


def test_resolving_the_image_prints_nothing() -> None:
    """No SDK deprecation notice or config INFO line on the console, in a fresh interpreter."""
    code = (
        "from tasks.endpoint.spec import resolve_image_uri;"
        "uri = resolve_image_uri('us-east-1', 'ml.g5.2xlarge')"
    )
    done = subprocess.run(
        [sys.executable, "-W", "default", "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[3],
        check=True,
    )
    assert (done.stdout, done.stderr) == ("", "")


def test_image_uri_for_a_cpu_instance_is_the_cpu_image() -> None:
    assert "-cpu-" in resolve_image_uri("us-east-1", "ml.m5.xlarge")


def test_spec_resolves_the_image_when_none_is_given() -> None:
    spec = build_endpoint_spec(
        load_profile("local"),
        model="s3://b/model.tar.gz",
        execution_role_arn=ROLE,
        **TOPICS,
    )
    assert ".dkr.ecr.us-east-1.amazonaws.com/huggingface-pytorch-inference" in spec.image_uri


def test_unknown_region_gives_a_clear_error() -> None:
    with pytest.raises(EndpointSpecError, match="image_uri"):
        resolve_image_uri("xx-nowhere-1", "ml.g5.2xlarge")


def test_instance_pools_replace_instance_type_and_leave_other_hashes_alone() -> None:
    import hashlib
    import json

    plain = _spec()
    data = plain.model_dump(mode="json")
    assert data.pop("instance_pools") == []
    assert data.pop("realtime") is False
    # A spec without pools hashes as before pools existed: deployed endpoints are not updated.
    old = hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode())
    assert plain.spec_hash() == old.hexdigest()
    assert _spec(instance_types=["ml.g5.2xlarge"]) == plain  # one type is no pool

    pooled = _spec(instance_types=["ml.g6.2xlarge", "ml.g5.2xlarge"])
    assert pooled.instance_type == "ml.g6.2xlarge" and pooled.spec_hash() != plain.spec_hash()
    (variant,) = pooled.create_endpoint_config_request()["ProductionVariants"]
    assert "InstanceType" not in variant
    assert variant["InstancePools"] == [
        {"InstanceType": "ml.g6.2xlarge", "Priority": 1},
        {"InstanceType": "ml.g5.2xlarge", "Priority": 2},
    ]
    with pytest.raises(EndpointSpecError, match="instance_types"):
        _spec(instance_types=["ml.g6.2xlarge", "ml.g6.2xlarge"])


def test_a_realtime_spec_has_no_async_config_and_its_own_hash() -> None:
    async_spec, realtime = _spec(), _spec(realtime=True)
    assert "AsyncInferenceConfig" in async_spec.create_endpoint_config_request()
    config = realtime.create_endpoint_config_request()
    assert "AsyncInferenceConfig" not in config
    assert config["ProductionVariants"][0]["ModelName"] == realtime.resource_name
    assert realtime.resource_name != async_spec.resource_name  # both can exist side by side
    # An async spec hashes as it did before real-time specs existed: no redeploy on upgrade.
    fields = async_spec.model_dump(mode="json")
    assert fields.pop("realtime") is False
    assert fields.pop("instance_pools") == []
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    assert async_spec.spec_hash() == hashlib.sha256(canonical.encode()).hexdigest()
    assert realtime_endpoint_name("docflow-llm") == "docflow-llm-rt"
    assert len(realtime_endpoint_name("x" * 63)) == 63
