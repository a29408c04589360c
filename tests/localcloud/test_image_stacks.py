"""localcloud runs the stack the image names: static path under transformers 4, no streams on MMS.

Over HTTP with unmodified boto3, a tiny model on a real-time endpoint per image.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from docflow.cli import build_parser
from tasks.ask.session_client import ask, open_session
from tasks.aws.clients import aws_client
from tasks.settings import Profile
from tests.flows.endpoint_helpers import profile_file
from tests.realtime import deploy_realtime
from tests.tiny_models import make_tiny_model

HF = "763104351884.dkr.ecr.us-east-1.amazonaws.com/huggingface-pytorch-inference:2.6.0-"
IMAGES = {
    "4.51.3": HF + "transformers4.51.3-gpu-py312-cu124-ubuntu22.04",
    "5.5.3": HF + "transformers5.5.3-gpu-py312-cu124-ubuntu22.04",
}
DOCUMENT = "The lease starts on 1 May. The tenant, Ana, pays 900 euros on the first of each month."


def _refused_stream(runtime: Any, name: str, session: str) -> str:
    with pytest.raises(ClientError) as caught:
        runtime.invoke_endpoint_with_response_stream(
            EndpointName=name,
            Body=json.dumps({"prompt": "Who?", "parameters": {"max_new_tokens": 3}}).encode(),
            ContentType="application/json",
            SessionId=session,
        )
    error = caught.value.response["Error"]
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert error["Code"] == "ValidationError", error
    return str(error["Message"])


@pytest.mark.parametrize(("version", "generator"), [("4.51.3", "static"), ("5.5.3", "engine")])
def test_a_hugging_face_image_serves_its_path_and_refuses_streams(
    profile: Profile, tmp_path: Path, version: str, generator: str
) -> None:
    model_dir = make_tiny_model(tmp_path / "model", "llama")
    name = deploy_realtime(profile, model_dir, {}, instances=1, image=IMAGES[version])
    runtime: Any = aws_client("sagemaker-runtime", profile)
    session = open_session(runtime, name, DOCUMENT)
    answer = ask(runtime, name, session, "Who pays?", {"max_new_tokens": 6})
    # The engine answers from the session's pinned prefix; the static path prefills it again.
    assert (answer["cached_tokens"] > 0) is (generator == "engine"), answer
    message = _refused_stream(runtime, name, session)
    assert "does not support response streaming" in message and IMAGES[version] in message

    # docflow ask answers anyway, whole, and says so once for its two questions.
    document = tmp_path / "lease.txt"
    document.write_text(DOCUMENT)
    args = build_parser().parse_args(
        ["ask", "--profile", profile_file(profile, tmp_path), "--endpoint", name,
         "--document", str(document), "--max-new-tokens", "6", "Who pays?", "How much?"]
    )  # fmt: skip
    out, err = io.StringIO(), io.StringIO()
    assert args.func(args, out, err) == 0, err.getvalue()
    assert out.getvalue().startswith(f"Q: Who pays?\nA: {answer['text']}\nQ: How much?\nA: ")
    assert err.getvalue().count("[not streamed:") == 1
    assert err.getvalue().count("prompt tokens cached") == 2


def test_an_image_localcloud_cannot_emulate_is_refused_by_name(
    profile: Profile, tmp_path: Path
) -> None:
    image = "763104351884.dkr.ecr.us-east-1.amazonaws.com/vllm:0.27.1-gpu-py312-cu130-ubuntu22.04-sagemaker"
    model_dir = make_tiny_model(tmp_path / "model", "llama")
    name = deploy_realtime(profile, model_dir, {}, instances=1, image=image, wait=False)
    sm = aws_client("sagemaker", profile)
    deadline = time.monotonic() + 60
    while (described := sm.describe_endpoint(EndpointName=name))["EndpointStatus"] == "Creating":
        assert time.monotonic() < deadline, described
        time.sleep(0.2)
    assert described["EndpointStatus"] == "Failed"
    assert image in described["FailureReason"] and "cannot emulate" in described["FailureReason"]


@pytest.mark.parametrize(
    ("image", "server", "transformers", "engine_env"),
    [
        (IMAGES["4.51.3"], "mms", "4.51.3", {"DOCFLOW_ENGINE": "static"}),
        (IMAGES["5.5.3"], "mms", "5.5.3", {}),
        (HF.replace("-gpu-", "-cpu-") + "transformers4.51.3-cpu-py312-ubuntu22.04", "mms", "4.51.3",
         {"DOCFLOW_ENGINE": "static"}),
        ("docflow-serving:local", "docflow", None, {}),
        ("123456789012.dkr.ecr.us-east-1.amazonaws.com/docflow-serving:0.1", "docflow", None, {}),
        ("echo", "toolkit", None, {}),
        (None, "toolkit", None, {}),
    ],
)  # fmt: skip
def test_image_profiles(
    image: str | None, server: str, transformers: str | None, engine_env: dict[str, str]
) -> None:
    from localcloud.sagemaker.images import image_profile

    profile = image_profile(image)
    assert (profile.server, profile.transformers, profile.streams) == (
        server,
        transformers,
        server != "mms",
    )
    assert profile.environment() == engine_env
