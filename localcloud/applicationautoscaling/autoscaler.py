"""Application Auto Scaling for SageMaker variants: acts on the targets, policies and alarms stored in moto.

moto stores scalable targets, scaling policies and CloudWatch alarms but never acts on them. This
loop does what AWS does for an async endpoint, once a second: it publishes the endpoint's backlog
metrics, evaluates the alarms on them (ALARM once breaching for DatapointsToAlarm x Period),
runs the step-scaling policies they trigger, applies target tracking on
``ApproximateBacklogSizePerInstance`` (scale-out after 3 minutes high, scale-in after
max(ScaleInCooldown, 15 minutes) low, as AWS's generated alarms do), and keeps the instance count
inside [MinCapacity, MaxCapacity]. The switchboard's ``autoscale_time_scale`` shrinks every such
wait for tests.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from localcloud.accounts import ACCOUNT_ID
from localcloud.faults import Faults
from localcloud.sagemaker.models import SageMakerBackend
from localcloud.stats import Stats

log = logging.getLogger(__name__)

NAMESPACE = "sagemaker"
DIMENSION = "sagemaker:variant:DesiredInstanceCount"
METRIC_NAMESPACE = "AWS/SageMaker"
SCALE_IN_LOW_FOR_S = 900.0  # target tracking's scale-in alarm: 15 datapoints of 1 minute
SCALE_OUT_HIGH_FOR_S = 180.0  # target tracking's scale-out alarm: 3 datapoints of 1 minute
METRICS_EVERY_S = 10.0

_COMPARE = {
    "GreaterThanOrEqualToThreshold": lambda v, t: v >= t,
    "GreaterThanThreshold": lambda v, t: v > t,
    "LessThanThreshold": lambda v, t: v < t,
    "LessThanOrEqualToThreshold": lambda v, t: v <= t,
}


@dataclass
class Backlog:
    """What the endpoint reports to CloudWatch."""

    size: int
    instances: int

    @property
    def per_instance(self) -> float:
        """ApproximateBacklogSizePerInstance (the whole backlog when no instance runs)."""
        return self.size / max(self.instances, 1)

    @property
    def without_capacity(self) -> float:
        """HasBacklogWithoutCapacity."""
        return 1.0 if self.size > 0 and self.instances == 0 else 0.0

    def metric(self, name: str) -> float | None:
        """The value of one of the async endpoint metrics, by name."""
        return {
            "ApproximateBacklogSize": float(self.size),
            "ApproximateBacklogSizePerInstance": self.per_instance,
            "HasBacklogWithoutCapacity": self.without_capacity,
        }.get(name)


def endpoint_of(resource_id: str) -> tuple[str, str] | None:
    """(endpoint, variant) of ``endpoint/<name>/variant/<variant>``, else None."""
    parts = str(resource_id).split("/")
    if len(parts) != 4 or parts[0] != "endpoint" or parts[2] != "variant":
        return None
    return parts[1], parts[3]


def _may_have_targets(region: str, endpoints: set[str]) -> bool:
    """Cheap in-process look at moto's store, so an idle localcloud makes no API calls (best effort)."""
    try:
        from moto.applicationautoscaling.models import applicationautoscaling_backends

        targets = applicationautoscaling_backends[ACCOUNT_ID][region].targets.get(DIMENSION) or {}
        return any((endpoint_of(rid) or ("",))[0] in endpoints for rid in targets)
    except Exception:
        return True


@dataclass
class _VariantState:
    last_activity: float = 0.0
    low_since: float | None = None
    high_since: float | None = None
    breach_since: dict[str, float] = field(default_factory=dict)
    policy_last: dict[str, float] = field(default_factory=dict)


def step_capacity(current: int, config: dict[str, Any], breach: float) -> int | None:
    """New capacity from a step-scaling policy, given how far the metric is past the threshold."""
    for step in config.get("StepAdjustments") or []:
        low = step.get("MetricIntervalLowerBound", -math.inf)
        high = step.get("MetricIntervalUpperBound", math.inf)
        if low <= breach < high or (high == math.inf and breach >= low):
            adjustment = int(step["ScalingAdjustment"])
            kind = config.get("AdjustmentType", "ChangeInCapacity")
            if kind == "ExactCapacity":
                return adjustment
            if kind == "PercentChangeInCapacity":
                change = math.ceil(abs(current * adjustment / 100.0)) * (
                    1 if adjustment >= 0 else -1
                )
                minimum = int(config.get("MinAdjustmentMagnitude") or 0)
                if abs(change) < minimum:
                    change = minimum if adjustment >= 0 else -minimum
                return current + change
            return current + adjustment
    return None


class Autoscaler:
    """Background loop applying moto's Application Auto Scaling state to the emulator's endpoints."""

    def __init__(
        self, backend: SageMakerBackend, stats: Stats, faults: Faults, clients: dict[str, Any]
    ) -> None:
        self.backend = backend
        self.stats = stats
        self.faults = faults
        self.aas = clients["application-autoscaling"]
        self.cloudwatch = clients["cloudwatch"]
        self._state: dict[str, _VariantState] = {}
        self._last_metrics = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._loop, name="localcloud-autoscaler", daemon=True
        )

    def start(self) -> None:
        """Run every second until stopped."""
        self._thread.start()

    def stop(self) -> None:
        """Stop the loop."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(1.0):
            try:
                self.tick()
            except Exception as exc:  # the loop must survive a bad policy or a moto hiccup
                log.warning("localcloud autoscaler: %s", exc)

    def _time_scale(self) -> float:
        return float(self.faults.snapshot()["settings"]["autoscale_time_scale"])

    def tick(self) -> None:
        """One evaluation of every endpoint that has a scalable target."""
        with self.backend._lock:
            endpoints = {
                name: ep for name, ep in self.backend.endpoints.items() if ep.status == "InService"
            }
        if not endpoints or not _may_have_targets(self.backend.region, set(endpoints)):
            return
        targets = self.aas.describe_scalable_targets(ServiceNamespace=NAMESPACE)["ScalableTargets"]
        targets = [
            t
            for t in targets
            if t["ScalableDimension"] == DIMENSION
            and (endpoint_of(t["ResourceId"]) or ("",))[0] in endpoints
        ]
        if not targets:
            return
        policies = self.aas.describe_scaling_policies(ServiceNamespace=NAMESPACE)["ScalingPolicies"]
        alarms = self.cloudwatch.describe_alarms(AlarmTypes=["MetricAlarm"])["MetricAlarms"]
        stats = self.stats.snapshot()
        publish = time.monotonic() - self._last_metrics >= METRICS_EVERY_S
        for target in targets:
            found = endpoint_of(target["ResourceId"])
            if found is None:
                continue
            name, variant = found
            ep = endpoints.get(name)
            pool = ep.runtime.pools.get(variant) if ep else None
            if pool is None:
                continue
            counts = stats.get(name, {})
            backlog = Backlog(
                int(counts.get("queued", 0)) + int(counts.get("running", 0)), pool.desired
            )
            if publish:
                self._publish(name, backlog)
            mine = [p for p in policies if p["ResourceId"] == target["ResourceId"]]
            wanted = self._decide(target, mine, alarms, name, backlog)
            if wanted is not None and wanted != pool.desired:
                log.info(
                    "localcloud autoscaler: %s/%s %d -> %d", name, variant, pool.desired, wanted
                )
                self.backend.update_endpoint_weights_and_capacities(
                    {
                        "EndpointName": name,
                        "DesiredWeightsAndCapacities": [
                            {"VariantName": variant, "DesiredInstanceCount": wanted}
                        ],
                    }
                )
                self._state.setdefault(
                    target["ResourceId"], _VariantState()
                ).last_activity = time.monotonic()
        if publish:
            self._last_metrics = time.monotonic()

    def _publish(self, name: str, backlog: Backlog) -> None:
        dims = [{"Name": "EndpointName", "Value": name}]
        self.cloudwatch.put_metric_data(
            Namespace=METRIC_NAMESPACE,
            MetricData=[
                {"MetricName": metric, "Dimensions": dims, "Value": backlog.metric(metric) or 0.0}
                for metric in (
                    "ApproximateBacklogSize",
                    "ApproximateBacklogSizePerInstance",
                    "HasBacklogWithoutCapacity",
                )
            ],
        )

    def _decide(
        self,
        target: dict[str, Any],
        policies: list[dict[str, Any]],
        alarms: list[dict[str, Any]],
        name: str,
        backlog: Backlog,
    ) -> int | None:
        """The capacity the policies ask for now, clamped to the target's bounds (None: no change)."""
        state = self._state.setdefault(target["ResourceId"], _VariantState())
        scale = self._time_scale()
        now = time.monotonic()
        current = backlog.instances
        wanted: int | None = None
        for policy in policies:
            if policy["PolicyType"] == "StepScaling":
                proposal = self._step(policy, alarms, name, backlog, state, now, scale)
            elif policy["PolicyType"] == "TargetTrackingScaling":
                proposal = self._track(policy, backlog, state, now, scale)
            else:
                proposal = None
            # Scale-out wins over scale-in when policies disagree, as in AWS.
            if (
                proposal is not None
                and proposal != current
                and (wanted is None or proposal > wanted)
            ):
                wanted = proposal
        low, high = int(target["MinCapacity"]), int(target["MaxCapacity"])
        result = current if wanted is None else wanted
        result = min(max(result, low), high)
        return None if result == current else result

    def _step(
        self,
        policy: dict[str, Any],
        alarms: list[dict[str, Any]],
        name: str,
        backlog: Backlog,
        state: _VariantState,
        now: float,
        scale: float,
    ) -> int | None:
        config = policy.get("StepScalingPolicyConfiguration") or {}
        for alarm in alarms:
            if policy["PolicyARN"] not in (alarm.get("AlarmActions") or []):
                continue
            if not alarm.get("ActionsEnabled", True) or alarm.get("Namespace") != METRIC_NAMESPACE:
                continue
            if {"Name": "EndpointName", "Value": name} not in (alarm.get("Dimensions") or []):
                continue
            value = backlog.metric(str(alarm.get("MetricName")))
            compare = _COMPARE.get(str(alarm.get("ComparisonOperator")))
            if value is None or compare is None or not compare(value, float(alarm["Threshold"])):
                state.breach_since.pop(alarm["AlarmName"], None)
                continue
            since = state.breach_since.setdefault(alarm["AlarmName"], now)
            points = int(alarm.get("DatapointsToAlarm") or alarm.get("EvaluationPeriods") or 1)
            if now - since < points * float(alarm.get("Period") or 60) * scale:
                continue  # the alarm has not reached ALARM yet
            cooldown = float(config.get("Cooldown") or 0) * scale
            last = state.policy_last.get(policy["PolicyARN"])
            if last is not None and now - last < cooldown:
                return None
            proposal = step_capacity(backlog.instances, config, value - float(alarm["Threshold"]))
            if proposal is not None:
                state.policy_last[policy["PolicyARN"]] = now
            return proposal
        return None

    def _track(
        self,
        policy: dict[str, Any],
        backlog: Backlog,
        state: _VariantState,
        now: float,
        scale: float,
    ) -> int | None:
        config = policy.get("TargetTrackingScalingPolicyConfiguration") or {}
        metric = (config.get("CustomizedMetricSpecification") or {}).get("MetricName")
        if metric != "ApproximateBacklogSizePerInstance":
            return None
        target_value = float(config.get("TargetValue") or 0)
        if target_value <= 0:
            return None
        needed = math.ceil(backlog.size / target_value)
        current = backlog.instances
        if current == 0 and backlog.size <= target_value:
            return None  # from zero, target tracking waits until the backlog exceeds the target
        if needed > current:
            state.low_since = None
            if state.high_since is None:
                state.high_since = now
            cooldown = float(config.get("ScaleOutCooldown") or 0) * scale
            if now - state.last_activity < cooldown and state.last_activity:
                return None
            if now - state.high_since < SCALE_OUT_HIGH_FOR_S * scale:
                return None
            state.high_since = None
            return needed
        state.high_since = None
        if needed < current and not config.get("DisableScaleIn"):
            if state.low_since is None:
                state.low_since = now
            wait = max(float(config.get("ScaleInCooldown") or 0), SCALE_IN_LOW_FOR_S) * scale
            if now - state.low_since >= wait and now - state.last_activity >= wait:
                state.low_since = None
                return needed
            return None
        state.low_since = None
        return None
