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

from generator import Handle


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


def lines(handle: Handle, extra: dict[str, Any]) -> Iterator[bytes]:
    """JSON lines of one answer: its pieces as generated (static: one piece), then the summary."""
    for token, piece in handle.pieces():
        yield _line({"token": {"id": token, "text": piece}})
    yield _line(summary(handle.line(), extra))
