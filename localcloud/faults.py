"""The fault switchboard: seeded, off-by-default failures that tests turn on and count."""

from __future__ import annotations

import random
import threading
from dataclasses import asdict, dataclass, fields
from typing import Any

RATE_FIELDS = (
    "model_error_rate",
    "throttle_rate",
    "drop_notification_rate",
    "duplicate_notification_rate",
    "delay_notification_rate",
    "kill_instance_rate",
    "stream_break_rate",
)


@dataclass
class FaultSettings:
    """What to break and how often (rates are probabilities in [0, 1]).

    ``ttl_scale`` and ``autoscale_time_scale`` are test clock knobs, not faults: RequestTTLSeconds
    (resp. autoscaling cooldowns and the scale-in wait) are multiplied by them, so a 60 s TTL
    (AWS's minimum) can expire in a test within a second.
    """

    model_error_rate: float = 0.0
    throttle_rate: float = 0.0
    drop_notification_rate: float = 0.0
    duplicate_notification_rate: float = 0.0
    delay_notification_rate: float = 0.0
    delay_notification_s: float = 0.0
    kill_instance_rate: float = 0.0
    stream_break_rate: float = 0.0  # a response stream fails after its first chunk
    ttl_scale: float = 1.0
    autoscale_time_scale: float = 1.0
    seed: int = 0


@dataclass
class FaultCounters:
    """How many times each fault fired since the last reset."""

    model_errors: int = 0
    throttled: int = 0
    dropped_notifications: int = 0
    duplicated_notifications: int = 0
    delayed_notifications: int = 0
    killed_instances: int = 0
    broken_streams: int = 0


_COUNTER_OF = {
    "model_error_rate": "model_errors",
    "throttle_rate": "throttled",
    "drop_notification_rate": "dropped_notifications",
    "duplicate_notification_rate": "duplicated_notifications",
    "delay_notification_rate": "delayed_notifications",
    "kill_instance_rate": "killed_instances",
    "stream_break_rate": "broken_streams",
}


class Faults:
    """Thread-safe switchboard; ``roll(rate_name)`` decides (seeded) and counts each fault."""

    def __init__(self, seed: int = 0) -> None:
        self._lock = threading.Lock()
        self._settings = FaultSettings(seed=seed)
        self._counters = FaultCounters()
        self._rng = random.Random(seed)

    def set(self, **changes: Any) -> dict[str, Any]:
        """Change some settings (unknown names or bad values raise ValueError); returns the snapshot."""
        known = {f.name for f in fields(FaultSettings)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(
                f"unknown fault setting(s) {unknown}; known settings are {sorted(known)}"
            )
        clean: dict[str, Any] = {}
        for name, value in changes.items():
            if name == "seed":
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ValueError(f"seed must be an integer, got {value!r}")
                clean[name] = value
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number, got {value!r}")
            if name in RATE_FIELDS and not 0.0 <= float(value) <= 1.0:
                raise ValueError(
                    f"{name} is a probability: use a value between 0 and 1, got {value}"
                )
            if name in ("ttl_scale", "autoscale_time_scale") and not 0.0 < float(value) <= 1.0:
                raise ValueError(f"{name} shrinks waits for tests: use 0 < value <= 1, got {value}")
            if name == "delay_notification_s" and not 0.0 <= float(value) <= 3600.0:
                raise ValueError(f"delay_notification_s must be between 0 and 3600, got {value}")
            clean[name] = float(value)
        with self._lock:
            for name, value in clean.items():
                setattr(self._settings, name, value)
            if "seed" in clean:
                self._rng = random.Random(clean["seed"])
        return self.snapshot()

    def reset(self) -> dict[str, Any]:
        """Turn every fault off, zero the counters and reseed the RNG."""
        with self._lock:
            seed = self._settings.seed
            self._settings = FaultSettings(seed=seed)
            self._counters = FaultCounters()
            self._rng = random.Random(seed)
        return self.snapshot()

    def roll(self, rate_name: str) -> bool:
        """True when the fault ``rate_name`` fires this time (and count it)."""
        with self._lock:
            rate = float(getattr(self._settings, rate_name))
            if rate <= 0.0 or self._rng.random() >= rate:
                return False
            counter = _COUNTER_OF[rate_name]
            setattr(self._counters, counter, getattr(self._counters, counter) + 1)
            return True

    @property
    def delay_s(self) -> float:
        """Seconds a delayed notification waits."""
        with self._lock:
            return float(self._settings.delay_notification_s)

    def counters(self) -> dict[str, int]:
        """The counters as a plain dict."""
        with self._lock:
            return asdict(self._counters)

    def snapshot(self) -> dict[str, Any]:
        """Settings and counters, as served at ``/_localcloud/faults``."""
        with self._lock:
            return {"settings": asdict(self._settings), "counters": asdict(self._counters)}
