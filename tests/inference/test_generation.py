"""Real generation with tiny random Mistral and Llama models loaded from safetensors."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import request_contract
import torch

from tests.inference.conftest import Run

PROMPTS = [
    "Summarise the following document in one sentence. " * 3,
    "Hi",
    "What is the capital of France?",
    "Invoices, contracts and reports are documents that people read every day.",
    "The quick brown fox",
]


def _docs(max_new_tokens: int = 8, **extra: Any) -> list[dict[str, Any]]:
    params = {"max_new_tokens": max_new_tokens, **extra}
    return [{"id": f"d{i}", "prompt": p, "parameters": params} for i, p in enumerate(PROMPTS)]


def _templated_count(tokenizer: Any, messages: list[dict[str, str]]) -> int:
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return len(ids["input_ids"] if hasattr(ids, "keys") else ids)


def test_model_fn_loads_both_architectures(
    handler: ModuleType, tiny_dirs: dict[str, Path], loaded: Any, arch: str
) -> None:
    assert any(tiny_dirs[arch].glob("*.safetensors"))
    assert loaded.model.config.model_type == arch
    assert type(loaded.model).__name__ == f"{arch.capitalize()}ForCausalLM"
    assert loaded.model.dtype == torch.float32 and loaded.device.type == "cpu"
    assert loaded.tokenizer.padding_side == "left"
    assert loaded.context_length == 256
    if arch == "mistral":  # no pad token of its own: padded with EOS
        assert loaded.tokenizer.pad_token == loaded.tokenizer.eos_token == "</s>"
    else:
        assert loaded.tokenizer.pad_token == "<pad>"
        assert len(loaded.eos_ids()) == 2  # </s> and <|eot_id|>


def test_model_fn_without_safetensors_says_what_to_do(handler: ModuleType, tmp_path: Path) -> None:
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ValueError, match=r"no \*\.safetensors weights .*safe_serialization=True"):
        handler.model_fn(str(tmp_path))


def test_model_fn_sets_torch_threads_from_env(
    handler: ModuleType, tiny_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.set_num_threads(2)
    monkeypatch.setenv("DOCFLOW_NUM_THREADS", "1")
    try:
        handler.model_fn(str(tiny_dirs["llama"]))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(1)


def test_batch_returns_one_line_per_document_in_order(loaded: Any, run: Run) -> None:
    docs = _docs(max_new_tokens=8)
    docs.append({"id": "chat", "messages": [{"role": "user", "content": "Hello there"}]})
    docs[-1]["parameters"] = {"max_new_tokens": 8}
    results = run(loaded, docs)
    assert [r["id"] for r in results] == [d["id"] for d in docs]
    for doc, result in zip(docs, results, strict=True):
        messages = doc.get("messages") or [{"role": "user", "content": doc["prompt"]}]
        assert result["prompt_tokens"] == _templated_count(loaded.tokenizer, messages)
        assert result["finish_reason"] in ("stop", "length")
        if result["finish_reason"] == "length":
            assert result["completion_tokens"] == 8
        assert 1 <= result["completion_tokens"] <= 8
        assert isinstance(result["text"], str)
    assert len({r["prompt_tokens"] for r in results}) >= 4  # really different lengths


def test_batched_equals_unbatched_greedy(
    handler: ModuleType, tiny_dirs: dict[str, Path], loaded: Any, run: Run, arch: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    docs = _docs(max_new_tokens=16)
    batched = run(loaded, docs)
    alone = [run(loaded, [doc])[0] for doc in docs]
    assert batched == alone
    monkeypatch.setenv("DOCFLOW_MAX_BATCH_SIZE", "2")
    small_batches = handler.model_fn(str(tiny_dirs[arch]))
    assert small_batches.max_batch_size == 2
    assert run(small_batches, docs) == batched


def test_unrunnable_documents_get_error_lines_and_the_rest_completes(loaded: Any, run: Run) -> None:
    too_long = "Summarise the following document in one sentence. " * 40
    docs = [
        {"id": "ok1", "prompt": "Hi", "parameters": {"max_new_tokens": 4}},
        {"id": "long", "prompt": too_long, "parameters": {"max_new_tokens": 4}},
        {"id": "empty", "prompt": ""},
        "{broken",
        {"prompt": "no id"},
        {"id": "budget", "prompt": "Hi", "parameters": {"max_new_tokens": 250}},
        {"id": "ok2", "prompt": "The quick brown fox", "parameters": {"max_new_tokens": 4}},
    ]
    results = run(loaded, docs)
    assert [r["id"] for r in results] == [
        "ok1",
        "long",
        "empty",
        "line 4",
        "line 5",
        "budget",
        "ok2",
    ]
    errors = {r["id"]: r["error"] for r in results if "error" in r}
    assert set(errors) == {"long", "empty", "line 4", "line 5", "budget"}
    assert "the model's context of 256 tokens" in errors["long"]
    assert "max_new_tokens 250" in errors["budget"]
    assert "empty prompt" in errors["empty"]
    for r in (results[0], results[-1]):
        assert r["completion_tokens"] >= 1 and "text" in r


def test_single_json_request(handler: ModuleType, loaded: Any, run: Run) -> None:
    question = "What is the capital of France?"
    request = {"inputs": question, "parameters": {"max_new_tokens": 5}}
    (result,) = run(loaded, [request], content_type="application/json")
    assert result["id"] == "0"
    assert result["prompt_tokens"] == _templated_count(
        loaded.tokenizer, [{"role": "user", "content": question}]
    )
    assert result["completion_tokens"] <= 5
    body = handler.output_fn(
        handler.predict_fn(handler.input_fn(json.dumps(request), "application/json"), loaded),
        "application/json",
    )
    single = json.loads(body)
    assert single.pop("cached_tokens") >= 0
    assert single == result  # one JSON object for a single document


def test_max_new_tokens_per_document_in_one_request(loaded: Any, run: Run) -> None:
    docs = [{"id": str(n), "prompt": "The quick brown fox", "parameters": {"max_new_tokens": n}}
            for n in (3, 7, 1)]  # fmt: skip
    results = run(loaded, docs)
    for n, result in zip((3, 7, 1), results, strict=True):
        assert result["completion_tokens"] <= n
        if result["finish_reason"] == "length":
            assert result["completion_tokens"] == n
    full = run(
        loaded, [{"id": "x", "prompt": "The quick brown fox", "parameters": {"max_new_tokens": 7}}]
    )
    assert full[0]["text"].startswith(results[0]["text"])


def test_default_max_new_tokens_from_env(
    loaded: Any, run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCFLOW_MAX_NEW_TOKENS", "6")
    (result,) = run(loaded, [{"id": "a", "prompt": "What is the capital of France?"}])
    assert result["completion_tokens"] <= 6
    if result["finish_reason"] == "length":
        assert result["completion_tokens"] == 6


def _stop_candidate(text: str) -> str | None:
    """Two ASCII letters from the middle of ``text`` (first occurrence not at the start)."""
    for i in range(2, len(text) - 1):
        chunk = text[i : i + 2]
        if chunk.isascii() and chunk.isalpha() and text.find(chunk) == i:
            return chunk
    return None


def test_stop_strings_end_the_text_and_count_tokens(loaded: Any, run: Run) -> None:
    prompts = ["What is the capital of France?", "Hi", "The quick brown fox jumps"]
    docs = [
        {"id": str(i), "prompt": p, "parameters": {"max_new_tokens": 40}}
        for i, p in enumerate(prompts)
    ]
    free = run(loaded, docs)
    stop = next(s for r in free if (s := _stop_candidate(r["text"])))
    stopped = run(
        loaded,
        [{**d, "parameters": {"max_new_tokens": 40, "stop": [stop, "\u2603never"]}} for d in docs],
    )
    hit = 0
    for before, after in zip(free, stopped, strict=True):
        if stop in before["text"]:
            hit += 1
            assert after["text"] == before["text"][: before["text"].index(stop)]
            assert after["finish_reason"] == "stop"
            assert after["completion_tokens"] < before["completion_tokens"]
        else:
            assert after == before
    assert hit >= 1
    # The count is exactly the tokens that completed the stop string: generating that many
    # tokens shows the stop string, one fewer does not.
    first = next(a for b, a in zip(free, stopped, strict=True) if stop in b["text"])
    index = [r["id"] for r in stopped].index(first["id"])
    cut = run(
        loaded, [{**docs[index], "parameters": {"max_new_tokens": first["completion_tokens"]}}]
    )[0]
    assert stop in cut["text"]
    shorter = run(
        loaded, [{**docs[index], "parameters": {"max_new_tokens": first["completion_tokens"] - 1}}]
    )[0]
    assert stop not in shorter["text"]


def test_eos_stops_one_row_while_the_batch_goes_on(
    handler: ModuleType, tiny_dirs: dict[str, Path], arch: str, run: Run
) -> None:
    fresh = handler.model_fn(str(tiny_dirs[arch]))  # mutated below: not the shared one
    doc = {
        "id": "a",
        "prompt": "What is the capital of France?",
        "parameters": {"max_new_tokens": 12},
    }
    other = {"id": "b", "prompt": "Hi", "parameters": {"max_new_tokens": 12}}
    parsed = request_contract.parse_document(doc, "x")
    assert isinstance(parsed, request_contract.Document), parsed
    ids = request_contract.prompt_ids(parsed, fresh.tokenizer)
    with torch.inference_mode():
        tokens = fresh.model.generate(
            input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=12, do_sample=False, pad_token_id=fresh.tokenizer.pad_token_id,
        )[0, len(ids):].tolist()  # fmt: skip
    k = next(i for i in range(2, len(tokens)) if tokens[i] not in tokens[:i])
    fresh.model.generation_config.eos_token_id = [*fresh.eos_ids(), tokens[k]]
    alone_b = run(fresh, [other])[0]
    result_a, result_b = run(fresh, [doc, other])
    assert result_a["finish_reason"] == "stop"
    assert result_a["completion_tokens"] == k + 1
    assert result_a["text"] == fresh.tokenizer.decode(tokens[:k], skip_special_tokens=True)
    assert result_b == alone_b


def test_seeded_sampling_is_reproducible(loaded: Any, run: Run) -> None:
    def sample(seed: int, neighbours: int = 0) -> dict[str, Any]:
        params = {
            "max_new_tokens": 16,
            "do_sample": True,
            "temperature": 1.0,
            "top_p": 0.95,
            "seed": seed,
        }
        doc = {"id": "s", "prompt": "What is the capital of France?", "parameters": params}
        extra = [{"id": f"n{i}", "prompt": "Hi there " * (i + 1), "parameters": {**params, "seed": 99 + i}}
                 for i in range(neighbours)]  # fmt: skip
        return run(loaded, [*extra, doc])[-1]

    state = torch.random.get_rng_state()
    first = sample(7)
    assert torch.equal(torch.random.get_rng_state(), state)  # the seed did not leak out
    assert sample(7) == first
    assert sample(7, neighbours=3) == first
    greedy = run(
        loaded,
        [
            {
                "id": "s",
                "prompt": "What is the capital of France?",
                "parameters": {"max_new_tokens": 16},
            }
        ],
    )[0]
    assert {sample(8)["text"], sample(9)["text"], greedy["text"]} != {first["text"]}


def test_predict_fn_takes_plain_document_dicts(handler: ModuleType, loaded: Any) -> None:
    docs = [{"id": "a", "prompt": "Hi", "parameters": {"max_new_tokens": 2}}, {"prompt": "no id"}]
    first, second = handler.predict_fn(docs, loaded)
    assert first["id"] == "a" and first["completion_tokens"] <= 2
    assert second["id"] == "document 2" and "no 'id'" in second["error"]


def test_messages_the_chat_template_rejects_get_an_error_line(
    loaded_models: dict[str, Any], run: Run
) -> None:
    # Like the real Mistral Instruct template, the tiny one insists on user/assistant turns.
    docs = [
        {"id": "sys", "messages": [{"role": "system", "content": "Be brief."}]},
        {
            "id": "ok",
            "messages": [{"role": "user", "content": "Hi"}],
            "parameters": {"max_new_tokens": 2},
        },
    ]
    refused, answered = run(loaded_models["mistral"], docs)
    assert refused["id"] == "sys"
    assert "chat template rejected the messages" in refused["error"]
    assert "roles must alternate" in refused["error"]
    assert answered["id"] == "ok" and answered["completion_tokens"] <= 2


def test_sampling_knobs_reach_generation(loaded: Any, run: Run) -> None:
    prompt = "What is the capital of France?"
    greedy = run(loaded, [{"id": "g", "prompt": prompt, "parameters": {"max_new_tokens": 12}}])[0]
    # top_k=1 leaves one candidate per step: sampling must reproduce greedy decoding.
    top1 = {"max_new_tokens": 12, "do_sample": True, "top_k": 1, "temperature": 1.7, "seed": 5}
    assert run(loaded, [{"id": "g", "prompt": prompt, "parameters": top1}])[0] == greedy
    penalised = {"max_new_tokens": 12, "repetition_penalty": 50.0}
    changed = run(loaded, [{"id": "g", "prompt": prompt, "parameters": penalised}])[0]
    assert changed["text"] != greedy["text"]


def test_plain_prompt_without_chat_template(
    handler: ModuleType, tiny_dirs: dict[str, Path], run: Run
) -> None:
    fresh = handler.model_fn(str(tiny_dirs["llama"]))
    fresh.tokenizer.chat_template = None
    prompt = "The quick brown fox"
    (result,) = run(fresh, [{"id": "p", "prompt": prompt, "parameters": {"max_new_tokens": 3}}])
    assert result["prompt_tokens"] == len(fresh.tokenizer(prompt)["input_ids"])
    doc = {
        "id": "m",
        "messages": [{"role": "user", "content": prompt}],
        "parameters": {"max_new_tokens": 3},
    }
    (chat,) = run(fresh, [doc])
    expected = fresh.tokenizer(f"user: {prompt}\nassistant:")["input_ids"]
    assert chat["prompt_tokens"] == len(expected)


def test_a_system_message_the_template_refuses_is_folded_into_the_first_user_turn(
    loaded_models: dict[str, Any], run: Run
) -> None:
    """The tiny Mistral template (like Mistral Instruct's) has no system role."""
    model = loaded_models["mistral"]
    system = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"}]
    folded = [{"role": "user", "content": "Be terse.\n\nHi"}]
    params = {"max_new_tokens": 4}
    rows = run(
        model,
        [
            {"id": "s", "messages": system, "parameters": params},
            {"id": "f", "messages": folded, "parameters": params},
        ],
    )
    assert "error" not in rows[0], rows[0]
    assert {k: v for k, v in rows[0].items() if k != "id"} == {
        k: v for k, v in rows[1].items() if k != "id"
    }
    bad = [{"role": "system", "content": "x"}, {"role": "assistant", "content": "y"}]
    [refused] = run(model, [{"id": "b", "messages": bad, "parameters": params}])
    assert "chat template rejected the messages" in refused["error"]
