"""The engine core: continuous batching for one loaded model, shared by every invocation.

vLLM v1's layout, at our scale: request state (``request_state``), scheduler (``scheduler``),
key/value and prefix caches (``kv_cache``, ``prefix_cache``), model runner (``model_runner``) and
sampler (``sampler``); this module owns the engine thread and implements ``generator.Generator``.
"""

from __future__ import annotations

import atexit
import inspect
import itertools
import logging
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from generator import Handle, ModelParts
from kv_cache import BatchCache
from model_runner import ModelRunner
from prefix_cache import PrefixCache
from request_contract import Document, Item, parse_params
from request_state import Fallback, Generation
from result_line import error_line
from scheduler import EngineLimits

logger = logging.getLogger(__name__)

_ENGINES: weakref.WeakSet[Engine] = weakref.WeakSet()


@atexit.register
def _close_engines() -> None:
    """Stop engine threads before the interpreter tears torch down under them."""
    for engine in list(_ENGINES):
        engine.close()


class Engine(ModelRunner):
    """Continuous batching for one loaded model; ``submit`` from any thread."""

    kind = "engine"

    def __init__(
        self, loaded: ModelParts, limits: EngineLimits, fallback: Fallback | None = None
    ) -> None:
        self.loaded = loaded
        self.limits = limits
        self.fallback = fallback  # a document whose step failed is generated again with it
        self.model = loaded.model
        self.prefix = PrefixCache(limits.prefix_cache_tokens, limits.prefix_block)
        self.cache = BatchCache()
        self.rows = []
        self.prefilling = []
        self.waiting = deque()
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
        self.window = int(window) if window else None
        params = inspect.signature(self.model.forward).parameters
        self.cache_arg = "cache" if "cache" in params else "past_key_values"
        self.stats = {
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
        _ENGINES.add(self)

    # -- the Generator protocol (generator.py) ------------------------------------------------

    def submit(self, items: list[Item], invocation: int | None = None) -> list[Handle]:
        """Queue documents (one invocation's); each gets a Generation to wait on."""
        return list(self.start(items, invocation))

    def cache_prefix(self, name: str, prefix: Sequence[int]) -> str | None:
        """Prefill ``prefix`` once and pin its keys/values; an error text if they are not cached."""
        self.prefix.pin(name, prefix)
        document = Document(name, parse_params({"max_new_tokens": 1}), prompt="")
        (generation,) = self.start([(0, document, list(prefix))])
        generation.wait()
        if self.prefix.pinned_tokens(name) == len(prefix):
            return None
        return str((generation.result or {}).get("error") or generation.failure)

    def drop_prefix(self, name: str) -> None:
        """Unpin a session's prefix."""
        self.prefix.unpin(name)

    def session_tokens(self) -> int:
        """Half the batch budget for pinned session prefixes."""
        return self.limits.max_tokens // 2

    # -- the engine's own interface (tests, benchmarks) -----------------------------------------

    def start(self, items: list[Item], invocation: int | None = None) -> list[Generation]:
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
                self.fallback,
            )
            for item in items
        ]
        for generation in made:
            generation.wake = self._wake
        with self.cond:
            for generation in made:
                self.stats["submitted"] += 1
                if self.closed:
                    generation.cancel_reason = "cancelled: the model server is shutting down"
                if generation.final_length > self.limits.max_tokens:
                    self.stats["rejected"] += 1
                    generation.finish(
                        error_line(
                            generation.document.doc_id,
                            f"prompt is {len(generation.prompt)} tokens + max_new_tokens "
                            f"{generation.params.max_new_tokens} > the engine's budget of "
                            f"{self.limits.max_tokens} tokens (DOCFLOW_MAX_BATCH_TOKENS); "
                            "shorten or split the document, lower max_new_tokens, or raise "
                            "DOCFLOW_MAX_BATCH_TOKENS",
                        )
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
        """Stop the engine thread once the current step ends (unfinished documents are cancelled).

        Called at exit too: a daemon thread still inside torch when the interpreter ends aborts
        the process (``terminate called without an active exception``, exit status 134).
        """
        with self.cond:
            self.closed = True
            for generation in [*self.waiting, *self.prefilling, *self._live()]:
                generation.cancel("cancelled: the model server is shutting down")
            self.cond.notify_all()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(timeout=30)

    # -- the engine thread ------------------------------------------------------------------

    def _loop(self) -> None:
        with torch.inference_mode():
            while True:  # closed: runs until _schedule has finished every cancelled document
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
