"""The serving engine: continuous batching across invocations, budget, cancel, streaming, prefix cache."""

from __future__ import annotations

import threading
from pathlib import Path
from types import ModuleType
from typing import Any

import loaded_model
import pytest
import request_contract

from tests.inference.conftest import Run, without_cached

TEMPLATE = "Summarise the following document in one sentence. " * 2
PROMPTS = [
    "Summarise the following document in one sentence. " * 3,
    "Hi",
    "What is the capital of France?",
    "Invoices, contracts and reports are documents that people read every day.",
    "The quick brown fox",
    "SageMaker runs the model on an asynchronous inference endpoint.",
]


def _docs(tag: str = "d", **extra: Any) -> list[dict[str, Any]]:
    """Documents with mixed output lengths (and one chat document)."""
    docs: list[dict[str, Any]] = [
        {"id": f"{tag}{i}", "prompt": p, "parameters": {"max_new_tokens": 4 + 7 * i, **extra}}
        for i, p in enumerate(PROMPTS)
    ]
    docs.append(
        {
            "id": f"{tag}-chat",
            "messages": [{"role": "user", "content": "Hello there"}],
            "parameters": {"max_new_tokens": 9, **extra},
        }
    )
    return docs


def _fresh(handler: ModuleType, path: Path, monkeypatch: pytest.MonkeyPatch, **env: str) -> Any:
    """A model with its own engine (fresh counters), under the given environment."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return handler.model_fn(str(path))


def _items(handler: ModuleType, model: Any, docs: list[dict[str, Any]]) -> list[Any]:
    results: list[Any] = [None] * len(docs)
    items = handler._runnable(
        [request_contract.parse_document(d, "x") for d in docs], model, results
    )
    assert len(items) == len(docs), results
    return items


def test_engine_greedy_output_equals_the_static_path(
    handler: ModuleType,
    tiny_dirs: dict[str, Path],
    arch: str,
    run: Run,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine = _fresh(handler, tiny_dirs[arch], monkeypatch)
    static = _fresh(handler, tiny_dirs[arch], monkeypatch, DOCFLOW_ENGINE="static")
    assert engine.generator.kind == "engine" and static.generator.kind == "static"
    docs = _docs() + _docs("s", stop=["e", "\u2603never"])
    on_engine, on_static = run(engine, docs), run(static, docs)
    assert on_engine == on_static
    assert {r["finish_reason"] for r in on_engine} == {"length", "stop"}
    # Token for token: the same completion counts, and every document went through the engine.
    assert engine.generator.snapshot()["finished"] == len(docs)
    assert engine.generator.snapshot()["max_rows"] > 1  # really batched


def test_documents_of_two_concurrent_invocations_share_decode_steps(
    handler: ModuleType,
    tiny_dirs: dict[str, Path],
    run: Run,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = _fresh(handler, tiny_dirs["llama"], monkeypatch)
    engine = model.generator
    first, second = _docs("a"), _docs("b")
    out: dict[str, list[dict[str, Any]]] = {}

    def invoke(name: str, docs: list[dict[str, Any]]) -> None:
        out[name] = run(model, docs)

    threads = [
        threading.Thread(target=invoke, args=("a", first)),
        threading.Thread(target=invoke, args=("b", second)),
    ]
    with engine.hold():  # both invocations queue before the engine takes a step
        for thread in threads:
            thread.start()
        assert engine.wait_until(lambda e: len(e.waiting) == len(first) + len(second))
    for thread in threads:
        thread.join(timeout=120)
    stats = engine.snapshot()
    assert stats["max_invocations_in_step"] == 2
    assert stats["shared_steps"] >= 1
    assert stats["max_rows"] == len(first) + len(second)
    # Batched with another invocation's documents, each still gets what it gets alone.
    alone = _fresh(handler, tiny_dirs["llama"], monkeypatch, DOCFLOW_ENGINE="static")
    assert out["a"] == run(alone, first)
    assert out["b"] == run(alone, second)


def test_a_document_over_the_token_budget_gets_its_error_line(
    handler: ModuleType,
    tiny_dirs: dict[str, Path],
    loaded_models: dict[str, Any],
    run: Run,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = _fresh(handler, tiny_dirs["mistral"], monkeypatch, DOCFLOW_MAX_BATCH_TOKENS="90")
    assert model.generator.limits.max_tokens == 90
    docs = [
        {"id": "ok1", "prompt": "Hi", "parameters": {"max_new_tokens": 20}},
        {
            "id": "big",
            "prompt": TEMPLATE + "The quick brown fox",
            "parameters": {"max_new_tokens": 30},
        },
        {"id": "ok2", "prompt": "The quick brown fox", "parameters": {"max_new_tokens": 30}},
        {
            "id": "ok3",
            "prompt": "What is the capital of France?",
            "parameters": {"max_new_tokens": 25},
        },
    ]
    results = run(model, docs)
    assert [r["id"] for r in results] == ["ok1", "big", "ok2", "ok3"]
    assert "error" in results[1] and "engine's budget of 90 tokens" in results[1]["error"]
    assert "DOCFLOW_MAX_BATCH_TOKENS" in results[1]["error"]
    fits = [results[0], *results[2:]]
    assert fits == run(loaded_models["mistral"], [docs[0], *docs[2:]])
    stats = model.generator.snapshot()
    assert stats["rejected"] == 1
    # Rows x columns never exceeded the budget: not all three fitted at once.
    assert 0 < stats["peak_cache_tokens"] <= 90
    assert stats["max_rows"] < 3


def test_cancelling_a_running_document_frees_its_slot(
    handler: ModuleType,
    tiny_dirs: dict[str, Path],
    loaded_models: dict[str, Any],
    run: Run,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = _fresh(handler, tiny_dirs["llama"], monkeypatch)
    engine = model.generator
    long = {"id": "long", "prompt": "The quick brown fox", "parameters": {"max_new_tokens": 200}}
    other = {"id": "other", "prompt": "Hi", "parameters": {"max_new_tokens": 6}}
    with engine.hold():
        (generation,) = engine.submit(_items(handler, model, [long]))
        engine.allow(3)  # 3 steps, then it stands still
        assert engine.wait_until(lambda e: e.stats["steps"] == 3)
        stats = engine.snapshot()
        assert stats["running"] == 1 and stats["cache_tokens"] > 0
        # The first step prefilled (token 1) and decoded (token 2); two more steps decoded.
        assert len(generation.tokens) == 4 and not generation.done.is_set()
        generation.cancel()
        engine.allow(1)
        assert generation.wait(60)
    assert generation.result == {"id": "long", "error": "cancelled"}
    stats = engine.snapshot()
    assert stats["cancelled"] == 1
    assert stats["running"] == 0 and stats["cache_tokens"] == 0
    assert run(model, [other]) == run(loaded_models["llama"], [other])


def test_an_invocation_past_its_timeout_is_cancelled_and_frees_its_slots(
    handler: ModuleType,
    tiny_dirs: dict[str, Path],
    run: Run,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = _fresh(handler, tiny_dirs["mistral"], monkeypatch, DOCFLOW_INVOCATION_TIMEOUT_S="0.05")
    engine = model.generator
    docs = _docs("t")
    with engine.hold():  # the engine stands still, so the deadline surely passes first
        results = run(model, docs)
    assert [r["id"] for r in results] == [d["id"] for d in docs]
    assert all("DOCFLOW_INVOCATION_TIMEOUT_S=0.05 s" in r["error"] for r in results)
    stats = engine.snapshot()
    assert stats["cancelled"] == len(docs)
    assert stats["waiting"] == stats["running"] == stats["prefilling"] == 0
    monkeypatch.delenv("DOCFLOW_INVOCATION_TIMEOUT_S")
    assert all("text" in r for r in run(model, docs))


def test_the_stream_yields_the_same_text_as_the_result(
    handler: ModuleType, loaded: Any, run: Run
) -> None:
    docs = _docs("st") + _docs("ss", stop=["e", "o t"])
    pieces_seen = 0
    for doc in docs:
        (expected,) = run(loaded, [doc])
        pieces = list(handler.stream_fn(doc, loaded))
        assert "".join(pieces) == expected["text"], doc
        pieces_seen = max(pieces_seen, len(pieces))
    assert pieces_seen > 3  # really streamed, not one piece at the end


def test_cached_tokens_count_the_shared_prefix(
    handler: ModuleType,
    tiny_dirs: dict[str, Path],
    run: Run,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = _fresh(handler, tiny_dirs["llama"], monkeypatch, DOCFLOW_PREFIX_BLOCK="4")
    no_cache = _fresh(handler, tiny_dirs["llama"], monkeypatch, DOCFLOW_PREFIX_CACHE_TOKENS="0")
    docs = [
        {
            "id": "a",
            "prompt": TEMPLATE + "The quick brown fox",
            "parameters": {"max_new_tokens": 8},
        },
        {
            "id": "b",
            "prompt": TEMPLATE + "What is the capital?",
            "parameters": {"max_new_tokens": 8},
        },
    ]
    parsed = [request_contract.parse_document(d, "x") for d in docs]
    assert all(isinstance(p, request_contract.Document) for p in parsed), parsed
    a_ids, b_ids = (
        request_contract.prompt_ids(p, model.tokenizer)
        for p in parsed
        if isinstance(p, request_contract.Document)
    )
    common = next(i for i, (x, y) in enumerate(zip(a_ids, b_ids, strict=False)) if x != y)
    assert common > 20  # the chat template and the instruction
    (first,) = run(model, docs[:1], keep_cached=True)
    (second,) = run(model, docs[1:], keep_cached=True)
    assert first["cached_tokens"] == 0
    assert second["cached_tokens"] == common // 4 * 4
    (again,) = run(model, docs[:1], keep_cached=True)  # its whole prompt but the last token
    assert again["cached_tokens"] == (len(a_ids) - 1) // 4 * 4
    # Served from the cache or computed afresh, the output is the same.
    plain = run(no_cache, docs, keep_cached=True)
    assert [r["cached_tokens"] for r in plain] == [0, 0]
    assert without_cached(plain) == without_cached([first, second])
    assert (
        model.generator.snapshot()["cached_tokens"]
        == second["cached_tokens"] + again["cached_tokens"]
    )


def test_the_prefix_cache_stays_within_its_budget(
    handler: ModuleType,
    tiny_dirs: dict[str, Path],
    run: Run,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = _fresh(
        handler,
        tiny_dirs["mistral"],
        monkeypatch,
        DOCFLOW_PREFIX_BLOCK="4",
        DOCFLOW_PREFIX_CACHE_TOKENS="24",
    )
    run(model, _docs("p"))
    assert 0 < model.generator.snapshot()["prefix_cache_tokens"] <= 24


def test_static_path_under_transformers_4_and_on_request(
    handler: ModuleType, tiny_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loaded_model, "major_version", lambda: 4)
    assert loaded_model.engine_kind() == "static"
    monkeypatch.setenv("DOCFLOW_ENGINE", "continuous")
    assert loaded_model.engine_kind() == "continuous"
    monkeypatch.setenv("DOCFLOW_ENGINE", "paged")
    with pytest.raises(ValueError, match="use 'continuous' or 'static'"):
        loaded_model.engine_kind()


def test_mistral_sliding_window_applies_as_in_transformers(
    handler: ModuleType,
    tiny_dirs: dict[str, Path],
    run: Run,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import json
    import shutil

    windowed = shutil.copytree(tiny_dirs["mistral"], tmp_path / "mistral-window")
    config = json.loads((windowed / "config.json").read_text())
    config["sliding_window"] = 8
    (windowed / "config.json").write_text(json.dumps(config))
    engine = _fresh(handler, windowed, monkeypatch)
    static = _fresh(handler, windowed, monkeypatch, DOCFLOW_ENGINE="static")
    unwindowed = _fresh(handler, tiny_dirs["mistral"], monkeypatch)
    assert engine.generator.window == 8
    docs = _docs("w")
    assert run(engine, docs) == run(static, docs)
    assert run(engine, docs) != run(unwindowed, docs)  # the window really changes the output
