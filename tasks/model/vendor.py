"""The inference code's requirements vendored into the artifact, for instances without internet.

By default the SageMaker inference toolkit pip-installs ``code/requirements.txt`` (xgrammar, for
constrained output) when the container starts, from PyPI: an endpoint whose subnets reach neither
the internet nor a PyPI mirror fails that install and the container does not start. With
``package_model(wheels=<folder>)`` the requirements are installed at packaging time, by pip, from
wheels for the container's platform into ``code/vendor/`` (unpacked, importable), and the shipped
``requirements.txt`` lists nothing to install, so the instance installs nothing at start. The
handler puts ``code/vendor`` first on ``sys.path`` when it first imports xgrammar
(``inference/constraints.py``).

The wheels come from ``pip download`` on any machine with internet (:func:`download_command`);
the defaults fit the Hugging Face PyTorch inference images docflow deploys (Python 3.12,
manylinux x86_64).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tasks.model.archive import PackagingError, code_files

VENDOR_DIR = "vendor"  # under code/: what inference/constraints.py puts on sys.path
DEFAULT_PLATFORM = "manylinux_2_28_x86_64"
DEFAULT_PYTHON = "3.12"  # the default image's Python (huggingface-pytorch-inference:...-py312-...)
_VENDORED_HEADER = (
    "# Installed at packaging time into code/vendor/ (package_model wheels=...), so the instance\n"
    "# installs nothing at start and needs no internet:\n"
)


def requirement_lines(requirements: Path) -> list[str]:
    """The requirement lines of a requirements file (comments and blank lines left out)."""
    lines = []
    for raw in requirements.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            lines.append(line)
    return lines


def download_command(
    requirements: Path, wheels: Path, platform: str = DEFAULT_PLATFORM, python: str = DEFAULT_PYTHON
) -> str:
    """The pip command that fetches the wheels ``package_model(wheels=...)`` vendors."""
    return (
        f"pip download -r {requirements} --no-deps --only-binary=:all: "
        f"--platform {platform} --python-version {python} -d {wheels}"
    )


def vendored_code_dir(
    code_dir: Path,
    wheels: Path,
    out_dir: Path,
    *,
    platform: str = DEFAULT_PLATFORM,
    python_version: str = DEFAULT_PYTHON,
) -> Path:
    """A copy of ``code_dir`` under ``out_dir`` with its requirements installed from ``wheels``
    into ``vendor/`` and a requirements.txt that installs nothing; PackagingError names what to
    fetch when a wheel is missing."""
    requirements = code_dir / "requirements.txt"
    wanted = requirement_lines(requirements)
    if not wheels.is_dir():
        raise PackagingError(
            f"wheels={str(wheels)!r} is no folder; fetch the wheels with: "
            + download_command(requirements, wheels, platform, python_version)
        )
    target = out_dir / "code"
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for name in code_files(code_dir):
        if name != "requirements.txt":
            shutil.copy2(code_dir / name, target / name)
    if wanted:
        _pip_install(wanted, wheels, target / VENDOR_DIR, requirements, platform, python_version)
    listed = "".join(f"#   {line}\n" for line in wanted)
    (target / "requirements.txt").write_text(_VENDORED_HEADER + listed, encoding="utf-8")
    return target


def _pip_install(
    wanted: list[str],
    wheels: Path,
    vendor: Path,
    requirements: Path,
    platform: str,
    python_version: str,
) -> None:
    """pip install the requirements, from ``wheels`` only, for the container's platform."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--isolated",  # no pip.conf or PIP_* settings: only the wheels folder
        "--disable-pip-version-check",
        "--no-index",
        "--find-links",
        str(wheels),
        "--no-deps",
        "--only-binary=:all:",
        "--no-compile",
        "--platform",
        platform,
        "--python-version",
        python_version,
        "--implementation",
        "cp",
        "--target",
        str(vendor),
        *wanted,
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        why = (done.stderr or done.stdout).strip().splitlines()
        raise PackagingError(
            f"the wheels in {wheels} do not cover {', '.join(wanted)} for Python {python_version} "
            f"on {platform} ({why[-1] if why else 'pip failed'}); fetch them with: "
            + download_command(requirements, wheels, platform, python_version)
        )
