"""The packaged model's tokenizer files, fetched from its S3 artifact once and cached per artifact.

Only the small files are fetched (``TOKENIZER_FILES``: the tokenizer, its config, the chat template
and the model's ``config.json`` for the context length), never the weights: from the uncompressed
prefix when the artifact has one (one GetObject per file), else by streaming ``model.tar.gz`` and
keeping only those members (the weights pass through without being written). The cache folder is
``<docflow cache>/tokenizers/<artifact sha256 prefix>`` (the artifact's manifest names the sha256;
an artifact without a manifest is keyed by its location and ETag).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from tasks.aws.s3 import S3Uri, parse_s3_uri
from tasks.model.folder import default_cache_dir

TOKENIZER_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
)
# Any of these makes a folder a tokenizer (config.json alone does not).
VOCABULARY_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
MANIFEST_NAME = "manifest.json"
DONE_MARK = ".complete"


def has_tokenizer(folder: Path) -> bool:
    """Whether ``folder`` holds a tokenizer's vocabulary."""
    return any((folder / name).is_file() for name in VOCABULARY_FILES)


def fetch_tokenizer_files(
    client: Any, model_data_url: str, cache_dir: Path | None = None
) -> Path | None:
    """A local folder with the artifact's tokenizer files (cached), or None when it has no tokenizer.

    ``model_data_url`` is the endpoint's model location: ``s3://…/model.tar.gz`` or an uncompressed
    prefix ending in ``/``.
    """
    location = parse_s3_uri(model_data_url)
    home = _artifact_home(location, model_data_url.endswith("/"))
    manifest = _read_json(client, home.join(MANIFEST_NAME))
    key = _cache_key(client, location, manifest)
    folder = (cache_dir or default_cache_dir()) / "tokenizers" / key
    if (folder / DONE_MARK).is_file():
        return folder if has_tokenizer(folder) else None
    listed = {f["name"] for f in (manifest or {}).get("files", []) if isinstance(f, dict)}
    wanted = [n for n in TOKENIZER_FILES if not listed or n in listed]
    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=folder.parent))
    try:
        prefix = _uncompressed_prefix(model_data_url, manifest)
        if prefix is not None:
            _copy_objects(client, parse_s3_uri(prefix), wanted, work)
        elif wanted:
            _extract_members(client, location, set(wanted), work)
        (work / DONE_MARK).write_text(model_data_url, encoding="utf-8")
        if folder.exists():  # another process got there first: keep its copy
            shutil.rmtree(work)
        else:
            work.rename(folder)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return folder if has_tokenizer(folder) else None


def _artifact_home(location: S3Uri, uncompressed: bool) -> S3Uri:
    """The folder holding the artifact's manifest: the archive's, or the prefix's parent."""
    key = location.key.rstrip("/")
    parent = key.rsplit("/", 1)[0] if "/" in key else ""
    return S3Uri(location.bucket, parent)


def _uncompressed_prefix(model_data_url: str, manifest: dict[str, Any] | None) -> str | None:
    if model_data_url.endswith("/"):
        return model_data_url
    prefix = (manifest or {}).get("uncompressed_prefix")
    return prefix if isinstance(prefix, str) and prefix.endswith("/") else None


def _cache_key(client: Any, location: S3Uri, manifest: dict[str, Any] | None) -> str:
    """The artifact's sha256 prefix (from its manifest), else a hash of its location and ETag."""
    sha = (manifest or {}).get("sha256")
    if isinstance(sha, str) and sha:
        return sha[:16]
    etag = ""
    if not location.key.endswith("/"):
        etag = str(client.head_object(Bucket=location.bucket, Key=location.key).get("ETag", ""))
    return "url-" + hashlib.sha256(f"{location}|{etag}".encode()).hexdigest()[:16]


def _read_json(client: Any, where: S3Uri) -> dict[str, Any] | None:
    """A JSON object from S3, or None when there is none (or it is not a JSON object)."""
    try:
        body = client.get_object(Bucket=where.bucket, Key=where.key)["Body"].read()
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "403"):
            return None
        raise
    try:
        value = json.loads(body)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _copy_objects(client: Any, prefix: S3Uri, names: list[str], into: Path) -> None:
    """GetObject each named file under ``prefix`` that exists."""
    for name in names:
        try:
            body = client.get_object(Bucket=prefix.bucket, Key=prefix.key + name)["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                continue
            raise
        (into / name).write_bytes(body)


def _extract_members(client: Any, location: S3Uri, names: set[str], into: Path) -> None:
    """Stream model.tar.gz and write only the root members named in ``names``."""
    body = client.get_object(Bucket=location.bucket, Key=location.key)["Body"]
    with tarfile.open(fileobj=body, mode="r|gz") as archive:
        for member in archive:
            name = member.name.removeprefix("./")
            if not member.isfile() or name not in names:
                continue
            source = archive.extractfile(member)
            if source is not None:
                (into / name).write_bytes(source.read())
            names.discard(name)
            if not names:
                break
