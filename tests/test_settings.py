"""The profile loader: both shipped profiles load, overrides apply, errors say what to do."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.settings import Profile, ProfileError, load_profile


@pytest.fixture(autouse=True)
def no_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shipped files as written: the localcloud fixture exports DOCFLOW_ENDPOINT_URL."""
    for field in Profile.model_fields:
        monkeypatch.delenv(f"DOCFLOW_{field.upper()}", raising=False)


def test_shipped_profiles_load() -> None:
    local = load_profile("local")
    aws = load_profile("aws")
    assert local.endpoint_url and local.endpoint_url.startswith("http://127.0.0.1")
    assert aws.endpoint_url is None
    assert aws.instance_type == "ml.g5.2xlarge"
    assert local.autoscaling.min_capacity == 0


def test_env_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCFLOW_BUCKET", "other-bucket")
    assert load_profile("local").bucket == "other-bucket"


def test_unknown_profile_names_the_choices() -> None:
    with pytest.raises(ProfileError, match=r"'local'"):
        load_profile("nope")


def test_invalid_profile_is_rejected(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("bucket: b\ninstance_count: 0\n")
    with pytest.raises(ProfileError, match="instance_count"):
        load_profile(bad)


def test_s3_uri() -> None:
    assert load_profile("local").s3_uri("runs/", "/abc") == "s3://docflow-local/runs/abc"
