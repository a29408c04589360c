"""The grammar library (xgrammar) on AWS instances: vendored at packaging, checked before a run.

Constrained output (``fields``/``labels``) needs xgrammar in the container. An AWS profile vendors
it into the artifact by default (``package_model``: wheels fetched for the image's Python and
platform, installed into ``code/vendor/``), and a constrained run against an artifact whose
manifest shows no ``code/vendor/xgrammar/`` is refused before anything is invoked.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from tasks.aws.clients import aws_client
from tasks.model.archive import DEFAULT_CODE_DIR, PackagingError
from tasks.model.packaging import MANIFEST_NAME, read_artifact_manifest
from tasks.model.vendor import VENDOR_DIR, download_command
from tasks.settings import Profile

GRAMMAR_PACKAGE = "xgrammar"
VENDORED_PREFIX = f"code/{VENDOR_DIR}/{GRAMMAR_PACKAGE}/"


class GrammarMissingError(RuntimeError):
    """A constrained run on an artifact without the grammar library; the message names the fix."""


def vendors_grammar(profile: Profile) -> bool:
    """Whether packaging for ``profile`` vendors xgrammar: its setting, else AWS yes, local no."""
    if profile.vendor_grammar is not None:
        return profile.vendor_grammar
    return profile.endpoint_url is None


def fetch_wheels(dest: Path, python: str, platform: str) -> Path:
    """``pip download`` inference/requirements.txt's wheels for the image; offline: the fix."""
    requirements = DEFAULT_CODE_DIR / "requirements.txt"
    command = download_command(requirements, dest, platform, python).split()
    done = subprocess.run(
        [sys.executable, "-m", *command], capture_output=True, text=True, check=False, timeout=600
    )
    if done.returncode != 0:
        why = (done.stderr or done.stdout).strip().splitlines()
        raise PackagingError(
            f"cannot fetch the grammar library's wheels for Python {python} on {platform} "
            f"({why[-1] if why else 'pip failed'}); on a machine with internet run "
            f"`{download_command(requirements, Path('wheels'), platform, python)}` and pass "
            "wheels=<that folder>, or vendor_grammar=False to package without it (constrained "
            "runs on AWS are then refused)"
        )
    return dest


def _manifest_uri(model_artifact: str) -> str:
    """manifest.json beside model.tar.gz (or beside the uncompressed/ prefix)."""
    base = model_artifact.rstrip("/")
    return base.rsplit("/", 1)[0] + "/" + MANIFEST_NAME


def check_grammar(profile: Profile, model_artifact: str, constrained: bool) -> None:
    """Refuse a constrained run whose artifact lacks xgrammar (where the profile vendors it)."""
    if not constrained or not vendors_grammar(profile):
        return
    fix = (
        "package the model again with package_model(profile=...) for this profile (it vendors "
        "xgrammar by default, or pass wheels=...), deploy it, then run again"
    )
    client: Any = aws_client("s3", profile)
    where = _manifest_uri(model_artifact)
    try:
        manifest = read_artifact_manifest(client, where)
    except Exception as exc:  # no manifest: not packaged by package_model
        raise GrammarMissingError(
            f"fields/labels need the grammar library (xgrammar) in the model artifact, and "
            f"{model_artifact} has no readable manifest ({where}: {exc}); {fix}"
        ) from exc
    if not any(f.name.startswith(VENDORED_PREFIX) for f in manifest.files):
        raise GrammarMissingError(
            f"fields/labels need the grammar library (xgrammar) in the model artifact, and "
            f"{model_artifact} does not vendor it ({VENDORED_PREFIX} is not in its manifest); {fix}"
        )
