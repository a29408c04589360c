"""The endpoint state machine: Creating → InService, Updating → InService, Failed, Deleting, with
real instance processes behind each variant, and the endpoint operations that move it."""

from __future__ import annotations

import copy
import logging
import threading
import time
from typing import Any

from localcloud.sagemaker.exceptions import ValidationException
from localcloud.sagemaker.hosting.notifications import test_notification
from localcloud.sagemaker.hosting.pool import VariantPool
from localcloud.sagemaker.hosting.process import InstanceStartError
from localcloud.sagemaker.hosting.runtime import EndpointRuntime
from localcloud.sagemaker.records import (
    ConfigRecord,
    EndpointRecord,
    container_spec,
    page,
)
from localcloud.sagemaker.state import ControlPlaneState
from localcloud.sagemaker.validation import (
    check_name,
    check_range,
    variant_instance_types,
)

log = logging.getLogger(__name__)


class EndpointOperations(ControlPlaneState):
    """CreateEndpoint, UpdateEndpoint, UpdateEndpointWeightsAndCapacities, DeleteEndpoint,
    DescribeEndpoint and ListEndpoints over the state's tables."""

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
