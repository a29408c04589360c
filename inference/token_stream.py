"""Token streaming in the LMI convention: one JSON line per token, then a summary line.

Each token: ``{"token": {"id": <id>, "text": "<its new text>"}}``; the pieces join to the answer.
The last line: ``{"generated_text": "...", "prompt_tokens": N, "cached_tokens": N,
"completion_tokens": N, "finish_reason": "stop" | "length"}`` (plus ``session_id`` on a session).
A generation that fails raises after the lines sent so far, so the server breaks the stream and
SageMaker reports a ``ModelStreamError``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from serving_engine import Generation


def _line(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8")


def summary(result: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """The last line from a finished result line (RuntimeError when it is an error line)."""
    if "error" in result:
        raise RuntimeError(str(result["error"]))
    return {
        "generated_text": result["text"],
        "prompt_tokens": result["prompt_tokens"],
        "cached_tokens": result.get("cached_tokens", 0),
        "completion_tokens": result["completion_tokens"],
        "finish_reason": result["finish_reason"],
        **extra,
    }


def engine_lines(generation: Generation, extra: dict[str, Any]) -> Iterator[bytes]:
    """JSON lines for one generation on the engine, token by token as they are generated."""
    hold = max((len(s) for s in generation.params.stop), default=1) - 1
    tokens: list[int] = []
    emitted = ""
    pending: dict[str, Any] | None = None  # each token line waits for the next (the last one
    # takes the text a stop string held back)
    for token in generation.token_ids():
        tokens.append(token)
        text = generation.decode([t for t in tokens if t not in generation.eos_ids])
        text = text.rstrip("\ufffd")
        safe = text[: max(len(text) - hold, 0)]
        piece = ""
        if len(safe) > len(emitted) and safe.startswith(emitted):
            piece, emitted = safe[len(emitted) :], safe
        if pending is not None:
            yield _line(pending)
        pending = {"token": {"id": token, "text": piece}}
    generation.wait()
    if generation.failure is not None:
        raise RuntimeError(f"generation failed: {generation.failure}")
    last = summary(generation.result or {"error": "no result"}, extra)
    final = last["generated_text"]
    if pending is not None:
        if final.startswith(emitted) and len(final) > len(emitted):
            pending["token"]["text"] += final[len(emitted) :]
        yield _line(pending)
    yield _line(last)


def whole_lines(result: dict[str, Any], extra: dict[str, Any]) -> Iterator[bytes]:
    """JSON lines for a result computed at once (static path): one text line, then the summary."""
    last = summary(result, extra)
    yield _line({"token": {"id": None, "text": last["generated_text"]}})
    yield _line(last)
