"""The ECS and Kubernetes work pools and their deployments, created from the repo's files on a
real Prefect server (the test harness's), which validates every base job template."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from docflow.prefect_server import PROJECT_ROOT, prefect_deploy

POOLS = PROJECT_ROOT / "deployments" / "pools"
AWS_DEPLOYMENTS = PROJECT_ROOT / "deployments" / "prefect-aws.yaml"


def _template(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((POOLS / f"{name}.json").read_text())
    return data


def _create_pool(name: str, kind: str, template: dict[str, Any]) -> Any:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        with contextlib.suppress(ObjectNotFound):
            client.delete_work_pool(name)
        client.create_work_pool(WorkPoolCreate(name=name, type=kind, base_job_template=template))
        return client.read_work_pool(name)


@pytest.mark.parametrize(
    ("name", "kind", "defaults"),
    [
        ("ecs", "ecs", {"cpu": 1024, "memory": 2048, "launch_type": "FARGATE"}),
        (
            "kubernetes",
            "kubernetes",
            {"namespace": "docflow", "service_account_name": "docflow-orchestrator"},
        ),
    ],
)
def test_pool_templates_are_accepted_by_a_prefect_server(
    prefect_harness: None, name: str, kind: str, defaults: dict[str, Any]
) -> None:
    pool = _create_pool(f"docflow-{name}", kind, _template(name))
    assert pool.type == kind
    variables = pool.base_job_template["variables"]["properties"]
    for key, value in defaults.items():
        assert variables[key]["default"] == value, key
    # Shards' flow runs send heartbeats, so a lost task or pod is seen as crashed and re-run.
    assert variables["env"]["default"]["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] == "30"
    assert "{{ image }}" in json.dumps(pool.base_job_template["job_configuration"])


def test_a_template_that_references_an_undeclared_variable_is_refused(
    prefect_harness: None,
) -> None:
    from prefect.exceptions import PrefectHTTPStatusError

    broken = _template("ecs")
    broken["job_configuration"]["cluster"] = "{{ no_such_variable }}"
    with pytest.raises(PrefectHTTPStatusError, match="422|no_such_variable"):
        _create_pool("docflow-ecs-broken", "ecs", broken)


def test_aws_deployments_deploy_onto_the_pools(prefect_harness: None, tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    for name in ("ecs", "kubernetes"):
        _create_pool(f"docflow-{name}", name, _template(name))
    image = "123456789012.dkr.ecr.us-east-1.amazonaws.com/docflow-flows:test"
    role = "arn:aws:iam::123456789012:role/docflow-orchestrator"
    env = {
        **os.environ,
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "PREFECT_CLI_PROMPT": "false",
        "DOCFLOW_IMAGE": image,
        "DOCFLOW_TASK_ROLE_ARN": role,
    }
    prefect_deploy(env, "--prefect-file", str(AWS_DEPLOYMENTS), "--all")  # raises on failure
    spec = yaml.safe_load(AWS_DEPLOYMENTS.read_text())
    with get_client(sync_client=True) as client:
        for entry in spec["deployments"]:
            deployment = client.read_deployment_by_name(f"process-documents/{entry['name']}")
            assert deployment.work_pool_name == entry["work_pool"]["name"]
            assert (deployment.job_variables or {})["image"] == image
            assert deployment.parameters["sharding"]["shards"] == 8
