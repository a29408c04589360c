"""Request state: one document inside the engine (``Generation``), the engine's ``Handle``."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch
from constraints import TokenMask
from kv_cache import PromptCache
from request_contract import Decode, Item
from result_line import error_line, result_line
from sampler import choose

Fallback = Callable[[Item], dict[str, Any]]  # a document's line on the static path, alone


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
        fallback: Fallback | None = None,
    ) -> None:
        self.item = item
        self.index, self.document, self.prompt = item
        self.mask = mask  # constrained output: the grammar's token mask, else None
        self.params = self.document.params
        self.invocation = invocation
        self.eos_ids = eos_ids
        self.decode = decode
        self.fallback = fallback
        self.final_length = len(self.prompt) + self.params.max_new_tokens
        self.tokens: list[int] = []
        self.stopped_at: int | None = None
        self.cached_tokens = 0
        self.prefill: PromptCache | None = None
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

    # -- the Handle protocol (generator.py) -------------------------------------------------

    def cancel(self, reason: str = "cancelled") -> None:
        """Stop generating; the engine frees its slot at the next step and it gets an error line."""
        if not self.done.is_set():
            self.cancel_reason = reason
            self.wake()

    def wait(self, timeout: float | None = None) -> bool:
        """True once it has a result (or failed, or was cancelled)."""
        return self.done.wait(timeout)

    def line(self) -> dict[str, Any]:
        """The result line; a document whose engine step failed is generated again alone, static."""
        self.wait()
        if self.failure is not None:
            if self.fallback is None:
                return error_line(self.document.doc_id, f"generation failed: {self.failure}")
            return self.fallback(self.item)
        return self.result or error_line(self.document.doc_id, "no result")

    def pieces(self) -> Iterator[tuple[int | None, str]]:
        """(token id, new text) as generated; a stop string's text is held back until it is ruled out.

        Each piece waits for the next token, so the last one can take the text held back.
        """
        hold = max((len(s) for s in self.params.stop), default=1) - 1
        tokens: list[int] = []
        emitted = ""
        pending: tuple[int, str] | None = None
        for token in self.token_ids():
            tokens.append(token)
            text = self.decode([t for t in tokens if t not in self.eos_ids]).rstrip("\ufffd")
            safe = text[: max(len(text) - hold, 0)]
            piece = ""
            if len(safe) > len(emitted) and safe.startswith(emitted):
                piece, emitted = safe[len(emitted) :], safe
            if pending is not None:
                yield pending
            pending = (token, piece)
        self.wait()
        if self.failure is not None:
            raise RuntimeError(f"generation failed: {self.failure}")
        final = (self.result or {}).get("text")
        if final is None:
            raise RuntimeError(str((self.result or {}).get("error") or "no result"))
        if pending is not None:
            token, piece = pending
            if final.startswith(emitted) and len(final) > len(emitted):
                piece += final[len(emitted) :]
            yield token, piece

    # -- the engine's side ------------------------------------------------------------------

    def token_ids(self) -> Iterator[int]:
        """The generated token ids as they are produced (one reader)."""
        while (token := self._events.get()) is not None:
            yield token

    def choose(self, scores: torch.Tensor) -> int:
        """The next token from this row's logits ([1, vocab], float32) under its parameters."""
        history = self.prompt + self.tokens
        return choose(scores, self.params, history, self.mask, self.generator)

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
            result = result_line(
                self.document,
                len(self.prompt),
                self.tokens,
                self.eos_ids,
                self.stopped_at,
                self.decode,
                cached_tokens=self.cached_tokens,
                mask=self.mask,
            )
        self.result, self.failure = result, failure
        self.prefill = None
        self.done.set()
        self._events.put(None)
