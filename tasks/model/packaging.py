"""Describe the model artifact (its manifest) and upload it once, content-addressed, to S3."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from boto3.s3.transfer import TransferConfig
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tasks.aws.s3 import (
    SHA256_METADATA_KEY,
    LoggerLike,
    S3Uri,
    head_object,
    object_exists,
    parse_s3_uri,
    put_bytes_unless_same,
    put_file_if_absent,
    stored_sha256,
    upload_file,
)
from tasks.model.archive import (
    ARCHIVE_NAME,
    DIGEST_CHARS,
    BuiltArchive,
    FileEntry,
    PackagingError,
    archive_members,
    discard_archive,
    ensure_written,
)
from tasks.settings import Profile

MANIFEST_NAME = "manifest.json"
UNCOMPRESSED_DIR = "uncompressed"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class ArtifactManifest(BaseModel):
    """The model artifact's manifest.json, stored next to model.tar.gz: what is inside it.

    Not the run's manifest (``tasks.run.plan.manifest.RunManifest``, the state of a document run).
    """

    name: str
    source: str
    architecture: str
    model_type: str
    dtype: str
    parameter_count: int
    bytes: int
    uncompressed_bytes: int
    sha256: str
    model_data_url: str
    uncompressed_prefix: str | None
    files: list[FileEntry]
    created_at: str


class ModelArtifact(BaseModel):
    """What package_model hands to deploy_endpoint: where the artifact is and what it holds."""

    model_config = ConfigDict(frozen=True)

    name: str
    source: str
    model_data_url: str = Field(description="s3://…/model.tar.gz (SageMaker ModelDataUrl).")
    uncompressed_prefix: str | None = Field(
        None, description="s3://…/uncompressed/ (S3DataType=S3Prefix, CompressionType=None)."
    )
    sha256: str
    manifest_uri: str
    architecture: str
    dtype: str
    parameter_count: int
    bytes: int
    uploaded_bytes: int = Field(0, description="Bytes this run sent to S3; 0 when all was there.")


def artifact_prefix(profile: Profile, name: str, sha256: str) -> S3Uri:
    """s3://<bucket>/<prefixes.models>/<name>/<sha256[:16]>: the content-addressed home of an artifact."""
    if not _NAME.match(name):
        raise PackagingError(
            f"model name {name!r} is not usable in an S3 key: use letters, digits, '.', '_' "
            "and '-' (no '/'), starting with a letter or digit"
        )
    return S3Uri(profile.bucket, "").join(profile.prefixes.models, name, sha256[:DIGEST_CHARS])


def build_artifact_manifest(
    built: BuiltArchive, prefix: S3Uri, uncompressed: bool, created_at: datetime | None = None
) -> ArtifactManifest:
    """The manifest for an archive stored under ``prefix``."""
    return ArtifactManifest(
        name=built.name,
        source=built.source,
        architecture=built.architecture,
        model_type=built.model_type,
        dtype=built.dtype,
        parameter_count=built.parameter_count,
        bytes=built.bytes,
        uncompressed_bytes=built.uncompressed_bytes,
        sha256=built.sha256,
        model_data_url=str(prefix.join(ARCHIVE_NAME)),
        uncompressed_prefix=f"{prefix.join(UNCOMPRESSED_DIR)}/" if uncompressed else None,
        files=built.files,
        created_at=(created_at or datetime.now(UTC)).isoformat(timespec="seconds"),
    )


def upload_archive(
    client: Any,
    built: BuiltArchive,
    profile: Profile,
    *,
    uncompressed: bool = False,
    transfer_config: TransferConfig | None = None,
    logger: LoggerLike | None = None,
) -> ModelArtifact:
    """Upload the archive (and optionally its files uncompressed) and the manifest, skipping what exists."""
    prefix = artifact_prefix(profile, built.name, built.sha256)
    manifest = build_artifact_manifest(built, prefix, uncompressed)
    archive_key = prefix.join(ARCHIVE_NAME).key
    sent = 0
    if stored_sha256(head_object(client, profile.bucket, archive_key)) != built.sha256:
        written = ensure_written(built, logger=logger)
        try:
            sent += upload_file(
                client,
                Path(str(written.archive_path)),
                profile.bucket,
                archive_key,
                metadata={SHA256_METADATA_KEY: built.sha256},
                content_type="application/gzip",
                transfer_config=transfer_config,
                logger=logger,
            )
        finally:
            if written is not built:
                discard_archive(written)
    if uncompressed:
        locals_by_name = dict(archive_members(Path(built.model_dir), Path(built.code_dir)))
        for entry in built.files:
            sent += put_file_if_absent(
                client,
                locals_by_name[entry.name],
                profile.bucket,
                prefix.join(UNCOMPRESSED_DIR, entry.name).key,
                sha256=entry.sha256,
                transfer_config=transfer_config,
                logger=logger,
            ).bytes_uploaded
    manifest_key = prefix.join(MANIFEST_NAME)
    sent += _put_artifact_manifest(client, manifest, manifest_key)
    return ModelArtifact(
        name=built.name,
        source=built.source,
        model_data_url=manifest.model_data_url,
        uncompressed_prefix=manifest.uncompressed_prefix,
        sha256=built.sha256,
        manifest_uri=str(manifest_key),
        architecture=built.architecture,
        dtype=built.dtype,
        parameter_count=built.parameter_count,
        bytes=built.bytes,
        uploaded_bytes=sent,
    )


def _put_artifact_manifest(client: Any, manifest: ArtifactManifest, where: S3Uri) -> int:
    """Write the manifest unless an equivalent one is there; keep the first run's created_at."""
    if object_exists(client, where.bucket, where.key):
        try:
            stored = read_artifact_manifest(client, str(where))
        except ValidationError:
            stored = None  # written by another version: replace it
        if stored is not None:
            merged = manifest.model_copy(
                update={
                    "created_at": stored.created_at,
                    "source": stored.source,
                    "uncompressed_prefix": manifest.uncompressed_prefix
                    or stored.uncompressed_prefix,
                }
            )
            if merged == stored:
                return 0
            manifest = merged
    body = manifest.model_dump_json(indent=2).encode() + b"\n"
    return put_bytes_unless_same(
        client, body, where.bucket, where.key, content_type="application/json"
    ).bytes_uploaded


def read_artifact_manifest(client: Any, manifest_uri: str) -> ArtifactManifest:
    """Load a manifest back from S3."""
    loc = parse_s3_uri(manifest_uri)
    body = client.get_object(Bucket=loc.bucket, Key=loc.key)["Body"].read()
    return ArtifactManifest.model_validate_json(body)


def artifact_markdown(artifact: ModelArtifact) -> str:
    """A short Markdown description of an uploaded artifact (for the Prefect UI)."""
    sent = (
        f"{artifact.uploaded_bytes:,} bytes uploaded"
        if artifact.uploaded_bytes
        else "already in S3: 0 bytes uploaded"
    )
    lines = [
        f"# Model artifact `{artifact.name}`",
        "",
        "| | |",
        "|---|---|",
        f"| source | `{artifact.source}` |",
        f"| architecture | {artifact.architecture} ({artifact.dtype}) |",
        f"| parameters | {artifact.parameter_count:,} |",
        f"| model.tar.gz | `{artifact.model_data_url}` ({artifact.bytes:,} bytes) |",
        f"| uncompressed | `{artifact.uncompressed_prefix or '-'}` |",
        f"| sha256 | `{artifact.sha256}` |",
        f"| manifest | `{artifact.manifest_uri}` |",
        f"| this run | {sent} |",
    ]
    return "\n".join(lines) + "\n"


def latest_artifact(client: Any, profile: Profile) -> ArtifactManifest | None:
    """The artifact whose manifest was written last under the profile's models prefix.

    package_model writes ``<models>/<name>/<digest>/manifest.json`` when it uploads a new
    artifact (a re-run of the same content writes nothing), so this is the most recently
    packaged model; None when there is none.
    """
    layout = re.compile(
        rf"^{re.escape(profile.prefixes.models)}/[^/]+/[0-9a-f]{{{DIGEST_CHARS}}}/"
        rf"{re.escape(MANIFEST_NAME)}$"
    )
    newest: tuple[datetime, str] | None = None
    pages = client.get_paginator("list_objects_v2").paginate(
        Bucket=profile.bucket, Prefix=f"{profile.prefixes.models}/"
    )
    for page in pages:
        for item in page.get("Contents", []):
            if layout.match(item["Key"]) and (newest is None or item["LastModified"] > newest[0]):
                newest = (item["LastModified"], item["Key"])
    if newest is None:
        return None
    return read_artifact_manifest(client, f"s3://{profile.bucket}/{newest[1]}")
