"""Control-plane state and behaviour: models, endpoint configs, endpoints and their state machine.

One concern, one class (``SageMakerBackend``), as moto keeps one backend class per service: every
control-plane call reads and changes the same three record tables under one lock, and the
endpoint state machine (Creating → InService, Updating → InService, Failed, Deleting) moves them
together. Records, validation, wire responses and the runtime live in their own modules.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from typing import Any

from localcloud.accounts import ACCOUNT_ID
from localcloud.sagemaker.exceptions import ValidationException
from localcloud.sagemaker.notifications import test_notification
from localcloud.sagemaker.pool import VariantPool
from localcloud.sagemaker.process import InstanceStartError
from localcloud.sagemaker.records import (
    ConfigRecord,
    EndpointRecord,
    ModelRecord,
    container_spec,
    page,
)
from localcloud.sagemaker.runtime import Context, EndpointRuntime, split_s3
from localcloud.sagemaker.validation import (
    MODEL_NAME_PATTERN,
    check_instance_pools,
    check_name,
    check_range,
    check_s3_uri,
    variant_instance_types,
)

log = logging.getLogger(__name__)


class SageMakerBackend:
    """The control plane: resources in memory, endpoints backed by real instance processes."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.region = ctx.region
        self._lock = threading.RLock()
        self.models: dict[str, ModelRecord] = {}
        self.configs: dict[str, ConfigRecord] = {}
        self.endpoints: dict[str, EndpointRecord] = {}
        self.closed = False

    def arn(self, kind: str, name: str) -> str:
        """``arn:aws:sagemaker:<region>:<account>:<kind>/<name lower-cased>``, as AWS writes them."""
        return f"arn:aws:sagemaker:{self.region}:{ACCOUNT_ID}:{kind}/{name.lower()}"

    # --- lookups ---------------------------------------------------------------------------------

    def get_model(self, name: str) -> ModelRecord:
        """The model or AWS's 'Could not find model' error."""
        with self._lock:
            if name not in self.models:
                raise ValidationException(f'Could not find model "{self.arn("model", name)}".')
            return self.models[name]

    def get_config(self, name: str) -> ConfigRecord:
        """The endpoint config or AWS's 'Could not find endpoint configuration' error."""
        with self._lock:
            if name not in self.configs:
                raise ValidationException(
                    f'Could not find endpoint configuration "{self.arn("endpoint-config", name)}".'
                )
            return self.configs[name]

    def get_endpoint(self, name: str) -> EndpointRecord:
        """The endpoint or AWS's 'Could not find endpoint' error."""
        with self._lock:
            if name not in self.endpoints:
                raise ValidationException(
                    f'Could not find endpoint "{self.arn("endpoint", name)}".'
                )
            return self.endpoints[name]

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

    def create_endpoint(self, req: dict[str, Any]) -> dict[str, Any]:
        """CreateEndpoint: Creating now, InService (or Failed) once the instances have loaded."""
        name = check_name(req.get("EndpointName"), "endpointName")
        config = self.get_config(str(req.get("EndpointConfigName")))
        with self._lock:
            if name in self.endpoints:
                raise ValidationException(
                    f'Cannot create already existing endpoint "{self.arn("endpoint", name)}".'
                )
            ep = EndpointRecord(
                name=name,
                arn=self.arn("endpoint", name),
                config=config,
                runtime=EndpointRuntime(self.ctx, name),
            )
            self.endpoints[name] = ep
        self.ctx.stats.reset(name)
        threading.Thread(
            target=self._create, args=(ep,), name=f"{name}-create", daemon=True
        ).start()
        return {"EndpointArn": ep.arn}

    def _deploy(self, ep: EndpointRecord, config: ConfigRecord) -> dict[str, VariantPool]:
        """Start every variant's instances; all load or none stay (InstanceStartError names the variant)."""
        pools: dict[str, VariantPool] = {}
        try:
            for variant in config.spec["ProductionVariants"]:
                vname = variant["VariantName"]
                pool = VariantPool(
                    variant=vname,
                    container=container_spec(self.get_model(variant["ModelName"])),
                    # localcloud never runs out of capacity: the first pool's type always starts.
                    instance_type=variant_instance_types(variant)[0],
                    slots=config.slots,
                    queue=ep.runtime.queue,
                    execute=ep.runtime.execute,
                    aws_env=self.ctx.aws_env,
                )
                pools[vname] = pool
                try:
                    pool.scale_to(int(variant.get("InitialInstanceCount", 1)))
                except InstanceStartError as exc:
                    raise InstanceStartError(
                        f"The primary container for production variant {vname} did not pass the ping health check. "
                        f"Please check CloudWatch logs for this endpoint. Cause: {exc}"
                    ) from exc
        except (InstanceStartError, ValidationException):
            for pool in pools.values():
                pool.close(drain=False)
            raise
        return pools

    def _set(self, ep: EndpointRecord, status: str, reason: str | None = None) -> None:
        with self._lock:
            ep.status = status
            ep.failure_reason = reason
            ep.modified = time.time()

    def _notify_test(self, config: ConfigRecord) -> None:
        notification = ((config.async_config or {}).get("OutputConfig") or {}).get(
            "NotificationConfig"
        ) or {}
        for topic in (notification.get("SuccessTopic"), notification.get("ErrorTopic")):
            self.ctx.notifier.publish(
                topic, test_notification(self.region, config.name), faults=False
            )

    def _create(self, ep: EndpointRecord) -> None:
        try:
            pools = self._deploy(ep, ep.config)
        except (InstanceStartError, ValidationException) as exc:
            self._set(ep, "Failed", str(exc))
            return
        if ep.status == "Deleting" or self.closed:
            for pool in pools.values():
                pool.close(drain=False)
            return
        ep.runtime.activate(pools)
        self._set(ep, "InService")
        self._notify_test(ep.config)

    def update_endpoint(self, req: dict[str, Any]) -> dict[str, Any]:
        """UpdateEndpoint: Updating while the new config's instances load; the old ones serve meanwhile."""
        ep = self.get_endpoint(str(req.get("EndpointName")))
        config = self.get_config(str(req.get("EndpointConfigName")))
        with self._lock:
            if ep.status not in ("InService", "Failed"):
                raise ValidationException(f'Cannot update in-progress endpoint "{ep.arn}".')
            if ep.config.async_config is not None and config.async_config is None:
                raise ValidationException(
                    f"The AsyncInferenceConfig parameter cannot be removed from this endpoint {ep.name}. "
                    "To change the endpoint type, delete the endpoint and create a new one."
                )
            ep.pending, ep.pending_since = config, time.time()
            was_failed = ep.status == "Failed"
            ep.status, ep.modified = "Updating", time.time()
        threading.Thread(
            target=self._update,
            args=(ep, config, was_failed),
            name=f"{ep.name}-update",
            daemon=True,
        ).start()
        return {"EndpointArn": ep.arn}

    def _update(self, ep: EndpointRecord, config: ConfigRecord, was_failed: bool) -> None:
        try:
            pools = self._deploy(ep, config)
        except (InstanceStartError, ValidationException) as exc:
            with self._lock:
                ep.pending = ep.pending_since = None
            self._set(
                ep,
                "Failed" if was_failed else "InService",
                f"Update failed, the endpoint keeps its previous configuration: {exc}",
            )
            return
        with self._lock:
            if ep.status == "Deleting" or self.closed:
                for pool in pools.values():
                    pool.close(drain=False)
                return
            ep.config, ep.pending, ep.pending_since = config, None, None
        ep.runtime.activate(pools)
        self._set(ep, "InService")
        self._notify_test(config)

    def update_endpoint_weights_and_capacities(self, req: dict[str, Any]) -> dict[str, Any]:
        """UpdateEndpointWeightsAndCapacities: DesiredInstanceCount (0 = scaled to zero; requests wait)."""
        ep = self.get_endpoint(str(req.get("EndpointName")))
        wanted = req.get("DesiredWeightsAndCapacities") or []
        with self._lock:
            if ep.status != "InService":
                raise ValidationException(f'Cannot update in-progress endpoint "{ep.arn}".')
            pools = dict(ep.runtime.pools)
            missing = [w.get("VariantName") for w in wanted if w.get("VariantName") not in pools]
            if missing:
                raise ValidationException(
                    f"The variant name(s) {missing} is/are not present in the endpoint configuration {ep.config.name}."
                )
            for w in wanted:
                if "DesiredInstanceCount" in w:
                    check_range(
                        w["DesiredInstanceCount"],
                        "desiredWeightsAndCapacities.member.desiredInstanceCount",
                        0,
                        100,
                    )
            ep.status, ep.modified = "Updating", time.time()
            for w in wanted:  # DescribeEndpoint shows the new desired count at once, as AWS does
                if "DesiredInstanceCount" in w:
                    pools[w["VariantName"]].desired = int(w["DesiredInstanceCount"])
        threading.Thread(
            target=self._scale, args=(ep, pools, wanted), name=f"{ep.name}-scale", daemon=True
        ).start()
        return {"EndpointArn": ep.arn}

    def _scale(
        self, ep: EndpointRecord, pools: dict[str, VariantPool], wanted: list[dict[str, Any]]
    ) -> None:
        reason = None
        for w in wanted:
            if "DesiredInstanceCount" not in w:
                continue
            try:
                pools[w["VariantName"]].scale_to(int(w["DesiredInstanceCount"]))
            except InstanceStartError as exc:
                reason = f"Scaling variant {w['VariantName']} failed: {exc}"
        if ep.status != "Deleting":
            self._set(ep, "InService", reason)

    def delete_endpoint(self, req: dict[str, Any]) -> dict[str, Any]:
        """DeleteEndpoint: Deleting until the instances are gone, then the endpoint no longer exists."""
        ep = self.get_endpoint(str(req.get("EndpointName")))
        with self._lock:
            if ep.status == "Deleting":
                return {}
            ep.status, ep.modified = "Deleting", time.time()
        threading.Thread(
            target=self._delete, args=(ep,), name=f"{ep.name}-delete", daemon=True
        ).start()
        return {}

    def _delete(self, ep: EndpointRecord) -> None:
        ep.runtime.close()
        with self._lock:
            if self.endpoints.get(ep.name) is ep:
                del self.endpoints[ep.name]

    def describe_endpoint(self, req: dict[str, Any]) -> dict[str, Any]:
        """DescribeEndpoint."""
        ep = self.get_endpoint(str(req.get("EndpointName")))
        with self._lock:
            out: dict[str, Any] = {
                "EndpointName": ep.name,
                "EndpointArn": ep.arn,
                "EndpointConfigName": ep.config.name,
                "EndpointStatus": ep.status,
                "CreationTime": ep.created,
                "LastModifiedTime": ep.modified,
                "ProductionVariants": self._variant_summaries(ep, ep.config, ep.runtime.pools),
            }
            if ep.failure_reason:
                out["FailureReason"] = ep.failure_reason
            if ep.config.async_config is not None:
                out["AsyncInferenceConfig"] = copy.deepcopy(ep.config.async_config)
            if ep.pending is not None:
                out["PendingDeploymentSummary"] = {
                    "EndpointConfigName": ep.pending.name,
                    "StartTime": ep.pending_since,
                    "ProductionVariants": [
                        {
                            "VariantName": v["VariantName"],
                            "DesiredInstanceCount": v.get("InitialInstanceCount", 1),
                            "InstanceType": variant_instance_types(v)[0],
                        }
                        for v in ep.pending.spec["ProductionVariants"]
                    ],
                }
        return out

    def _variant_summaries(
        self, ep: EndpointRecord, config: ConfigRecord, pools: dict[str, VariantPool]
    ) -> list[dict[str, Any]]:
        rows = []
        for v in config.spec["ProductionVariants"]:
            pool = pools.get(v["VariantName"])
            model = self.models.get(v.get("ModelName", ""))
            container = (model.spec.get("PrimaryContainer") or {}) if model else {}
            row: dict[str, Any] = {
                "VariantName": v["VariantName"],
                "CurrentWeight": float(v.get("InitialVariantWeight", 1.0)),
                "DesiredWeight": float(v.get("InitialVariantWeight", 1.0)),
                "DeployedImages": [
                    {
                        "SpecifiedImage": container.get("Image", "localcloud"),
                        "ResolvedImage": container.get("Image", "localcloud"),
                        "ResolutionTime": ep.created,
                    }
                ],
            }
            if pool is not None:
                row["CurrentInstanceCount"] = pool.ready_count
                row["DesiredInstanceCount"] = pool.desired
                if v.get("InstancePools"):  # every instance runs in the first pool's type
                    row["InstancePools"] = [
                        {"InstanceType": t, "CurrentInstanceCount": 0 if i else pool.ready_count}
                        for i, t in enumerate(variant_instance_types(v))
                    ]
            rows.append(row)
        return rows

    def list_endpoints(self, req: dict[str, Any]) -> dict[str, Any]:
        """ListEndpoints."""
        with self._lock:
            rows = [
                {
                    "EndpointName": e.name,
                    "EndpointArn": e.arn,
                    "CreationTime": e.created,
                    "LastModifiedTime": e.modified,
                    "EndpointStatus": e.status,
                }
                for e in self.endpoints.values()
                if not req.get("StatusEquals") or e.status == req["StatusEquals"]
            ]
        return page(rows, req, "Endpoints", "EndpointName")

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
