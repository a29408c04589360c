"""The model alone: the packaged ``code/inference.py`` called in-process on docflow's own payloads."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from benchmarks.s3uri import count_results
from benchmarks.spec import ContenderSpec, Outcome
from tasks.settings import Profile

CONTENT_TYPE = "application/jsonlines"


def _handler(model_dir: Path) -> ModuleType:
    path = model_dir / "code" / "inference.py"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: model_dir must be an unpacked model.tar.gz")
    # The container puts code/ on sys.path: inference.py imports its sibling modules from there.
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location("bench_model_handler", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def prepare(spec: ContenderSpec, profile: Profile) -> dict[str, Any]:
    """Load the model once (as an endpoint instance does before serving) and build the payloads."""
    from tasks.corpus.documents import load_corpus
    from tasks.run.plan.batching import make_batches
    from tasks.run.request.prompts import GenerationParameters, PromptTemplate

    if not spec.model_dir:
        raise ValueError("the model_alone contender needs model_dir (an unpacked model.tar.gz)")
    if spec.threads:
        # The handler reads this in model_fn; the endpoint was deployed with the same value.
        os.environ["DOCFLOW_NUM_THREADS"] = str(spec.threads)
    handler = _handler(Path(spec.model_dir))
    model = handler.model_fn(spec.model_dir)
    corpus = load_corpus(spec.corpus)
    batches, rejected = make_batches(
        corpus.documents[: spec.n_docs],
        PromptTemplate(),
        GenerationParameters(**spec.parameters),
        max_docs=spec.batch_size,
    )
    if rejected:
        raise ValueError(f"{len(rejected)} benchmark documents were rejected: {rejected[:3]}")
    return {"handler": handler, "model": model, "payloads": [b.body for b in batches]}


def run(spec: ContenderSpec, profile: Profile, prepared: dict[str, Any]) -> Outcome:
    """input_fn -> predict_fn -> output_fn for every payload, one after the other."""
    import torch

    handler, model = prepared["handler"], prepared["model"]
    done = failed = tokens = 0
    for body in prepared["payloads"]:
        data = handler.input_fn(body, CONTENT_TYPE)
        prediction = handler.predict_fn(data, model)
        out = handler.output_fn(prediction, CONTENT_TYPE)
        d, f, t = count_results(out.encode() if isinstance(out, str) else bytes(out))
        done, failed, tokens = done + d, failed + f, tokens + t
    return Outcome(
        docs_completed=done,
        docs_failed=failed,
        generated_tokens=tokens,
        extra={"torch_threads": torch.get_num_threads(), "batches": len(prepared["payloads"])},
    )
