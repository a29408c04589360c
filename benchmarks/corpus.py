"""Synthetic corpora for the benchmarks: deterministic JSON Lines files of ``{"id", "text"}``."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

_WORDS = tuple(
    [
        "the",
        "pipeline",
        "reads",
        "each",
        "document",
        "and",
        "sends",
        "batches",
        "of",
        "text",
        "to",
        "an",
        "asynchronous",
        "endpoint",
        "which",
        "writes",
        "results",
        "to",
        "storage",
        "while",
        "a",
        "queue",
        "announces",
        "every",
        "completed",
        "request",
        "so",
        "the",
        "orchestrator",
        "never",
        "polls",
        "and",
        "the",
        "model",
        "stays",
        "busy",
        "with",
        "large",
        "batches",
        "of",
        "short",
        "prompts",
    ]
)

# The same text as docflow's built-in "summarize" template, so payloads are alike in size.
PROMPT_TEMPLATE = "Summarize the following document in two or three sentences.\n\nDocument:\n{text}"


def write_corpus(
    path: Path, n_docs: int, *, seed: int = 7, min_words: int = 20, max_words: int = 60
) -> Path:
    """Write ``n_docs`` documents to ``path`` (JSONL) unless an identical file is already there."""
    if n_docs < 1:
        raise ValueError(f"n_docs must be at least 1, got {n_docs}")
    if path.exists() and sum(1 for _ in path.open()) == n_docs:
        return path
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as fh:
        for i in range(n_docs):
            words = rng.choices(_WORDS, k=rng.randint(min_words, max_words))
            fh.write(json.dumps({"id": f"doc-{i:07d}", "text": " ".join(words)}) + "\n")
    tmp.replace(path)
    return path


def read_corpus(path: Path) -> Iterator[tuple[str, str]]:
    """Yield ``(doc_id, text)`` for each line of a corpus written by ``write_corpus``."""
    with path.open() as fh:
        for line in fh:
            if line.strip():
                row = json.loads(line)
                yield str(row["id"]), str(row["text"])


def payload_line(doc_id: str, text: str, parameters: dict[str, object] | None = None) -> str:
    """One line of the JSON Lines wire format (docs/contracts.md) for one document."""
    row: dict[str, object] = {"id": doc_id, "prompt": PROMPT_TEMPLATE.format(text=text)}
    if parameters:
        row["parameters"] = parameters
    return json.dumps(row)


def chunk(items: list[tuple[str, str]], size: int) -> list[list[tuple[str, str]]]:
    """Split ``items`` into consecutive lists of at most ``size``."""
    if size < 1:
        raise ValueError(f"batch size must be at least 1, got {size}")
    return [items[i : i + size] for i in range(0, len(items), size)]
