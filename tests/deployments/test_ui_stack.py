"""`docflow ui --workers 3` survives what the guide says it survives, tried as a user would.

The session's stack (``docflow_ui``, shared with test_prefect_deployments.py, which runs first):
the echo model deployed by `deploy-endpoint/local`, then
- a worker SIGKILLed (with its flow runs) while `process-documents/sharded` runs 300 documents in
  6 shards: `docflow ui` starts it again under a name of its own, the other workers are left
  alone, the shard it held runs again, every document once;
- the stack stopped with Ctrl-C while `process-documents/nightly` is half done (nothing it
  started is left running) and started again on the same home: S3 (objects, content types,
  metadata) is still there, nothing is deployed again, and after deploy-endpoint the same run
  key finishes the run without invoking a completed batch again.
"""

from __future__ import annotations

import json
from pathlib import Path

import psutil
import pytest

from docflow.prefect_server import port_is_free, prefect_api, wait_until
from docflow.ui_state import STATE_FILE
from tasks.settings import load_profile
from tests.deployments.ui_stack import UiRun, descendants, kill_tree, still_running
from tests.pool import flow_run, shard_runs
from tests.runs import unique_run_key, write_corpus

pytestmark = pytest.mark.timeout(900)

SHARDED_DOCS, SHARDS = 300, 6
DOCS, BATCH = 400, 5
BATCHES = DOCS // BATCH


def test_a_killed_worker_is_restarted_and_the_sharded_run_completes(
    docflow_ui: UiRun, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import WorkerStatus

    from tasks.params.flat import grouped

    ui = docflow_ui
    ui.deploy_echo()
    state = ui.running()
    run_key = unique_run_key()
    corpus = tmp_path / "c.jsonl"
    ids = write_corpus(corpus, SHARDED_DOCS, words=3)
    flat = {"corpus": str(corpus), "run_key": run_key, "shards": SHARDS, "batch_size": 10}
    parent = ui.run_deployment(
        "process-documents/sharded", grouped({**flat, "max_new_tokens": 4}), timeout=0
    )
    names = {f"docflow-worker-{n}": f"prefect worker {n}" for n in (1, 2, 3)}

    def victim() -> str | None:
        owner = (flow_run(state.api_url, parent.id).labels or {}).get("prefect.worker.name")
        for run in shard_runs(state.api_url):
            worker = (run.labels or {}).get("prefect.worker.name")
            if run.state and run.state.is_running() and worker and worker != owner:
                return str(worker)
        return None

    wait_until(
        lambda: victim() is not None,
        what="a shard on a worker other than the parent's",
        timeout_s=300,
        child=ui.child,
    )
    killed = victim()
    assert killed is not None
    stack_state = json.loads((ui.home / "docflow-ui.json").read_text())
    kill_tree(int(stack_state["children"][names[killed]][0]))
    wait_until(
        lambda: f"[restart] {names[killed]} exited with code -9" in ui.log.read_text(),
        what="`docflow ui` to restart the killed worker",
        timeout_s=30,
        child=ui.child,
    )
    healthy = [
        int(pid)
        for name, (pid, *_) in stack_state["children"].items()
        if name.startswith("prefect worker") and name != names[killed]
    ]
    assert all(psutil.pid_exists(pid) for pid in healthy)  # the other workers were left alone

    def parent_done() -> bool:
        run_state = flow_run(state.api_url, parent.id).state
        return run_state is not None and run_state.is_final()

    wait_until(parent_done, what="the sharded run to end", timeout_s=600, child=ui.child)
    final = flow_run(state.api_url, parent.id)
    assert final.state.is_completed(), final.state
    assert ui.child is not None and ui.child.alive()
    summary, got = ui.merged_doc_ids(run_key)
    assert summary["completed"] == SHARDED_DOCS, summary
    assert any(r["attempts"] > 1 for r in summary["shard_runs"]), summary["shard_runs"]
    assert len(got) == len(set(got)) == SHARDED_DOCS and set(got) == set(ids)
    # The restarted worker polls under a name of its own (the dead one went offline), its log
    # beside the dead one's.
    with prefect_api(state.api_url), get_client(sync_client=True) as client:
        online = {
            w.name
            for w in client.read_workers_for_work_pool("docflow-local")
            if w.status == WorkerStatus.ONLINE
        }
    assert f"{killed}-r1" in online and killed not in online, online
    (restarted_log,) = (ui.home / "logs").glob("worker*-r1.log")  # beside the dead one's
    assert "started!" in restarted_log.read_text(errors="replace")


def test_a_run_stopped_with_the_stack_resumes_after_it_starts_again(
    docflow_ui: UiRun, tmp_path: Path
) -> None:
    """Ctrl-C while a run is half done; `make ui` again, deploy again, the same run key: every
    document once, and no batch completed before the stop is invoked again."""
    from tasks.params.flat import grouped

    ui = docflow_ui
    bucket = load_profile("local").bucket
    run_key = unique_run_key()
    corpus = tmp_path / "c.jsonl"
    ids = write_corpus(corpus, DOCS, words=3)
    params = grouped(
        {"corpus": str(corpus), "run_key": run_key, "batch_size": BATCH, "max_new_tokens": 4}
    )

    def completed_batches() -> int:
        try:
            got = ui.s3().get_object(Bucket=bucket, Key=f"runs/{run_key}/manifest.json")
        except Exception:
            return 0
        batches = json.loads(got["Body"].read()).get("batches", {}).values()
        return sum(1 for b in batches if b.get("status") == "completed")

    ui.deploy_echo(sleep_s=0.3)  # slow enough to stop the stack half-way
    ui.run_deployment("process-documents/nightly", params, timeout=0)
    ui.s3().put_object(  # an object of the user's own, with a content type and metadata
        Bucket=bucket,
        Key="kept/one.json",
        Body=b"{}",
        ContentType="application/json",
        Metadata={"attempt": "1"},
    )
    wait_until(
        lambda: completed_batches() >= 10, what="some batches", timeout_s=300, child=ui.child
    )
    started = descendants(ui.running().pid)
    assert len(started) >= 7, started  # docflow ui, postgres, server, localcloud, 3 workers
    api_port = int(ui.running().api_url.rsplit(":", 1)[1].split("/")[0])
    printed = ui.stop()
    localcloud_log = (ui.home / "logs" / "localcloud.log").read_text()
    assert "S3 objects saved to" in localcloud_log, printed + localcloud_log[-12000:]
    assert "stopped localcloud in" in printed and printed.rstrip().endswith("stopped."), (
        ui.log_text()
    )
    wait_until(
        lambda: not still_running(started), what="every process of the stack to end", timeout_s=10
    )
    assert port_is_free(api_port)
    assert not (ui.home / STATE_FILE).exists()

    restart_at = len(ui.log.read_text())
    ui.start()
    assert "deployments unchanged since the last start" in ui.log.read_text()[restart_at:]
    before = completed_batches()
    assert 10 <= before < BATCHES, before  # the manifest outlived the restart, half done
    kept = ui.s3().get_object(Bucket=bucket, Key="kept/one.json")
    assert (kept["ContentType"], kept["Metadata"]) == ("application/json", {"attempt": "1"})
    ui.deploy_echo()
    resumed = ui.run_deployment("process-documents/nightly", params, timeout=600)
    assert resumed.state is not None and resumed.state.is_completed(), resumed.state
    summary, got = ui.merged_doc_ids(run_key)
    assert summary["completed"] == DOCS, summary
    assert len(got) == len(set(got)) == DOCS and set(got) == set(ids)
    # The restarted localcloud counts only what the resumed run invoked: none of the batches
    # completed before the stop (a batch in flight then was lost with the old endpoint).
    received = ui.localcloud_stats()["docflow-llm"]["received"]
    assert received <= BATCHES - before, (received, before)
