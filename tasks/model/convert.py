"""Convert model files docflow cannot serve as they are (a GGUF file, .bin weights) into a cached
safetensors folder that loads under the transformers of today's AWS containers too."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tasks.aws.s3 import sha256_file
from tasks.model.folder import default_cache_dir, model_files

CONVERTED_DTYPE = "bfloat16"


# Part of every conversion's cache key: bump it when what a conversion writes changes.
CONVERSION_VERSION = "v2"


def _folder_fingerprint(folder: Path) -> str:
    """sha256 over the names and contents of a folder's regular files (for cache keys)."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        digest.update(path.name.encode() + b"\0" + sha256_file(path).encode() + b"\n")
    return digest.hexdigest()


def _publish(tmp: Path, target: Path) -> Path:
    """Atomically move a finished conversion into place; a concurrent winner's copy is kept."""
    try:
        tmp.rename(target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not target.is_dir():
            raise
    return target


def _save_converted(model: object, tokenizer: object, out: Path) -> None:
    """Save a loaded model as plain safetensors (no quantization config) plus its tokenizer."""
    # A model loaded from GGUF carries a GGUF quantizer that refuses save_pretrained.
    model.hf_quantizer = None  # type: ignore[attr-defined]
    config = model.config  # type: ignore[attr-defined]
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model.save_pretrained(out, safe_serialization=True)  # type: ignore[attr-defined]
    tokenizer.save_pretrained(out)  # type: ignore[attr-defined]
    _rewrite_json(out / "config.json", _portable_config)
    _rewrite_json(out / "tokenizer_config.json", lambda d: _portable_tokenizer_config(d, out))


def _rewrite_json(path: Path, change: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    if path.is_file():
        data = change(json.loads(path.read_text()))
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _portable_config(data: dict[str, Any]) -> dict[str, Any]:
    """config.json readable by transformers 4.x too (the AWS inference image runs 4.51).

    transformers 5 writes ``rope_parameters`` and ``dtype``; 4.x reads ``rope_theta`` and
    ``torch_dtype`` and would silently fall back to its default rope_theta (wrong outputs).
    """
    data.pop("quantization_config", None)
    data.pop("_model_name_or_path", None)
    rope = data.get("rope_parameters")
    if isinstance(rope, dict):
        if "rope_theta" in rope:
            data.setdefault("rope_theta", rope["rope_theta"])
        if rope.get("rope_type", "default") != "default":
            data.setdefault("rope_scaling", {k: v for k, v in rope.items() if k != "rope_theta"})
    if "dtype" in data:
        data.setdefault("torch_dtype", data["dtype"])
    return data


def _portable_tokenizer_config(data: dict[str, Any], folder: Path) -> dict[str, Any]:
    """tokenizer_config.json readable by transformers 4.x: a class it knows, the chat template inline."""
    if data.get("tokenizer_class") in (None, "TokenizersBackend"):
        data["tokenizer_class"] = "PreTrainedTokenizerFast"
    template = folder / "chat_template.jinja"
    if "chat_template" not in data and template.is_file():
        data["chat_template"] = template.read_text()
    for key in ("is_local", "local_files_only", "backend"):
        data.pop(key, None)
    return data


def convert_gguf(
    gguf: Path, cache_dir: Path | None = None, dtype: str = CONVERTED_DTYPE
) -> tuple[Path, str, bool]:
    """Convert a GGUF file to a safetensors folder once, cached by the GGUF's sha256.

    Returns (folder, gguf sha256, converted now). bf16 by default: half the size of fp32
    (~270 MB for SmolLM2-135M instead of ~540 MB) and lossless for 4-bit GGUF weights;
    the inference handler upcasts to fp32 on CPU.
    """
    digest = sha256_file(gguf)
    root = (cache_dir or default_cache_dir()) / "converted"
    target = root / f"{digest}-{dtype}-{CONVERSION_VERSION}"
    if target.is_dir() and model_files(target):
        return target, digest, False
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{digest[:16]}-", dir=root))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        # Straight to the target dtype: a float32 detour would need 4 bytes per parameter
        # of memory (28 GB for a 7B model) for no gain in accuracy.
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=getattr(torch, dtype)
        )
        _save_converted(model, tokenizer, tmp)
    except Exception:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _publish(tmp, target), digest, True


def convert_bin_folder(folder: Path, cache_dir: Path | None = None) -> tuple[Path, bool]:
    """Re-save a folder with only pytorch_model*.bin weights as safetensors, cached by content.

    Returns (folder, converted now).
    """
    digest = _folder_fingerprint(folder)
    root = (cache_dir or default_cache_dir()) / "converted"
    target = root / f"{digest}-safetensors-{CONVERSION_VERSION}"
    if target.is_dir() and model_files(target):
        return target, False
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{digest[:16]}-", dir=root))
    try:
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype="auto")
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        _save_converted(model, tokenizer, tmp)
    except Exception:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _publish(tmp, target), True
