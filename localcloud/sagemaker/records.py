"""Stored control-plane resources (models, endpoint configs, endpoints) and List* paging."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from localcloud.sagemaker.hosting.process import ContainerSpec
from localcloud.sagemaker.hosting.runtime import EndpointRuntime

DEFAULT_MAX_CONCURRENT = 4


@dataclass
class ModelRecord:
    """A CreateModel request, as stored."""

    name: str
    arn: str
    spec: dict[str, Any]
    created: float = field(default_factory=time.time)


@dataclass
class ConfigRecord:
    """A CreateEndpointConfig request, as stored."""

    name: str
    arn: str
    spec: dict[str, Any]
    created: float = field(default_factory=time.time)

    @property
    def async_config(self) -> dict[str, Any] | None:
        """The AsyncInferenceConfig, if any."""
        value = self.spec.get("AsyncInferenceConfig")
        return value if isinstance(value, dict) else None

    @property
    def slots(self) -> int:
        """MaxConcurrentInvocationsPerInstance (or the default)."""
        client = (self.async_config or {}).get("ClientConfig") or {}
        return int(client.get("MaxConcurrentInvocationsPerInstance") or DEFAULT_MAX_CONCURRENT)


@dataclass
class EndpointRecord:
    """An endpoint: its state, current config and live runtime."""

    name: str
    arn: str
    config: ConfigRecord
    runtime: EndpointRuntime
    status: str = "Creating"
    failure_reason: str | None = None
    pending: ConfigRecord | None = None
    pending_since: float | None = None
    created: float = field(default_factory=time.time)
    modified: float = field(default_factory=time.time)


def container_spec(model: ModelRecord) -> ContainerSpec:
    """Where an instance finds the model and which Environment it gets."""
    container = model.spec.get("PrimaryContainer") or (model.spec.get("Containers") or [{}])[0]
    env = {str(k): str(v) for k, v in (container.get("Environment") or {}).items()}
    image = str(container.get("Image") or "localcloud")
    source = (container.get("ModelDataSource") or {}).get("S3DataSource") or {}
    if source:
        if source.get("S3DataType") == "S3Prefix" and source.get("CompressionType") == "None":
            return ContainerSpec(None, source["S3Uri"], env, image)
        return ContainerSpec(source["S3Uri"], None, env, image)
    return ContainerSpec(container.get("ModelDataUrl"), None, env, image)


def page(
    rows: list[dict[str, Any]], req: dict[str, Any], key: str, name_field: str
) -> dict[str, Any]:
    """NameContains, SortBy (Name | CreationTime), SortOrder, MaxResults and NextToken, as List* do."""
    if req.get("NameContains"):
        rows = [r for r in rows if str(req["NameContains"]).lower() in r[name_field].lower()]
    sort_key = name_field if req.get("SortBy") == "Name" else "CreationTime"
    rows.sort(key=lambda r: r[sort_key], reverse=req.get("SortOrder", "Descending") == "Descending")
    start = int(req.get("NextToken") or 0)
    size = int(req.get("MaxResults") or 100)
    out: dict[str, Any] = {key: rows[start : start + size]}
    if start + size < len(rows):
        out["NextToken"] = str(start + size)
    return out
