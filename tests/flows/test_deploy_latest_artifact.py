"""deploy_endpoint without a model URL deploys the artifact package_model uploaded last."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from flows.deploy_endpoint import deploy_endpoint
from flows.package_model import package_model
from flows.teardown_endpoint import teardown_endpoint
from tasks.aws.clients import aws_client
from tasks.settings import Profile
from tests.flows.endpoint_helpers import FAST_WAIT, count_calls, mutations, profile_file
from tests.tiny_models import make_tiny_model

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_the_latest_packaged_artifact_is_deployed_and_named_in_the_log(
    profile: Profile,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DOCFLOW_CACHE_DIR", str(tmp_path / "docflow-cache"))
    path = profile_file(profile, tmp_path)
    older = package_model(source=str(make_tiny_model(tmp_path / "tiny-a", "mistral")), profile=path)
    time.sleep(1.1)  # S3's LastModified has whole seconds
    newer = package_model(source=str(make_tiny_model(tmp_path / "tiny-b", "llama")), profile=path)
    time.sleep(1.1)
    # Re-packaging the older model writes nothing, so it stays the older one.
    assert package_model(source=str(tmp_path / "tiny-a"), profile=path)["uploaded_bytes"] == 0
    assert older["model_data_url"] != newer["model_data_url"]

    with caplog.at_level(logging.INFO):
        deployed = deploy_endpoint(
            profile=path, environment={"DOCFLOW_NUM_THREADS": "1"}, **FAST_WAIT
        )
    try:
        model = aws_client("sagemaker", profile).describe_model(ModelName=deployed["model_name"])
        assert model["PrimaryContainer"]["ModelDataUrl"] == newer["model_data_url"]
        messages = [r.getMessage() for r in caplog.records]
        assert any(
            m.startswith(
                "model_data_url not given: using the latest packaged artifact "
                f"{newer['model_data_url']} (tiny-b,"
            )
            for m in messages
        ), messages
    finally:
        teardown_endpoint(profile=path, mode="delete", **FAST_WAIT)


def test_no_packaged_artifact_is_an_error_naming_the_parameter(
    profile: Profile, tmp_path: Path
) -> None:
    path = profile_file(profile, tmp_path)
    with (
        count_calls(profile) as calls,
        pytest.raises(
            ValueError,
            match=r"deploy_endpoint needs model_data_url: no packaged "
            rf"model under s3://{profile.bucket}/models/; run package_model first",
        ),
    ):
        deploy_endpoint(profile=path, **FAST_WAIT)
    assert mutations(calls) == {}  # nothing was created
