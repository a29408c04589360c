"""process_documents on localcloud with the echo model: every document ends completed, failed or rejected."""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from docflow.prefect_server import wait_until
from tasks.aws.clients import aws_client
from tasks.aws.s3 import split_s3_uri
from tasks.run.plan.manifest import load_manifest
from tasks.settings import Profile, load_profile
from tests.reliability.ledger import read_results
from tests.runs import Deployment, EndpointProbe, InvokeCounter, run_flow, run_process, write_corpus

# faults: every test starts and ends with localcloud's fault switchboard off.
pytestmark = pytest.mark.usefixtures("prefect_harness", "faults")


def assert_ledger(result: dict[str, Any], table: pd.DataFrame, input_rows: int) -> None:
    """Documents in = completed + failed + rejected, and exactly one result row per document."""
    assert result["documents"] == input_rows
    assert result["completed"] + result["failed"] + result["rejected"] == input_rows
    assert len(table) == input_rows
    # Rejected rows may repeat an id (a duplicate id is a reason to reject); results never do.
    assert table.loc[table["status"] != "rejected", "doc_id"].is_unique
    assert set(table["status"]) <= {"completed", "failed", "rejected"}


def run(dep: Deployment, corpus: Path | str, **params: Any) -> tuple[dict[str, Any], pd.DataFrame]:
    """process_documents on the deployment: its returned summary and its results table."""
    outcome = run_flow(dep, corpus, **params)
    return outcome.result, outcome.table


def test_happy_path(
    deploy_echo: Callable[..., Deployment], tmp_path: Path, localcloud: Any
) -> None:
    dep = deploy_echo()
    path = dep.profile_path
    ids = write_corpus(tmp_path / "c.jsonl", 40)
    with InvokeCounter(path) as counter:
        result, table = run(
            dep, tmp_path / "c.jsonl", batch_size=8, output_dir=str(tmp_path / "out")
        )
    assert_ledger(result, table, 40)
    assert result["completed"] == 40
    assert result["batches"] == 5
    assert counter.total == 5 == result["invocations"]
    done = table.set_index("doc_id").loc[ids]
    assert (done["status"] == "completed").all()
    # The echo model upper-cases the prompt, which holds the document text.
    assert done.loc["doc-00007", "text"].count("W7X0") == 1
    assert (tmp_path / "out" / "results.parquet").exists()
    manifest = load_manifest(result["run_key"], load_profile(path))
    assert manifest is not None and manifest.is_done()
    # What the user sees in Prefect: progress (finished), a results table, the markdown summary.
    from prefect.artifacts import Artifact

    key = f"docflow-{result['run_key']}"
    progress: Any = Artifact.get(f"{key}-progress")
    assert progress is not None and float(progress.data) == 100.0
    summary: Any = Artifact.get(f"{key}-summary")
    assert summary is not None and "| 40 | 40 | 0 | 0 |" in str(summary.data)
    rows: Any = Artifact.get(f"{key}-results")
    assert rows is not None and "doc-00000" in str(rows.data)
    assert Artifact.get(f"{key}-failures") is None  # nothing failed, nothing to show
    # The run's queue and subscriptions are gone.
    queues = aws_client("sqs", load_profile(path)).list_queues(QueueNamePrefix="docflow-")
    assert not [u for u in queues.get("QueueUrls", []) if result["run_key"] in u]


def test_a_plain_run_over_an_s3_prefix_of_files(
    deploy_echo: Callable[..., Deployment], tmp_path: Path
) -> None:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    dep = deploy_echo()
    s3 = aws_client("s3", dep.profile)
    ids = write_corpus(tmp_path / "a.jsonl", 30, prefix="j")
    s3.put_object(
        Bucket=dep.profile.bucket, Key="many/a.jsonl", Body=(tmp_path / "a.jsonl").read_bytes()
    )
    sink = io.BytesIO()
    parquet_ids = [f"p-{i}" for i in range(25)]
    pq.write_table(pa.table({"id": parquet_ids, "text": ["p words"] * 25}), sink, row_group_size=10)
    s3.put_object(Bucket=dep.profile.bucket, Key="many/b.parquet", Body=sink.getvalue())
    s3.put_object(Bucket=dep.profile.bucket, Key="many/c.csv", Body=b"id,text\nc-1,one\nc-2,\n")
    result, table = run(dep, f"s3://{dep.profile.bucket}/many/", batch_size=10)
    assert_ledger(result, table, 57)
    assert result["completed"] == 56 and result["rejected"] == 1  # c-2 has no text
    done = set(table.loc[table["status"] == "completed", "doc_id"])
    assert done == {*ids, *parquet_ids, "c-1"}


def test_every_notification_duplicated_gives_one_row_per_document(
    deploy_echo: Callable[..., Deployment], tmp_path: Path, localcloud: Any
) -> None:
    dep = deploy_echo()
    write_corpus(tmp_path / "c.jsonl", 24)
    localcloud.faults.set(duplicate_notification_rate=1.0)
    result, table = run(dep, tmp_path / "c.jsonl", batch_size=4)
    assert_ledger(result, table, 24)
    assert result["completed"] == 24
    fired = localcloud.faults.counters()["duplicated_notifications"]
    assert fired >= 6
    # The run saw (and dropped) the duplicates that came before it ended: those of its last
    # batches may arrive after it stopped listening.
    assert 1 <= result["duplicate_notifications"] <= fired, (result, fired)
    assert result["invocations"] == 6


def test_dropped_notifications_are_recovered_from_s3(
    deploy_echo: Callable[..., Deployment], tmp_path: Path, localcloud: Any
) -> None:
    dep = deploy_echo()
    write_corpus(tmp_path / "c.jsonl", 16)
    localcloud.faults.set(drop_notification_rate=1.0)
    result, table = run(dep, tmp_path / "c.jsonl", batch_size=4, reconcile_every_s=1.0)
    assert_ledger(result, table, 16)
    assert result["completed"] == 16
    assert result["notifications_received"] == 0
    assert result["fanout"]["reconciled"] == 4
    assert localcloud.faults.counters()["dropped_notifications"] == 4


def test_a_poison_document_is_isolated_and_the_rest_complete(
    deploy_echo: Callable[..., Deployment], tmp_path: Path
) -> None:
    dep = deploy_echo()
    ids = write_corpus(tmp_path / "c.jsonl", 16, poison=frozenset({5}))
    result, table = run(dep, tmp_path / "c.jsonl", batch_size=16, max_attempts=2)
    assert_ledger(result, table, 16)
    assert result["completed"] == 15
    assert result["failed"] == 1
    failed = table[table["status"] == "failed"]
    assert list(failed["doc_id"]) == [ids[5]]
    assert "__POISON__" in failed["reason"].iloc[0] or "500" in failed["reason"].iloc[0]
    # 16 -> 8 -> 4 -> 2 -> 1: four splits on the poison's side.
    assert result["fanout"]["splits"] == 4


def test_throttled_invokes_are_retried_and_all_complete(
    deploy_echo: Callable[..., Deployment], tmp_path: Path, localcloud: Any
) -> None:
    dep = deploy_echo()
    path = dep.profile_path
    write_corpus(tmp_path / "c.jsonl", 32)
    localcloud.faults.set(throttle_rate=0.3, seed=7)
    with InvokeCounter(path) as counter:
        result, table = run(dep, tmp_path / "c.jsonl", batch_size=4)
    assert_ledger(result, table, 32)
    assert result["completed"] == 32
    assert localcloud.faults.counters()["throttled"] > 0
    # Every batch was accepted exactly once: throttled calls never reached the queue.
    assert counter.total == 8
    assert set(counter.by_id.values()) == {1}


def test_expired_requests_are_reinvoked(
    deploy_echo: Callable[..., Deployment], tmp_path: Path, localcloud: Any
) -> None:
    dep = deploy_echo(cap=6, slots=1, environment={"ECHO_SLEEP_S": "0.1"})
    write_corpus(tmp_path / "c.jsonl", 24)
    localcloud.faults.set(ttl_scale=0.01)  # RequestTTLSeconds=60 lasts 0.6 s
    result, table = run(dep, tmp_path / "c.jsonl", batch_size=2, request_ttl_s=60, max_attempts=6)
    assert_ledger(result, table, 24)
    fanout = result["fanout"]
    assert fanout["expired"] >= 1
    assert fanout["splits"] == 0
    assert result["invocations"] > result["batches"]
    for reason in table.loc[table["status"] == "failed", "reason"]:
        assert "RequestTTLSeconds" in reason


def test_resume_after_an_interruption_invokes_no_completed_batch_again(
    deploy_echo: Callable[..., Deployment],
    tmp_path: Path,
    probe: EndpointProbe,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import time

    import tasks.run.fanout.driver

    dep = deploy_echo(cap=4)

    path = dep.profile_path
    prof = load_profile(path)
    write_corpus(tmp_path / "c.jsonl", 40)
    real_invoke = tasks.run.fanout.driver.invoke_one
    calls: list[int] = []

    def crashing_invoke(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("worker lost (simulated)")
        return real_invoke(*args, **kwargs)

    monkeypatch.setattr(tasks.run.fanout.driver, "invoke_one", crashing_invoke)
    with pytest.raises(RuntimeError, match="simulated"):
        run(dep, tmp_path / "c.jsonl", batch_size=4, run_key="resume1")
    monkeypatch.setattr(tasks.run.fanout.driver, "invoke_one", real_invoke)
    for _ in range(100):  # what was submitted before the crash finishes meanwhile
        if probe.outstanding == 0:
            break
        time.sleep(0.1)
    assert probe.outstanding == 0, "invocations of the interrupted run never finished"
    first = load_manifest("resume1", prof)
    assert first is not None and not first.is_done()
    s3 = aws_client("s3", prof)
    done_before = set()
    for record in first.batches.values():
        bucket, key = split_s3_uri(record.output_uri)
        if s3.list_objects_v2(Bucket=bucket, Prefix=key).get("KeyCount"):
            done_before.add(record.inference_id)
    assert done_before, "no batch completed before the interruption"

    with InvokeCounter(path) as counter:
        result, table = run(dep, tmp_path / "c.jsonl", batch_size=4, run_key="resume1")
    assert result["resumed"] is True
    assert_ledger(result, table, 40)
    assert result["completed"] == 40
    assert not done_before & set(counter.by_id), "a completed batch was invoked again"
    assert counter.total == 10 - len(done_before)


def test_a_run_that_fails_while_staging_resumes_and_stages_the_rest(
    deploy_echo: Callable[..., Deployment], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Payloads are staged while the first batches run; a staging failure loses nothing.

    The 6th payload's PUT is denied: the run stops with the reason, its manifest says staging
    never finished, and the same run key then stages what is missing (the same bytes, rebuilt
    from the corpus), invokes only what was never invoked and accounts for all 60 documents.
    """
    from botocore.exceptions import ClientError

    import tasks.run.fanout.staging
    import tasks.run.plan.manifest

    dep = deploy_echo(cap=2, slots=1, environment={"ECHO_SLEEP_S": "0.05"})
    # Every payload through S3, as payloads over 128,000 bytes (or a botocore without Body) go.
    monkeypatch.setattr(tasks.run.plan.manifest, "max_inline_body", lambda: 0)

    path = dep.profile_path
    prof = load_profile(path)
    write_corpus(tmp_path / "c.jsonl", 60)
    real_put = tasks.run.fanout.staging.put_staged
    puts: list[str] = []

    first = InvokeCounter(path)

    def denied_put(profile: Profile, item: Any) -> int:
        puts.append(item.key)
        if len(puts) == 6:
            # Staging is still going: the first batches are invoked meanwhile, not after it.
            wait_until(lambda: first.total > 0, what="an invocation while staging", timeout_s=60)
            error = {"Error": {"Code": "AccessDenied", "Message": "simulated"}}
            raise ClientError(error, "PutObject")  # type: ignore[arg-type]
        return real_put(profile, item)

    monkeypatch.setattr(tasks.run.fanout.staging, "put_staged", denied_put)
    with first, pytest.raises(Exception, match="AccessDenied"):
        run(dep, tmp_path / "c.jsonl", batch_size=4, run_key="stage1")
    monkeypatch.setattr(tasks.run.fanout.staging, "put_staged", real_put)
    interrupted = load_manifest("stage1", prof)
    assert interrupted is not None and not interrupted.staged
    assert 0 < first.total < 15, "invocations should have started before staging ended"

    with InvokeCounter(path) as second:
        result, table = run(dep, tmp_path / "c.jsonl", batch_size=4, run_key="stage1")
    assert result["resumed"] is True
    assert_ledger(result, table, 60)
    assert result["completed"] == 60
    finished = load_manifest("stage1", prof)
    assert finished is not None and finished.staged
    # Every batch was invoked once over the two runs (those of the first finished meanwhile).
    assert set(first.by_id).isdisjoint(second.by_id)
    assert first.total + second.total == 15


def test_two_concurrent_runs_share_the_endpoint_cap(
    deploy_echo: Callable[..., Deployment],
    tmp_path: Path,
    probe: EndpointProbe,
) -> None:
    dep = deploy_echo(cap=3, slots=4, environment={"ECHO_SLEEP_S": "0.2"})
    write_corpus(tmp_path / "a.jsonl", 24)
    (tmp_path / "b.jsonl").write_text(
        "".join(
            json.dumps({"id": f"b-{i}", "text": f"second corpus document {i}"}) + "\n"
            for i in range(24)
        )
    )
    with ThreadPoolExecutor(2) as pool:
        runs = {n: pool.submit(run, dep, tmp_path / f"{n}.jsonl", batch_size=2) for n in "ab"}
        results = {name: future.result(timeout=240) for name, future in runs.items()}
    for name in ("a", "b"):
        result, table = results[name]
        assert_ledger(result, table, 24)
        assert result["completed"] == 24
    peak = probe.max_outstanding
    assert peak <= 3, f"{peak} invocations were outstanding at once; the cap is 3"
    assert peak >= 2


def test_bad_rows_are_reported_with_their_reasons(
    deploy_echo: Callable[..., Deployment], tmp_path: Path
) -> None:
    dep = deploy_echo()
    rows = [
        {"id": "ok-1", "text": "a fine document"},
        {"id": "", "text": "no id here"},
        {"id": "ok-2", "text": "another fine document"},
        {"id": "ok-1", "text": "the same id again"},
        {"id": "empty", "text": "   "},
        {"text": "id column missing"},
    ]
    corpus = tmp_path / "bad.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{not json\n")
    result, table = run(dep, corpus, batch_size=4, run_key="badrows")
    assert_ledger(result, table, 7)
    assert result["completed"] == 2
    assert result["rejected"] == 5
    rejected = table[table["status"] == "rejected"]
    assert rejected["reason"].str.len().min() > 0
    assert any("duplicate" in r for r in rejected["reason"])
    # The failures artifact lists every rejected row with its reason.
    from prefect.artifacts import Artifact

    failures: Any = Artifact.get(f"docflow-{result['run_key']}-failures")
    assert failures is not None
    assert str(failures.data).count('"rejected"') == 5
    assert "duplicate" in str(failures.data)
    # A run key names one corpus: reusing it for other inputs is refused, not silently mixed.
    write_corpus(tmp_path / "other.jsonl", 3)
    with pytest.raises(ValueError, match="belongs to another run"):
        run(dep, tmp_path / "other.jsonl", batch_size=4, run_key="badrows")


@pytest.mark.soak
def test_ten_thousand_documents(deploy_echo: Callable[..., Deployment], tmp_path: Path) -> None:
    """10,000 documents through the echo model: a few hundred task runs, not one per document."""
    import resource
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    dep = deploy_echo(cap=16, slots=8)

    path = dep.profile_path
    write_corpus(tmp_path / "big.jsonl", 10_000)
    started = time.monotonic()
    state = run_process(
        corpus=str(tmp_path / "big.jsonl"),
        profile=path,
        batch_size=32,
        max_new_tokens=8,
        return_state=True,
    )
    wall = time.monotonic() - started
    result = state.result()
    table = read_results(result, dep.profile)
    assert_ledger(result, table, 10_000)
    assert result["completed"] == 10_000
    runs: list[Any] = []
    flow_runs = FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
    with get_client(sync_client=True) as client:
        while page := client.read_task_runs(flow_run_filter=flow_runs, limit=200, offset=len(runs)):
            runs += page
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"\n10k documents: wall {wall:.1f} s, {len(runs)} task runs, {result['batches']} batches, "
        f"{result['fanout']['waves']} waves, peak RSS of the test process {peak_mib:.0f} MiB"
    )
    assert len(runs) <= 300
