"""Tiny randomly initialised causal LMs (Mistral, Llama) with a real local tokenizer, for tests.

Nothing is downloaded: the tokenizer is a byte-level BPE trained in-process on a few sentences
and wrapped in ``PreTrainedTokenizerFast`` with a chat template; the model is built from a config
with random weights and saved as safetensors. Shared by every test suite that needs a real model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

Arch = Literal["mistral", "llama"]

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Summarise the following document in one sentence.",
    "What is the capital of France? Paris is the capital of France.",
    "Invoices, contracts and reports are documents that people read every day.",
    "SageMaker runs the model on an asynchronous inference endpoint.",
    "Prefect flows orchestrate tasks with retries and concurrency limits.",
    "Numbers like 0 1 2 3 4 5 6 7 8 9 and punctuation: ; , . ! ? ( ) [ ] { } - _ / \\ ' \"",
]
SPECIALS = {"bos": "<s>", "eos": "</s>", "pad": "<pad>", "unk": "<unk>"}

# Jinja chat templates in the shape of the real models' (Mistral Instruct, Llama 3 Instruct).
CHAT_TEMPLATES: dict[str, str] = {
    "mistral": (
        "{{ bos_token }}{% for message in messages %}"
        "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
        "{% endif %}"
        "{% if message['role'] == 'user' %}[INST] {{ message['content'] }} [/INST]"
        "{% elif message['role'] == 'assistant' %}{{ message['content'] }}{{ eos_token }}"
        "{% else %}{{ message['content'] }}\n{% endif %}{% endfor %}"
    ),
    "llama": (
        "{{ bos_token }}{% for message in messages %}"
        "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
        "{{ message['content'] }}<|eot_id|>{% endfor %}"
        "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
    ),
}


def make_tiny_tokenizer(
    arch: Arch = "mistral", *, with_pad: bool = True, vocab_size: int = 384
) -> Any:
    """A byte-level BPE tokenizer (any text encodes) with bos/eos(/pad) and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [SPECIALS["unk"], SPECIALS["bos"], SPECIALS["eos"]]
    if with_pad:
        specials.append(SPECIALS["pad"])
    if arch == "llama":
        specials += ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    backend = Tokenizer(models.BPE(unk_token=SPECIALS["unk"]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(CORPUS * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=SPECIALS["bos"],
        eos_token=SPECIALS["eos"],
        unk_token=SPECIALS["unk"],
        pad_token=SPECIALS["pad"] if with_pad else None,
        model_max_length=256,
    )
    if arch == "llama":
        tokenizer.add_special_tokens(
            {
                "additional_special_tokens": [
                    "<|start_header_id|>",
                    "<|end_header_id|>",
                    "<|eot_id|>",
                ]
            }
        )
    tokenizer.chat_template = CHAT_TEMPLATES[arch]
    return tokenizer


def _config(arch: Arch, tokenizer: Any, eos_ids: list[int], context: int) -> Any:
    from transformers import LlamaConfig, MistralConfig

    common: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": context,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": eos_ids[0] if len(eos_ids) == 1 else eos_ids,
        "pad_token_id": tokenizer.pad_token_id,
        "tie_word_embeddings": False,
        # Larger than the usual 0.02 so greedy argmax has clear winners (stable across batching).
        "initializer_range": 0.2,
    }
    if arch == "mistral":
        return MistralConfig(sliding_window=None, **common)
    if arch == "llama":
        return LlamaConfig(**common)
    raise ValueError(f"unknown arch {arch!r}; use 'mistral' or 'llama'")


def make_tiny_model(
    path: str | Path,
    arch: Arch = "mistral",
    *,
    seed: int = 0,
    with_pad: bool | None = None,
    context: int = 256,
) -> Path:
    """Build a tiny random ``arch`` model + tokenizer and save them as safetensors under ``path``.

    ``with_pad`` defaults to False for Mistral (like the real tokenizer) and True for Llama, so
    both the "no pad token" and "own pad token" paths get exercised. Llama ends turns with
    ``<|eot_id|>`` as well as ``</s>`` (a list of EOS ids, as in Llama 3).
    """
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, GenerationConfig

    if arch not in ("mistral", "llama"):
        raise ValueError(f"unknown arch {arch!r}; use 'mistral' or 'llama'")
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = make_tiny_tokenizer(
        arch, with_pad=(arch == "llama") if with_pad is None else with_pad
    )
    tokenizer.model_max_length = context
    eos_ids = [tokenizer.eos_token_id]
    if arch == "llama":
        eos_ids.append(tokenizer.convert_tokens_to_ids("<|eot_id|>"))
    config = _config(arch, tokenizer, eos_ids, context)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if int(transformers.__version__.split(".")[0]) >= 5:
        model.save_pretrained(out)  # transformers 5 always writes safetensors
    else:
        model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out
