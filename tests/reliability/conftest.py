"""Shared fixtures of the reliability suite: an echo endpoint per test, corpora, an exact outstanding-request probe."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from localcloud.testing.artifacts import upload_echo_model
from tasks.aws.clients import aws_client
from tasks.settings import Autoscaling, Profile
from tests.flows.endpoint_helpers import FAST_WAIT, profile_file
from tests.reliability.ledger import LEDGERS, Ledger, compute_ledger, read_results, record


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Every ledger the session recorded, after the test results."""
    if not LEDGERS:
        return
    terminalreporter.section("reliability ledgers")
    for ledger in LEDGERS:
        terminalreporter.write_line(ledger.line())


@dataclass
class Deployment:
    """An echo-model endpoint deployed for one test, and the profile file flows are given."""

    profile: Profile
    profile_path: str
    endpoint: str
    model_data_url: str
    cap: int


class EndpointProbe:
    """Exact counts of one endpoint's requests, hooked on localcloud's own counters (no sampling).

    ``outstanding`` is accepted minus finished (queued or running); ``max_outstanding`` its peak.
    """

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.accepted = 0
        self.finished = 0
        self.not_run = 0
        self.max_outstanding = 0
        self._lock = threading.Lock()
        self._triggers: dict[int, Callable[[], None]] = {}

    def when_accepted(self, n: int, action: Callable[[], None]) -> None:
        """Call ``action`` once, as the ``n``-th invocation is accepted (under the count's lock)."""
        self._triggers[n] = action

    def on_received(self, endpoint: str) -> None:
        """localcloud accepted an invocation into ``endpoint``'s queue."""
        if endpoint != self.endpoint:
            return
        with self._lock:
            self.accepted += 1
            self.max_outstanding = max(self.max_outstanding, self.accepted - self.finished)
            action = self._triggers.pop(self.accepted, None)
            if action is not None:
                action()

    def on_finished(self, endpoint: str, ran: bool = True) -> None:
        """An invocation of ``endpoint`` ended (``ran``: on an instance, not expired in the queue)."""
        if endpoint != self.endpoint:
            return
        with self._lock:
            self.finished += 1
            self.not_run += not ran

    @property
    def outstanding(self) -> int:
        """Accepted and not yet finished, now."""
        with self._lock:
            return self.accepted - self.finished


@pytest.fixture(autouse=True)
def _faults_off(faults: Any) -> None:
    """Every reliability test starts and ends with the fault switchboard off."""


@pytest.fixture
def probe(localcloud: Any, profile: Profile, monkeypatch: pytest.MonkeyPatch) -> EndpointProbe:
    """Counts the test endpoint's accepted and finished requests as localcloud records them."""
    stats = localcloud.stats
    watcher = EndpointProbe(profile.endpoint_name)
    received, finished = stats.received, stats.finished

    def on_received(endpoint: str) -> None:
        received(endpoint)
        watcher.on_received(endpoint)

    def on_finished(endpoint: str, ok: bool, ran: bool = True) -> None:
        finished(endpoint, ok, ran)
        watcher.on_finished(endpoint, ran)

    monkeypatch.setattr(stats, "received", on_received)
    monkeypatch.setattr(stats, "finished", on_finished)
    return watcher


@pytest.fixture
def deploy_echo(
    profile: Profile, tmp_path: Path, prefect_harness: None
) -> Callable[..., Deployment]:
    """Deploy the echo model to the test's endpoint (no autoscaling); returns a Deployment."""
    from flows.deploy_endpoint import deploy_endpoint

    def deploy(
        *,
        version: str = "1",
        slots: int = 2,
        instances: int = 1,
        cap: int = 8,
        environment: dict[str, str] | None = None,
        rate: float = 200.0,
    ) -> Deployment:
        prof = profile.model_copy(
            update={
                "autoscaling": Autoscaling(enabled=False),
                "max_outstanding_invocations": cap,
                "max_concurrent_invocations_per_instance": slots,
                "instance_count": instances,
                "invoke_rate_per_second": rate,
            }
        )
        path = profile_file(prof, tmp_path)
        url = upload_echo_model(
            aws_client("s3", prof),
            prof.bucket,
            key=f"models/echo/v{version}/model.tar.gz",
            version=version,
        )
        deploy_endpoint(
            profile=path,
            model_data_url=url,
            environment=environment,
            wait_delay_s=FAST_WAIT["wait_delay_s"],
            wait_max_attempts=FAST_WAIT["wait_max_attempts"],
        )
        return Deployment(prof, path, prof.endpoint_name, url, cap)

    return deploy


def write_corpus(
    path: Path, n: int, *, poison: set[int] | None = None, words: int = 6, prefix: str = "doc"
) -> list[str]:
    """A JSONL corpus of ``n`` short documents; indexes in ``poison`` carry ``__POISON__``. Returns the ids."""
    poison = poison or set()
    ids = [f"{prefix}-{i:05d}" for i in range(n)]
    with path.open("w", encoding="utf-8") as fh:
        for i, doc_id in enumerate(ids):
            body = " ".join(f"w{i}x{j}" for j in range(words))
            text = f"{body} __POISON__" if i in poison else body
            fh.write(json.dumps({"id": doc_id, "text": text, "n": i}) + "\n")
    return ids


@dataclass
class RunOutcome:
    """A finished process_documents run: its returned summary, the results table, the wall time."""

    result: dict[str, Any]
    table: pd.DataFrame
    wall_s: float


def run_flow(deployment: Deployment, corpus: Path | str, **params: Any) -> RunOutcome:
    """Run process_documents in this process on the deployment and read back the results table."""
    from flows.process_documents import process_documents

    params.setdefault("max_new_tokens", 16)
    started = time.monotonic()
    result = process_documents(corpus=str(corpus), profile=deployment.profile_path, **params)
    wall = time.monotonic() - started
    return RunOutcome(result, read_results(result, deployment.profile), wall)


def ledger_of(
    scenario: str,
    load: str,
    outcome: RunOutcome,
    ids: list[str],
    *,
    localcloud: Any,
    endpoint: str,
    input_rows: int | None = None,
    **notes: Any,
) -> Ledger:
    """Compute, print and keep the ledger of a run."""
    stats = localcloud.stats.snapshot().get(endpoint, {})
    return record(
        compute_ledger(
            scenario,
            load,
            input_ids=ids,
            input_rows=len(ids) if input_rows is None else input_rows,
            result=outcome.result,
            table=outcome.table,
            endpoint_stats=stats,
            wall_s=outcome.wall_s,
            **notes,
        )
    )


def unique_run_key() -> str:
    """A fresh user-named run key (letters and digits only)."""
    return "rel" + uuid.uuid4().hex[:10]
