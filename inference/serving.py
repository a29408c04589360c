"""Which generator serves the loaded model: the engine (transformers >= 5) or the static path."""

from __future__ import annotations

from typing import Any

from engine_core import Engine
from generator import Generator
from loaded_model import engine_kind
from request_contract import Item
from scheduler import engine_limits
from static_batches import StaticGenerator, StaticModel, run_batch


def start(loaded: StaticModel) -> Generator:
    """The generator for ``loaded``: the engine, or the static micro-batches."""
    if engine_kind() == "static":
        return StaticGenerator(loaded)

    def alone(item: Item) -> dict[str, Any]:
        return run_batch(loaded, [item])[0]

    limits = engine_limits(loaded.model, loaded.device, loaded.context_length)
    return Engine(loaded, limits, fallback=alone)
