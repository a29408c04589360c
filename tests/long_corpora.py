"""Long-document corpora and the tiny model they are measured against (a 2,048-token context)."""

from __future__ import annotations

import json
from pathlib import Path

from tasks.run.request.tokens import TokenCounter
from tests.tiny_models import CORPUS, make_tiny_model

CONTEXT = 2048


def tiny_model(folder: Path) -> Path:
    """The tiny Mistral with a 2,048-token context (its tokenizer says 256 unless told)."""
    model = make_tiny_model(folder, "mistral", context=CONTEXT)
    config = model / "tokenizer_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "model_max_length": CONTEXT}))
    return model


def long_corpus(path: Path, counter: TokenCounter, times: list[int]) -> dict[str, int]:
    """A JSONL corpus: one short document, then one per entry of ``times``, that many contexts
    long in tokens of its own text. Returns each document's text tokens by id."""
    docs = {"short": CORPUS[0]}
    for n, factor in enumerate(times):
        text = ""
        while len(counter.text_ids(text)) < factor * CONTEXT:
            text += " ".join(CORPUS) + " "
        docs[f"long-{n}"] = text
    path.write_text("".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in docs.items()))
    return {k: len(counter.text_ids(v)) for k, v in docs.items()}
