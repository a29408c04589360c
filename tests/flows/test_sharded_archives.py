"""A sharded run over a folder of archives, interrupted and resumed with the same run key.

The session's Prefect pool (tests/conftest.py SHARED_STACKS) runs the parent and its shards as
real flow runs on process workers; localcloud (in this process) counts every invocation. One
shard's flow-run process is killed (SIGKILL, as when its machine goes away) once its saved
manifest records finished batches: the shard ends Crashed and the parent, allowed one attempt per shard,
fails. Resumed with the same run key, the shard picks up from its manifest: the ledger shows
every archive member exactly once in the merged results and no finished batch invoked again.
"""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import psutil
import pyarrow.parquet as pq
import pytest

from docflow.prefect_server import ensure_global_concurrency_limit, prefect_api, wait_until
from tasks.aws.clients import aws_client
from tasks.aws.s3 import split_s3_uri
from tasks.endpoint.spec import concurrency_limit_name
from tasks.run.plan.layout import shard_run_key
from tasks.run.plan.manifest import BatchStatus, load_manifest
from tests.pool import PoolStack, flow_run, run_parent, shard_runs
from tests.runs import Deployment, EndpointProbe, unique_run_key

pytestmark = pytest.mark.timeout(600)

SHARDS = 2


def _zip(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return out.getvalue()


def archives_folder(root: Path) -> tuple[set[str], set[str]]:
    """Two zips (one holding a zip) and a tar.gz; (ids of the members read, ids rejected)."""
    root.mkdir(parents=True)
    text = {f"notes/n{i}.txt": f"note {i} of the first archive".encode() for i in range(8)}
    (root / "a.zip").write_bytes(_zip(text))
    inner = _zip({"x.md": b"# X\n\ninner x", "y.md": b"# Y\n\ninner y"})
    (root / "b.zip").write_bytes(
        _zip({f"r{i}.txt": f"report {i}".encode() for i in range(6)} | {"inner.zip": inner})
    )
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as archive:
        for name, data in {f"t{i}.txt": f"tar member {i}".encode() for i in range(6)}.items() | {
            ("empty.txt", b"")
        }:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    (root / "c.tar.gz").write_bytes(out.getvalue())
    read = {f"a.zip!{n}" for n in text} | {f"b.zip!r{i}.txt" for i in range(6)}
    read |= {"b.zip!inner.zip!x.md", "b.zip!inner.zip!y.md"}
    read |= {f"c.tar.gz!t{i}.txt" for i in range(6)}
    return read, {"c.tar.gz!empty.txt"}


def _outputs_found(s3: Any, manifest: Any) -> int:
    """How many of a manifest's batches have their output in S3 (answered by the endpoint)."""
    found = 0
    for batch in manifest.batches.values():
        bucket, key = split_s3_uri(batch.output_uri)
        found += bool(s3.list_objects_v2(Bucket=bucket, Prefix=key).get("KeyCount"))
    return found


def _flow_process(stack: PoolStack, flow_run_id: str) -> psutil.Process | None:
    """The process a worker started for ``flow_run_id`` (its PREFECT__FLOW_RUN_ID)."""
    for worker in stack.workers.values():
        for proc in psutil.Process(worker.pid).children(recursive=True):
            try:
                if proc.environ().get("PREFECT__FLOW_RUN_ID") == flow_run_id:
                    return proc
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
    return None


def test_a_sharded_run_over_archives_resumes_without_reinvoking_finished_members(
    prefect_pool: PoolStack, deploy_echo: Any, probe: EndpointProbe, tmp_path: Path
) -> None:
    from prefect.deployments import run_deployment

    from tasks.params.flat import grouped
    from tasks.run.results.status import read_summary

    stack = prefect_pool
    # The endpoint answers one invocation at a time, 2 s each: the victim shard still runs when
    # its manifest is first saved with finished batches (DriveOptions.save_every_s, 10 s). A cap
    # of 2 (one a shard): the slot the killed shard held until its lease expires stops no one.
    deployment: Deployment = deploy_echo(cap=2, slots=1, environment={"ECHO_SLEEP_S": "2"})
    ensure_global_concurrency_limit(stack.api_url, concurrency_limit_name(deployment.endpoint), 2)
    profile = deployment.profile
    s3 = aws_client("s3", profile)
    read, rejected = archives_folder(tmp_path / "archives")
    run_key = unique_run_key()
    parameters = {
        "corpus": str(tmp_path / "archives"),
        "profile": deployment.profile_path,
        "endpoint": deployment.endpoint,
        "run_key": run_key,
        "shards": SHARDS,
        "max_shard_attempts": 1,
        "batch_size": 2,
        "max_new_tokens": 4,
    }
    with prefect_api(stack.api_url):
        parent = run_deployment(
            "process-documents/sharded", parameters=grouped(parameters), timeout=0
        )
    parent_id = parent.id  # type: ignore[union-attr]

    victim_key = shard_run_key(run_key, 0, SHARDS)
    seen: dict[str, Any] = {}

    def victim_mid_run() -> bool:
        runs = [r for r in shard_runs(stack.api_url) if r.parameters.get("run_key") == victim_key]
        manifest = load_manifest(victim_key, profile)
        if not runs or manifest is None or not (runs[0].state and runs[0].state.is_running()):
            return False
        statuses = [b.status for b in manifest.batches.values()]
        assert statuses.count(BatchStatus.COMPLETED) < len(statuses), "the shard ended first"
        seen["run"] = runs[0]
        return BatchStatus.COMPLETED in statuses  # saved: what a resumed shard starts from

    wait_until(victim_mid_run, what="the first shard half done", timeout_s=240, child=stack.server)
    process = _flow_process(stack, str(seen["run"].id))
    assert process is not None, "the shard's flow-run process was not found"
    process.kill()  # SIGKILL: its machine is gone; the worker reports the run Crashed

    def final(run_id: Any) -> bool:
        state = flow_run(stack.api_url, run_id).state
        return state is not None and state.is_final()

    wait_until(lambda: final(parent_id), what="the parent to end", timeout_s=240)
    first = flow_run(stack.api_url, parent_id)
    assert not first.state.is_completed(), first.state
    assert "resume the run with the same run_key" in str(first.state.message), first.state
    # What the interrupted run recorded: some of the victim's batches finished, some not.
    stopped = load_manifest(victim_key, profile)
    assert stopped is not None
    finished = {
        b: r.attempts for b, r in stopped.batches.items() if r.status == BatchStatus.COMPLETED
    }
    left = len(stopped.batches) - len(finished)
    assert finished and left, stopped.batches

    again = run_parent(
        stack.api_url, "process-documents/sharded", {**parameters, "max_shard_attempts": 2}
    )
    assert again.state.is_completed(), again.state

    # The ledger: every member exactly once, read or rejected with its reason.
    summary = read_summary(profile, run_key)
    assert summary is not None
    bucket, key = split_s3_uri(summary["results_uri"])
    table = pq.read_table(io.BytesIO(s3.get_object(Bucket=bucket, Key=key)["Body"].read()))
    rows = dict(
        zip(table.column("doc_id").to_pylist(), table.column("status").to_pylist(), strict=True)
    )
    assert table.num_rows == len(rows) == len(read | rejected)
    assert {d for d, s in rows.items() if s == "completed"} == read
    assert {d for d, s in rows.items() if s == "rejected"} == rejected
    # Finished batches were not invoked again; the other shard's batches each once; every
    # invocation is a recorded attempt, but for what the killed shard had in flight unsaved.
    manifests = [load_manifest(shard_run_key(run_key, i, SHARDS), profile) for i in range(SHARDS)]
    assert all(manifests)
    resumed = manifests[0]
    assert resumed is not None
    assert {b: resumed.batches[b].attempts for b in finished} == finished
    for manifest in manifests[1:]:
        assert manifest is not None
        assert {r.attempts for r in manifest.batches.values()} == {1}
    attempts = sum(r.attempts for m in manifests if m for r in m.batches.values())
    assert attempts <= probe.accepted <= attempts + deployment.cap, (attempts, probe.accepted)
