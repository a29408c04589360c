"""docflow.deployed: `docflow ui` deploys again exactly when a file a deployment is made of changed."""

from __future__ import annotations

import shutil
from pathlib import Path

from docflow.deployed import fingerprint, remember, still_deployed
from docflow.prefect_server import PROJECT_ROOT


def _copy_of_the_project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    for name in ("prefect.yaml", "deployments", "flows", "tasks/params"):
        source = PROJECT_ROOT / name
        target = root / name
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return root


def test_the_fingerprint_follows_prefect_yaml_profiles_flows_and_parameter_groups(
    tmp_path: Path,
) -> None:
    root = _copy_of_the_project(tmp_path)
    first = fingerprint(root)
    assert fingerprint(root) == first
    (root / "README.md").write_text("not part of a deployment")
    assert fingerprint(root) == first
    seen = {first}
    for changed in (
        "prefect.yaml",
        "deployments/local.yaml",
        "flows/process_documents.py",
        "tasks/params/groups.py",
    ):
        with (root / changed).open("a") as fh:
            fh.write("\n# changed\n")
        seen.add(fingerprint(root))
    assert len(seen) == 5


def test_nothing_is_kept_without_a_memo_or_after_a_change(tmp_path: Path) -> None:
    root = _copy_of_the_project(tmp_path)
    home = tmp_path / "home"
    home.mkdir()
    no_server = "http://127.0.0.1:9/api"  # never asked: each case ends before the server
    assert still_deployed(home, no_server, root) == []
    remember(home, [], root)
    assert still_deployed(home, no_server, root) == []  # nothing was deployed
    remember(home, ["process-documents/nightly"], root)
    (root / "flows" / "process_documents.py").write_text("# another signature\n")
    assert still_deployed(home, no_server, root) == []
    (home / "deployed.json").write_text("{not json")
    assert still_deployed(home, no_server, root) == []
