"""The serving engine: continuous batching with a prefix cache, one per instance."""

from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import inspect
import itertools
import logging
import os
import queue
import threading
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from constraints import TokenMask, incomplete_error, strict_text
from request_contract import Decode, Item, env_int, finish
from transformers import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

if TYPE_CHECKING:
    from loaded_model import LoadedModel

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# The serving engine: one per instance, shared by every concurrent invocation and document.
#
# Continuous batching at token granularity over a hand-written decode loop: each step prefills
# at most DOCFLOW_PREFILL_CHUNK prompt tokens of newly admitted documents (one document at a
# time, chunked, from the longest cached prefix) and then decodes one token for every running
# document. The running batch keeps its keys/values in one buffer per layer, rows left-padded
# and right-aligned, so every step writes one column in place; a finished document frees its
# row at once and the next one is written into it. Admission keeps rows x columns within the
# token budget, so memory is bounded whatever the payloads look like.

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


def _additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean [rows, queries, keys] mask as the additive 4-D float mask attention takes."""
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


class _PromptCache:
    """Keys/values of one document while its prompt is prefilled (batch of one, grows by chunk)."""

    def __init__(self, layers: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> None:
        self.layers = layers or []

    def update(
        self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append this chunk's keys/values of a layer; return the layer's whole keys/values."""
        if layer_idx < len(self.layers):
            old_k, old_v = self.layers[layer_idx]
            key, value = torch.cat([old_k, key], dim=2), torch.cat([old_v, value], dim=2)
            self.layers[layer_idx] = (key, value)
        else:
            self.layers.append((key, value))
        return key, value

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Tokens cached so far."""
        return int(self.layers[0][0].shape[2]) if self.layers else 0


class _PackedCache:
    """Keys/values for one packed prefill: every document's past, then the new chunks end to end."""

    def __init__(
        self, pasts: list[list[tuple[torch.Tensor, torch.Tensor]]], lengths: list[int]
    ) -> None:
        self.pasts = pasts
        self.lengths = lengths
        self.new: list[tuple[torch.Tensor, torch.Tensor]] = []

    def update(
        self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keep the chunks' keys/values of a layer; return the pasts and them, concatenated."""
        self.new.append((key, value))
        if not any(self.pasts):
            return key, value
        keys = [p[layer_idx][0] for p in self.pasts if p] + [key]
        values = [p[layer_idx][1] for p in self.pasts if p] + [value]
        return torch.cat(keys, dim=2), torch.cat(values, dim=2)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Tokens cached before this pass."""
        return sum(int(p[0][0].shape[2]) for p in self.pasts if p)

    def split(self) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
        """Each document's keys/values after the pass: its past, then its new chunk."""
        out = []
        at = 0
        for past, take in zip(self.pasts, self.lengths, strict=True):
            layers = []
            for layer, (key, value) in enumerate(self.new):
                k = key[:, :, at : at + take]
                v = value[:, :, at : at + take]
                if past:
                    k = torch.cat([past[layer][0], k], dim=2)
                    v = torch.cat([past[layer][1], v], dim=2)
                else:
                    k, v = k.contiguous(), v.contiguous()
                layers.append((k, v))
            out.append(layers)
            at += take
        return out


class _BatchCache:
    """The running batch's keys/values: one row per document, right-aligned, written in place."""

    def __init__(self) -> None:
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.valid = torch.zeros((0, 0), dtype=torch.bool)
        self.width = 0  # columns in use; the next token of every row goes to this column

    @property
    def capacity(self) -> int:
        """Columns allocated."""
        return int(self.valid.shape[1])

    def update(
        self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the step's key/value column of a layer; return the layer's keys/values so far."""
        end = self.width + 1
        self.keys[layer_idx][:, :, self.width : end] = key
        self.values[layer_idx][:, :, self.width : end] = value
        return self.keys[layer_idx][:, :, :end], self.values[layer_idx][:, :, :end]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Columns in use."""
        return self.width

    def layout(
        self,
        keep: list[int],
        lengths: list[int],
        new: list[list[tuple[torch.Tensor, torch.Tensor]]],
        columns: int,
    ) -> None:
        """Rebuild with rows ``keep`` (their ``lengths``) plus ``new`` prompts, ``columns`` wide."""
        new_lengths = [int(n[0][0].shape[2]) for n in new]
        width = max([*lengths, *new_lengths, 0])
        rows = len(keep) + len(new)
        like = new[0][0][0] if new else self.keys[0]
        layers = len(new[0]) if new else len(self.keys)
        heads, dim, dtype, device = like.shape[1], like.shape[3], like.dtype, like.device
        del like
        index = torch.tensor(keep, dtype=torch.long, device=device)
        shift = self.width - width  # leading columns that no kept row uses (>= 0 or < 0)
        src = slice(max(shift, 0), self.width)
        dst = slice(max(-shift, 0), width)
        # One allocation for every layer: large enough to be mapped (and unmapped) on its own,
        # so a re-layout returns the old cache to the system instead of fragmenting the heap.
        buffer = torch.zeros((layers, 2, rows, heads, columns, dim), dtype=dtype, device=device)
        keys, values = [], []
        for layer in range(layers):
            k, v = buffer[layer, 0], buffer[layer, 1]
            if keep:
                k[: len(keep), :, dst] = self.keys[layer][:, :, src].index_select(0, index)
                v[: len(keep), :, dst] = self.values[layer][:, :, src].index_select(0, index)
            for row, prompt in enumerate(new, start=len(keep)):
                pk, pv = prompt[layer]
                k[row, :, width - pk.shape[2] : width] = pk[0]
                v[row, :, width - pv.shape[2] : width] = pv[0]
            keys.append(k)
            values.append(v)
        valid = torch.zeros((rows, columns), dtype=torch.bool, device=device)
        for row, length in enumerate([*lengths, *new_lengths]):
            valid[row, width - length : width] = True
        self.keys, self.values, self.valid, self.width = keys, values, valid, width

    def place(self, row: int, prompt: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Write a prefilled prompt into a free row, right-aligned at the current width."""
        length = int(prompt[0][0].shape[2])
        for layer, (pk, pv) in enumerate(prompt):
            self.keys[layer][row, :, self.width - length : self.width] = pk[0]
            self.values[layer][row, :, self.width - length : self.width] = pv[0]
        self.valid[row] = False
        self.valid[row, self.width - length : self.width] = True

    def step_mask(self, dtype: torch.dtype, window: int | None = None) -> torch.Tensor:
        """The decode step's 4-D mask: each row sees its own tokens (within ``window``) and the new column."""
        allowed = self.valid[:, : self.width + 1].clone()
        allowed[:, self.width] = True
        if window is not None and self.width + 1 > window:
            allowed[:, : self.width + 1 - window] = False
        return _additive_mask(allowed[:, None, :], dtype)

    def advance(self) -> None:
        """The step's column is written: count it."""
        self.valid[:, self.width] = True
        self.width += 1

    def clear(self) -> None:
        """Drop everything (after a failed step)."""
        self.__init__()  # type: ignore[misc]


class _PrefixCache:
    """Keys/values of prompt blocks already computed, keyed by the whole prefix up to them (LRU)."""

    def __init__(self, max_tokens: int, block: int) -> None:
        self.max_tokens = max_tokens
        self.block = block
        self.blocks: OrderedDict[
            int, tuple[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]]
        ] = OrderedDict()
        # Exact prefixes held for open sessions (inference/sessions.py): outside the LRU, filled by
        # the first insert of a prompt that starts with them, dropped only by unpin.
        self.pinned: dict[str, tuple[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]]] = {}
        self.lock = threading.Lock()

    def pin(self, name: str, prefix: Sequence[int]) -> None:
        """Keep the keys/values of exactly ``prefix`` (once a prompt starting with it is prefilled)."""
        with self.lock:
            self.pinned[name] = (tuple(prefix), [])

    def unpin(self, name: str) -> None:
        """Forget a pinned prefix."""
        with self.lock:
            self.pinned.pop(name, None)

    def pinned_tokens(self, name: str) -> int:
        """Tokens held for a pinned prefix (0 until it was prefilled)."""
        with self.lock:
            prefix, layers = self.pinned.get(name, ((), []))
            return len(prefix) if layers else 0

    def _pinned_for(
        self, prompt: Sequence[int], longer_than: int
    ) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        best: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        for prefix, layers in self.pinned.values():
            n = len(prefix)
            if layers and longer_than < n < len(prompt) and tuple(prompt[:n]) == prefix:
                best, longer_than = list(layers), n
        return best

    def _keys(self, prompt: Sequence[int], blocks: int) -> list[tuple[int, tuple[int, ...]]]:
        keys, chained = [], 0
        for n in range(blocks):
            tokens = tuple(prompt[n * self.block : (n + 1) * self.block])
            chained = hash((chained, tokens))
            keys.append((chained, tokens))
        return keys

    def lookup(self, prompt: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """The longest cached prefix of ``prompt`` (whole blocks or a pinned prefix, >= 1 token left)."""
        found: list[list[tuple[torch.Tensor, torch.Tensor]]] = []
        hits: list[int] = []
        with self.lock:
            blocks = (len(prompt) - 1) // self.block if self.max_tokens >= self.block else 0
            for key, tokens in self._keys(prompt, blocks):
                entry = self.blocks.get(key)
                if entry is None or entry[0] != tokens:
                    break
                found.append(entry[1])
                hits.append(key)
            for key in reversed(hits):  # parents end up more recent than their children
                self.blocks.move_to_end(key)
            pinned = self._pinned_for(prompt, len(found) * self.block)
        if pinned is not None:
            return pinned
        if not found:
            return None
        layers = len(found[0])
        return [
            (
                torch.cat([f[layer][0] for f in found], dim=2),
                torch.cat([f[layer][1] for f in found], dim=2),
            )
            for layer in range(layers)
        ]

    def insert(
        self, prompt: Sequence[int], layers: list[tuple[torch.Tensor, torch.Tensor]]
    ) -> None:
        """Remember the whole blocks of a prefilled prompt, evicting the least recently used."""
        with self.lock:
            for name, (prefix, held) in list(self.pinned.items()):
                n = len(prefix)
                if not held and n <= len(prompt) and tuple(prompt[:n]) == prefix:
                    self.pinned[name] = (
                        prefix,
                        [(k[:, :, :n].clone(), v[:, :, :n].clone()) for k, v in layers],
                    )
        capacity = self.max_tokens // self.block
        if capacity == 0:
            return
        keys = self._keys(prompt, min(len(prompt) // self.block, capacity))
        with self.lock:
            for n, (key, tokens) in reversed(list(enumerate(keys))):
                if key in self.blocks:
                    self.blocks.move_to_end(key)
                    continue
                cut = slice(n * self.block, (n + 1) * self.block)
                self.blocks[key] = (
                    tokens,
                    [(k[:, :, cut].clone(), v[:, :, cut].clone()) for k, v in layers],
                )
            while len(self.blocks) > capacity:
                self.blocks.popitem(last=False)

    @property
    def tokens(self) -> int:
        """Tokens held."""
        return len(self.blocks) * self.block


class Generation:
    """One document inside the engine: a handle to wait on, stream from, or cancel."""

    def __init__(
        self,
        item: Item,
        invocation: int,
        eos_ids: list[int],
        decode: Decode,
        device: torch.device,
        mask: TokenMask | None = None,
    ) -> None:
        self.index, self.document, self.prompt = item
        self.mask = mask  # constrained output: the grammar's token mask, else None
        self.params = self.document.params
        self.invocation = invocation
        self.eos_ids = eos_ids
        self.decode = decode
        self.final_length = len(self.prompt) + self.params.max_new_tokens
        self.tokens: list[int] = []
        self.stopped_at: int | None = None
        self.cached_tokens = 0
        self.prefill: _PromptCache | None = None
        self.prefilled = 0  # prompt tokens whose keys/values exist
        self.result: dict[str, Any] | None = None
        self.failure: BaseException | None = None
        self.cancel_reason: str | None = None
        self.done = threading.Event()
        self._events: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self.generator: torch.Generator | None = None
        if self.params.do_sample and self.params.seed is not None:
            self.generator = torch.Generator(device=device).manual_seed(self.params.seed)
        self.window = 4 * max((len(s) for s in self.params.stop), default=0) + 4
        self.wake: Callable[[], None] = lambda: None  # tells the engine something changed

    @property
    def length(self) -> int:
        """Tokens in its cache once the pending token is written: prompt + generated - 1."""
        return len(self.prompt) + len(self.tokens) - 1

    def cancel(self, reason: str = "cancelled") -> None:
        """Stop generating; the engine frees its slot at the next step and it gets an error line."""
        if not self.done.is_set():
            self.cancel_reason = reason
            self.wake()

    def wait(self, timeout: float | None = None) -> bool:
        """True once it has a result (or failed, or was cancelled)."""
        return self.done.wait(timeout)

    def stream(self) -> Iterator[str]:
        """The generated text as it is produced; the pieces join to the final ``text``."""
        tokens: list[int] = []
        emitted = ""
        hold = max((len(s) for s in self.params.stop), default=1) - 1
        while (token := self._events.get()) is not None:
            tokens.append(token)
            text = self.decode([t for t in tokens if t not in self.eos_ids]).rstrip("\ufffd")
            safe = text[: max(len(text) - hold, 0)]
            if len(safe) > len(emitted) and safe.startswith(emitted):
                yield safe[len(emitted) :]
                emitted = safe
        final = (self.result or {}).get("text")
        if final is None:
            raise RuntimeError(str((self.result or {}).get("error") or self.failure))
        if final.startswith(emitted) and len(final) > len(emitted):
            yield final[len(emitted) :]

    def token_ids(self) -> Iterator[int]:
        """The generated token ids as they are produced (one reader: use this or ``stream``)."""
        while (token := self._events.get()) is not None:
            yield token

    def choose(self, scores: torch.Tensor) -> int:
        """The next token from this row's logits ([1, vocab], float32) under its parameters."""
        params = self.params
        if self.mask is not None:  # first: penalties and warpers keep refused tokens at -inf
            scores = self.mask.apply(scores)
        ids = None
        if params.repetition_penalty is not None or params.do_sample:
            ids = torch.tensor([self.prompt + self.tokens], dtype=torch.long, device=scores.device)
        if params.repetition_penalty is not None:
            scores = RepetitionPenaltyLogitsProcessor(params.repetition_penalty)(ids, scores)
        if not params.do_sample:
            return int(scores.argmax(-1))
        # The warpers generate() applies, in its order; unset knobs mean plain sampling.
        if params.temperature not in (None, 1.0):
            scores = TemperatureLogitsWarper(params.temperature)(ids, scores)
        if params.top_k not in (None, 0):
            scores = TopKLogitsWarper(top_k=params.top_k)(ids, scores)
        if params.top_p not in (None, 1.0):
            scores = TopPLogitsWarper(top_p=params.top_p)(ids, scores)
        probs = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probs, num_samples=1, generator=self.generator))

    def append(self, token: int) -> bool:
        """Record a generated token; True when the document is finished."""
        self.tokens.append(token)
        self._events.put(token)
        if self.mask is not None:
            self.mask.accept(token)
        count = len(self.tokens)
        if self.params.stop and self.stopped_at is None:
            tail = self.decode(self.tokens[-self.window :])
            if any(s in tail for s in self.params.stop):
                self.stopped_at = count
        return (
            token in self.eos_ids
            or self.stopped_at is not None
            or count >= self.params.max_new_tokens
        )

    def finish(
        self, result: dict[str, Any] | None = None, failure: BaseException | None = None
    ) -> None:
        """Set the outcome (the result line, or a failure to retry alone) and wake the waiters."""
        if result is None and failure is None:
            text, count, reason = finish(
                self.tokens, self.eos_ids, self.stopped_at, self.params.stop, self.decode
            )
            result = {
                "id": self.document.doc_id,
                "text": text,
                "prompt_tokens": len(self.prompt),
                "cached_tokens": self.cached_tokens,
                "completion_tokens": count,
                "finish_reason": reason,
            }
            if self.mask is not None and not self.mask.complete:
                result = {
                    "id": self.document.doc_id,
                    "error": incomplete_error(self.params, reason),
                }
            elif self.mask is not None:
                result["text"] = strict_text(self.params, text)
        self.result, self.failure = result, failure
        self.prefill = None
        self.done.set()
        self._events.put(None)


def _return_free_memory() -> None:
    """Give freed heap memory back to the system (glibc), so an idle instance shrinks again."""
    with suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)


_ENGINES: weakref.WeakSet[Engine] = weakref.WeakSet()


@atexit.register
def _close_engines() -> None:
    """Stop engine threads before the interpreter tears torch down under them."""
    for engine in list(_ENGINES):
        engine.close()


class Engine:
    """Continuous batching for one loaded model; ``submit`` from any thread."""

    def __init__(self, loaded: LoadedModel, limits: EngineLimits) -> None:
        self.loaded = loaded
        self.limits = limits
        self.model = loaded.model
        self.prefix = _PrefixCache(limits.prefix_cache_tokens, limits.prefix_block)
        self.cache = _BatchCache()
        self.rows: list[Generation | None] = []  # the batch cache's rows; None: free
        self.prefilling: list[Generation] = []
        self.waiting: deque[Generation] = deque()
        self.cond = threading.Condition()
        self.holds = 0
        self.credits = 0
        self.trimmed_at = 0
        self.closed = False
        self.invocations = itertools.count(1)
        self.thread: threading.Thread | None = None
        # Mistral's sliding window (None for v0.2+): each token sees at most this many tokens.
        config = self.model.config
        window = getattr(config, "sliding_window", None) if config.model_type == "mistral" else None
        self.window: int | None = int(window) if window else None
        params = inspect.signature(self.model.forward).parameters
        self.cache_arg = "cache" if "cache" in params else "past_key_values"
        self.stats: dict[str, int] = {
            "submitted": 0,
            "finished": 0,
            "cancelled": 0,
            "rejected": 0,
            "failed": 0,
            "steps": 0,
            "decode_steps": 0,
            "decoded_rows": 0,
            "shared_steps": 0,  # decode steps with documents of two or more invocations
            "max_rows": 0,
            "max_invocations_in_step": 0,
            "prefill_tokens": 0,
            "cached_tokens": 0,
            "layouts": 0,
            "peak_cache_tokens": 0,
        }

    # -- the callers' side -----------------------------------------------------------------

    def submit(self, items: list[Item], invocation: int | None = None) -> list[Generation]:
        """Queue documents (one invocation's); each gets a Generation to wait on."""
        invocation = next(self.invocations) if invocation is None else invocation
        tokenizer = self.loaded.tokenizer

        def decode(ids: Sequence[int]) -> str:
            return str(tokenizer.decode(list(ids), skip_special_tokens=True))

        eos_ids = self.loaded.eos_ids()
        grammars = self.loaded.grammars
        made = [
            Generation(
                item,
                invocation,
                eos_ids,
                decode,
                self.loaded.device,
                grammars.mask_for(item[1].params),
            )
            for item in items
        ]
        for generation in made:
            generation.wake = self._wake
        with self.cond:
            for generation in made:
                self.stats["submitted"] += 1
                if generation.final_length > self.limits.max_tokens:
                    self.stats["rejected"] += 1
                    generation.finish(
                        {
                            "id": generation.document.doc_id,
                            "error": (
                                f"prompt is {len(generation.prompt)} tokens + max_new_tokens "
                                f"{generation.params.max_new_tokens} > the engine's budget of "
                                f"{self.limits.max_tokens} tokens (DOCFLOW_MAX_BATCH_TOKENS); "
                                "shorten or split the document, lower max_new_tokens, or raise "
                                "DOCFLOW_MAX_BATCH_TOKENS"
                            ),
                        }
                    )
                    continue
                self.waiting.append(generation)
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(
                    target=self._loop, name="docflow-engine", daemon=True
                )
                self.thread.start()
            self.cond.notify_all()
        return made

    def _wake(self) -> None:
        with self.cond:
            self.cond.notify_all()

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Pause scheduling at a step boundary (tests use it to queue work deterministically)."""
        with self.cond:
            self.holds += 1
        try:
            yield
        finally:
            with self.cond:
                self.holds -= 1
                self.cond.notify_all()

    def allow(self, steps: int = 1) -> None:
        """While held, let exactly ``steps`` more steps run."""
        with self.cond:
            self.credits += steps
            self.cond.notify_all()

    def wait_until(self, predicate: Callable[[Engine], bool], timeout: float = 60.0) -> bool:
        """Block until ``predicate(engine)`` holds (checked whenever the engine's state changes)."""
        with self.cond:
            return self.cond.wait_for(lambda: predicate(self), timeout)

    def snapshot(self) -> dict[str, int]:
        """Counters plus what is queued, prefilling and running now."""
        with self.cond:
            return {
                **self.stats,
                "waiting": len(self.waiting),
                "prefilling": len(self.prefilling),
                "running": sum(r is not None for r in self.rows),
                "cache_tokens": len(self.rows) * self.cache.capacity,
                "prefix_cache_tokens": self.prefix.tokens,
            }

    def close(self) -> None:
        """Stop the engine thread once the current step ends (queued documents are cancelled)."""
        with self.cond:
            self.closed = True
            for generation in self.waiting:
                generation.cancel("cancelled: the model server is shutting down")
            self.cond.notify_all()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(timeout=30)

    # -- the engine thread ------------------------------------------------------------------

    def _loop(self) -> None:
        with torch.inference_mode():
            while not self.closed:
                if not self._schedule():
                    break
                try:
                    self._step()
                except Exception as exc:  # e.g. out of memory: retry each document alone
                    logger.exception("engine step failed; its documents are retried one by one")
                    self._fail_all(exc)
                with self.cond:
                    self.stats["steps"] += 1
                    self.cond.notify_all()

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
                    _return_free_memory()
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

    def _step(self) -> None:
        for generation in [g for g in self.prefilling if g.cancel_reason]:
            self.prefilling.remove(generation)
            self._cancelled(generation)
        pack = self._pack()
        if pack:
            self._prefill(pack)
        for row, seated in enumerate(self.rows):
            if seated is not None and seated.cancel_reason:
                self.rows[row] = None
                self._cancelled(seated)
        if self._live():
            self._decode()
        self._compact()

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
                generation.prefill = _PromptCache(cached)
                generation.prefilled = generation.cached_tokens = (
                    int(cached[0][0].shape[2]) if cached else 0
                )
                self.stats["cached_tokens"] += generation.cached_tokens
            take = min(len(prompt) - generation.prefilled, budget)
            pack.append((generation, take))
            budget -= take
        return pack

    def _forward(
        self,
        ids: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor,
        cache: Any,
        keep: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits float32 [rows, vocab]: each row's last position, or positions ``keep`` of row 0."""
        device = self.loaded.device
        out = self.model(
            input_ids=ids.to(device),
            position_ids=positions.to(device),
            attention_mask=mask,
            use_cache=True,
            logits_to_keep=1 if keep is None else keep,
            **{self.cache_arg: cache},
        )
        if keep is not None:
            return out.logits[0].float()
        return out.logits[:, -1, :].float()

    def _prefill(self, pack: list[tuple[Generation, int]]) -> None:
        """Prefill the pack's chunks in one forward pass, each document seeing only its own tokens.

        The chunks are laid end to end as one sequence after every document's cached keys/values;
        a block mask keeps documents apart. A document whose prompt is then complete gets its
        first token and a row in the running batch.
        """
        device, dtype = self.loaded.device, self.model.dtype
        cache = _PackedCache(
            [g.prefill.layers if g.prefill else [] for g, _ in pack], [take for _, take in pack]
        )
        past = sum(g.prefilled for g, _ in pack)
        total = sum(take for _, take in pack)
        allowed = torch.zeros((total, past + total), dtype=torch.bool)
        ids: list[int] = []
        positions: list[int] = []
        last: list[int] = []
        past_at = new_at = 0
        for generation, take in pack:
            start = generation.prefilled
            ids.extend(generation.prompt[start : start + take])
            positions.extend(range(start, start + take))
            rows = slice(new_at, new_at + take)
            query_at = torch.arange(start, start + take)[:, None]
            seen = torch.arange(start + take)[None, :] <= query_at
            if self.window is not None:
                seen &= torch.arange(start + take)[None, :] > query_at - self.window
            allowed[rows, past_at : past_at + start] = seen[:, :start]
            allowed[rows, past + new_at : past + new_at + take] = seen[:, start:]
            past_at += start
            new_at += take
            last.append(new_at - 1)
        try:
            logits = self._forward(
                torch.tensor([ids], dtype=torch.long),
                torch.tensor([positions], dtype=torch.long),
                _additive_mask(allowed[None].to(device), dtype),
                cache,
                keep=torch.tensor(last, device=device),
            )
        except Exception as exc:
            logger.exception("prefill failed for %d documents", len(pack))
            for generation, _ in pack:
                self.prefilling.remove(generation)
                self.stats["failed"] += 1
                generation.finish(failure=exc)
            return
        self.stats["prefill_tokens"] += total
        ready: list[tuple[Generation, list[tuple[torch.Tensor, torch.Tensor]]]] = []
        for n, ((generation, take), layers) in enumerate(zip(pack, cache.split(), strict=True)):
            generation.prefilled += take
            if generation.prefill is not None:
                generation.prefill.layers = layers
            if generation.prefilled < len(generation.prompt):
                continue
            self.prefilling.remove(generation)
            self.prefix.insert(generation.prompt, layers)
            generation.prefill = None
            if generation.append(generation.choose(logits[n : n + 1])):
                self._done(generation)
            else:
                ready.append((generation, layers))
        if ready:
            self._seat(ready)

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

    def _decode(self) -> None:
        """One token for every running document (free rows compute a throwaway token)."""
        rows = self.rows
        pad = int(self.loaded.tokenizer.pad_token_id)
        ids = torch.tensor([[g.tokens[-1] if g else pad] for g in rows], dtype=torch.long)
        positions = torch.tensor([[g.length if g else 0] for g in rows], dtype=torch.long)
        mask = self.cache.step_mask(self.model.dtype, self.window)
        try:
            logits = self._forward(ids, positions, mask, self.cache)
        except Exception:
            self.cache.clear()
            raise
        self.cache.advance()
        live = [(row, g) for row, g in enumerate(rows) if g is not None]
        greedy = logits.argmax(-1).tolist()
        invocations = {g.invocation for _, g in live}
        self.stats["decode_steps"] += 1
        self.stats["decoded_rows"] += len(live)
        self.stats["shared_steps"] += len(invocations) > 1
        self.stats["max_rows"] = max(self.stats["max_rows"], len(live))
        self.stats["max_invocations_in_step"] = max(
            self.stats["max_invocations_in_step"], len(invocations)
        )
        for row, generation in live:
            params = generation.params
            plain = (
                not params.do_sample
                and params.repetition_penalty is None
                and generation.mask is None
            )
            token = greedy[row] if plain else generation.choose(logits[row : row + 1])
            if generation.append(token):
                self.rows[row] = None
                self._done(generation)

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

    def _fail_all(self, exc: BaseException) -> None:
        """A step failed: every running document is retried alone on the static path."""
        for generation in self._live():
            self.stats["failed"] += 1
            generation.finish(failure=exc)
        self.rows = []
        self.cache.clear()
