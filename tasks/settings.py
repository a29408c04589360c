"""The one settings loader: a deployment profile (deployments/<name>.yaml) plus DOCFLOW_* overrides."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

PROFILE_DIR = Path(__file__).resolve().parent.parent / "deployments"
DEFAULT_PROFILE = "local"


class ProfileError(ValueError):
    """A profile is missing or invalid; the message says which and what to do."""


class Prefixes(BaseModel):
    """S3 key prefixes (no leading or trailing slash) for everything docflow writes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    models: str = "models"
    runs: str = "runs"
    outputs: str = "async-outputs"
    failures: str = "async-failures"


class Autoscaling(BaseModel):
    """Bounds and targets of the endpoint's Application Auto Scaling set-up."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    min_capacity: int = Field(0, ge=0)
    max_capacity: int = Field(2, ge=1)
    target_backlog_per_instance: float = Field(5.0, gt=0)
    scale_in_cooldown_s: int = Field(600, ge=0)
    scale_out_cooldown_s: int = Field(60, ge=0)


class Profile(BaseModel):
    """Everything that differs between environments; flows and tasks read nothing else."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    region: str = "us-east-1"
    bucket: str
    prefixes: Prefixes = Field(default_factory=Prefixes)
    endpoint_url: str | None = Field(
        None, description="AWS endpoint override (localcloud); None means real AWS."
    )
    credentials_block: str | None = Field(
        None, description="Name of a prefect-aws AwsCredentials block; None: default chain."
    )
    local_credentials: tuple[str, str] | None = Field(
        None,
        description="[access key id, secret key] used when boto3's default chain finds none: "
        "localcloud's fixed, non-secret key, so a fresh shell reaches it. Never set it for AWS.",
    )
    endpoint_name: str = "docflow-llm"
    endpoint_mode: Literal["async", "realtime", "both"] = Field(
        "async",
        description=(
            "async: an async endpoint (process_documents); realtime: a real-time endpoint with "
            "sessions and streaming (ask_documents, docflow ask); both: async at endpoint_name "
            "and real-time beside it at <endpoint_name>-rt."
        ),
    )
    model_name: str = "docflow-model"
    instance_type: str = "ml.g5.2xlarge"
    instance_count: int = Field(1, ge=1)
    max_concurrent_invocations_per_instance: int = Field(4, ge=1, le=1000)
    execution_role_arn: str | None = None
    vendor_grammar: bool | None = Field(
        None,
        description=(
            "Vendor xgrammar (constrained output) into the artifact at packaging, and refuse a "
            "fields/labels run on an artifact without it. None: yes for AWS profiles (no "
            "endpoint_url), no for localcloud (it runs the code with docflow's own xgrammar)."
        ),
    )
    serving_stack: Literal["huggingface"] = Field(
        "huggingface",
        description=(
            "The serving stack whose image deploy_endpoint resolves (tasks/endpoint/images.py): "
            "huggingface, the Hugging Face PyTorch inference image with transformers 5.5.3. "
            "image_uri overrides the image."
        ),
    )
    image_uri: str | None = None
    kms_key_id: str | None = None
    autoscaling: Autoscaling = Field(default_factory=Autoscaling)
    max_outstanding_invocations: int = Field(
        16, ge=1, description="Cap on in-flight async invocations per endpoint (all runs)."
    )
    invoke_rate_per_second: float = Field(20.0, gt=0)
    instance_hourly_usd: float = Field(
        1.515, ge=0, description="On-demand price of instance_type per hour, for cost figures only."
    )
    instance_hourly_usd_by_type: tuple[tuple[str, float], ...] = Field(
        (),
        description="Prices per hour of other instance types an endpoint may run on (a "
        "deploy_endpoint instance_type override, instance pools), for cost figures only; "
        "a mapping in YAML.",
    )
    local_results_dir: str | None = Field(
        None,
        description="Also copy each run's results, failures and summary.json to "
        "<local_results_dir>/<run key>/ on the machine that runs the flow (relative: to its "
        "working directory); None: S3 only.",
    )
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0

    @field_validator("instance_hourly_usd_by_type", mode="before")
    @classmethod
    def _prices(cls, value: Any) -> Any:
        """A YAML mapping {type: price} kept as sorted pairs (the profile is frozen, hashable)."""
        return tuple(sorted(value.items())) if isinstance(value, dict) else value

    def hourly_usd(self, instance_type: str) -> float | None:
        """The price per instance-hour of ``instance_type`` (None: the profile names no price)."""
        prices = dict(self.instance_hourly_usd_by_type)
        if instance_type in prices:
            return prices[instance_type]
        return self.instance_hourly_usd if instance_type == self.instance_type else None

    def s3_uri(self, *parts: str) -> str:
        """s3://bucket/part/part… for keys under this profile's bucket."""
        key = "/".join(p.strip("/") for p in parts if p)
        return f"s3://{self.bucket}/{key}"


def _env_overrides() -> dict[str, Any]:
    """DOCFLOW_<FIELD>=value overrides for top-level scalar fields (e.g. DOCFLOW_BUCKET)."""
    out: dict[str, Any] = {}
    for field in Profile.model_fields:
        value = os.environ.get(f"DOCFLOW_{field.upper()}")
        if value is not None:
            out[field] = value
    return out


def load_profile(name_or_path: str | os.PathLike[str] | None = None) -> Profile:
    """Load a profile by name (deployments/<name>.yaml) or path; default: $DOCFLOW_PROFILE or local."""
    ref = str(name_or_path or os.environ.get("DOCFLOW_PROFILE") or DEFAULT_PROFILE)
    path = Path(ref)
    if not path.suffix:
        path = PROFILE_DIR / f"{ref}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))
        raise ProfileError(
            f"profile {ref!r} not found at {path}; use one of {known} or a path to a YAML file"
        )
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ProfileError(f"profile {path} must be a YAML mapping")
    data.setdefault("name", path.stem)
    data.update(_env_overrides())
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        raise ProfileError(f"profile {path} is invalid:\n{exc}") from exc
