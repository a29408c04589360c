"""What makes a folder a servable model (config, safetensors weights, tokenizer files), and where
docflow caches what it converts or builds locally."""

from __future__ import annotations

import json
import os
from pathlib import Path

WEIGHT_INDEX = "model.safetensors.index.json"


TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)


TOKENIZER_REQUIRED_ANY = ("tokenizer.json", "tokenizer.model", "vocab.json")


CONFIG_FILES = ("config.json", "generation_config.json")


class ModelSourceError(ValueError):
    """A model source cannot be used; the message says why and what to do instead."""


def default_cache_dir() -> Path:
    """docflow's local cache: $DOCFLOW_CACHE_DIR, else $XDG_CACHE_HOME/docflow, else ~/.cache/docflow."""
    if env := os.environ.get("DOCFLOW_CACHE_DIR"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "docflow"


def weight_files(folder: Path) -> list[str]:
    """The safetensors weight files a folder's model loads from (index shards, or model.safetensors)."""
    index = folder / WEIGHT_INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError) as exc:
            raise ModelSourceError(f"{index} is not a valid safetensors index: {exc}") from exc
        shards = sorted(set(weight_map.values()))
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise ModelSourceError(
                f"{folder} is incomplete: {WEIGHT_INDEX} names {missing} which are missing; "
                "download the whole model again"
            )
        return [WEIGHT_INDEX, *shards]
    if (folder / "model.safetensors").is_file():
        return ["model.safetensors"]
    shards = sorted(p.name for p in folder.glob("model-*.safetensors"))
    if shards:
        return shards
    return []


def model_files(folder: Path) -> list[str]:
    """The files (relative names, sorted) that make up a servable model in ``folder``."""
    if not (folder / "config.json").is_file():
        raise ModelSourceError(
            f"{folder} has no config.json; pass a Hugging Face model folder (config.json, "
            "*.safetensors, tokenizer files) or a .gguf file"
        )
    weights = weight_files(folder)
    if not weights:
        raise ModelSourceError(
            f"{folder} has no safetensors weights (model.safetensors or an index with shards)"
        )
    if not any((folder / name).is_file() for name in TOKENIZER_REQUIRED_ANY):
        raise ModelSourceError(
            f"{folder} has no tokenizer (one of {', '.join(TOKENIZER_REQUIRED_ANY)}); save the "
            "tokenizer next to the weights with tokenizer.save_pretrained(folder)"
        )
    extras = [n for n in (*CONFIG_FILES, *TOKENIZER_FILES) if (folder / n).is_file()]
    return sorted(set(weights) | set(extras))
