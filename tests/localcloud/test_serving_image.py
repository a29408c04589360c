"""localcloud runs docflow's serving image as SageMaker would: its real ``serve``, behind HTTP.

Over HTTP with unmodified boto3: an endpoint on a ``docflow-serving`` image runs
docker/serving/serve as the instance process (its pid is the server's), InvokeEndpoint reaches it
as ``POST /invocations`` and InvokeEndpointWithResponseStream as the same request with the
forwarded-api header, answered chunked; the fault switchboard reaches the real server from outside.
"""

from __future__ import annotations

import io
import json
import tarfile
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tasks.aws.clients import aws_client
from tasks.settings import Profile
from tests.inference.served import SERVE
from tests.realtime import deploy_realtime
from tests.tiny_models import make_tiny_model

DOC = {
    "id": "d1",
    "prompt": "Summarise: the tenant pays rent.",
    "parameters": {"max_new_tokens": 8},
}


def _proc(pid: int, name: str) -> list[str]:
    return Path(f"/proc/{pid}/{name}").read_bytes().decode(errors="replace").split("\0")


def test_a_serving_image_endpoint_runs_the_real_serve_and_streams(
    profile: Profile, localcloud: Any, faults: Any, tmp_path: Path
) -> None:
    model_dir = make_tiny_model(tmp_path / "model", "llama")
    name = deploy_realtime(profile, model_dir, {}, instances=1, image="docflow-serving:local")
    (pid,) = localcloud.instance_pids(name)
    assert _proc(pid, "cmdline")[1:3] == [str(SERVE), "serve"]
    environ = [entry.partition("=")[0] for entry in _proc(pid, "environ")]
    assert "SAGEMAKER_BIND_TO_PORT" in environ and "PYTHONPATH" not in environ

    runtime: Any = aws_client("sagemaker-runtime", profile)
    whole = runtime.invoke_endpoint(
        EndpointName=name, Body=json.dumps(DOC), ContentType="application/jsonlines",
        Accept="application/jsonlines",
    )  # fmt: skip
    assert whole["ContentType"].startswith("application/jsonlines")
    (line,) = [json.loads(x) for x in whole["Body"].read().splitlines()]
    assert line["id"] == "d1" and line["completion_tokens"] == 8

    streamed = runtime.invoke_endpoint_with_response_stream(
        EndpointName=name, Body=json.dumps(DOC), ContentType="application/jsonlines"
    )
    assert streamed["ContentType"] == "application/jsonlines"
    body = b"".join(e["PayloadPart"]["Bytes"] for e in streamed["Body"] if "PayloadPart" in e)
    *tokens, last = [json.loads(x) for x in body.splitlines()]
    assert len(tokens) == 8 and last["generated_text"] == line["text"]

    faults.set(model_error_rate=1.0)
    with pytest.raises(ClientError) as caught:
        runtime.invoke_endpoint(
            EndpointName=name, Body=json.dumps(DOC), ContentType="application/jsonlines"
        )
    assert caught.value.response["Error"]["Code"] == "ModelError"
    assert "injected model error" in str(caught.value)
    faults.reset()

    faults.set(kill_instance_rate=1.0)  # the server's process group is killed under the request
    with pytest.raises(ClientError) as caught:
        runtime.invoke_endpoint(
            EndpointName=name, Body=json.dumps(DOC), ContentType="application/jsonlines"
        )
    assert "terminated unexpectedly" in str(caught.value)
    faults.reset()
    deadline = time.monotonic() + 120
    while localcloud.instance_pids(name) in ([], [pid]):  # replaced, as SageMaker does
        assert time.monotonic() < deadline
        time.sleep(0.2)
    again = runtime.invoke_endpoint(
        EndpointName=name, Body=json.dumps(DOC), ContentType="application/jsonlines",
        Accept="application/jsonlines",
    )  # fmt: skip
    assert json.loads(again["Body"].read())["text"] == line["text"]


def test_a_serving_image_whose_model_does_not_load_fails_the_endpoint_with_the_reason(
    profile: Profile, tmp_path: Path
) -> None:
    s3, sm = aws_client("s3", profile), aws_client("sagemaker", profile)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:  # weights, but no code/inference.py
        info = tarfile.TarInfo("config.json")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
    tag = uuid.uuid4().hex[:6]
    s3.put_object(Bucket=profile.bucket, Key=f"broken/{tag}.tar.gz", Body=buffer.getvalue())
    sm.create_model(
        ModelName=f"broken-{tag}",
        ExecutionRoleArn="arn:aws:iam::123456789012:role/sm",
        PrimaryContainer={"Image": "docflow-serving:local",
                          "ModelDataUrl": profile.s3_uri(f"broken/{tag}.tar.gz")},
    )  # fmt: skip
    sm.create_endpoint_config(
        EndpointConfigName=f"broken-{tag}",
        ProductionVariants=[{"VariantName": "AllTraffic", "ModelName": f"broken-{tag}",
                             "InstanceType": "ml.g5.2xlarge", "InitialInstanceCount": 1}],
    )  # fmt: skip
    sm.create_endpoint(EndpointName=profile.endpoint_name, EndpointConfigName=f"broken-{tag}")
    deadline = time.monotonic() + 120
    while (d := sm.describe_endpoint(EndpointName=profile.endpoint_name))[
        "EndpointStatus"
    ] == "Creating":
        assert time.monotonic() < deadline, d
        time.sleep(0.2)
    assert d["EndpointStatus"] == "Failed"
    assert "FileNotFoundError" in d["FailureReason"] and "code/inference.py" in d["FailureReason"]
