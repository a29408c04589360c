"""xgrammar on AWS: AWS packaging vendors it, offline packaging names the fix, constrained runs on
an artifact without it are refused before anything is invoked (0 invocations, counted)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from tasks.aws.clients import aws_client
from tasks.model.archive import PackagingError
from tasks.model.grammar import (
    VENDORED_PREFIX,
    GrammarMissingError,
    check_grammar,
    fetch_wheels,
    vendors_grammar,
)
from tasks.settings import Profile, load_profile
from tests.flows.endpoint_helpers import profile_file


def test_aws_profiles_vendor_the_grammar_library_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DOCFLOW_ENDPOINT_URL", raising=False)  # the localcloud fixture's export
    assert vendors_grammar(load_profile("aws")) is True
    assert vendors_grammar(load_profile("local")) is False
    assert vendors_grammar(load_profile("local").model_copy(update={"vendor_grammar": True}))


def test_offline_fetch_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")  # no find-links, no local mirrors
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # and no index: offline
    with pytest.raises(PackagingError) as caught:
        fetch_wheels(tmp_path / "wheels", "3.12", "manylinux_2_28_x86_64")
    message = str(caught.value)
    assert "pip download -r" in message and "--python-version 3.12" in message
    assert "wheels=" in message and "vendor_grammar=False" in message


def _manifest(profile: Profile, key: str, files: list[str]) -> str:
    manifest = {
        "name": "m", "source": "s", "architecture": "LlamaForCausalLM", "model_type": "llama",
        "dtype": "float32", "parameter_count": 1, "bytes": 1, "uncompressed_bytes": 1,
        "sha256": "0" * 64, "model_data_url": profile.s3_uri(f"{key}/model.tar.gz"),
        "uncompressed_prefix": None, "files": [{"name": f, "bytes": 1, "sha256": "0" * 64} for f in files],
        "created_at": "2026-12-07T00:00:00+00:00",
    }  # fmt: skip
    s3 = aws_client("s3", profile)
    s3.put_object(Bucket=profile.bucket, Key=f"{key}/manifest.json", Body=json.dumps(manifest))
    return profile.s3_uri(f"{key}/model.tar.gz")


def test_check_reads_the_artifact_manifest(profile: Profile) -> None:
    aws_client("s3", profile).create_bucket(Bucket=profile.bucket)
    strict = profile.model_copy(update={"vendor_grammar": True})
    bare = _manifest(profile, "models/bare", ["config.json", "code/inference.py"])
    vendored = _manifest(profile, "models/vendored", [f"{VENDORED_PREFIX}__init__.py"])
    check_grammar(strict, vendored, constrained=True)
    check_grammar(strict, bare, constrained=False)  # unconstrained runs need no grammar
    check_grammar(profile, bare, constrained=True)  # localcloud runs docflow's own xgrammar
    with pytest.raises(GrammarMissingError, match="does not vendor it.*package_model"):
        check_grammar(strict, bare, constrained=True)
    with pytest.raises(GrammarMissingError, match="no readable manifest"):
        check_grammar(strict, profile.s3_uri("models/absent/model.tar.gz"), constrained=True)


def test_a_classify_run_on_an_artifact_without_it_invokes_nothing(
    deploy_echo: Callable[..., Any], localcloud: Any, tmp_path: Path
) -> None:
    from tests.runs import run_process

    deployment = deploy_echo()
    strict = deployment.profile.model_copy(update={"vendor_grammar": True})
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text(
        "".join(json.dumps({"id": f"d{i}", "text": "an invoice"}) + "\n" for i in range(3))
    )
    with pytest.raises(GrammarMissingError, match="xgrammar"):
        run_process(
            corpus=str(corpus),
            profile=profile_file(strict, tmp_path),
            template="classify",
            labels=["invoice", "letter"],
        )
    stats = requests.get(f"{localcloud.url}/_localcloud/stats", timeout=5).json()
    assert stats[deployment.endpoint]["received"] == 0, stats  # counted by localcloud on create
