"""Fixtures for the inference handler: the handler imported by path, tiny models built once."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tasks.model.sources import resolve_source
from tests.tiny_models import Arch, make_tiny_model

HANDLER_PATH = Path(__file__).resolve().parents[2] / "inference" / "inference.py"
ARCHS: tuple[Arch, ...] = ("mistral", "llama")

Run = Callable[..., list[dict[str, Any]]]


def load_handler(name: str = "docflow_inference_under_test") -> ModuleType:
    """Import inference.py from its file, as the container and localcloud do (not via our package)."""
    spec = importlib.util.spec_from_file_location(name, HANDLER_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def jsonl(docs: list[Any]) -> bytes:
    """A JSON Lines body; str entries are written verbatim (for malformed lines)."""
    return "".join((d if isinstance(d, str) else json.dumps(d)) + "\n" for d in docs).encode()


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread: on a shared 2-core machine more threads made tiny models 40x slower."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="session")
def handler() -> ModuleType:
    """The handler module, loaded once per session."""
    return load_handler()


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny random model per architecture, saved as safetensors."""
    root = tmp_path_factory.mktemp("tiny-models")
    return {arch: make_tiny_model(root / arch, arch) for arch in ARCHS}


@pytest.fixture(scope="session", params=ARCHS)
def arch(request: pytest.FixtureRequest) -> str:
    """Each architecture in turn."""
    return str(request.param)


@pytest.fixture(scope="session")
def loaded_models(handler: ModuleType, tiny_dirs: dict[str, Path]) -> dict[str, Any]:
    """model_fn's result per architecture (shared: tests must not mutate these)."""
    return {arch: handler.model_fn(str(path)) for arch, path in tiny_dirs.items()}


@pytest.fixture
def loaded(loaded_models: dict[str, Any], arch: str) -> Any:
    """The loaded tiny model of the current architecture."""
    return loaded_models[arch]


def without_cached(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Result lines minus ``cached_tokens`` (it depends on what the prefix cache saw before)."""
    out = []
    for row in rows:
        row = dict(row)
        if "error" not in row:
            cached = row.pop("cached_tokens")
            assert isinstance(cached, int) and 0 <= cached < row["prompt_tokens"], row
        out.append(row)
    return out


@pytest.fixture
def run(handler: ModuleType) -> Run:
    """input_fn → predict_fn → output_fn, JSON Lines parsed back; ``cached_tokens`` checked, dropped."""

    def _run(
        model: Any,
        docs: list[Any],
        content_type: str = "application/jsonlines",
        accept: str = "application/jsonlines",
        keep_cached: bool = False,
    ) -> list[dict[str, Any]]:
        body = jsonl(docs) if content_type != "application/json" else json.dumps(docs[0]).encode()
        out = handler.output_fn(
            handler.predict_fn(handler.input_fn(body, content_type), model), accept
        )
        assert isinstance(out, str) and out.endswith("\n")
        rows = [json.loads(line) for line in out.splitlines()]
        return rows if keep_cached else without_cached(rows)

    return _run


@pytest.fixture(scope="session")
def smollm2_dir(request: pytest.FixtureRequest) -> Path:
    """SmolLM2-135M-Instruct converted by package_model's own converter (cached across sessions)."""
    cache = request.config.cache.mkdir("docflow-model-cache")
    return Path(resolve_source("smollm2", cache_dir=cache).path)
