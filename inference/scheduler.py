"""The scheduler: which documents run this step, within the engine's token budget.

Continuous batching at token granularity: each step prefills at most DOCFLOW_PREFILL_CHUNK
prompt tokens of newly admitted documents (chunked, from the longest cached prefix) and then
decodes one token for every running document. Admission keeps rows x columns within the token
budget, so memory is bounded whatever the payloads look like.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from collections import deque
from contextlib import suppress
from typing import Any, NamedTuple

import torch
from generator import ModelParts
from kv_cache import BatchCache, PromptCache
from prefix_cache import PrefixCache
from request_contract import env_int
from request_state import Generation

DEFAULT_PREFILL_CHUNK = 512
DEFAULT_PREFIX_BLOCK = 16
CPU_KV_MEMORY_SHARE = 0.05  # of physical memory, for the running batch's keys and values
GPU_KV_MEMORY_SHARE = 0.80  # of the memory left free once the weights are loaded
DEFAULT_MAX_SEQUENCES = {"cpu": 16, "cuda": 64}


class EngineLimits(NamedTuple):
    """How much the engine may hold at once (environment variables, defaults from memory)."""

    max_tokens: int  # keys/values of the running batch, in tokens, padding included
    max_sequences: int
    prefill_chunk: int
    prefix_cache_tokens: int  # 0: no prefix cache
    prefix_block: int


def _env_count(name: str, default: int) -> int:
    """A whole number >= 0 from the environment (0 switches a feature off)."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit():
        raise ValueError(f"{name}={raw!r} must be a whole number >= 0")
    return int(raw)


def _kv_bytes_per_token(model: Any) -> int:
    """Bytes of keys + values one token takes across all layers."""
    config = (
        model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    )
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    element = torch.finfo(model.dtype).bits // 8
    return 2 * int(config.num_hidden_layers) * kv_heads * head_dim * element


def engine_limits(model: Any, device: torch.device, context_length: int) -> EngineLimits:
    """The engine's limits from DOCFLOW_MAX_BATCH_TOKENS etc., else from the device's memory."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        memory = int(free * GPU_KV_MEMORY_SHARE)
    else:
        memory = int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") * CPU_KV_MEMORY_SHARE)
    max_sequences = env_int("DOCFLOW_MAX_SEQUENCES", DEFAULT_MAX_SEQUENCES.get(device.type, 16))
    from_memory = max(memory // _kv_bytes_per_token(model), context_length)
    max_tokens = env_int(
        "DOCFLOW_MAX_BATCH_TOKENS", min(from_memory, max_sequences * context_length)
    )
    return EngineLimits(
        max_tokens=max_tokens,
        max_sequences=max_sequences,
        prefill_chunk=env_int("DOCFLOW_PREFILL_CHUNK", DEFAULT_PREFILL_CHUNK),
        prefix_cache_tokens=_env_count("DOCFLOW_PREFIX_CACHE_TOKENS", max_tokens // 8),
        prefix_block=env_int("DOCFLOW_PREFIX_BLOCK", DEFAULT_PREFIX_BLOCK),
    )


class EngineState:
    """What the engine's parts share (set in ``Engine.__init__``; the engine thread owns it)."""

    limits: EngineLimits
    loaded: ModelParts
    model: Any
    prefix: PrefixCache
    cache: BatchCache
    rows: list[Generation | None]  # the batch cache's rows; None: free
    prefilling: list[Generation]
    waiting: deque[Generation]
    cond: threading.Condition
    holds: int
    credits: int
    trimmed_at: int
    closed: bool
    window: int | None
    cache_arg: str
    stats: dict[str, int]


def return_free_memory() -> None:
    """Give freed heap memory back to the system (glibc), so an idle instance shrinks again."""
    with suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)


class Scheduler(EngineState):
    """Admission (rows x columns within the token budget), prefill packing, seating, compaction."""

    def _live(self) -> list[Generation]:
        return [r for r in self.rows if r is not None]

    def _schedule(self) -> bool:
        """Wait for work; admit waiting documents while rows x columns stay within the budget."""
        with self.cond:
            while True:
                for generation in [g for g in self.waiting if g.cancel_reason]:
                    self.waiting.remove(generation)
                    self._cancelled(generation)
                if self.closed and not (self.prefilling or self._live()):
                    return False
                idle = not (self.waiting or self.prefilling or self._live())
                if idle and self.stats["steps"] != self.trimmed_at:
                    self.trimmed_at = self.stats["steps"]
                    return_free_memory()
                if (self.holds == 0 or self.credits > 0) and (
                    self.waiting or self.prefilling or self._live()
                ):
                    self.credits = max(self.credits - 1, 0)
                    break
                self.cond.wait()
            admitted = [*self._live(), *self.prefilling]
            while self.waiting and len(admitted) < self.limits.max_sequences:
                candidate = [*admitted, self.waiting[0]]
                if self._columns(candidate) * len(candidate) > self.limits.max_tokens:
                    break
                generation = self.waiting.popleft()
                admitted.append(generation)
                self.prefilling.append(generation)
        return True

    @staticmethod
    def _columns(generations: list[Generation]) -> int:
        """Columns a batch of these documents may need before the next re-layout (an upper bound)."""
        longest = max(max(len(g.prompt), g.length) for g in generations)
        return longest + max(g.final_length - max(len(g.prompt), g.length) for g in generations)

    def _cancelled(self, generation: Generation) -> None:
        self.stats["cancelled"] += 1
        generation.finish({"id": generation.document.doc_id, "error": generation.cancel_reason})

    def _pack(self) -> list[tuple[Generation, int]]:
        """The prompt chunks to prefill this step: up to DOCFLOW_PREFILL_CHUNK tokens in all.

        A document that starts with the same block as another one starting in this pack waits a
        step, so that it finds the other's prefix in the cache instead of computing it again.
        """
        budget = self.limits.prefill_chunk
        pack: list[tuple[Generation, int]] = []
        starting: set[tuple[int, ...]] = set()
        for generation in self.prefilling:
            if budget <= 0:
                break
            prompt = generation.prompt
            if generation.prefill is None:
                head = tuple(prompt[: self.limits.prefix_block])
                cached = self.prefix.lookup(prompt)
                if cached is None and self.prefix.max_tokens and head in starting:
                    continue
                starting.add(head)
                generation.prefill = PromptCache(cached)
                generation.prefilled = generation.cached_tokens = (
                    int(cached[0][0].shape[2]) if cached else 0
                )
                self.stats["cached_tokens"] += generation.cached_tokens
            take = min(len(prompt) - generation.prefilled, budget)
            pack.append((generation, take))
            budget -= take
        return pack

    def _seat(
        self, ready: list[tuple[Generation, list[tuple[torch.Tensor, torch.Tensor]]]]
    ) -> None:
        """Put prefilled documents into the running batch: free rows where they fit, else one re-layout."""
        rest = []
        for generation, layers in ready:
            free = [row for row, g in enumerate(self.rows) if g is None]
            columns = self.cache.capacity
            fits = all(
                self.cache.width - g.length + g.final_length <= columns
                for g in [*self._live(), generation]
            )
            if free and len(generation.prompt) <= self.cache.width and fits:
                self.cache.place(free[0], layers)
                self.rows[free[0]] = generation
            else:
                rest.append((generation, layers))
        if not rest:
            return
        live = self._live()
        everyone = [*live, *(g for g, _ in rest)]
        keep = [row for row, g in enumerate(self.rows) if g is not None]
        self.cache.layout(
            keep, [g.length for g in live], [layers for _, layers in rest], self._columns(everyone)
        )
        self.rows = list[Generation | None](everyone)
        self.stats["layouts"] += 1
        self.stats["peak_cache_tokens"] = max(
            self.stats["peak_cache_tokens"], len(self.rows) * self.cache.capacity
        )

    def _done(self, generation: Generation) -> None:
        self.stats["finished"] += 1
        generation.finish()

    def _compact(self) -> None:
        """Drop free rows (and unused leading columns) when a quarter or more of the rows are free."""
        free = sum(g is None for g in self.rows)
        if not free:
            return
        live = self._live()
        if not live:
            self.rows = []
            self.cache.clear()
            return
        if free * 4 < len(self.rows) or self.prefilling:
            return
        keep = [row for row, g in enumerate(self.rows) if g is not None]
        self.cache.layout(keep, [g.length for g in live], [], self._columns(live))
        self.rows = list[Generation | None](live)
        self.stats["layouts"] += 1
