"""SIGKILL the flow process in the middle of a map_reduce run, resume it: finished chunks are not run again."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from flows.deploy_endpoint import deploy_endpoint
from flows.package_model import package_model
from flows.teardown_endpoint import teardown_endpoint
from tasks.run.plan.manifest import BatchStatus, load_manifest
from tasks.run.request.tokens import TokenCounter
from tasks.settings import Autoscaling, Profile
from tests.flows.endpoint_helpers import FAST_WAIT, profile_file
from tests.long_corpora import long_corpus, tiny_model
from tests.reliability.ledger import read_results
from tests.reliability.test_process_kill import (
    finish,
    free_slots_of_killed_run,
    kill_at,
    start_flow,
)
from tests.runs import EndpointProbe, unique_run_key

CAP = 2
KILL_AT = 6


@pytest.mark.usefixtures("prefect_harness")
def test_sigkill_mid_map_reduce_then_resume(
    profile: Profile,
    probe: EndpointProbe,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two documents of 8 contexts each (about 18 chunks, one per batch), cap 2; killed after 6
    invocations, then resumed with the same run key."""
    monkeypatch.setenv("DOCFLOW_CACHE_DIR", str(tmp_path / "cache"))  # the flow processes' too
    prof = profile.model_copy(
        update={
            "autoscaling": Autoscaling(enabled=False),
            "max_concurrent_invocations_per_instance": 1,
            "max_outstanding_invocations": CAP,
        }
    )
    path = profile_file(prof, tmp_path)
    model = tiny_model(tmp_path / "tiny")
    artifact = package_model(source=str(model), profile=path)
    deploy_endpoint(
        profile=path, model_artifact=artifact, environment={"DOCFLOW_NUM_THREADS": "1"}, **FAST_WAIT
    )
    corpus = tmp_path / "long.jsonl"
    ids = list(long_corpus(corpus, TokenCounter.from_folder(model), [8, 8]))
    key = unique_run_key()
    params: dict[str, Any] = {
        "corpus": str(corpus),
        "profile": path,
        "run_key": key,
        "batch_size": 1,
        "max_new_tokens": 8,
        "long_documents": "map_reduce",
    }
    procs = []
    try:
        proc, _ = start_flow(params, tmp_path, "killed")
        procs.append(proc)
        accepted_at_kill = kill_at(proc, probe, KILL_AT)
        finished_at_kill = probe.finished  # chunks whose answers are in S3 (or about to be)
        free_slots_of_killed_run(prof.endpoint_name)

        proc, result_path = start_flow(params, tmp_path, "resumed")
        procs.append(proc)
        data = finish(proc, result_path, tmp_path, "resumed")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
        teardown_endpoint(profile=path, mode="delete", **FAST_WAIT)
    result = data["result"]
    assert result["run_key"] == key and result["resumed"] is True
    resumed = load_manifest(key, prof)
    reduce = load_manifest(result["reduce_run_key"], prof)
    assert resumed is not None and reduce is not None
    assert all(r.status is BatchStatus.COMPLETED for r in resumed.batches.values())
    total = len(resumed.batches) + len(reduce.batches)
    assert result["batches"] == total
    print(
        f"map_reduce kill: {len(resumed.batches)} map + {len(reduce.batches)} reduce batches; "
        f"killed at {accepted_at_kill} accepted / {finished_at_kill} finished; "
        f"{probe.accepted} invocations in all"
    )
    assert 0 < finished_at_kill < len(resumed.batches), "kill the run mid map step"
    # The resumed run invoked only what had not finished: no finished chunk ran again (those
    # in flight at the kill finished on the endpoint and were found in S3).
    assert probe.accepted - accepted_at_kill <= total - finished_at_kill
    assert probe.accepted <= total + CAP
    table = read_results(result, prof)
    assert sorted(table["doc_id"]) == sorted(ids) and len(table) == len(ids)
    assert (table["status"] == "completed").all(), table["reason"].tolist()
    assert json.loads(result_path.read_text())["result"]["completed"] == len(ids)
