"""The sampler: the next token of one row from its logits, under the document's parameters."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from constraints import TokenMask
from request_contract import Params
from transformers import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)


def is_greedy(params: Params, mask: TokenMask | None) -> bool:
    """True when the argmax of the raw logits is the token (the engine batches those rows)."""
    return not params.do_sample and params.repetition_penalty is None and mask is None


def choose(
    scores: torch.Tensor,
    params: Params,
    history: Sequence[int],
    mask: TokenMask | None = None,
    generator: torch.Generator | None = None,
) -> int:
    """The next token from one row's logits ([1, vocab], float32); ``history``: prompt + output."""
    if mask is not None:  # first: penalties and warpers keep refused tokens at -inf
        scores = mask.apply(scores)
    ids = None
    if params.repetition_penalty is not None or params.do_sample:
        ids = torch.tensor([list(history)], dtype=torch.long, device=scores.device)
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
    return int(torch.multinomial(probs, num_samples=1, generator=generator))
