"""The model runner: one forward pass over packed prefill chunks or the running batch."""

from __future__ import annotations

import logging
from typing import Any

import torch
from kv_cache import PackedCache, additive_mask
from request_state import Generation
from sampler import is_greedy
from scheduler import Scheduler

logger = logging.getLogger(__name__)


class ModelRunner(Scheduler):
    """Builds each step's inputs and masks, runs the model, samples, and seats or finishes rows."""

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
        cache = PackedCache(
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
                additive_mask(allowed[None].to(device), dtype),
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
            greedy_row = is_greedy(generation.params, generation.mask)
            token = greedy[row] if greedy_row else generation.choose(logits[row : row + 1])
            if generation.append(token):
                self.rows[row] = None
                self._done(generation)

    def _fail_all(self, exc: BaseException) -> None:
        """A step failed: every running document is retried alone on the static path."""
        for generation in self._live():
            self.stats["failed"] += 1
            generation.finish(failure=exc)
        self.rows = []
        self.cache.clear()
