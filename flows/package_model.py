"""The package-model flow: resolve a model, build its SageMaker artifact, upload it once."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from tasks.artifacts import artifact_key
from tasks.aws.clients import aws_client
from tasks.aws.s3 import require_bucket
from tasks.model.archive import DEFAULT_CODE_DIR, BuiltArchive, build_archive, discard_archive
from tasks.model.grammar import fetch_wheels, vendors_grammar
from tasks.model.packaging import ModelArtifact, artifact_markdown, upload_archive
from tasks.model.sources import DEFAULT_SOURCE, ResolvedModel, default_model_name, resolve_source
from tasks.model.vendor import DEFAULT_PLATFORM, DEFAULT_PYTHON, vendored_code_dir
from tasks.settings import load_profile


@task(name="check-bucket", cache_policy=NO_CACHE)
def check_bucket(profile: str) -> str:
    """Fail early, before any slow packaging, when the profile's bucket is not there."""
    prof = load_profile(profile)
    require_bucket(
        aws_client("s3", prof),
        prof.bucket,
        f"create it (`aws s3 mb s3://{prof.bucket}`) or set `bucket` in profile {prof.name!r}",
    )
    return prof.bucket


@task(name="resolve-model-source", cache_policy=NO_CACHE)
def resolve_model(source: str) -> ResolvedModel:
    """Resolve the source to a local safetensors folder (converting a GGUF once, cached)."""
    logger = get_run_logger()
    resolved = resolve_source(source)
    if resolved.gguf_sha256:
        state = "converted" if resolved.converted else "reused the cached conversion of"
        logger.info("%s GGUF %s… -> %s", state, resolved.gguf_sha256[:16], resolved.path)
    logger.info("model source %r (%s) is %s", source, resolved.kind.value, resolved.path)
    return resolved


@task(name="build-model-archive", cache_policy=NO_CACHE)
def build_model_archive(
    model_dir: str, name: str, source: str, code_dir: str | None = None
) -> BuiltArchive:
    """Build the deterministic model.tar.gz (weights at the root, inference code under code/)."""
    logger = get_run_logger()
    built = build_archive(
        Path(model_dir),
        name=name,
        source=source,
        code_dir=Path(code_dir) if code_dir else None,
        logger=logger,
    )
    if built.archive_path is None:
        logger.info(
            "content unchanged since an earlier build (sha256 %s): not compressing it again",
            built.sha256,
        )
    else:
        logger.info("built %s (%s bytes, sha256 %s)", built.archive_path, built.bytes, built.sha256)
    logger.info(
        "%d files, %s parameters (%s, %s)",
        len(built.files),
        built.parameter_count,
        built.architecture,
        built.dtype,
    )
    return built


@task(name="upload-model-archive", cache_policy=NO_CACHE)
def upload_model_archive(built: BuiltArchive, profile: str, uncompressed: bool) -> ModelArtifact:
    """Upload archive, manifest and (optionally) the uncompressed files; skip what S3 already has."""
    logger = get_run_logger()
    prof = load_profile(profile)
    try:
        artifact = upload_archive(
            aws_client("s3", prof), built, prof, uncompressed=uncompressed, logger=logger
        )
    finally:
        discard_archive(built)
    create_markdown_artifact(
        artifact_markdown(artifact),
        key=artifact_key("model", artifact.name),
        description=f"model artifact {artifact.name}",
    )
    if artifact.uploaded_bytes == 0:
        logger.info("uploaded 0 bytes: %s already exists", artifact.model_data_url)
    else:
        logger.info("uploaded %s bytes to %s", artifact.uploaded_bytes, artifact.model_data_url)
    return artifact


@flow(name="package-model", flow_run_name="package-{source}")
def package_model(
    source: str = DEFAULT_SOURCE,
    name: str | None = None,
    profile: str = "local",
    uncompressed: bool = False,
    wheels: str | None = None,
    wheels_platform: str = DEFAULT_PLATFORM,
    wheels_python: str = DEFAULT_PYTHON,
    vendor_grammar: bool | None = None,
) -> dict[str, object]:
    """Package a model with its inference code as a content-addressed SageMaker artifact in S3.

    Args:
        source: A Hugging Face model folder, a .gguf file, the alias "smollm2" (the local
            default), or a hub id such as "mistralai/Mistral-7B-Instruct-v0.3" (only from the
            local Hugging Face cache or a reachable hub).
        name: The artifact's name in S3 (models/<name>/<sha256 prefix>/); default: from the source.
        profile: Deployment profile name (deployments/<name>.yaml) or path to a profile YAML.
        uncompressed: Also upload the files uncompressed (for SageMaker S3Prefix model data;
            large models start faster without untarring).
        wheels: A folder of wheels of inference/requirements.txt for the container's platform
            (``pip download -r inference/requirements.txt --no-deps --only-binary=:all:
            --platform manylinux_2_28_x86_64 --python-version 3.12 -d wheels``): they are
            installed into the artifact's code/vendor/, so the instance installs nothing at start
            (for endpoints without internet). Default: the instance pip-installs them at start.
        wheels_platform: The container's platform tag for ``wheels``.
        wheels_python: The container's Python version for ``wheels`` (the image's pyXYZ).
        vendor_grammar: Vendor xgrammar (constrained output) even without ``wheels``: its
            wheels are fetched with pip for ``wheels_python``/``wheels_platform`` (offline: an
            error naming the fix). Default: the profile's vendor_grammar (AWS profiles: yes).
    """
    check_bucket(profile)
    prof = load_profile(profile)
    vendor = vendors_grammar(prof) if vendor_grammar is None else vendor_grammar
    scratch = Path(tempfile.mkdtemp(prefix="docflow-vendor-")) if wheels or vendor else None
    try:
        if not wheels and scratch is not None:  # fetched now, for the image's Python/platform
            wheels = str(fetch_wheels(scratch / "wheels", wheels_python, wheels_platform))
        resolved = resolve_model(source)
        code_dir = None
        if wheels and scratch is not None:
            code_dir = str(
                vendored_code_dir(
                    DEFAULT_CODE_DIR,
                    Path(wheels).expanduser(),
                    scratch,
                    platform=wheels_platform,
                    python_version=wheels_python,
                )
            )
        built = build_model_archive(
            resolved.path, name or default_model_name(source), source, code_dir
        )
        artifact = upload_model_archive(built, profile, uncompressed)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    return artifact.model_dump(mode="json")


if __name__ == "__main__":
    package_model(source="smollm2", profile="local")
