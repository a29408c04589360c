"""The result line of one document, built here for every path (engine, static, stream summary)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from constraints import TokenMask, incomplete_error, strict_text
from request_contract import Decode, Document, finish


def error_line(doc_id: str, error: object) -> dict[str, Any]:
    """The line of a document that produced no text."""
    return {"id": doc_id, "error": str(error)}


def result_line(
    document: Document,
    prompt_tokens: int,
    tokens: Sequence[int],
    eos_ids: Sequence[int],
    stopped_at: int | None,
    decode: Decode,
    *,
    cached_tokens: int = 0,
    mask: TokenMask | None = None,
) -> dict[str, Any]:
    """The line of a finished generation: text, token counts and finish reason (or an error).

    ``mask``: the grammar of a constrained document, which must have reached an accepting state.
    """
    params = document.params
    text, count, reason = finish(tokens, eos_ids, stopped_at, params.stop, decode)
    if mask is not None:
        if not mask.complete:
            return error_line(document.doc_id, incomplete_error(params, reason))
        text = strict_text(params, text)
    return {
        "id": document.doc_id,
        "text": text,
        "prompt_tokens": prompt_tokens,
        "cached_tokens": cached_tokens,
        "completion_tokens": count,
        "finish_reason": reason,
    }
