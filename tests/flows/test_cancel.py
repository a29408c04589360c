"""Cancelling a process-documents flow run through the Prefect API, then resuming it with the same run key."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from uuid import UUID

import pandas as pd
import pytest

from tasks.aws.clients import aws_client
from tasks.aws.s3 import split_s3_uri
from tasks.run.plan.layout import run_uri
from tasks.run.plan.manifest import BatchStatus, load_manifest
from tasks.settings import load_profile
from tests.reliability.ledger import ledger_of
from tests.runs import (
    Deployment,
    EndpointProbe,
    InvokeCounter,
    run_flow,
    run_process,
    unique_run_key,
    write_corpus,
)

pytestmark = pytest.mark.usefixtures("prefect_harness", "faults")

DOCS = 80
BATCH = 2
BATCHES = DOCS // BATCH


def flow_run_named(name: str) -> UUID:
    """The id of the (only) flow run called ``name``."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name]))
        )
    assert len(runs) == 1, f"{len(runs)} flow runs are named {name!r}"
    return runs[0].id


def cancel_flow_run(flow_run_id: UUID) -> None:
    """What the UI's Cancel button and `prefect flow-run cancel` do: propose Cancelling."""
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelling

    with get_client(sync_client=True) as client:
        client.set_flow_run_state(flow_run_id, Cancelling())


def read_run_file(profile: Any, run_key: str, name: str) -> bytes:
    bucket, key = split_s3_uri(run_uri(profile, run_key, name))
    return bytes(aws_client("s3", profile).get_object(Bucket=bucket, Key=key)["Body"].read())


def slow_echo_run(
    deploy_echo: Callable[..., Deployment], tmp_path: Path
) -> tuple[Deployment, Any, str, Path]:
    """An echo endpoint slow enough to cancel mid-run (cap 4, 0.2 s a request), a fresh run key
    and its corpus path, named by the key so the flow run's name (<template>-<file>) is its own."""
    dep = deploy_echo(cap=4, slots=2, environment={"ECHO_SLEEP_S": "0.2"})
    key = unique_run_key()
    return dep, load_profile(dep.profile_path), key, tmp_path / f"{key}.jsonl"


def test_cancel_mid_run_records_canceled_documents_and_resume_finishes_them(
    deploy_echo: Callable[..., Deployment],
    probe: EndpointProbe,
    localcloud: Any,
    tmp_path: Path,
) -> None:
    """Load: 80 documents + 1 bad row, 40 batches of 2, cap 4; cancelled at the 8th invocation."""

    dep, prof, key, corpus = slow_echo_run(deploy_echo, tmp_path)
    ids = write_corpus(corpus, DOCS)
    with corpus.open("a") as fh:
        fh.write(json.dumps({"id": "no-text"}) + "\n")  # rejected: no text
    rows = DOCS + 1
    eighth = threading.Event()
    probe.when_accepted(8, eighth.set)
    params = {"corpus": str(corpus), "profile": dep.profile_path, "run_key": key}
    with InvokeCounter(dep.profile_path) as first, ThreadPoolExecutor(1) as pool:
        future = pool.submit(
            run_process, **params, batch_size=BATCH, max_new_tokens=16, return_state=True
        )
        assert eighth.wait(120), "the run never reached its 8th invocation"
        cancel_flow_run(flow_run_named(f"summarize-{corpus.name}"))
        state = future.result(timeout=300)
    assert state.is_cancelled(), f"the flow run ended {state.type.value}, not CANCELLED"
    assert first.total < BATCHES, "the cancelled run invoked every batch"

    summary = json.loads(read_run_file(prof, key, "summary.json"))
    table = pd.read_parquet(io.BytesIO(read_run_file(prof, key, "results.parquet")))
    assert summary["canceled"] > 0 and summary["completed"] > 0
    assert summary["rejected"] == 1
    assert (
        summary["completed"] + summary["failed"] + summary["rejected"] + summary["canceled"] == rows
    )
    assert len(table) == rows and set(table["status"]) <= {"completed", "rejected", "canceled"}
    assert (table["status"] == "canceled").sum() == summary["canceled"]
    canceled_reasons = table.loc[table["status"] == "canceled", "reason"]
    assert canceled_reasons.str.contains("cancelled").all()
    assert canceled_reasons.str.contains("resume").all()

    manifest = load_manifest(key, prof)
    assert manifest is not None and manifest.canceled is not None
    done = {r.inference_id for r in manifest.batches.values() if r.status is BatchStatus.COMPLETED}
    in_flight = {
        r.inference_id for r in manifest.batches.values() if r.status is BatchStatus.SUBMITTED
    }
    assert len(done) * BATCH == summary["completed"]

    with InvokeCounter(dep.profile_path) as second:
        outcome = run_flow(dep, corpus, batch_size=BATCH, run_key=key)
    ledger = ledger_of(
        "cancel-resume",
        "80 docs, 40 batches",
        outcome,
        ids,
        localcloud=localcloud,
        endpoint=dep.endpoint,
        input_rows=rows,
    )
    assert ledger.balanced and ledger.canceled == 0
    assert outcome.result["resumed"] is True
    # The resumed run's summary reports both attempts' time and this attempt's.
    assert outcome.result["attempts"] == 2
    assert outcome.result["total_wall_time_s"] > outcome.result["wall_time_s"]
    assert outcome.result["completed"] == DOCS and outcome.result["canceled"] == 0
    assert not done & set(second.by_id), "a batch completed before the cancel was invoked again"
    # What was in flight at the cancel was picked up from S3 or its notification, not re-invoked.
    assert not in_flight & set(second.by_id)
    assert first.total + second.total == BATCHES
    resumed = load_manifest(key, prof)
    assert resumed is not None and resumed.canceled is None and resumed.is_done()


def test_a_runner_terminating_the_cancelled_run_still_records_canceled_documents(
    deploy_echo: Callable[..., Deployment],
    probe: EndpointProbe,
    tmp_path: Path,
) -> None:
    """What a worker does on Cancel: the state goes to Cancelling, then the flow process gets SIGTERM."""
    import os
    import signal

    from tests.reliability.test_process_kill import start_flow, wait_for

    dep, prof, key, corpus = slow_echo_run(deploy_echo, tmp_path)
    write_corpus(corpus, DOCS)
    params = {
        "corpus": str(corpus),
        "profile": dep.profile_path,
        "run_key": key,
        "batch_size": BATCH,
        "max_new_tokens": 16,
    }
    proc, _ = start_flow(params, tmp_path, "term")
    try:
        wait_for(lambda: probe.accepted >= 8 or proc.poll() is not None, 120, "8 invocations")
        assert proc.poll() is None, "the flow finished before it could be cancelled"
        cancel_flow_run(flow_run_named(f"summarize-{corpus.name}"))
        os.kill(proc.pid, signal.SIGTERM)  # at once, as a runner does on Cancelling
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    summary = json.loads(read_run_file(prof, key, "summary.json"))
    assert summary["canceled"] > 0
    assert summary["completed"] + summary["failed"] + summary["canceled"] == DOCS
    log = (tmp_path / "flow-term.log").read_text(errors="replace")
    assert "its process was terminated" in log or "stopped invoking" in log
    manifest = load_manifest(key, prof)
    assert manifest is not None and manifest.canceled is not None

    outcome = run_flow(dep, corpus, batch_size=BATCH, run_key=key)
    assert outcome.result["completed"] == DOCS and outcome.result["canceled"] == 0
