"""A sharded run through `docflow ui --workers 3` while one worker is SIGKILLed mid-run.

As a user would: `docflow ui` with three workers, the echo model deployed by
`deploy-endpoint/local`, `process-documents/sharded` over 300 documents in 6 shards. A worker
that runs a shard (not the parent's) is killed with its flow runs; `docflow ui` starts it again,
the shard it held is re-run, and the merged results hold every document once.
"""

from __future__ import annotations

import io
import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pyarrow.parquet as pq
import pytest

from docflow.prefect_server import ChildProcess, free_port, prefect_api, spawn, wait_until
from docflow.ui_state import UiState
from tests.pool import flow_run, shard_runs
from tests.runs import unique_run_key, write_corpus

pytestmark = pytest.mark.timeout(900)

READY_LINE = "Ctrl-C stops everything."
LOCALCLOUD_ENV = ("AWS_ENDPOINT_URL", "DOCFLOW_ENDPOINT_URL", "DOCFLOW_CREDENTIALS_BLOCK")
DOCS, SHARDS = 300, 6


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ChildProcess, UiState]]:
    """`docflow ui` with three workers on free ports."""
    home = tmp_path_factory.mktemp("ui-sharded")
    env = {k: v for k, v in os.environ.items() if k not in LOCALCLOUD_ENV}
    env.update(
        {
            "DOCFLOW_UI_HOME": str(home),
            "DOCFLOW_UI_PORT": str(free_port()),
            "DOCFLOW_UI_LOCALCLOUD_PORT": str(free_port()),
            "DOCFLOW_UI_WORKERS": "3",
            "PYTHONUNBUFFERED": "1",
        }
    )
    child = spawn(
        "docflow ui", [sys.executable, "-m", "docflow.cli", "ui"], env=env, log_path=home / "ui.out"
    )
    try:
        wait_until(
            lambda: READY_LINE in child.log_tail(400),
            what="`docflow ui`",
            timeout_s=300,
            child=child,
        )
        state = UiState.load(home)
        assert state is not None
        yield child, state
    finally:
        child.stop(timeout_s=30)


def _profile(state: UiState) -> Any:
    from tasks.settings import load_profile

    return load_profile("local").model_copy(
        update={"endpoint_url": state.localcloud_url, "credentials_block": "docflow-local"}
    )


def _kill_tree(pid: int) -> None:
    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    for proc in procs:
        proc.send_signal(signal.SIGKILL)
    psutil.wait_procs(procs, timeout=10)


def test_a_killed_worker_is_restarted_and_the_sharded_run_completes(
    ui: tuple[ChildProcess, UiState], tmp_path: Path
) -> None:
    from prefect.deployments import run_deployment

    from localcloud.testing.artifacts import upload_echo_model
    from tasks.aws.clients import aws_client, clear_client_cache
    from tasks.params.flat import grouped

    child, state = ui
    profile = _profile(state)
    with prefect_api(state.api_url):
        clear_client_cache()
        try:
            model_url = upload_echo_model(aws_client("s3", profile), profile.bucket)
            deployed: Any = run_deployment(
                "deploy-endpoint/local", parameters={"model_data_url": model_url}, timeout=300
            )
            assert deployed.state is not None and deployed.state.is_completed(), deployed.state
            run_key = unique_run_key()
            corpus = tmp_path / "c.jsonl"
            ids = write_corpus(corpus, DOCS, words=3)
            parent = run_deployment(
                "process-documents/sharded",
                parameters=grouped(
                    {
                        "corpus": str(corpus),
                        "run_key": run_key,
                        "shards": SHARDS,
                        "batch_size": 10,
                        "max_new_tokens": 4,
                    }
                ),
                timeout=0,
            )
        finally:
            clear_client_cache()
    parent_id = parent.id  # type: ignore[union-attr]
    names = {f"docflow-worker-{n}": f"prefect worker {n}" for n in (1, 2, 3)}

    def victim() -> str | None:
        owner = (flow_run(state.api_url, parent_id).labels or {}).get("prefect.worker.name")
        for run in shard_runs(state.api_url):
            worker = (run.labels or {}).get("prefect.worker.name")
            if run.state and run.state.is_running() and worker and worker != owner:
                return str(worker)
        return None

    wait_until(
        lambda: victim() is not None,
        what="a shard on a worker other than the parent's",
        timeout_s=300,
        child=child,
    )
    killed = victim()
    assert killed is not None
    stack_state = json.loads((Path(child.log_path).parent / "docflow-ui.json").read_text())
    _kill_tree(int(stack_state["children"][names[killed]][0]))
    wait_until(
        lambda: f"[restart] {names[killed]} exited" in child.log_tail(400),
        what="`docflow ui` to restart the killed worker",
        timeout_s=30,
        child=child,
    )

    def parent_done() -> bool:
        run_state = flow_run(state.api_url, parent_id).state
        return run_state is not None and run_state.is_final()

    wait_until(parent_done, what="the sharded run to end", timeout_s=600, child=child)
    final = flow_run(state.api_url, parent_id)
    assert final.state.is_completed(), final.state
    assert child.alive()

    from tasks.run.results.status import read_summary

    with prefect_api(state.api_url):
        clear_client_cache()
        try:
            summary = read_summary(profile, run_key)
            assert summary is not None and summary["completed"] == DOCS, summary
            assert any(r["attempts"] > 1 for r in summary["shard_runs"]), summary["shard_runs"]
            bucket, _, key = summary["results_uri"].removeprefix("s3://").partition("/")
            body = aws_client("s3", profile).get_object(Bucket=bucket, Key=key)["Body"].read()
        finally:
            clear_client_cache()
    got = pq.read_table(io.BytesIO(body)).column("doc_id").to_pylist()
    assert len(got) == len(set(got)) == DOCS and set(got) == set(ids)
