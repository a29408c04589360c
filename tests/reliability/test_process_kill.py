"""SIGKILL the flow process mid fan-out and restart it with the same run key: nothing lost, nothing doubled."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.reliability.ledger import ledger_of, read_results
from tests.runs import Deployment, EndpointProbe, RunOutcome, unique_run_key, write_corpus

DOCS = 2000
BATCH = 16
BATCHES = DOCS // BATCH
PROJECT = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    """This process's environment (localcloud's AWS_* already set) plus the test Prefect server."""
    from prefect.settings import get_current_settings

    env = dict(os.environ)
    env["PREFECT_API_URL"] = str(get_current_settings().api.url)
    env["PYTHONPATH"] = str(PROJECT)
    env["PREFECT_LOGGING_LEVEL"] = "WARNING"
    return env


def start_flow(
    params: dict[str, Any], workdir: Path, tag: str
) -> tuple[subprocess.Popen[bytes], Path]:
    """Start process_documents in its own process; returns it and the path its result will have."""
    params_path = workdir / f"params-{tag}.json"
    result_path = workdir / f"result-{tag}.json"
    params_path.write_text(json.dumps(params))
    log = (workdir / f"flow-{tag}.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.reliability.runner", str(params_path), str(result_path)],
        cwd=PROJECT,
        env=_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    return proc, result_path


def wait_for(predicate: Any, timeout_s: float, what: str) -> None:
    """Poll ``predicate`` every 20 ms until it holds."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(0.02)


def kill_at(proc: subprocess.Popen[bytes], probe: EndpointProbe, accepted: int) -> int:
    """SIGKILL ``proc`` once the endpoint has accepted ``accepted`` invocations; returns the count then."""
    wait_for(
        lambda: probe.accepted >= accepted or proc.poll() is not None,
        300,
        f"{accepted} invocations",
    )
    assert proc.poll() is None, "the flow finished before it could be killed; raise the load"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    return probe.accepted


def free_slots_of_killed_run(endpoint: str) -> int:
    """Give back the slots (and demand) a SIGKILLed run still holds, as an operator would; returns how many.

    A killed process cannot release its leases on the shared cap. A real Prefect server's
    repossessor revokes them once they expire (docflow's lease is 60 s), but the ephemeral test
    server runs no repossessor, so without this the restarted run would wait forever.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

    from tasks.endpoint.spec import concurrency_limit_name, demand_limit_name

    name = concurrency_limit_name(endpoint)
    with get_client(sync_client=True) as client:
        held = int(client.read_global_concurrency_limit_by_name(name).active_slots)
        client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(active_slots=0))
        # Its demand too, or the restarted run would share the cap with a run that is gone.
        client.update_global_concurrency_limit(
            demand_limit_name(endpoint), GlobalConcurrencyLimitUpdate(active_slots=0)
        )
    return held


def finish(
    proc: subprocess.Popen[bytes], result_path: Path, workdir: Path, tag: str
) -> dict[str, Any]:
    """Wait for a flow process to exit cleanly and return its result."""
    try:
        rc = proc.wait(timeout=400)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    log = (workdir / f"flow-{tag}.log").read_text(errors="replace")
    assert rc == 0, f"flow process exited {rc}:\n{log[-4000:]}"
    data: dict[str, Any] = json.loads(result_path.read_text())
    return data


@pytest.mark.usefixtures("prefect_harness")
def test_sigkill_at_30_60_90_percent_then_resume(
    deploy_echo: Any, probe: EndpointProbe, localcloud: Any, tmp_path: Path
) -> None:
    """Load: 2,000 documents in 125 batches of 16, echo model, cap 8; killed three times, resumed three times."""
    dep: Deployment = deploy_echo(cap=8, slots=2)
    corpus = tmp_path / "corpus.jsonl"
    ids = write_corpus(corpus, DOCS)
    key = unique_run_key()
    params = {
        "corpus": str(corpus),
        "profile": dep.profile_path,
        "run_key": key,
        "batch_size": BATCH,
        "max_new_tokens": 16,
    }
    started = time.monotonic()
    kills: list[dict[str, int]] = []
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for n, fraction in enumerate((0.3, 0.6, 0.9)):
            proc, _ = start_flow(params, tmp_path, f"k{n}")
            procs.append(proc)
            before = probe.accepted
            at = kill_at(proc, probe, int(fraction * BATCHES))
            kills.append(
                {
                    "at_pct": int(fraction * 100),
                    "accepted": at,
                    "this_process": at - before,
                    "in_flight": probe.outstanding,
                    "slots_left_held": free_slots_of_killed_run(dep.endpoint),
                }
            )
        proc, result_path = start_flow(params, tmp_path, "final")
        procs.append(proc)
        data = finish(proc, result_path, tmp_path, "final")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
    wall = time.monotonic() - started
    result = data["result"]
    outcome = RunOutcome(result, read_results(result, dep.profile), wall)
    extra = probe.accepted - result["batches"]
    ledger = ledger_of(
        "sigkill x3 + resume",
        f"{DOCS} docs, {BATCHES} batches of {BATCH}, cap {dep.cap}",
        outcome,
        ids,
        localcloud=localcloud,
        endpoint=dep.endpoint,
        extra_invocations=extra,
        kills=kills,
        max_outstanding=probe.max_outstanding,
    )
    assert result["run_key"] == key and result["resumed"] is True
    assert ledger.balanced, ledger.line()
    assert ledger.completed == DOCS and ledger.missing == 0 and ledger.extra_rows == 0
    assert result["batches"] == BATCHES
    # The summary counts every batch's invocation, including those only the killed runs saw.
    assert BATCHES <= result["invocations"] <= probe.accepted
    # Each kill may leave at most the cap's worth of invocations in flight, re-sent on resume.
    assert 0 <= extra <= dep.cap * len(kills), kills
    assert probe.max_outstanding <= 2 * dep.cap
