"""tasks.model.packaging: deterministic model.tar.gz (unit) and content-addressed upload to localcloud."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest

from tasks.aws.clients import aws_client
from tasks.model.archive import (
    DEFAULT_CODE_DIR,
    BuiltArchive,
    PackagingError,
    archive_members,
    build_archive,
    discard_archive,
    summarize_weights,
)
from tasks.model.packaging import artifact_prefix, read_artifact_manifest, upload_archive
from tasks.settings import Prefixes, Profile, load_profile
from tests.tiny_models import make_tiny_model

MODEL_FILES = {
    "chat_template.jinja",
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Mistral saved as safetensors, plus files that must not be packaged."""
    folder = make_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-mistral", "mistral")
    (folder / "README.md").write_text("model card: not part of the artifact\n")
    (folder / ".hidden").write_text("x")
    return folder


@pytest.fixture
def code_dir(tmp_path: Path) -> Path:
    """A stand-in for inference/: the handler, a helper module, requirements and junk to skip."""
    code = tmp_path / "code-src"
    (code / "__pycache__").mkdir(parents=True)
    (code / "inference.py").write_text("def model_fn(model_dir):\n    return model_dir\n")
    (code / "helpers.py").write_text("X = 1\n")
    (code / "__init__.py").write_text("")
    (code / "requirements.txt").write_text("# nothing extra\n")
    (code / "__pycache__" / "inference.cpython-311.pyc").write_bytes(b"\0junk")
    (code / "notes.md").write_text("not shipped\n")
    return code


def _build(model: Path, code: Path, work: Path, name: str = "tiny") -> BuiltArchive:
    """Build in ``work`` with its own record cache, so the tarball is really written."""
    work.mkdir(parents=True, exist_ok=True)
    return build_archive(
        model, name=name, source=str(model), code_dir=code, work_dir=work, cache_dir=work / "cache"
    )


def test_archive_holds_model_at_root_and_code_under_code(
    tiny_model: Path, code_dir: Path, tmp_path: Path
) -> None:
    built = _build(tiny_model, code_dir, tmp_path / "w")
    with tarfile.open(built.archive_path, "r:gz") as tar:
        members = tar.getmembers()
        names = [m.name for m in members]
        files = {m.name: tar.extractfile(m).read() for m in members if m.isfile()}  # type: ignore[union-attr]
    expected = MODEL_FILES | {"code/helpers.py", "code/inference.py", "code/requirements.txt"}
    assert set(files) == expected
    assert names == sorted(names)
    assert "code" in names and next(m for m in members if m.name == "code").isdir()
    assert all((m.mtime, m.uid, m.gid, m.uname, m.gname) == (0, 0, 0, "", "") for m in members)
    assert files["code/inference.py"] == (code_dir / "inference.py").read_bytes()
    assert files["model.safetensors"] == (tiny_model / "model.safetensors").read_bytes()
    assert [e.name for e in built.files] == sorted(expected)
    for entry in built.files:
        assert entry.sha256 == hashlib.sha256(files[entry.name]).hexdigest()
        assert entry.bytes == len(files[entry.name])
    assert built.archive_path is not None
    raw = Path(built.archive_path).read_bytes()
    assert built.sha256 == hashlib.sha256(raw).hexdigest() and built.bytes == len(raw)
    assert raw[4:8] == b"\0\0\0\0"  # gzip header mtime 0
    assert raw[3] & 0x08 == 0  # no file name in the gzip header
    discard_archive(built)
    assert not Path(built.archive_path).parent.exists()


def test_same_content_gives_the_same_sha256(
    tiny_model: Path, code_dir: Path, tmp_path: Path
) -> None:
    first = _build(tiny_model, code_dir, tmp_path / "a")
    copy = tmp_path / "copy" / "other-name"
    shutil.copytree(tiny_model, copy)
    for path in copy.iterdir():
        os.utime(path, (1_000_000, 1_000_000))
        path.chmod(0o600)
    second = _build(copy, code_dir, tmp_path / "b")
    assert second.sha256 == first.sha256
    assert second.archive_path is not None and first.archive_path is not None
    assert Path(second.archive_path).read_bytes() == Path(first.archive_path).read_bytes()

    (code_dir / "inference.py").write_text("def model_fn(model_dir):\n    return 2\n")
    changed = _build(tiny_model, code_dir, tmp_path / "c")
    assert changed.sha256 != first.sha256


def test_metadata_comes_from_config_and_safetensors_headers(
    tiny_model: Path, code_dir: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM

    built = _build(tiny_model, code_dir, tmp_path / "w")
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert built.parameter_count == model.num_parameters()
    assert built.architecture == "MistralForCausalLM"
    assert built.model_type == "mistral"
    assert built.dtype == "float32"
    assert built.uncompressed_bytes == sum(e.bytes for e in built.files)
    summary = summarize_weights(tiny_model, ["model.safetensors"])
    assert summary.tensor_count == len(model.state_dict())


def test_missing_inference_code_is_a_clear_error(tiny_model: Path, tmp_path: Path) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "inference.py").write_text("")
    with pytest.raises(PackagingError, match=r"lacks requirements.txt.*code/requirements.txt"):
        archive_members(tiny_model, code)


def test_a_folder_without_weights_is_a_clear_error(code_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "empty-model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    with pytest.raises(PackagingError, match="no safetensors weights"):
        archive_members(folder, code_dir)


def test_the_repository_inference_folder_is_the_default_code() -> None:
    assert DEFAULT_CODE_DIR.name == "inference"
    assert (DEFAULT_CODE_DIR / "inference.py").is_file()


def test_artifact_key_is_content_addressed_under_the_models_prefix() -> None:
    prof = load_profile("local")
    sha = "ab" * 32
    assert (
        str(artifact_prefix(prof, "tiny", sha))
        == f"s3://{prof.bucket}/models/tiny/abababababababab"
    )
    custom = prof.model_copy(update={"prefixes": Prefixes(models="team/llm-models/")})
    assert artifact_prefix(custom, "m", sha).key == "team/llm-models/m/abababababababab"
    with pytest.raises(PackagingError, match="no '/'"):
        artifact_prefix(prof, "a/b", sha)


def test_upload_is_idempotent_and_the_manifest_describes_the_artifact(
    profile: Profile, tiny_model: Path, code_dir: Path, tmp_path: Path
) -> None:
    s3 = aws_client("s3", profile)
    built = _build(tiny_model, code_dir, tmp_path / "w")
    artifact = upload_archive(s3, built, profile)
    key_prefix = f"models/tiny/{built.sha256[:16]}"
    prefix = f"s3://{profile.bucket}/{key_prefix}"
    assert artifact.model_data_url == f"{prefix}/model.tar.gz"
    assert artifact.manifest_uri == f"{prefix}/manifest.json"
    assert artifact.uncompressed_prefix is None
    manifest_head = s3.head_object(Bucket=profile.bucket, Key=f"{key_prefix}/manifest.json")
    manifest_size = manifest_head["ContentLength"]
    assert artifact.uploaded_bytes == built.bytes + manifest_size
    assert len(artifact.model_dump_json()) < 2000  # small enough to be a flow's return value

    body = s3.get_object(Bucket=profile.bucket, Key=f"{key_prefix}/model.tar.gz")["Body"].read()
    assert hashlib.sha256(body).hexdigest() == built.sha256 == artifact.sha256
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as tar:
        assert "code/inference.py" in tar.getnames() and "model.safetensors" in tar.getnames()

    manifest = read_artifact_manifest(s3, artifact.manifest_uri)
    assert manifest.sha256 == built.sha256 and manifest.bytes == built.bytes
    assert manifest.architecture == "MistralForCausalLM" and manifest.dtype == "float32"
    assert manifest.parameter_count == built.parameter_count > 0
    assert manifest.source == str(tiny_model)
    assert manifest.files == built.files
    assert manifest.created_at.endswith("+00:00")

    again = upload_archive(s3, _build(tiny_model, code_dir, tmp_path / "w2"), profile)
    assert again.uploaded_bytes == 0
    assert again.model_copy(update={"uploaded_bytes": artifact.uploaded_bytes}) == artifact
    assert read_artifact_manifest(s3, artifact.manifest_uri).created_at == manifest.created_at


def test_uncompressed_layout_mirrors_the_archive(
    profile: Profile, tiny_model: Path, code_dir: Path, tmp_path: Path
) -> None:
    s3 = aws_client("s3", profile)
    built = _build(tiny_model, code_dir, tmp_path / "w")
    artifact = upload_archive(s3, built, profile, uncompressed=True)
    prefix_key = f"models/tiny/{built.sha256[:16]}/uncompressed/"
    assert artifact.uncompressed_prefix == f"s3://{profile.bucket}/{prefix_key}"
    listed = s3.list_objects_v2(Bucket=profile.bucket, Prefix=prefix_key)["Contents"]
    assert sorted(o["Key"][len(prefix_key) :] for o in listed) == [e.name for e in built.files]
    for entry in built.files:
        body = s3.get_object(Bucket=profile.bucket, Key=prefix_key + entry.name)["Body"].read()
        assert hashlib.sha256(body).hexdigest() == entry.sha256
    manifest = json.loads(
        s3.get_object(Bucket=profile.bucket, Key=f"models/tiny/{built.sha256[:16]}/manifest.json")[
            "Body"
        ].read()
    )
    assert manifest["uncompressed_prefix"] == artifact.uncompressed_prefix

    again = upload_archive(
        s3, _build(tiny_model, code_dir, tmp_path / "w2"), profile, uncompressed=True
    )
    assert again.uploaded_bytes == 0


def test_gzip_stream_is_valid_and_complete(
    tiny_model: Path, code_dir: Path, tmp_path: Path
) -> None:
    built = _build(tiny_model, code_dir, tmp_path / "w")
    assert built.archive_path is not None
    raw = gzip.decompress(Path(built.archive_path).read_bytes())
    assert len(raw) % 512 == 0 and len(raw) >= built.uncompressed_bytes


def test_a_rebuild_of_the_same_content_reuses_the_record_and_writes_only_if_s3_lacks_it(
    profile: Profile, tiny_model: Path, code_dir: Path, tmp_path: Path
) -> None:
    work, cache = tmp_path / "w", tmp_path / "cache"
    work.mkdir()
    first = build_archive(tiny_model, name="tiny", source="x", code_dir=code_dir, cache_dir=cache)
    discard_archive(first)
    second = build_archive(
        tiny_model, name="tiny", source="x", code_dir=code_dir, work_dir=work, cache_dir=cache
    )
    assert second.archive_path is None  # nothing gzipped: the record knows the sha256
    assert (second.sha256, second.bytes, second.files) == (first.sha256, first.bytes, first.files)

    s3 = aws_client("s3", profile)
    artifact = upload_archive(s3, second, profile)  # S3 lacks it, so it is written now
    assert artifact.uploaded_bytes > first.bytes
    key = f"models/tiny/{first.sha256[:16]}/model.tar.gz"
    body = s3.get_object(Bucket=profile.bucket, Key=key)["Body"].read()
    assert hashlib.sha256(body).hexdigest() == first.sha256
    assert upload_archive(s3, second, profile).uploaded_bytes == 0
    assert list(work.iterdir()) == []  # the temp tarball was removed after the upload


def test_a_record_that_no_longer_matches_the_content_is_caught(
    profile: Profile, tiny_model: Path, code_dir: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    first = build_archive(tiny_model, name="tiny", source="x", code_dir=code_dir, cache_dir=cache)
    discard_archive(first)
    record = cache / "archives" / f"{first.fingerprint}.json"
    data = json.loads(record.read_text())
    record.write_text(json.dumps({**data, "sha256": "0" * 64}))
    stale = build_archive(tiny_model, name="tiny", source="x", code_dir=code_dir, cache_dir=cache)
    assert stale.sha256 == "0" * 64
    with pytest.raises(PackagingError, match="changed while packaging"):
        upload_archive(aws_client("s3", profile), stale, profile)
