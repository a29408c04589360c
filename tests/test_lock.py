"""requirements.lock, which `make install` installs from, holds what pyproject.toml asks for.

`make lock` resolves it again after a dependency changes; this fails when that was forgotten
(a new package missing from the lock, or a locked version the new bound excludes).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def _locked() -> dict[str, str]:
    """Package name -> exact version, for every pin in the lock file."""
    pins: dict[str, str] = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if "==" in line and not line.startswith((" ", "#")):
            name, version = line.split(" ", 1)[0].split("==")
            pins[canonicalize_name(name.split("[", 1)[0])] = version
    return pins


def _required() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [
        Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]
    ]


def test_every_dependency_is_locked_at_a_version_its_bound_allows() -> None:
    pins = _locked()
    for req in _required():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not in requirements.lock: run `make lock`"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"requirements.lock has {req.name}=={pins[name]}, outside {req}: run `make lock`"
        )


def test_every_pin_carries_a_hash() -> None:
    lines = (ROOT / "requirements.lock").read_text().splitlines()
    pins = [i for i, line in enumerate(lines) if "==" in line and not line.startswith((" ", "#"))]
    assert len(pins) > 100
    for i in pins:
        assert lines[i].endswith(" \\") and lines[i + 1].lstrip().startswith("--hash=sha256:"), (
            f"{lines[i]} has no --hash: run `make lock`"
        )
