"""The static path: length-sorted micro-batches through ``model.generate``, one at a time."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import torch
from constraints import TokenMask
from generator import Handle, ModelParts
from request_contract import Decode, Item
from result_line import error_line, result_line
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)

logger = logging.getLogger(__name__)


class StopStrings(StoppingCriteria):
    """Stops each row once its generated text holds a stop string; records how many tokens that took."""

    def __init__(self, stop: Sequence[str], decode: Decode, prompt_width: int, rows: int) -> None:
        self.stop = list(stop)
        self.decode = decode
        self.prompt_width = prompt_width
        # A character is at most 4 byte-level tokens: this tail always holds a whole stop string.
        self.window = 4 * max(len(s) for s in self.stop) + 4
        self.stopped_at: list[int | None] = [None] * rows

    def __call__(
        self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any
    ) -> torch.Tensor:
        """One flag per row: True once that row has produced a stop string."""
        generated = input_ids[:, self.prompt_width :]
        count = int(generated.shape[1])
        for row, seen in enumerate(self.stopped_at):
            if seen is None and count:
                tail = self.decode(generated[row, -self.window :].tolist())
                if any(s in tail for s in self.stop):
                    self.stopped_at[row] = count
        flags = [seen is not None for seen in self.stopped_at]
        return torch.tensor(flags, dtype=torch.bool, device=input_ids.device)


class GrammarMasks(LogitsProcessor):
    """Constrained output on ``model.generate``: each row's grammar masks its next token's scores.

    Runs before generate's own penalties and warpers (it is passed as ``logits_processor``), so
    refused tokens stay at -inf whatever the sampling parameters.
    """

    def __init__(self, masks: list[TokenMask], prompt_width: int) -> None:
        self.masks = masks
        self.prompt_width = prompt_width

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """Advance each row's grammar past its last token, then mask that row's scores."""
        generated = int(input_ids.shape[1]) - self.prompt_width
        for row, mask in enumerate(self.masks):
            if generated:
                mask.accept(int(input_ids[row, -1]))
            mask.apply(scores[row : row + 1])
        return scores


def _generate(loaded: StaticModel, batch: list[Item]) -> list[dict[str, Any]]:
    """Run one micro-batch (same parameters) with left padding; results in batch order."""
    params = batch[0][1].params
    tokenizer = loaded.tokenizer
    pad_id = int(tokenizer.pad_token_id)
    width = max(len(ids) for _, _, ids in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for row, (_, _, ids) in enumerate(batch):
        input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        attention[row, width - len(ids) :] = 1

    def decode(ids: Sequence[int]) -> str:
        return str(tokenizer.decode(list(ids), skip_special_tokens=True))

    kwargs = params.generate_kwargs()
    eos_ids = loaded.eos_ids()
    stops = StopStrings(params.stop, decode, width, len(batch)) if params.stop else None
    if stops is not None:
        kwargs["stopping_criteria"] = StoppingCriteriaList([stops])
    masks = [loaded.grammars.mask_for(document.params) for _, document, _ in batch]
    grammar = None
    if all(mask is not None for mask in masks):  # a micro-batch shares its parameters
        grammar = GrammarMasks([m for m in masks if m is not None], width)
        kwargs["logits_processor"] = LogitsProcessorList([grammar])
    # A seed applies to this micro-batch only: the global generator state is restored after it.
    cuda = [loaded.device] if loaded.device.type == "cuda" else []
    rng = torch.random.fork_rng(devices=cuda, enabled=params.seed is not None)
    with loaded.lock, torch.inference_mode(), rng:
        if params.seed is not None:
            torch.manual_seed(params.seed)
        output = loaded.model.generate(
            input_ids=input_ids.to(loaded.device),
            attention_mask=attention.to(loaded.device),
            pad_token_id=pad_id,
            eos_token_id=eos_ids,
            **kwargs,
        )
    generated = output[:, width:].tolist()
    results: list[dict[str, Any]] = []
    for row, ((_, document, ids), tokens) in enumerate(zip(batch, generated, strict=True)):
        stopped_at = stops.stopped_at[row] if stops is not None else None
        mask = grammar.masks[row] if grammar is not None else None
        if mask is not None and tokens:  # the processor has seen all but the last step's token
            mask.accept(tokens[-1])
        results.append(
            result_line(document, len(ids), tokens, eos_ids, stopped_at, decode, mask=mask)
        )
    return results


def plan_batches(items: list[Item], max_batch_size: int) -> list[list[Item]]:
    """Group by parameters, sort by prompt length, cut into micro-batches of at most max size."""
    groups: dict[tuple[Any, ...], list[Item]] = {}
    for item in items:
        params = item[1].params
        # A seeded sampled document runs alone so its text does not depend on its neighbours.
        key = params.key() + ((item[0],) if params.do_sample and params.seed is not None else ())
        groups.setdefault(key, []).append(item)
    batches: list[list[Item]] = []
    for group in groups.values():
        group.sort(key=lambda item: len(item[2]))
        batches.extend(group[i : i + max_batch_size] for i in range(0, len(group), max_batch_size))
    return batches


def run_batch(loaded: StaticModel, batch: list[Item]) -> list[dict[str, Any]]:
    """Generate a micro-batch; if it fails, retry its documents alone so one bad one fails alone."""
    try:
        return _generate(loaded, batch)
    except Exception as exc:
        if loaded.device.type == "cuda":
            torch.cuda.empty_cache()
        if len(batch) == 1:
            logger.exception("generation failed for %s", batch[0][1].doc_id)
            return [error_line(batch[0][1].doc_id, f"generation failed: {exc}")]
        logger.warning("micro-batch of %d failed (%s); retrying one by one", len(batch), exc)
        return [result for item in batch for result in run_batch(loaded, [item])]


class StaticModel(ModelParts, Protocol):
    """What the static path needs beyond ``ModelParts``: a lock and the micro-batch size."""

    lock: threading.Lock
    max_batch_size: int


class StaticHandle:
    """A document generated at submit: its line is ready, its text comes as one piece."""

    def __init__(self, result: dict[str, Any]) -> None:
        self.result = result

    def wait(self, timeout: float | None = None) -> bool:
        """Always done."""
        return True

    def cancel(self, reason: str = "cancelled") -> None:
        """Nothing left to stop."""

    def line(self) -> dict[str, Any]:
        """The result line."""
        return self.result

    def pieces(self) -> Iterator[tuple[int | None, str]]:
        """The whole text at once (raises on an error line)."""
        if "error" in self.result:
            raise RuntimeError(str(self.result["error"]))
        yield None, str(self.result["text"])


class StaticGenerator:
    """The static path behind ``generator.Generator``: micro-batches in the caller's thread."""

    kind = "static"

    def __init__(self, loaded: StaticModel) -> None:
        self.loaded = loaded

    def submit(self, items: list[Item]) -> list[Handle]:
        """Generate the documents now, in length-sorted micro-batches; handles in input order."""
        lines: dict[int, dict[str, Any]] = {}
        numbered = [(at, document, ids) for at, (_, document, ids) in enumerate(items)]
        for batch in plan_batches(numbered, self.loaded.max_batch_size):
            for (at, _, _), result in zip(batch, run_batch(self.loaded, batch), strict=True):
                lines[at] = result
        return [StaticHandle(lines[at]) for at in range(len(items))]

    def cache_prefix(self, name: str, prefix: Sequence[int]) -> str | None:
        """No cache: a session's follow-ups prefill its document again."""
        return None

    def drop_prefix(self, name: str) -> None:
        """Nothing is pinned."""

    def session_tokens(self) -> int:
        """A budget of 64 contexts (the sessions hold token ids only)."""
        return 64 * int(self.loaded.context_length)

    def close(self) -> None:
        """Nothing runs in the background."""
