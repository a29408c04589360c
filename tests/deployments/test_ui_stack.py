"""`docflow ui --workers 3` survives what the guide says it survives, tried as a user would.

One stack for the module (starting one is the expensive part): the echo model deployed by
`deploy-endpoint/local`, then
- a worker SIGKILLed (with its flow runs) while `process-documents/sharded` runs 300 documents in
  6 shards: `docflow ui` starts it again, the shard it held runs again, every document once;
- the stack stopped with Ctrl-C while `process-documents/nightly` is half done and started again on
  the same home: S3 (objects, content types, metadata) is still there, and after deploy-endpoint
  the same run key finishes the run without invoking a completed batch again.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from docflow.prefect_server import wait_until
from tasks.settings import load_profile
from tests.deployments.ui_stack import UiRun, kill_tree
from tests.pool import flow_run, shard_runs
from tests.runs import unique_run_key, write_corpus

pytestmark = pytest.mark.timeout(900)

SHARDED_DOCS, SHARDS = 300, 6
DOCS, BATCH = 400, 5
BATCHES = DOCS // BATCH


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UiRun]:
    """`docflow ui` with three workers on free ports, the echo model deployed."""
    run = UiRun(tmp_path_factory.mktemp("ui") / "prefect-home", workers=3)
    try:
        run.start()
        run.deploy_echo()
        yield run
    finally:
        run.close()


def test_a_killed_worker_is_restarted_and_the_sharded_run_completes(
    ui: UiRun, tmp_path: Path
) -> None:
    from tasks.params.flat import grouped

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
        lambda: f"[restart] {names[killed]} exited" in ui.log.read_text(),
        what="`docflow ui` to restart the killed worker",
        timeout_s=30,
        child=ui.child,
    )

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


def test_a_run_stopped_with_the_stack_resumes_after_it_starts_again(
    ui: UiRun, tmp_path: Path
) -> None:
    """Ctrl-C while a run is half done; `make ui` again, deploy again, the same run key: every
    document once, and no batch completed before the stop is invoked again."""
    from tasks.params.flat import grouped

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
    printed = ui.stop()
    assert "S3 objects saved to" in (ui.home / "logs" / "localcloud.log").read_text(), printed
    assert "stopped localcloud in" in printed, printed

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
