"""UpdateEndpoint to a new model in the middle of a run: the run completes with no loss."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from localcloud.testing.artifacts import upload_echo_model
from tasks.aws.clients import aws_client
from tests.reliability.ledger import ledger_of
from tests.runs import Deployment, EndpointProbe, run_flow, write_corpus

pytestmark = pytest.mark.usefixtures("prefect_harness")

DOCS = 800
BATCH = 8


def update_to(dep: Deployment, model_data_url: str, suffix: str) -> None:
    """CreateModel + CreateEndpointConfig (same config, new model) + UpdateEndpoint, then wait."""
    sm = aws_client("sagemaker", dep.profile)
    endpoint = sm.describe_endpoint(EndpointName=dep.endpoint)
    config = sm.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])
    variant = dict(config["ProductionVariants"][0])
    model = sm.describe_model(ModelName=variant["ModelName"])
    container = dict(model["PrimaryContainer"])
    container["ModelDataUrl"] = model_data_url
    name = f"{dep.endpoint}-{suffix}"
    sm.create_model(
        ModelName=name, PrimaryContainer=container, ExecutionRoleArn=model["ExecutionRoleArn"]
    )
    variant["ModelName"] = name
    keep = ("VariantName", "ModelName", "InitialInstanceCount", "InstanceType")
    sm.create_endpoint_config(
        EndpointConfigName=name,
        ProductionVariants=[{k: variant[k] for k in keep if k in variant}],
        AsyncInferenceConfig=config["AsyncInferenceConfig"],
    )
    sm.update_endpoint(EndpointName=dep.endpoint, EndpointConfigName=name)
    sm.get_waiter("endpoint_in_service").wait(
        EndpointName=dep.endpoint, WaiterConfig={"Delay": 1, "MaxAttempts": 120}
    )


def test_update_endpoint_mid_run(
    deploy_echo: Any, probe: EndpointProbe, localcloud: Any, tmp_path: Path
) -> None:
    """Load: 800 documents, 100 batches of 8 at 10 ms a document; v1 -> v2 after 30 invokes."""
    dep = deploy_echo(cap=8, slots=2, environment={"ECHO_SLEEP_S": "0.01"})
    v2 = upload_echo_model(
        aws_client("s3", dep.profile),
        dep.profile.bucket,
        key="models/echo/v2/model.tar.gz",
        version="2",
    )
    ids = write_corpus(tmp_path / "c.jsonl", DOCS)
    timeline: dict[str, Any] = {}

    def update_mid_run() -> None:
        deadline = time.monotonic() + 120
        while probe.accepted < 30 and time.monotonic() < deadline:
            time.sleep(0.01)
        timeline["update_at_accepted"] = probe.accepted
        try:
            update_to(dep, v2, "v2")
        except Exception as exc:  # surfaced by the assertion below
            timeline["error"] = repr(exc)
        timeline["in_service_at_accepted"] = probe.accepted

    updater = threading.Thread(target=update_mid_run, daemon=True)
    updater.start()
    out = run_flow(dep, tmp_path / "c.jsonl", batch_size=BATCH)
    updater.join(timeout=120)
    versions = out.table["text"].str.extract(r"^(v\d):", expand=False).value_counts().to_dict()
    ledger = ledger_of(
        "UpdateEndpoint mid-run",
        f"{DOCS} docs / 100 batches of {BATCH}, v1 -> v2 after 30 invokes",
        out,
        ids,
        localcloud=localcloud,
        endpoint=dep.endpoint,
        versions=versions,
        **timeline,
    )
    assert "error" not in timeline, timeline
    assert timeline["in_service_at_accepted"] < 100, "the update finished after the run"
    assert ledger.balanced, ledger.line()
    assert ledger.completed == DOCS
    assert versions.get("v1", 0) > 0 and versions.get("v2", 0) > 0, versions
    # The old instances drained their requests: nothing failed, nothing was sent twice.
    assert out.result["invocations"] == 100 == probe.accepted
    status = aws_client("sagemaker", dep.profile).describe_endpoint(EndpointName=dep.endpoint)
    assert status["EndpointConfigName"] == f"{dep.endpoint}-v2"
