"""A fast stand-in model with the real handler contract (docs/contracts.md: "Echo handler").

Shipped as ``code/inference.py`` of a real model.tar.gz; it imports only the standard library.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

JSONLINES = ("application/jsonlines", "application/jsonl", "application/x-jsonlines")


def model_fn(model_dir: str) -> dict[str, Any]:
    """Load ``echo.json`` (optional); raise when ``ECHO_FAIL_MODEL_FN=1`` or the weights say ``fail``."""
    if os.environ.get("ECHO_FAIL_MODEL_FN") == "1":
        raise RuntimeError(
            "ECHO_FAIL_MODEL_FN=1 is set in the model's Environment: model_fn refused to load"
        )
    weights: dict[str, Any] = {}
    path = Path(model_dir) / "echo.json"
    if path.is_file():
        weights = json.loads(path.read_text())
    if weights.get("fail"):
        raise RuntimeError("echo.json has fail=true: model_fn refused to load")
    return {
        "version": weights.get("version"),
        "sleep_s": float(os.environ.get("ECHO_SLEEP_S") or 0),
    }


def _media_type(content_type: str | None) -> str:
    return (content_type or "application/jsonlines").split(";")[0].strip().lower()


def input_fn(body: bytes | str, content_type: str | None) -> list[dict[str, Any]]:
    """Parse JSON Lines (one document per line) or a single ``{"inputs": ..., "parameters": ...}``."""
    text = body.decode("utf-8") if isinstance(body, bytes) else body
    media = _media_type(content_type)
    if media in JSONLINES:
        docs = [json.loads(line) for line in text.splitlines() if line.strip()]
    elif media == "application/json":
        request = json.loads(text)
        if not isinstance(request, dict) or "inputs" not in request:
            raise ValueError(
                'application/json requests look like {"inputs": "...", "parameters": {...}}'
            )
        inputs = request["inputs"]
        key = "messages" if isinstance(inputs, list) else "prompt"
        docs = [{"id": "0", key: inputs, "parameters": request.get("parameters") or {}}]
    else:
        raise ValueError(
            f"unsupported content type {content_type!r}; send application/jsonlines or application/json"
        )
    if not all(isinstance(d, dict) for d in docs):
        raise ValueError("every JSON Lines row must be an object with an id and a prompt")
    return docs


def _prompt_of(doc: dict[str, Any]) -> str | None:
    if isinstance(doc.get("prompt"), str):
        return str(doc["prompt"])
    messages = doc.get("messages")
    if isinstance(messages, list):
        return "\n".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))
    return None


def predict_fn(data: list[dict[str, Any]], model: dict[str, Any]) -> list[dict[str, Any]]:
    """Upper-case each prompt; ``__POISON__`` anywhere fails the whole request."""
    for doc in data:
        if "__POISON__" in (_prompt_of(doc) or ""):
            raise RuntimeError(
                f"poison document {doc.get('id')!r}: the echo model refuses __POISON__"
            )
    results: list[dict[str, Any]] = []
    for doc in data:
        params = doc.get("parameters") or {}
        sleep_s = float(params.get("sleep_s", model["sleep_s"]) or 0)
        if sleep_s > 0:
            time.sleep(sleep_s)
        doc_id = str(doc.get("id", ""))
        prompt = _prompt_of(doc)
        if not doc_id or prompt is None:
            results.append(
                {"id": doc_id, "error": "each document needs an id and a prompt or messages"}
            )
            continue
        text = prompt.upper()
        if model["version"] is not None:
            text = f"v{model['version']}:{text}"
        words = len(prompt.split())
        results.append(
            {
                "id": doc_id,
                "text": text,
                "prompt_tokens": words,
                "completion_tokens": words,
                "finish_reason": "stop",
            }
        )
    return results


def output_fn(prediction: list[dict[str, Any]], accept: str | None) -> str:
    """One JSON line per document (or a JSON object/array for ``application/json``)."""
    if _media_type(accept) == "application/json":
        return json.dumps(prediction[0] if len(prediction) == 1 else prediction)
    return "".join(json.dumps(row) + "\n" for row in prediction)
