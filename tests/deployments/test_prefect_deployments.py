"""The deployments the way users run them: `docflow ui`, `prefect deployment run`, the Prefect API.

One `docflow ui --workers 3` (PostgreSQL, a real Prefect server in a temp PREFECT_HOME,
localcloud, work pool, workers, blocks, `prefect deploy --all`) serves every test here and in
test_ui_stack.py (the session fixture ``docflow_ui``), which then kills a worker and stops and
starts the stack.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
import yaml

from docflow.prefect_server import (
    PROJECT_ROOT,
    ChildProcess,
    prefect_api,
    prefect_cli,
    prefect_env,
    wait_until,
)
from docflow.ui_state import UiState
from tests.deployments.ui_stack import UiRun

pytestmark = pytest.mark.timeout(400)

FLOW_FILES = {
    "package-model": "flows/package_model.py",
    "deploy-endpoint": "flows/deploy_endpoint.py",
    "process-documents": "flows/process_documents.py",
    "ask-documents": "flows/ask_documents.py",
    "teardown-endpoint": "flows/teardown_endpoint.py",
    "end-to-end": "flows/end_to_end.py",
    "run-status": "flows/run_status.py",
}
DEPLOYMENTS = {
    "package-model/local",
    "deploy-endpoint/local",
    "process-documents/nightly",
    "process-documents/sharded",
    "teardown-endpoint/local",
    "end-to-end/local",
    "run-status/local",
    "ask-documents/local",
}


@dataclass
class Stack:
    """A running `docflow ui` and what the tests need to talk to it."""

    ui: ChildProcess
    home: Path
    state: UiState
    env: dict[str, str]

    def cli(self, *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
        """Run the `prefect` CLI against this stack's server."""
        return subprocess.run(
            prefect_cli(*args),
            cwd=PROJECT_ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )


def _deployments_in_yaml() -> list[str]:
    """`flow-name/deployment-name` for every deployment prefect.yaml declares."""
    spec = yaml.safe_load((PROJECT_ROOT / "prefect.yaml").read_text())
    by_file = {path: flow for flow, path in FLOW_FILES.items()}
    return [f"{by_file[d['entrypoint'].split(':')[0]]}/{d['name']}" for d in spec["deployments"]]


@pytest.fixture(scope="module")
def stack(docflow_ui: UiRun) -> Stack:
    """The session's `docflow ui`, with the `prefect` CLI's environment."""
    state = docflow_ui.running()
    assert docflow_ui.child is not None
    return Stack(
        ui=docflow_ui.child,
        home=docflow_ui.home,
        state=state,
        env=prefect_env(docflow_ui.home, state.api_url, {"COLUMNS": "250"}),
    )


def test_make_ui_prints_the_ui_address_and_a_ready_to_paste_run_line(stack: Stack) -> None:
    out = stack.ui.log_tail(400)
    assert f"Prefect UI:  {stack.state.ui_url}" in out
    assert f"export PREFECT_API_URL={stack.state.api_url}" in out
    assert re.search(r"prefect deployment run 'process-documents/nightly' --param ", out), out


def test_deployment_ls_lists_every_deployment_and_the_nightly_schedule_is_active(
    stack: Stack,
) -> None:
    listed = stack.cli("deployment", "ls")
    assert listed.returncode == 0, listed.stderr
    expected = _deployments_in_yaml()
    assert set(expected) == DEPLOYMENTS and len(expected) == len(DEPLOYMENTS)
    for name in expected:
        assert name in listed.stdout, (
            f"{name} missing from `prefect deployment ls`:\n{listed.stdout}"
        )

    from prefect.client.orchestration import get_client

    with prefect_api(stack.state.api_url), get_client(sync_client=True) as client:
        nightly = client.read_deployment_by_name("process-documents/nightly")
        other = client.read_deployment_by_name("deploy-endpoint/local")
        deployments = [client.read_deployment_by_name(name) for name in expected]
    # The UI renders each deployment's parameters as a form, described from the docstrings.
    for deployment in deployments:
        properties = (deployment.parameter_openapi_schema or {}).get("properties", {})
        undocumented = [k for k, v in properties.items() if not v.get("description")]
        assert properties and not undocumented, (deployment.name, undocumented)
    assert [s.active for s in nightly.schedules] == [True]
    schedule = nightly.schedules[0].schedule
    assert getattr(schedule, "cron", None) == "0 2 * * *"
    assert getattr(schedule, "timezone", None) == "UTC"
    assert nightly.work_pool_name == "docflow-local"
    assert nightly.parameters["corpus"] == "datasets/sample"
    assert other.schedules == []
    # The pull step runs the flow from this checkout, resolved when `prefect deploy` ran.
    assert nightly.pull_steps == [
        {"prefect.deployments.steps.set_working_directory": {"directory": str(PROJECT_ROOT)}}
    ]


def test_the_scheduler_puts_the_next_nightly_runs_on_the_calendar(stack: Stack) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    def scheduled() -> list[Any]:
        with prefect_api(stack.state.api_url), get_client(sync_client=True) as client:
            nightly = client.read_deployment_by_name("process-documents/nightly")
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[nightly.id]))
            )
        return [r for r in runs if r.state is not None and r.state.is_scheduled()]

    # The server's scheduler service fills the calendar on its own loop (every few seconds
    # for a deployment it has not seen yet).
    wait_until(lambda: bool(scheduled()), what="a scheduled nightly run", timeout_s=120)
    runs = scheduled()
    for run in runs:
        start = run.expected_start_time
        assert start is not None and (start.hour, start.minute, start.second) == (2, 0, 0)
        assert start.utcoffset() is not None and start.utcoffset().total_seconds() == 0
        assert run.parameters["corpus"] == "datasets/sample"


def test_second_make_ui_reuses_the_running_stack(stack: Stack) -> None:
    again = subprocess.run(
        [sys.executable, "-m", "docflow.cli", "ui"],
        cwd=PROJECT_ROOT,
        env={**stack.env, "DOCFLOW_UI_HOME": str(stack.home)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert "already running" in again.stdout
    assert stack.state.ui_url in again.stdout
    assert stack.ui.alive()


def test_credentials_block_keeps_its_secret(stack: Stack) -> None:
    from prefect.client.orchestration import get_client

    from tasks.aws.blocks import block_names, describe_credentials, save_blocks
    from tasks.settings import load_profile

    secret = "do-not-print-" + os.urandom(6).hex()
    profile = load_profile("local").model_copy(
        update={"name": "secret-check", "endpoint_url": stack.state.localcloud_url}
    )
    with prefect_api(stack.state.api_url):
        names = save_blocks(
            profile, {"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": secret}
        )
        described = describe_credentials(names.credentials)
        with get_client(sync_client=True) as client:
            doc = client.read_block_document_by_name(
                names.credentials, "aws-credentials", include_secrets=False
            )
    assert names == block_names(profile)
    assert secret not in described and "static keys" in described
    assert secret not in json.dumps(doc.data, default=str)
    assert doc.data["aws_client_parameters"]["endpoint_url"] == stack.state.localcloud_url


def _run_deployment(stack: Stack, name: str, *params: str) -> tuple[UUID, float]:
    """`prefect deployment run NAME --param ... --watch`; returns the flow run id and seconds taken."""
    args = ["deployment", "run", name, "--watch", "--watch-timeout", "240"]
    for param in params:
        args += ["--param", param]
    started = time.monotonic()
    run = stack.cli(*args, timeout_s=260)
    elapsed = time.monotonic() - started
    found = re.search(r"UUID: ([0-9a-f-]{36})", run.stdout)
    assert found, run.stdout + run.stderr
    assert run.returncode == 0, (
        f"{name} did not complete:\n{run.stdout}\n{run.stderr}\n"
        f"worker log:\n{(stack.home / 'logs' / 'worker.log').read_text()[-6000:]}"
    )
    return UUID(found.group(1)), elapsed


def _flow_run_and_artifacts(api_url: str, run_id: UUID) -> tuple[Any, list[Any]]:
    """The flow run and its artifacts, read back through the Prefect API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with prefect_api(api_url), get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(run_id)
        artifacts = client.read_artifacts(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))
        )
    return flow_run, artifacts


def _warnings(api_url: str, run_id: UUID) -> list[str]:
    """Messages logged at WARNING or above by the flow run (the UI shows them in its log)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId, LogFilterLevel

    with prefect_api(api_url), get_client(sync_client=True) as client:
        logs = client.read_logs(
            LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id]), level=LogFilterLevel(ge_=30))
        )
    return [log.message for log in logs]


def _upload_echo_model(stack: Stack) -> str:
    """The echo model.tar.gz in the stack's localcloud, written with the saved credentials block."""
    from localcloud.testing.artifacts import upload_echo_model
    from tasks.aws.clients import aws_client, clear_client_cache
    from tasks.settings import load_profile

    profile = load_profile("local").model_copy(
        update={"endpoint_url": stack.state.localcloud_url, "credentials_block": "docflow-local"}
    )
    with prefect_api(stack.state.api_url):
        clear_client_cache()
        try:
            return upload_echo_model(aws_client("s3", profile), profile.bucket)
        finally:
            clear_client_cache()


def test_deployment_run_processes_documents_to_completed_with_artifacts(
    stack: Stack, tmp_path: Path
) -> None:
    model_url = _upload_echo_model(stack)
    deploy_id, deploy_s = _run_deployment(
        stack, "deploy-endpoint/local", f"model_data_url={json.dumps(model_url)}"
    )
    rows = [{"id": f"doc-{i}", "text": f"Document number {i} says hello."} for i in range(4)]
    rows.append({"id": "doc-poison", "text": "this one breaks the model: __POISON__"})
    rows.append({"id": "doc-empty", "text": ""})
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join(json.dumps(row) + "\n" for row in rows))
    run_id, run_s = _run_deployment(
        stack, "process-documents/nightly", f"corpus={json.dumps(str(corpus))}"
    )
    print(f"deploy-endpoint: {deploy_s:.1f} s; process-documents: {run_s:.1f} s (run to Completed)")

    flow_run, artifacts = _flow_run_and_artifacts(stack.state.api_url, run_id)
    assert flow_run.state is not None and flow_run.state.is_completed()
    assert flow_run.deployment_id is not None
    assert flow_run.name == f"summarize-{corpus.name}"  # short: the last part of the path
    kinds = {a.type for a in artifacts}
    assert {"progress", "table", "markdown"} <= kinds, [(a.key, a.type) for a in artifacts]
    # The flow's return value was persisted through the S3Bucket block into localcloud.
    with prefect_api(stack.state.api_url):
        result = flow_run.state.result()
    assert (result["completed"], result["failed"], result["rejected"]) == (4, 1, 1), result
    # Some documents failed: the run still completes, with a warning that says so.
    wait_until(
        lambda: any("1 failed" in m for m in _warnings(stack.state.api_url, run_id)),
        what="the run's warning about its failed document",
        timeout_s=30,
    )
    deploy_run, _ = _flow_run_and_artifacts(stack.state.api_url, deploy_id)
    assert deploy_run.state is not None and deploy_run.state.is_completed()
    # The UI's read-out of the run: the run-status deployment, as `docflow runs show` prints it.
    status_id, _ = _run_deployment(
        stack, "run-status/local", f"run_key={json.dumps(result['run_key'])}"
    )
    status_run, status_artifacts = _flow_run_and_artifacts(stack.state.api_url, status_id)
    assert status_run.state is not None and status_run.state.is_completed()
    (shown,) = [a for a in status_artifacts if a.type == "markdown"]
    assert "documents total 6: succeeded 4, errored 1" in str(shown.data)


def test_failed_run_is_failed_with_the_reason(stack: Stack) -> None:
    run = stack.cli(
        "deployment",
        "run",
        "process-documents/nightly",
        "--param",
        "corpus=datasets/no-such-corpus.jsonl",
        "--watch",
        "--watch-timeout",
        "120",
        timeout_s=150,
    )
    found = re.search(r"UUID: ([0-9a-f-]{36})", run.stdout)
    assert found, run.stdout + run.stderr
    assert run.returncode != 0
    flow_run, _ = _flow_run_and_artifacts(stack.state.api_url, UUID(found.group(1)))
    assert flow_run.state is not None and flow_run.state.is_failed()
    assert "no-such-corpus" in (flow_run.state.message or ""), flow_run.state.message
    # The automation `docflow ui` set up alerts on it, through its notification block.
    wait_until(
        lambda: f"[alert] docflow: flow run {flow_run.name} is Failed" in stack.ui.log_tail(400),
        what="the failed run's alert on the `docflow ui` console",
        timeout_s=60,
    )
    assert flow_run.name in (stack.home / "logs" / "alerts.log").read_text()


def test_three_workers_poll_the_pool_and_the_server_runs_on_postgres(stack: Stack) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import WorkerStatus

    with prefect_api(stack.state.api_url), get_client(sync_client=True) as client:
        workers = client.read_workers_for_work_pool("docflow-local")
    online = sorted(w.name for w in workers if w.status == WorkerStatus.ONLINE)
    assert online == ["docflow-worker-1", "docflow-worker-2", "docflow-worker-3"], workers
    assert "postgres" in stack.state.children, stack.state.children
    assert "starting PostgreSQL for 3 workers" in stack.ui.log_tail(400)


def test_credentials_from_profile_takes_keys_only_from_the_environment() -> None:
    from tasks.aws.blocks import block_names, credentials_from_profile
    from tasks.settings import load_profile

    local = load_profile("local")
    block = credentials_from_profile(
        local, {"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "s3cret"}
    )
    assert block.aws_secret_access_key is not None
    assert block.aws_secret_access_key.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(block)
    assert block.region_name == local.region
    assert block.aws_client_parameters.endpoint_url == local.endpoint_url

    aws = load_profile("aws")
    chain = credentials_from_profile(aws, {"AWS_PROFILE": "prod"})
    assert (chain.aws_access_key_id, chain.aws_secret_access_key) == (None, None)
    assert chain.profile_name == "prod"
    assert chain.aws_client_parameters.endpoint_url == aws.endpoint_url
    assert block_names(aws).credentials == "docflow-aws"
    assert block_names(aws).results_slug == "s3-bucket/docflow-aws-results"

    with pytest.raises(ValueError, match="AWS_SECRET_ACCESS_KEY"):
        credentials_from_profile(local, {"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE"})
