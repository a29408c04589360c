"""The SageMaker backend: models and endpoint configs, on top of the endpoint state machine.

One backend class per service, as moto keeps them (``SageMakerBackend``): every control-plane call
reads and changes the same three record tables (state.py) under one lock; the endpoint state
machine is endpoints.py. Records, validation, wire responses and the runtime live in their own
modules.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from localcloud.sagemaker.endpoints import EndpointOperations
from localcloud.sagemaker.exceptions import ValidationException
from localcloud.sagemaker.hosting.runtime import split_s3
from localcloud.sagemaker.records import (
    ConfigRecord,
    ModelRecord,
    page,
)
from localcloud.sagemaker.validation import (
    MODEL_NAME_PATTERN,
    check_instance_pools,
    check_name,
    check_range,
    check_s3_uri,
)

log = logging.getLogger(__name__)


class SageMakerBackend(EndpointOperations):
    """The control plane: resources in memory, endpoints backed by real instance processes."""

    # --- lookups ---------------------------------------------------------------------------------

    # --- models ----------------------------------------------------------------------------------

    def create_model(self, req: dict[str, Any]) -> dict[str, Any]:
        """CreateModel."""
        name = check_name(req.get("ModelName"), "modelName", MODEL_NAME_PATTERN)
        containers = (
            [req["PrimaryContainer"]]
            if req.get("PrimaryContainer")
            else list(req.get("Containers") or [])
        )
        if not containers:
            raise ValidationException("Either PrimaryContainer or Containers must be specified.")
        for container in containers:
            source = (container.get("ModelDataSource") or {}).get("S3DataSource")
            if source:
                uri = check_s3_uri(
                    source.get("S3Uri"), "primaryContainer.modelDataSource.s3DataSource.s3Uri"
                )
                prefix = source.get("S3DataType") == "S3Prefix"
                if prefix and not uri.endswith("/"):
                    raise ValidationException(
                        f"S3Uri {uri} must end with '/' when S3DataType is S3Prefix (an uncompressed model prefix)."
                    )
                self._check_model_data(uri, prefix)
            elif container.get("ModelDataUrl"):
                uri = check_s3_uri(container["ModelDataUrl"], "primaryContainer.modelDataUrl")
                self._check_model_data(uri, prefix=False)
        with self._lock:
            if name in self.models:
                raise ValidationException(
                    f'Cannot create already existing model "{self.arn("model", name)}".'
                )
            record = ModelRecord(name=name, arn=self.arn("model", name), spec=copy.deepcopy(req))
            self.models[name] = record
        return {"ModelArn": record.arn}

    def _check_model_data(self, uri: str, prefix: bool) -> None:
        """CreateModel fails, as on AWS, when the model data cannot be read."""
        bucket, key = split_s3(uri)
        try:
            if prefix:
                found = self.ctx.s3.list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1)
                if not found.get("KeyCount"):
                    raise FileNotFoundError(uri)
            else:
                self.ctx.s3.head_object(Bucket=bucket, Key=key)
        except Exception as exc:
            raise ValidationException(
                f"Could not access model data at {uri}. Please ensure that the role exists and that "
                "its trust relationship policy allows the action 'sts:AssumeRole' for the service "
                "principal 'sagemaker.amazonaws.com'. Also ensure that the role has 's3:GetObject' "
                f"permissions and that the object is located in {self.region}. (Upload the model "
                "artifact before CreateModel.)"
            ) from exc

    def describe_model(self, req: dict[str, Any]) -> dict[str, Any]:
        """DescribeModel."""
        m = self.get_model(str(req.get("ModelName")))
        out = {
            k: v
            for k, v in m.spec.items()
            if k in ("PrimaryContainer", "Containers", "ExecutionRoleArn", "VpcConfig")
        }
        out.update(
            ModelName=m.name,
            ModelArn=m.arn,
            CreationTime=m.created,
            EnableNetworkIsolation=bool(m.spec.get("EnableNetworkIsolation", False)),
        )
        return out

    def delete_model(self, req: dict[str, Any]) -> dict[str, Any]:
        """DeleteModel (AWS allows it while endpoints still use the model)."""
        with self._lock:
            self.get_model(str(req.get("ModelName")))
            del self.models[str(req["ModelName"])]
        return {}

    def list_models(self, req: dict[str, Any]) -> dict[str, Any]:
        """ListModels."""
        with self._lock:
            rows = [
                {"ModelName": m.name, "ModelArn": m.arn, "CreationTime": m.created}
                for m in self.models.values()
            ]
        return page(rows, req, "Models", "ModelName")

    # --- endpoint configs ------------------------------------------------------------------------

    def create_endpoint_config(self, req: dict[str, Any]) -> dict[str, Any]:
        """CreateEndpointConfig."""
        name = check_name(req.get("EndpointConfigName"), "endpointConfigName")
        variants = req.get("ProductionVariants") or []
        if not variants:
            raise ValidationException(
                "ProductionVariants must contain at least one production variant."
            )
        seen: set[str] = set()
        for i, variant in enumerate(variants, start=1):
            vname = check_name(
                variant.get("VariantName"), f"productionVariants.{i}.member.variantName"
            )
            if vname in seen:
                raise ValidationException(
                    f"Variant name {vname} is used more than once; variant names must be unique."
                )
            seen.add(vname)
            if variant.get("ServerlessConfig"):
                raise ValidationException(
                    "localcloud serves instance-based variants only; drop ServerlessConfig."
                )
            check_instance_pools(variant, i)
            check_range(
                variant.get("InitialInstanceCount", 1),
                f"productionVariants.{i}.member.initialInstanceCount",
                1,
                100,
            )
            self.get_model(str(variant.get("ModelName")))
        async_config = req.get("AsyncInferenceConfig")
        if async_config is not None:
            output = async_config.get("OutputConfig") or {}
            if not output.get("S3OutputPath"):
                raise ValidationException(
                    "AsyncInferenceConfig.OutputConfig.S3OutputPath is required."
                )
            check_s3_uri(output["S3OutputPath"], "asyncInferenceConfig.outputConfig.s3OutputPath")
            if output.get("S3FailurePath"):
                check_s3_uri(
                    output["S3FailurePath"], "asyncInferenceConfig.outputConfig.s3FailurePath"
                )
            client = async_config.get("ClientConfig") or {}
            if "MaxConcurrentInvocationsPerInstance" in client:
                check_range(
                    client["MaxConcurrentInvocationsPerInstance"],
                    "asyncInferenceConfig.clientConfig.maxConcurrentInvocationsPerInstance",
                    1,
                    1000,
                )
        with self._lock:
            if name in self.configs:
                raise ValidationException(
                    f'Cannot create already existing endpoint configuration "{self.arn("endpoint-config", name)}".'
                )
            record = ConfigRecord(
                name=name, arn=self.arn("endpoint-config", name), spec=copy.deepcopy(req)
            )
            self.configs[name] = record
        return {"EndpointConfigArn": record.arn}

    def describe_endpoint_config(self, req: dict[str, Any]) -> dict[str, Any]:
        """DescribeEndpointConfig."""
        c = self.get_config(str(req.get("EndpointConfigName")))
        out = {k: v for k, v in c.spec.items() if k not in ("Tags",)}
        out.update(EndpointConfigArn=c.arn, CreationTime=c.created)
        return out

    def delete_endpoint_config(self, req: dict[str, Any]) -> dict[str, Any]:
        """DeleteEndpointConfig; refused while an endpoint is deployed on it or moving to it."""
        name = str(req.get("EndpointConfigName"))
        with self._lock:
            config = self.get_config(name)
            for ep in self.endpoints.values():
                if config in (ep.config, ep.pending) and ep.status != "Failed":
                    raise ValidationException(
                        f'Cannot delete endpoint configuration "{config.arn}" because it is in use by endpoint '
                        f'"{ep.arn}". Update the endpoint to another configuration or delete the endpoint first.'
                    )
            del self.configs[name]
        return {}

    def list_endpoint_configs(self, req: dict[str, Any]) -> dict[str, Any]:
        """ListEndpointConfigs."""
        with self._lock:
            rows = [
                {
                    "EndpointConfigName": c.name,
                    "EndpointConfigArn": c.arn,
                    "CreationTime": c.created,
                }
                for c in self.configs.values()
            ]
        return page(rows, req, "EndpointConfigs", "EndpointConfigName")

    # --- endpoints -------------------------------------------------------------------------------

    # --- lifecycle -------------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Kill every instance of every endpoint (server stop)."""
        with self._lock:
            self.closed = True
            endpoints = list(self.endpoints.values())
            self.endpoints.clear()
        for ep in endpoints:
            ep.runtime.close()

    def instance_pids(self, endpoint_name: str | None = None) -> list[int]:
        """Live instance PIDs (one endpoint, or all)."""
        with self._lock:
            endpoints = [e for e in self.endpoints.values() if endpoint_name in (None, e.name)]
        return [pid for e in endpoints for pid in e.runtime.pids()]
