"""The chaos soak (``--soak``, run by hand and reported), as Jepsen runs its nemesis.

A sharded run of 20,000 documents through `docflow ui --workers 3`, while a seeded nemesis draws
faults for its whole length: localcloud's switchboard (model errors, throttling, dropped,
duplicated and delayed notifications, instance deaths) switched on and off in turns, workers
SIGKILLed with their flow runs, and one Ctrl-C and start of the whole stack half-way. A run whose
parent died is resumed with the same run key, as a user would. Afterwards a ledger over the
merged results shows every document exactly once, and no batch of any shard's manifest was
invoked more than ``max_attempts`` times. The fault schedule and the counts are printed.
"""

from __future__ import annotations

import json
import random
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tasks.settings import load_profile
from tests.deployments.ui_stack import UiRun, kill_tree
from tests.pool import flow_run
from tests.runs import unique_run_key, write_corpus

pytestmark = [pytest.mark.soak, pytest.mark.timeout(7200)]

DOCS, SHARDS, BATCH, MAX_ATTEMPTS = 20_000, 6, 16, 3
SEED = 20261208
FAULTS = {  # what the nemesis switches on, one kind at a time or all together
    "model_error_rate": 0.03,
    "throttle_rate": 0.15,
    "drop_notification_rate": 0.1,
    "duplicate_notification_rate": 0.2,
    "delay_notification_rate": 0.2,
    "kill_instance_rate": 0.01,
}


@pytest.fixture()
def ui(tmp_path: Path) -> Iterator[UiRun]:
    run = UiRun(tmp_path / "prefect-home", workers=3)
    try:
        run.start()
        run.deploy_echo()
        yield run
    finally:
        run.close()


def _set_faults(ui: UiRun, settings: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        f"{ui.running().localcloud_url}/_localcloud/faults",
        data=json.dumps({"reset": False, **settings}).encode(),
        method="PUT",
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        snapshot: dict[str, Any] = json.loads(resp.read())
    return snapshot


def _counters(ui: UiRun) -> Counter[str]:
    with urllib.request.urlopen(
        f"{ui.running().localcloud_url}/_localcloud/faults", timeout=10
    ) as r:
        return Counter(json.loads(r.read())["counters"])


class Nemesis:
    """Draws a fault every few seconds until stopped; keeps the schedule it drew."""

    def __init__(self, ui: UiRun, seed: int) -> None:
        self.ui = ui
        self.rng = random.Random(seed)
        self.started = time.monotonic()
        self.schedule: list[str] = []
        self.kills = 0
        self.stop_event = threading.Event()
        self.paused = threading.Event()
        self.thread = threading.Thread(target=self._run, name="nemesis", daemon=True)

    def note(self, what: str) -> None:
        self.schedule.append(f"{time.monotonic() - self.started:7.1f} s  {what}")

    def _run(self) -> None:
        while not self.stop_event.wait(self.rng.uniform(4.0, 10.0)):
            if self.paused.is_set():
                continue
            try:
                self._strike()
            except Exception as exc:  # the stack may be going down under us: try again later
                self.note(f"(nemesis step failed: {exc!r})")

    def _strike(self) -> None:
        roll = self.rng.random()
        if roll < 0.25:  # a worker SIGKILLed with its flow runs
            state = json.loads((self.ui.home / "docflow-ui.json").read_text())
            workers = sorted(n for n in state["children"] if n.startswith("prefect worker"))
            victim = self.rng.choice(workers)
            kill_tree(int(state["children"][victim][0]))
            self.kills += 1
            self.note(f"SIGKILL {victim}")
        elif roll < 0.45:  # every fault at once
            _set_faults(self.ui, {**FAULTS, "delay_notification_s": 2.0})
            self.note("all faults on")
        elif roll < 0.6:
            _set_faults(self.ui, dict.fromkeys(FAULTS, 0.0))
            self.note("all faults off")
        else:  # one kind on, the rest off
            kind = self.rng.choice(sorted(FAULTS))
            _set_faults(
                self.ui,
                {**dict.fromkeys(FAULTS, 0.0), kind: FAULTS[kind], "delay_notification_s": 2.0},
            )
            self.note(f"only {kind}={FAULTS[kind]}")

    def __enter__(self) -> Nemesis:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        self.thread.join(timeout=60)


def _manifest_attempts(ui: UiRun, run_keys: list[str]) -> Counter[int]:
    """How many batches of the shards' manifests were invoked how many times."""
    s3, bucket = ui.s3(), load_profile("local").bucket
    attempts: Counter[int] = Counter()
    for key in run_keys:
        body = s3.get_object(Bucket=bucket, Key=f"runs/{key}/manifest.json")["Body"].read()
        for record in json.loads(body)["batches"].values():
            attempts[int(record["attempts"]) - int(record.get("retried_after") or 0)] += 1
    return attempts


def test_chaos_soak_through_docflow_ui(ui: UiRun, tmp_path: Path) -> None:
    from tasks.params.flat import grouped

    run_key = unique_run_key()
    corpus = tmp_path / "c.jsonl"
    ids = write_corpus(corpus, DOCS, words=4)
    params = grouped(
        {
            "corpus": str(corpus),
            "run_key": run_key,
            "shards": SHARDS,
            "batch_size": BATCH,
            "max_new_tokens": 4,
            "max_attempts": MAX_ATTEMPTS,
            "reconcile_every_s": 3,
        }
    )
    counters: Counter[str] = Counter()
    resumes = 0
    restarted = False
    with Nemesis(ui, SEED) as nemesis:
        parent = ui.run_deployment("process-documents/sharded", params, timeout=0)
        nemesis.note(f"parent flow run {parent.id} started")
        while True:
            state_of = ui.running().api_url

            def final(pid: Any = parent.id, url: str = state_of) -> bool:
                got = flow_run(url, pid).state
                return got is not None and got.is_final()

            deadline = time.monotonic() + 3600
            while not final() and time.monotonic() < deadline:
                if not restarted and time.monotonic() - nemesis.started > 90:
                    nemesis.paused.set()
                    counters += _counters(ui)
                    nemesis.note("Ctrl-C: the whole stack stopped")
                    ui.stop()
                    ui.start()
                    ui.deploy_echo()
                    nemesis.note("stack started again, endpoint deployed again")
                    restarted = True
                    nemesis.paused.clear()
                    break
                time.sleep(3)
            else:
                got = flow_run(ui.running().api_url, parent.id).state
                if got is not None and got.is_completed():
                    break
                nemesis.note(f"parent ended {got.type if got else None}: resumed")
            resumes += 1
            assert resumes <= 6, nemesis.schedule
            parent = ui.run_deployment("process-documents/sharded", params, timeout=0)
            nemesis.note(f"parent flow run {parent.id} started (same run key)")
        _set_faults(ui, dict.fromkeys(FAULTS, 0.0))
        counters += _counters(ui)

    summary, got = ui.merged_doc_ids(run_key)
    attempts = _manifest_attempts(ui, [r["run_key"] for r in summary["shard_runs"]])
    report = "\n".join(
        [
            f"[chaos] {DOCS} docs in {SHARDS} shards, batches of {BATCH}, seed {SEED}",
            *nemesis.schedule,
            f"[chaos] faults fired: {dict(counters)}; worker SIGKILLs {nemesis.kills}; "
            f"stack restarts {int(restarted)}; runs resumed {resumes}",
            f"[chaos] results {len(got)} rows, {len(set(got))} distinct; completed "
            f"{summary['completed']}, failed {summary['failed']}; batches by invocations "
            f"{dict(sorted(attempts.items()))}",
        ]
    )
    print(report)
    (tmp_path / "chaos-report.txt").write_text(report)
    assert restarted and nemesis.kills > 0, report
    assert len(got) == len(set(got)) == DOCS and set(got) == set(ids), report
    assert summary["completed"] + summary["failed"] + summary.get("rejected", 0) == DOCS, report
    assert max(attempts) <= MAX_ATTEMPTS, report
