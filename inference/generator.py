"""One interface in front of generation: the engine and the static path both implement it.

The handler (``inference``, ``session_requests``, ``sessions``, ``token_stream``) talks only to a
``Generator`` and its ``Handle``s; which one runs is chosen once, at load (``serving.start``).
A vLLM-backed generator would plug in here too (docs/guide/aws-stacks.md, planned).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import torch
from constraints import GrammarCache
from request_contract import Item


class ModelParts(Protocol):
    """What a generator needs of the loaded model (``loaded_model.LoadedModel`` has it)."""

    model: Any
    tokenizer: Any
    device: torch.device
    context_length: int
    grammars: GrammarCache

    def eos_ids(self) -> list[int]:
        """Every token id that ends a completion."""
        ...


class Handle(Protocol):
    """One submitted document: wait for it, read its pieces as they come, or cancel it."""

    def wait(self, timeout: float | None = None) -> bool:
        """True once it has a result line."""
        ...

    def cancel(self, reason: str = "cancelled") -> None:
        """Stop it; its line becomes an error line with ``reason``."""
        ...

    def line(self) -> dict[str, Any]:
        """Its result line (waits): text and token counts, or an error."""
        ...

    def pieces(self) -> Iterator[tuple[int | None, str]]:
        """(token id, new text) as generated; the texts join to the line's text (id None: all at once)."""
        ...


class Generator(Protocol):
    """Generates for every invocation of the instance; ``submit`` from any thread."""

    kind: str  # "engine" (continuous batching) or "static" (micro-batches through generate)

    def submit(self, items: list[Item]) -> list[Handle]:
        """Queue one invocation's documents; each gets a handle."""
        ...

    def cache_prefix(self, name: str, prefix: Sequence[int]) -> str | None:
        """Compute and pin ``prefix``'s keys/values under ``name``; an error text if it failed."""
        ...

    def drop_prefix(self, name: str) -> None:
        """Unpin what ``cache_prefix`` pinned (nothing to do where nothing is cached)."""
        ...

    def session_tokens(self) -> int:
        """The default budget of pinned session prefix tokens (DOCFLOW_SESSION_TOKENS)."""
        ...

    def close(self) -> None:
        """Stop generating (queued documents are cancelled); idempotent."""
        ...
