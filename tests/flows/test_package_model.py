"""The package-model flow end to end on localcloud: package, upload, re-run uploads nothing."""

from __future__ import annotations

import io
import logging
import tarfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from prefect.artifacts import Artifact

from flows.package_model import package_model
from tasks.aws.clients import aws_client
from tasks.aws.s3 import BucketNotFoundError, parse_s3_uri
from tasks.model.archive import DEFAULT_CODE_DIR
from tasks.model.folder import ModelSourceError
from tasks.model.packaging import ModelArtifact, read_artifact_manifest
from tasks.settings import Profile, load_profile
from tests.flows.endpoint_helpers import profile_file
from tests.tiny_models import make_tiny_model

WRITES = ("PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload")


@pytest.fixture(autouse=True)
def own_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Archive records and conversions go to this test's folder, not ~/.cache/docflow."""
    monkeypatch.setenv("DOCFLOW_CACHE_DIR", str(tmp_path / "docflow-cache"))


@pytest.fixture(scope="module")
def tiny_mistral(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("flow") / "tiny-mistral", "mistral")


@contextmanager
def s3_calls(profile_path: str) -> Iterator[Counter[str]]:
    """Count the calls the flow's own S3 client makes (same profile, so the same cached client)."""
    calls: Counter[str] = Counter()

    def record(model: Any, **_: Any) -> None:
        calls[model.name] += 1

    client = aws_client("s3", load_profile(profile_path))
    client.meta.events.register("before-call", record)
    try:
        yield calls
    finally:
        client.meta.events.unregister("before-call", record)


def test_package_model_flow_uploads_once(
    prefect_harness: None,
    profile: Profile,
    tiny_mistral: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = profile_file(profile, tmp_path)
    result = package_model(source=str(tiny_mistral), profile=path)
    artifact = ModelArtifact.model_validate(result)
    assert artifact.name == "tiny-mistral"
    assert artifact.model_data_url == (
        f"s3://{profile.bucket}/models/tiny-mistral/{artifact.sha256[:16]}/model.tar.gz"
    )
    assert artifact.architecture == "MistralForCausalLM" and artifact.uploaded_bytes > 0

    s3 = aws_client("s3", profile)
    loc = parse_s3_uri(artifact.model_data_url)
    body = s3.get_object(Bucket=loc.bucket, Key=loc.key)["Body"].read()
    assert len(body) == artifact.bytes
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as tar:
        names = set(tar.getnames())
        shipped = tar.extractfile("code/inference.py").read()  # type: ignore[union-attr]
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
    assert {"code/inference.py", "code/requirements.txt"} <= names
    assert shipped == (DEFAULT_CODE_DIR / "inference.py").read_bytes()
    manifest = read_artifact_manifest(s3, artifact.manifest_uri)
    assert (manifest.sha256, manifest.parameter_count) == (
        artifact.sha256,
        artifact.parameter_count,
    )
    summary: Any = Artifact.get("model-tiny-mistral")
    assert summary is not None and artifact.model_data_url in str(summary.data)

    caplog.clear()
    with s3_calls(path) as calls, caplog.at_level(logging.INFO):
        again = package_model(source=str(tiny_mistral), profile=path)
    messages = [r.getMessage() for r in caplog.records]
    assert f"uploaded 0 bytes: {artifact.model_data_url} already exists" in messages
    assert any("not compressing it again" in m for m in messages), messages
    assert again["uploaded_bytes"] == 0
    assert again["model_data_url"] == artifact.model_data_url
    assert calls["HeadObject"] >= 1
    assert not any(calls[op] for op in WRITES), dict(calls)


def test_package_model_flow_uncompressed_layout(
    prefect_harness: None, profile: Profile, tiny_mistral: Path, tmp_path: Path
) -> None:
    path = profile_file(profile, tmp_path)
    result: dict[str, Any] = package_model(
        source=str(tiny_mistral), name="tiny", profile=path, uncompressed=True
    )
    prefix: Any = result["uncompressed_prefix"]
    assert isinstance(prefix, str) and prefix.endswith(
        f"/models/tiny/{result['sha256'][:16]}/uncompressed/"
    )
    loc = parse_s3_uri(prefix)
    listed = aws_client("s3", profile).list_objects_v2(Bucket=loc.bucket, Prefix=loc.key)
    keys = {o["Key"][len(loc.key) :] for o in listed["Contents"]}
    assert {
        "config.json",
        "model.safetensors",
        "code/inference.py",
        "code/requirements.txt",
    } <= keys


def test_package_model_flow_reports_a_bad_source(
    prefect_harness: None, profile: Profile, tmp_path: Path
) -> None:
    path = profile_file(profile, tmp_path)
    with pytest.raises(ModelSourceError, match="neither an existing folder"):
        package_model(source=str(tmp_path / "missing-model"), profile=path)


def test_package_model_flow_names_a_missing_bucket_before_packaging(
    prefect_harness: None, profile: Profile, tiny_mistral: Path, tmp_path: Path
) -> None:
    missing = profile.model_copy(update={"bucket": "docflow-no-such-bucket"})
    path = profile_file(missing, tmp_path)
    with pytest.raises(
        BucketNotFoundError, match=r"'docflow-no-such-bucket' does not exist; create it"
    ):
        package_model(source=str(tiny_mistral), profile=path)
    assert not (tmp_path / "docflow-cache" / "archives").exists()  # nothing was built
