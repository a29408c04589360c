"""tasks.model.tokenizer_files on localcloud's S3: only the tokenizer files, fetched once per artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from localcloud.testing.artifacts import upload_echo_model
from tasks.aws.clients import aws_client
from tasks.model.archive import DEFAULT_CODE_DIR, build_archive
from tasks.model.packaging import upload_archive
from tasks.model.tokenizer_files import fetch_tokenizer_files
from tasks.run.request.tokens import TokenCounter
from tasks.settings import Profile
from tests.tiny_models import make_tiny_model


class Gets:
    """GetObject calls through one client, by key."""

    def __init__(self, client: Any) -> None:
        self.keys: list[str] = []
        client.meta.events.register("before-parameter-build.s3.GetObject", self._record)

    def _record(self, params: dict[str, Any], **_: Any) -> None:
        self.keys.append(params["Key"])


@pytest.mark.parametrize("uncompressed", [False, True])
def test_the_tokenizer_comes_from_the_artifact_without_the_weights(
    profile: Profile, tmp_path: Path, uncompressed: bool
) -> None:
    model = make_tiny_model(tmp_path / "tiny", "llama")
    s3 = aws_client("s3", profile)
    (tmp_path / "w").mkdir()
    built = build_archive(
        model,
        name="tiny",
        source="x",
        code_dir=DEFAULT_CODE_DIR,
        work_dir=tmp_path / "w",
        cache_dir=tmp_path / "w" / "cache",
    )
    artifact = upload_archive(s3, built, profile, uncompressed=uncompressed)
    gets = Gets(s3)
    folder = fetch_tokenizer_files(s3, artifact.model_data_url, tmp_path / "cache")
    assert folder is not None and folder.name == built.sha256[:16]
    fetched = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
    assert fetched == [
        "chat_template.jinja",
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    if uncompressed:  # one GET per file, never the weights
        assert not any(k.endswith(".safetensors") for k in gets.keys)
    counter = TokenCounter.from_folder(folder)
    from transformers import AutoTokenizer

    original = AutoTokenizer.from_pretrained(model)
    text = "Prefect flows orchestrate tasks."
    expected = original.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
    )
    assert counter.prompt_tokens(text) == len(
        original(expected, add_special_tokens=False)["input_ids"]
    )
    before = len(gets.keys)
    assert fetch_tokenizer_files(s3, artifact.model_data_url, tmp_path / "cache") == folder
    assert len(gets.keys) - before == 1  # the manifest only: the files come from the cache


def test_an_artifact_without_a_tokenizer_has_none(profile: Profile, tmp_path: Path) -> None:
    s3 = aws_client("s3", profile)
    url = upload_echo_model(s3, profile.bucket)
    assert fetch_tokenizer_files(s3, url, tmp_path / "cache") is None
    assert fetch_tokenizer_files(s3, url, tmp_path / "cache") is None  # cached as such
