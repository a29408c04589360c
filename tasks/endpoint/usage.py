"""What an endpoint actually kept running: its instances by type, sampled over time.

``InstanceMeter`` reads the variant's ``CurrentInstanceCount`` (per instance type when the
variant has instance pools) from DescribeEndpoint every ``every_s`` seconds on a background
thread, and the instance type from the endpoint's EndpointConfig. Between two samples the count
of the earlier one is taken to hold, so ``instance_seconds`` is off by at most the instances
that changed times ``every_s``. This is what SageMaker bills (per instance-second while an
instance is up, working or not), unlike the profile's instance count, which autoscaling changes.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, Field

from tasks.aws.clients import aws_client
from tasks.endpoint.spec import VARIANT_NAME
from tasks.settings import Profile


class InstanceSample(BaseModel):
    """Instances up at one moment, by type (seconds since the meter started)."""

    at_s: float
    instances: dict[str, int]


class EndpointUsage(BaseModel):
    """Instance-seconds by instance type over a metered window, and what they were read from."""

    window_s: float = 0.0
    instance_seconds: dict[str, float] = Field(default_factory=dict)
    samples: int = 0
    instances_min: int = 0
    instances_max: int = 0
    errors: int = Field(0, description="Samples that failed (the previous count was kept).")

    @property
    def total_seconds(self) -> float:
        """Instance-seconds over every type."""
        return sum(self.instance_seconds.values())


def _pool_counts(variant: dict[str, Any], config_types: list[str]) -> dict[str, int]:
    """Current instances by type from a DescribeEndpoint variant summary."""
    pools = variant.get("InstancePools") or []
    if pools:
        return {str(p["InstanceType"]): int(p.get("CurrentInstanceCount") or 0) for p in pools}
    itype = config_types[0] if config_types else "unknown"
    return {itype: int(variant.get("CurrentInstanceCount") or 0)}


def config_instance_types(profile: Profile, config_name: str) -> list[str]:
    """The variant's instance types in the EndpointConfig, in priority order (pools first)."""
    config = aws_client("sagemaker", profile).describe_endpoint_config(
        EndpointConfigName=config_name
    )
    for variant in config.get("ProductionVariants", []):
        if variant.get("VariantName") != VARIANT_NAME:
            continue
        pools = sorted(variant.get("InstancePools") or [], key=lambda p: int(p["Priority"]))
        if pools:
            return [str(p["InstanceType"]) for p in pools]
        return [str(variant["InstanceType"])] if variant.get("InstanceType") else []
    return []


class InstanceMeter:
    """Samples an endpoint's running instances until stopped; ``usage()`` integrates them.

    Use as a context manager; the first sample is taken on entry and the last on exit.
    """

    def __init__(self, profile: Profile, endpoint: str, *, every_s: float = 5.0) -> None:
        self.profile = profile
        self.endpoint = endpoint
        self.every_s = every_s
        self.samples: list[InstanceSample] = []
        self.errors = 0
        self._types: dict[str, list[str]] = {}
        self._started = 0.0
        self._ended: float | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="docflow-meter", daemon=True)

    def __enter__(self) -> InstanceMeter:
        self._started = time.monotonic()
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.every_s + 30)
        self.sample()
        self._ended = time.monotonic()

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.sample()

    def _instances(self) -> dict[str, int]:
        sm = aws_client("sagemaker", self.profile)
        described = sm.describe_endpoint(EndpointName=self.endpoint)
        config = str(described["EndpointConfigName"])
        if config not in self._types:
            self._types[config] = config_instance_types(self.profile, config)
        for variant in described.get("ProductionVariants", []):
            if variant.get("VariantName") == VARIANT_NAME:
                return _pool_counts(variant, self._types[config])
        return {}

    def sample(self) -> None:
        """Read the instances up now; on an error keep the last count (counted in ``errors``)."""
        at = time.monotonic() - self._started
        try:
            instances = self._instances()
        except (ClientError, BotoCoreError):
            with self._lock:
                self.errors += 1
            return
        with self._lock:
            self.samples.append(InstanceSample(at_s=round(at, 3), instances=instances))

    def usage(self) -> EndpointUsage:
        """Instance-seconds by type over the window so far (each count held until the next sample)."""
        with self._lock:
            samples = list(self.samples)
            errors = self.errors
        end = (self._ended or time.monotonic()) - self._started
        seconds: dict[str, float] = defaultdict(float)
        for this, after in zip(samples, [*samples[1:], None], strict=True):
            until = after.at_s if after is not None else end
            for itype, count in this.instances.items():
                if count:  # a pool that never ran an instance costs nothing and is not listed
                    seconds[itype] += count * max(until - this.at_s, 0.0)
        totals = [sum(s.instances.values()) for s in samples] or [0]
        return EndpointUsage(
            window_s=round(end, 3),
            instance_seconds={k: round(v, 3) for k, v in seconds.items()},
            samples=len(samples),
            instances_min=min(totals),
            instances_max=max(totals),
            errors=errors,
        )


class InstanceCost(BaseModel):
    """What metered instance-seconds cost at the profile's prices."""

    usd: float | None = Field(description="None when an instance type that ran has no price.")
    unpriced: list[str] = Field(default_factory=list)


def instance_cost(usage: EndpointUsage, profile: Profile) -> InstanceCost:
    """Instance-seconds × the profile's price per hour of each type (``Profile.hourly_usd``)."""
    total = 0.0
    unpriced: list[str] = []
    for itype, seconds in sorted(usage.instance_seconds.items()):
        price = profile.hourly_usd(itype)
        if price is None:
            if seconds > 0:
                unpriced.append(itype)
            continue
        total += seconds / 3600.0 * price
    return InstanceCost(usd=None if unpriced else round(total, 6), unpriced=unpriced)
