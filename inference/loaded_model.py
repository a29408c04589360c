"""Loading the causal LM and its tokenizer from the model directory (``model_fn``'s work)."""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

import torch
import transformers
from constraints import GrammarCache
from generator import Generator
from request_contract import env_int
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedTokenizerFast,
)

logger = logging.getLogger(__name__)

DEFAULT_MAX_BATCH_SIZE = 8


class LoadedModel:
    """What ``model_fn`` returns: model, tokenizer, device and the context length."""

    def __init__(
        self, model: Any, tokenizer: Any, device: torch.device, context_length: int
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.context_length = context_length
        self.max_batch_size = env_int("DOCFLOW_MAX_BATCH_SIZE", DEFAULT_MAX_BATCH_SIZE)
        # generate() and the global torch seed are not shared safely between threads.
        self.lock = threading.Lock()
        # What generates (generator.py): the engine or the static path; serving.start sets it.
        self._generator: Generator | None = None
        # Constrained output: one compiled grammar per json_schema / choices, for both paths.
        self.grammars = GrammarCache(tokenizer, _logits_width(model), self.eos_ids())

    @property
    def generator(self) -> Generator:
        """The engine or the static path (``model_fn`` starts it)."""
        if self._generator is None:
            raise RuntimeError("no generator: load the model with model_fn")
        return self._generator

    @generator.setter
    def generator(self, generator: Generator) -> None:
        self._generator = generator

    def eos_ids(self) -> list[int]:
        """Every token id that ends a completion (generation config and tokenizer)."""
        ids: set[int] = set()
        configured = self.model.generation_config.eos_token_id
        if isinstance(configured, int):
            ids.add(configured)
        elif configured is not None:
            ids.update(int(i) for i in configured)
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        return sorted(ids)


def _logits_width(model: Any) -> int:
    """How many scores the model gives per position (its vocabulary, padding included)."""
    embeddings = model.get_output_embeddings()
    if embeddings is not None and hasattr(embeddings, "weight"):
        return int(embeddings.weight.shape[0])
    config = (
        model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    )
    return int(config.vocab_size)


def _context_length(config: Any, tokenizer: Any) -> int:
    """The model's context: its position limit, capped by the tokenizer's and DOCFLOW_MAX_CONTEXT."""
    limits = [
        int(value)
        for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")
        if isinstance(value := getattr(config, name, None), int) and value > 0
    ]
    tokenizer_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tokenizer_max, int) and 0 < tokenizer_max < 10**7:
        limits.append(tokenizer_max)
    if os.environ.get("DOCFLOW_MAX_CONTEXT"):
        limits.append(env_int("DOCFLOW_MAX_CONTEXT", 1))
    if not limits:
        raise ValueError(
            "cannot tell the model's context length: config.json has no max_position_embeddings; "
            "set DOCFLOW_MAX_CONTEXT in the model's environment"
        )
    return min(limits)


def _device() -> torch.device:
    wanted = os.environ.get("DOCFLOW_DEVICE", "").strip().lower()
    if wanted:
        if wanted.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"DOCFLOW_DEVICE={wanted} but no CUDA device is visible")
        return torch.device(wanted)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def major_version() -> int:
    return int(transformers.__version__.split(".")[0])


def _token_text(value: Any) -> str | None:
    """A special token as saved: a string, or an AddedToken dict with ``content``."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _fast_tokenizer(model_dir: str) -> Any:
    """Build the tokenizer from tokenizer.json + tokenizer_config.json by hand."""
    root = Path(model_dir)
    config_path = root / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    kwargs: dict[str, Any] = {}
    for name in ("bos_token", "eos_token", "unk_token", "pad_token"):
        if (token := _token_text(config.get(name))) is not None:
            kwargs[name] = token
    if isinstance(config.get("model_max_length"), int):
        kwargs["model_max_length"] = config["model_max_length"]
    extra = config.get("extra_special_tokens") or config.get("additional_special_tokens")
    if isinstance(extra, list):
        kwargs["additional_special_tokens"] = [t for e in extra if (t := _token_text(e))]
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(root / "tokenizer.json"), **kwargs)
    if isinstance(config.get("chat_template"), str):
        tokenizer.chat_template = config["chat_template"]
    return tokenizer


def _load_tokenizer(model_dir: str) -> Any:
    """AutoTokenizer, or the fast tokenizer built by hand when the saved class is unknown here."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    except ValueError:
        # e.g. tokenizer_class "TokenizersBackend" (saved by transformers 5) read by 4.x.
        if not (Path(model_dir) / "tokenizer.json").is_file():
            raise
        logger.warning("AutoTokenizer failed for %s; building it from tokenizer.json", model_dir)
        tokenizer = _fast_tokenizer(model_dir)
    template = Path(model_dir) / "chat_template.jinja"
    if not getattr(tokenizer, "chat_template", None) and template.is_file():
        tokenizer.chat_template = template.read_text(encoding="utf-8")
    return tokenizer


def _legacy_config(model_dir: str) -> Any:
    """transformers 4.x: map transformers 5's ``rope_parameters`` back to ``rope_theta``/``rope_scaling``."""
    config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    rope = getattr(config, "rope_parameters", None)
    if isinstance(rope, dict):
        if "rope_theta" in rope:
            config.rope_theta = rope["rope_theta"]
        if rope.get("rope_type", "default") != "default":
            config.rope_scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
    return config


def load_model(model_dir: str) -> LoadedModel:
    """Load the causal LM and its tokenizer from the safetensors in ``model_dir``."""
    root = Path(model_dir)
    if not any(root.glob("*.safetensors")):
        found = sorted(p.name for p in root.iterdir())[:20] if root.is_dir() else []
        raise ValueError(
            f"no *.safetensors weights in {model_dir} (found {found}); package the model with "
            "save_pretrained(safe_serialization=True) so the weights sit at the artifact's root"
        )
    threads = os.environ.get("DOCFLOW_NUM_THREADS")
    if threads:
        torch.set_num_threads(env_int("DOCFLOW_NUM_THREADS", 1))
    device = _device()
    dtype = torch.float32
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    # transformers 5 renamed torch_dtype to dtype; the AWS container may still run 4.x.
    dtype_arg = "dtype" if major_version() >= 5 else "torch_dtype"
    load_kwargs: dict[str, Any] = {
        dtype_arg: dtype,
        "use_safetensors": True,
        "local_files_only": True,
    }
    if device.type == "cuda":
        load_kwargs["device_map"] = {"": str(device)}
    if major_version() < 5:
        load_kwargs["config"] = _legacy_config(model_dir)
    tokenizer = _load_tokenizer(model_dir)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise ValueError(
                f"the tokenizer in {model_dir} has neither a pad nor an EOS token; set eos_token "
                "in tokenizer_config.json"
            )
        tokenizer.pad_token = tokenizer.eos_token
    model: Any = AutoModelForCausalLM.from_pretrained(model_dir, **load_kwargs)
    if device.type != "cuda":
        model = model.to(device)
    model.eval()
    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = tokenizer.eos_token_id
    # The contract's defaults replace the checkpoint's (e.g. do_sample=True in Llama 3 Instruct).
    model.generation_config = GenerationConfig(
        bos_token_id=model.generation_config.bos_token_id,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id,
    )
    context = _context_length(model.config, tokenizer)
    logger.info(
        "loaded %s (%s) on %s as %s; context %d tokens; transformers %s",
        model_dir,
        model.config.model_type,
        device,
        dtype,
        context,
        transformers.__version__,
    )
    return LoadedModel(model, tokenizer, device, context)


def engine_kind() -> str:
    """DOCFLOW_ENGINE: ``continuous`` (default with transformers >= 5) or ``static``.

    The engine drives the model's forward directly with its own key/value cache, an interface
    only tested with transformers 5; under 4.x (e.g. the AWS container's 4.51) the default is
    the static path, which needs nothing beyond what that container has.
    """
    wanted = os.environ.get("DOCFLOW_ENGINE", "").strip().lower()
    if not wanted:
        return "continuous" if major_version() >= 5 else "static"
    if wanted not in ("continuous", "static"):
        raise ValueError(f"DOCFLOW_ENGINE={wanted!r}: use 'continuous' or 'static'")
    return wanted
