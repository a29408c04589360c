"""Requirements vendored into the artifact (package_model wheels=...): installed by pip from a
folder of wheels only (no index, no network) into code/vendor/, a requirements.txt that installs
nothing at start, and the handler importing xgrammar from code/vendor.

The wheels here are this environment's installed xgrammar and apache-tvm-ffi packed back into
wheels (their files as RECORD lists them): real native wheels for this machine's platform, which
is all a test without network can have (the container's own are fetched with ``pip download``).
"""

from __future__ import annotations

import csv
import io
import subprocess
import sys
import tarfile
import zipfile
from importlib.metadata import distribution
from pathlib import Path

import pytest

from tasks.model.archive import DEFAULT_CODE_DIR, PackagingError, code_files
from tasks.model.vendor import VENDOR_DIR, requirement_lines, vendored_code_dir

PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"


def _repack(name: str, out: Path) -> tuple[Path, str]:
    """An installed distribution packed back into a wheel; the wheel and its platform tag."""
    dist = distribution(name)
    tags = [
        line.split(":", 1)[1].strip()
        for line in (dist.read_text("WHEEL") or "").splitlines()
        if line.startswith("Tag:")
    ]
    wheel_name = dist.metadata["Name"].replace("-", "_")
    wheel = out / f"{wheel_name}-{dist.version}-{tags[-1]}.whl"
    root = Path(str(dist.locate_file("")))
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        for file in dist.files or []:
            if file.parts[0] == ".." or "__pycache__" in file.parts:
                continue  # scripts outside site-packages; bytecode
            zf.write(root / file, file.as_posix())
    return wheel, tags[-1].split("-")[-1]


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    folder = tmp_path_factory.mktemp("wheels")
    _, platform = _repack("xgrammar", folder)
    _repack("apache-tvm-ffi", folder)
    return folder, platform


def test_requirements_are_installed_into_vendor_and_imported_from_there(
    wheels: tuple[Path, str], tmp_path: Path
) -> None:
    folder, platform = wheels
    code = vendored_code_dir(
        DEFAULT_CODE_DIR, folder, tmp_path, platform=platform, python_version=PYTHON
    )
    wanted = requirement_lines(DEFAULT_CODE_DIR / "requirements.txt")
    assert {w.split("==")[0] for w in wanted} == {"xgrammar", "apache-tvm-ffi"}
    assert requirement_lines(code / "requirements.txt") == []  # nothing to install at start
    assert all(f"#   {w}" in (code / "requirements.txt").read_text() for w in wanted)
    assert (code / VENDOR_DIR / "xgrammar" / "__init__.py").is_file()
    assert (code / VENDOR_DIR / "tvm_ffi").is_dir()
    assert code_files(code) == code_files(DEFAULT_CODE_DIR)
    # The handler's import puts code/vendor first: xgrammar comes from there, and works.
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]); import constraints; "
        "xgr = constraints._xgrammar(); "
        'xgr.Grammar.from_ebnf(\'root ::= "yes" | "no"\'); print(xgr.__file__)'
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(code)],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    assert done.stdout.strip() == str(code / VENDOR_DIR / "xgrammar" / "__init__.py")


def test_missing_or_wrong_wheels_name_the_pip_download_command(
    wheels: tuple[Path, str], tmp_path: Path
) -> None:
    folder, platform = wheels
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PackagingError, match=r"do not cover xgrammar==0\.2\.9.*pip download -r"):
        vendored_code_dir(
            DEFAULT_CODE_DIR, empty, tmp_path / "a", platform=platform, python_version=PYTHON
        )
    with pytest.raises(PackagingError, match="is no folder; fetch the wheels with: pip download"):
        vendored_code_dir(DEFAULT_CODE_DIR, tmp_path / "nowhere", tmp_path / "b")
    # This machine's wheels are not the container's (Python 3.12 by default): refused, not shipped.
    other = "3.12" if PYTHON != "3.12" else "3.13"
    with pytest.raises(PackagingError, match=f"for Python {other} on {platform}"):
        vendored_code_dir(
            DEFAULT_CODE_DIR, folder, tmp_path / "c", platform=platform, python_version=other
        )


def test_package_model_ships_the_vendored_code(
    wheels: tuple[Path, str],
    tmp_path: Path,
    prefect_harness: None,
    profile: object,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from flows.package_model import package_model
    from tasks.aws.clients import aws_client
    from tasks.aws.s3 import split_s3_uri
    from tests.flows.endpoint_helpers import profile_file
    from tests.tiny_models import make_tiny_model

    monkeypatch.setenv("DOCFLOW_CACHE_DIR", str(tmp_path / "cache"))
    folder, platform = wheels
    model = make_tiny_model(tmp_path / "tiny", "mistral")
    path = profile_file(profile, tmp_path)  # type: ignore[arg-type]
    plain = package_model(source=str(model), name="tiny", profile=path)
    vendored = package_model(
        source=str(model),
        name="tiny",
        profile=path,
        wheels=str(folder),
        wheels_platform=platform,
        wheels_python=PYTHON,
    )
    assert vendored["sha256"] != plain["sha256"]
    bucket, key = split_s3_uri(str(vendored["model_data_url"]))
    body = aws_client("s3", profile).get_object(Bucket=bucket, Key=key)["Body"].read()  # type: ignore[arg-type]
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        names = set(tar.getnames())
        requirements = tar.extractfile("code/requirements.txt").read().decode()  # type: ignore[union-attr]
        record = (
            tar.extractfile(  # type: ignore[union-attr]
                "code/vendor/xgrammar-0.2.9.dist-info/RECORD"
            )
            .read()
            .decode()
        )
    assert "code/vendor/xgrammar/__init__.py" in names and "code/inference.py" in names
    assert not any("__pycache__" in n for n in names)
    assert [r for r in requirements.splitlines() if r and not r.startswith("#")] == []
    installed = {row[0] for row in csv.reader(io.StringIO(record))}
    assert "xgrammar/__init__.py" in installed
