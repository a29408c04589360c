"""What an endpoint should look like: the spec, its stable hash, and the image URI it runs.

Async by default; ``realtime=True`` is the same packaged model behind a real-time endpoint (no
AsyncInferenceConfig: InvokeEndpoint, response streaming and sticky sessions).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tasks.aws.sagemaker_runtime import DEFAULT_INVOCATION_TIMEOUT_S, MAX_INVOCATION_TIMEOUT_S
from tasks.endpoint import images
from tasks.endpoint.images import DEFAULT_STACK
from tasks.settings import Profile

VARIANT_NAME = "AllTraffic"
HASH_LENGTH = 10
NAME_MAX = 63
MAX_INSTANCE_POOLS = 5  # a production variant's InstancePools: 1-5 types, priorities 1-5
_NAME_RE = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")


class EndpointSpecError(ValueError):
    """An endpoint spec cannot be built; the message says which input and what to do."""


def validate_endpoint_name(name: str) -> str:
    """Return ``name`` if SageMaker accepts it as an endpoint name, else raise a clear error."""
    if not _NAME_RE.match(name):
        raise EndpointSpecError(
            f"endpoint name {name!r} is invalid: use 1-63 letters, digits and hyphens, "
            "starting and ending with a letter or digit (set endpoint_name in the profile "
            "or pass endpoint_name=...)"
        )
    return name


def model_source(model_data_url: str) -> Literal["compressed", "uncompressed"]:
    """Whether an S3 model location is a model.tar.gz or an uncompressed prefix (ending in /)."""
    if not model_data_url.startswith("s3://") or len(model_data_url) <= len("s3://"):
        raise EndpointSpecError(
            f"model location {model_data_url!r} is not an S3 URI; pass the s3://… URI of "
            "model.tar.gz or of an uncompressed prefix that package_model returned"
        )
    if model_data_url.endswith(".tar.gz"):
        return "compressed"
    if model_data_url.endswith("/"):
        return "uncompressed"
    raise EndpointSpecError(
        f"model location {model_data_url!r} is neither a .tar.gz object nor a prefix ending "
        "in '/'; pass model.tar.gz's URI or the uncompressed prefix with a trailing slash"
    )


def model_location(artifact: Mapping[str, Any] | str) -> str:
    """The S3 model location from a ``ModelArtifact`` dict (uncompressed prefix preferred) or URI."""
    if isinstance(artifact, str):
        return artifact
    prefix = artifact.get("uncompressed_prefix")
    if prefix:
        return str(prefix).rstrip("/") + "/"
    url = artifact.get("model_data_url")
    if not url:
        raise EndpointSpecError(
            "model artifact has neither 'model_data_url' nor 'uncompressed_prefix'; pass the "
            "dict package_model returned or an s3://…/model.tar.gz URI"
        )
    return str(url)


def resolve_image_uri(
    region: str,
    instance_type: str,
    *,
    stack: str = DEFAULT_STACK,
    transformers_version: str | None = None,
    pytorch_version: str | None = None,
) -> str:
    """The serving stack's inference image for the region and instance type (offline tables)."""
    try:
        return images.resolve_image_uri(
            region,
            instance_type,
            stack=stack,
            transformers_version=transformers_version,
            pytorch_version=pytorch_version,
        )
    except images.ImageLookupError as exc:
        raise EndpointSpecError(str(exc)) from exc


class EndpointSpec(BaseModel):
    """Everything that defines a deployed async endpoint; its hash names the Model and config."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoint_name: str
    model_data_url: str = Field(description="s3://…/model.tar.gz or an uncompressed prefix/")
    image_uri: str
    execution_role_arn: str
    instance_type: str = "ml.g5.2xlarge"
    instance_pools: tuple[str, ...] = Field(
        (),
        description="Instance types in priority order (InstancePools; the first is instance_type): "
        "SageMaker falls back to the next when one has no capacity. Empty: instance_type only.",
    )
    instance_count: int = Field(1, ge=1)
    max_concurrent_invocations_per_instance: int = Field(4, ge=1, le=1000)
    s3_output_path: str
    s3_failure_path: str
    kms_key_id: str | None = None
    invocation_timeout_s: int = Field(
        DEFAULT_INVOCATION_TIMEOUT_S, ge=1, le=MAX_INVOCATION_TIMEOUT_S
    )
    environment: dict[str, str] = Field(default_factory=dict)
    success_topic_arn: str
    error_topic_arn: str
    realtime: bool = False

    @field_validator("endpoint_name")
    @classmethod
    def _name(cls, value: str) -> str:
        return validate_endpoint_name(value)

    @field_validator("model_data_url")
    @classmethod
    def _model(cls, value: str) -> str:
        model_source(value)
        return value

    @model_validator(mode="after")
    def _pools(self) -> EndpointSpec:
        pools = self.instance_pools
        if pools and (pools[0] != self.instance_type or len(set(pools)) != len(pools)):
            raise ValueError("instance_pools must start with instance_type and name each type once")
        if len(pools) > MAX_INSTANCE_POOLS:
            raise ValueError(
                f"instance_types names {len(pools)} types; SageMaker takes at most "
                f"{MAX_INSTANCE_POOLS} instance pools"
            )
        return self

    def spec_hash(self) -> str:
        """A stable hex digest of the whole spec (key order and dict order do not matter)."""
        data = self.model_dump(mode="json")
        # Specs from before instance pools and real-time endpoints keep their hash (their
        # endpoints are not redeployed on upgrade).
        if not self.instance_pools:
            data.pop("instance_pools")
        if not self.realtime:
            data.pop("realtime")
        canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    @property
    def resource_name(self) -> str:
        """``<endpoint>-<hash10>``, the name of this spec's Model and EndpointConfig (≤ 63 chars)."""
        return resource_name(self.endpoint_name, self.spec_hash())

    @property
    def container_environment(self) -> dict[str, str]:
        """The model container's environment: the user's plus the model server timeout."""
        env = {"SAGEMAKER_MODEL_SERVER_TIMEOUT": str(self.invocation_timeout_s)}
        env.update(self.environment)
        return env

    def create_model_request(self) -> dict[str, Any]:
        """CreateModel's arguments for this spec."""
        container: dict[str, Any] = {
            "Image": self.image_uri,
            "Environment": self.container_environment,
        }
        if model_source(self.model_data_url) == "compressed":
            container["ModelDataUrl"] = self.model_data_url
        else:
            container["ModelDataSource"] = {
                "S3DataSource": {
                    "S3Uri": self.model_data_url,
                    "S3DataType": "S3Prefix",
                    "CompressionType": "None",
                }
            }
        return {
            "ModelName": self.resource_name,
            "PrimaryContainer": container,
            "ExecutionRoleArn": self.execution_role_arn,
        }

    def create_endpoint_config_request(self) -> dict[str, Any]:
        """CreateEndpointConfig's arguments: one variant and the async output/notification set-up."""
        output: dict[str, Any] = {
            "S3OutputPath": self.s3_output_path,
            "S3FailurePath": self.s3_failure_path,
            "NotificationConfig": {
                "SuccessTopic": self.success_topic_arn,
                "ErrorTopic": self.error_topic_arn,
            },
        }
        variant: dict[str, Any] = {
            "VariantName": VARIANT_NAME,
            "ModelName": self.resource_name,
            "InitialInstanceCount": self.instance_count,
        }
        if self.instance_pools:
            variant["InstancePools"] = [
                {"InstanceType": itype, "Priority": priority}
                for priority, itype in enumerate(self.instance_pools, start=1)
            ]
        else:
            variant["InstanceType"] = self.instance_type
        request: dict[str, Any] = {
            "EndpointConfigName": self.resource_name,
            "ProductionVariants": [variant],
            "AsyncInferenceConfig": {
                "ClientConfig": {
                    "MaxConcurrentInvocationsPerInstance": (
                        self.max_concurrent_invocations_per_instance
                    )
                },
                "OutputConfig": output,
            },
        }
        if self.kms_key_id:
            output["KmsKeyId"] = self.kms_key_id
        if self.realtime:
            del request["AsyncInferenceConfig"]
        return request


def resource_head(endpoint_name: str) -> str:
    """The endpoint part of Model/EndpointConfig names, shortened so names stay ≤ 63 chars."""
    return endpoint_name[: NAME_MAX - HASH_LENGTH - 1].rstrip("-")


def resource_name(endpoint_name: str, digest: str) -> str:
    """``<endpoint>-<digest[:10]>``, the name of a spec's Model and EndpointConfig."""
    return f"{resource_head(endpoint_name)}-{digest[:HASH_LENGTH]}"


def concurrency_limit_name(endpoint_name: str) -> str:
    """The Prefect global concurrency limit shared by every run on the endpoint: ``sagemaker:<endpoint>``."""
    return f"sagemaker:{endpoint_name}"


def demand_limit_name(endpoint_name: str) -> str:
    """The Prefect global concurrency limit whose held slots add up what every run on the endpoint wants.

    ``sagemaker:<endpoint>:demand``: each run holds as many slots of it as it could use of the
    shared cap, so a run can tell when others are waiting and give back its fair share.
    """
    return f"{concurrency_limit_name(endpoint_name)}:demand"


def realtime_endpoint_name(endpoint_name: str) -> str:
    """The real-time endpoint deployed beside the async one (``endpoint_mode: both``): ``<endpoint>-rt``."""
    return f"{endpoint_name[: NAME_MAX - 3].rstrip('-')}-rt"


def ask_endpoint_name(profile: Profile) -> str:
    """The endpoint ask_documents uses by default: the profile's, or its real-time twin when the
    profile deploys both (``endpoint_mode: both``)."""
    if profile.endpoint_mode == "both":
        return realtime_endpoint_name(profile.endpoint_name)
    return profile.endpoint_name


def runs_topic_name(endpoint_name: str) -> str:
    """The SNS topic told when a run on the endpoint ends (completed, failed, cancelled): ``<endpoint>-runs``."""
    return f"{endpoint_name}-runs"


def topic_names(endpoint_name: str) -> tuple[str, str]:
    """The success and error SNS topic names of an endpoint."""
    return f"{endpoint_name}-success", f"{endpoint_name}-error"


def build_endpoint_spec(
    profile: Profile,
    *,
    model: Mapping[str, Any] | str,
    execution_role_arn: str,
    success_topic_arn: str,
    error_topic_arn: str,
    endpoint_name: str | None = None,
    image_uri: str | None = None,
    instance_type: str | None = None,
    instance_types: Sequence[str] | None = None,
    instance_count: int | None = None,
    max_concurrent_invocations_per_instance: int | None = None,
    invocation_timeout_s: int = DEFAULT_INVOCATION_TIMEOUT_S,
    environment: Mapping[str, str] | None = None,
    realtime: bool = False,
) -> EndpointSpec:
    """The spec from the profile, overridden by whatever the flow was given (``instance_types``:
    instance pools in priority order, which win over ``instance_type``)."""
    pools = tuple(instance_types or ())
    if len(pools) > MAX_INSTANCE_POOLS or len(set(pools)) != len(pools):
        raise EndpointSpecError(
            f"instance_types {list(pools)}: name at most {MAX_INSTANCE_POOLS} different instance "
            "types, in priority order (SageMaker's instance pools)"
        )
    itype = pools[0] if pools else instance_type or profile.instance_type
    location = model_location(model)
    model_source(location)
    return EndpointSpec(
        endpoint_name=validate_endpoint_name(endpoint_name or profile.endpoint_name),
        model_data_url=location,
        image_uri=image_uri
        or profile.image_uri
        or resolve_image_uri(profile.region, itype, stack=profile.serving_stack),
        execution_role_arn=execution_role_arn,
        instance_type=itype,
        instance_pools=pools if len(pools) > 1 else (),
        instance_count=instance_count or profile.instance_count,
        max_concurrent_invocations_per_instance=(
            max_concurrent_invocations_per_instance
            or profile.max_concurrent_invocations_per_instance
        ),
        s3_output_path=profile.s3_uri(profile.prefixes.outputs),
        s3_failure_path=profile.s3_uri(profile.prefixes.failures),
        kms_key_id=profile.kms_key_id,
        invocation_timeout_s=invocation_timeout_s,
        environment=dict(environment or {}),
        success_topic_arn=success_topic_arn,
        error_topic_arn=error_topic_arn,
        realtime=realtime,
    )
