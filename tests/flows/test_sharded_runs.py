"""Sharded runs on a real Prefect server with several process workers, one killed mid-run.

The server, the work pool, the `process-documents/sharded` deployment and the workers are real
child processes; localcloud is the session's (in this process), so its counters see every
invocation any worker makes. A worker is killed with SIGKILL together with the flow runs it
started, as when its machine goes away.
"""

from __future__ import annotations

import io
import signal
from pathlib import Path
from typing import Any

import psutil
import pyarrow.parquet as pq
import pytest

from docflow.prefect_server import (
    ChildProcess,
    ensure_global_concurrency_limit,
    prefect_api,
    wait_until,
)
from tasks.aws.clients import aws_client
from tasks.aws.s3 import split_s3_uri
from tasks.endpoint.spec import concurrency_limit_name
from tasks.run.plan.manifest import load_manifest
from tasks.sharding.shards import Shard, shard_of
from tests.oracles import select_shard
from tests.pool import PoolStack, flow_run, run_parent, shard_runs
from tests.runs import Deployment, EndpointProbe, unique_run_key, write_corpus

# The session's prefect_pool (tests/conftest.py), shared with test_sharded_asks.py.
pytestmark = pytest.mark.timeout(900)

SHARDS = 8
# make test runs 2,000 documents; the 20,000 of the acceptance run with --soak.
SIZES = [2_000, pytest.param(20_000, marks=pytest.mark.soak)]
MAX_ATTEMPTS = 3


@pytest.fixture
def stack(prefect_pool: PoolStack) -> PoolStack:
    """The session's Prefect stack: server on PostgreSQL, `process-documents/sharded`, workers."""
    return prefect_pool


def _kill_tree(child: ChildProcess) -> None:
    """SIGKILL the worker and every process under it at once (its machine is gone)."""
    root = psutil.Process(child.pid)
    procs = [root, *root.children(recursive=True)]
    for proc in procs:
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(procs, timeout=10)


def test_shards_are_stable_and_cover_every_document_once() -> None:
    ids = [f"doc-{i}" for i in range(1000)]
    shards = [shard_of(i, 8) for i in ids]
    assert shards == [shard_of(i, 8) for i in ids]  # the same split every time
    assert set(shards) == set(range(8))
    assert min(shards.count(s) for s in range(8)) > 80  # roughly even


def test_a_shard_selects_its_documents_and_rejected_rows(tmp_path: Path) -> None:
    from tasks.corpus.documents import ColumnMapping, load_corpus

    corpus_file = tmp_path / "c.jsonl"
    ids = write_corpus(corpus_file, 50)
    with corpus_file.open("a") as fh:
        fh.write('{"id": "empty", "text": ""}\n{"text": "no id"}\n')
    corpus = load_corpus(str(corpus_file), ColumnMapping())
    parts = [select_shard(corpus, Shard(index=i, count=3)) for i in range(3)]
    seen = [d.doc_id for p in parts for d in p.documents]
    assert sorted(seen) == sorted(ids)
    assert sum(len(p.rejected) for p in parts) == len(corpus.rejected) == 2
    assert sum(p.size for p in parts) == corpus.size
    with pytest.raises(ValueError, match="below the shard count"):
        Shard(index=3, count=3)


@pytest.mark.parametrize("documents", SIZES)
def test_a_sharded_run_survives_a_killed_worker_and_loses_nothing(
    documents: int,
    stack: PoolStack,
    deploy_echo: Any,
    probe: EndpointProbe,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    from prefect.deployments import run_deployment

    from tasks.params.flat import grouped

    deployment: Deployment = deploy_echo(cap=8, slots=4, instances=2)
    ensure_global_concurrency_limit(
        stack.api_url, concurrency_limit_name(deployment.endpoint), deployment.cap
    )
    run_key = unique_run_key()
    corpus_file = tmp_path / f"{run_key}.jsonl"
    ids = write_corpus(corpus_file, documents, words=3)

    with prefect_api(stack.api_url):
        parent = run_deployment(
            "process-documents/sharded",
            parameters=grouped(
                {
                    "corpus": str(corpus_file),
                    "profile": deployment.profile_path,
                    "endpoint": deployment.endpoint,
                    "run_key": run_key,
                    "shards": SHARDS,
                    "batch_size": 50,
                    "max_attempts": MAX_ATTEMPTS,
                    "max_new_tokens": 4,
                }
            ),
            timeout=0,
        )
    parent_id = parent.id  # type: ignore[union-attr]

    # Kill a worker that runs a shard (not the parent) once that shard has invoked something.
    def victim() -> str | None:
        parent_worker = (flow_run(stack.api_url, parent_id).labels or {}).get("prefect.worker.name")
        for run in shard_runs(stack.api_url):
            worker = (run.labels or {}).get("prefect.worker.name")
            if run.state and run.state.is_running() and worker and worker != parent_worker:
                return str(worker)
        return None

    wait_until(
        lambda: probe.accepted > 0 and victim() is not None,
        what="a shard running on a worker other than the parent's",
        timeout_s=300,
        child=stack.server,
    )
    killed = victim()
    assert killed is not None
    _kill_tree(stack.workers[killed])
    request.addfinalizer(lambda: stack.restart(killed))  # the next test gets all its workers

    def parent_done() -> bool:
        state = flow_run(stack.api_url, parent_id).state
        return state is not None and state.is_final()

    wait_until(parent_done, what="the sharded run to end", timeout_s=780, child=stack.server)
    final = flow_run(stack.api_url, parent_id)
    logs = "\n".join(w.log_tail(60) for w in stack.workers.values())
    assert final.state.is_completed(), f"{final.state}\n{logs}"

    from tasks.run.results.status import read_summary
    from tasks.settings import load_profile

    profile = load_profile(deployment.profile_path)
    summary = read_summary(profile, run_key)
    assert summary is not None
    assert summary["documents"] == summary["completed"] == documents
    runs = summary["shard_runs"]
    assert len(runs) == SHARDS and all(r["state"] == "COMPLETED" for r in runs)
    # Read back from the API: every attempt of this run's shards, and the worker that took it.
    attempts = [
        r
        for r in shard_runs(stack.api_url)
        if str(r.parameters.get("run_key", "")).startswith(run_key)
    ]
    workers = {(r.labels or {}).get("prefect.worker.name") for r in attempts}
    assert len(attempts) > SHARDS and killed in workers, (killed, workers)
    assert len(workers - {None}) >= 2, runs  # the shards spread over workers
    rerun = [r for r in runs if r["attempts"] > 1]
    assert rerun, f"no shard was run again after {killed} was killed: {runs}"
    assert all(r["worker"] != killed for r in rerun)

    # The ledger: every document exactly once in the results.
    bucket, key = split_s3_uri(summary["results_uri"])
    body = aws_client("s3", profile).get_object(Bucket=bucket, Key=key)["Body"].read()
    table = pq.read_table(io.BytesIO(body))
    got = table.column("doc_id").to_pylist()
    assert len(got) == len(set(got)) == documents
    assert set(got) == set(ids)
    assert set(table.column("status").to_pylist()) == {"completed"}

    # No batch was invoked more than its attempts allow; the resume re-sent at most what was
    # in flight when the worker died.
    batches = 0
    for run in runs:
        manifest = load_manifest(run["run_key"], profile)
        assert manifest is not None
        batches += len(manifest.batches)
        assert all(b.attempts <= MAX_ATTEMPTS for b in manifest.batches.values())
    assert batches <= probe.accepted <= batches + deployment.cap, (batches, probe.accepted)


def test_a_sharded_run_over_an_s3_prefix_of_files_resumes_without_reinvoking(
    stack: PoolStack, deploy_echo: Any, probe: EndpointProbe, tmp_path: Path
) -> None:
    import pyarrow as pa

    deployment: Deployment = deploy_echo(cap=8, slots=4)
    ensure_global_concurrency_limit(
        stack.api_url, concurrency_limit_name(deployment.endpoint), deployment.cap
    )
    profile = deployment.profile
    s3 = aws_client("s3", profile)
    run_key = unique_run_key()
    prefix = f"corpora/{run_key}"
    ids: list[str] = []
    for part, count in enumerate((300, 250)):  # JSONL files
        local = tmp_path / f"part-{part}.jsonl"
        ids += write_corpus(local, count, words=3, prefix=f"j{part}")
        s3.put_object(
            Bucket=profile.bucket, Key=f"{prefix}/part-{part}.jsonl", Body=local.read_bytes()
        )
    parquet_ids = [f"p-{i:04d}" for i in range(200)]  # and a Parquet file
    sink = io.BytesIO()
    pq.write_table(pa.table({"id": parquet_ids, "text": [f"w{i} x y" for i in range(200)]}), sink)
    s3.put_object(Bucket=profile.bucket, Key=f"{prefix}/part-2.parquet", Body=sink.getvalue())
    ids += parquet_ids
    parameters = {
        "corpus": f"s3://{profile.bucket}/{prefix}/",
        "profile": deployment.profile_path,
        "endpoint": deployment.endpoint,
        "run_key": run_key,
        "shard_size": 200,  # 750 rows: 4 shards
        "batch_size": 25,
        "max_new_tokens": 4,
    }

    first = run_parent(stack.api_url, "process-documents/sharded", parameters)
    assert first.state.is_completed(), first.state
    invoked = probe.accepted
    from tasks.run.results.status import read_summary

    summary = read_summary(profile, run_key)
    assert summary is not None and summary["completed"] == summary["documents"] == len(ids)
    assert len(summary["shard_runs"]) == 4
    batches = 0
    for run in summary["shard_runs"]:
        manifest = load_manifest(run["run_key"], profile)
        assert manifest is not None
        batches += len(manifest.batches)
    assert invoked == batches  # nothing failed: one invocation per batch

    again = run_parent(stack.api_url, "process-documents/sharded", parameters)
    assert again.state.is_completed(), again.state
    assert probe.accepted == invoked  # the resumed run invoked nothing
    bucket, key = split_s3_uri(read_summary(profile, run_key)["results_uri"])  # type: ignore[index]
    table = pq.read_table(io.BytesIO(s3.get_object(Bucket=bucket, Key=key)["Body"].read()))
    assert sorted(table.column("doc_id").to_pylist()) == sorted(ids)
