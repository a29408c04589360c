"""`docflow ui` deploys again only when what its deployments are made of has changed.

`prefect deploy --all` takes 15-20 s on every start. A deployment is made of prefect.yaml, the
profiles it names and the flows' signatures (their parameter groups), so a fingerprint of those
files is kept in PREFECT_HOME after a deploy; the next start skips the deploy when the fingerprint
is the same and the server (whose database lives in the same home) still has every deployment.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

from docflow.prefect_server import PROJECT_ROOT, prefect_api

MEMO_FILE = "deployed.json"
SOURCES = ("prefect.yaml", "deployments/*.yaml", "flows/**/*.py", "tasks/params/**/*.py")


def fingerprint(root: Path = PROJECT_ROOT) -> str:
    """A digest of every file a deployment is made of."""
    digest = hashlib.sha256()
    for path in sorted({p for pattern in SOURCES for p in root.glob(pattern) if p.is_file()}):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def remember(home: Path, names: Sequence[str], root: Path = PROJECT_ROOT) -> None:
    """Note what was deployed, and from which files."""
    memo = {"fingerprint": fingerprint(root), "deployments": list(names)}
    (home / MEMO_FILE).write_text(json.dumps(memo, indent=2))


def still_deployed(home: Path, api_url: str, root: Path = PROJECT_ROOT) -> list[str]:
    """The deployments of the last deploy, when its files are unchanged and the server has each
    of them; an empty list means deploy again."""
    try:
        memo = json.loads((home / MEMO_FILE).read_text())
    except (OSError, ValueError):
        return []
    names = [str(name) for name in memo.get("deployments") or []]
    if not names or memo.get("fingerprint") != fingerprint(root):
        return []
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with prefect_api(api_url), get_client(sync_client=True) as client:
        try:
            for name in names:
                client.read_deployment_by_name(name)
        except ObjectNotFound:
            return []
    return names
