"""A sharded run: one child flow run per shard on the work pool, re-run when one crashes.

The parent (``process_documents(shards=N)`` or ``ask_documents(shards=N)``) starts each shard as
a flow run of a deployment of its own flow with ``run_deployment(timeout=0)``, so any worker of
the pool picks it up, and waits for them through the Prefect API. Each child is an ordinary run
of its own (``<run key>.sNNNofMMM``, its own manifest or kept answers), so a child that is run
again resumes where it stopped and invokes nothing that finished.

Lost workers are found by Prefect's own mechanism: children send flow-run heartbeats
(``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``) and a server automation (``ensure_crash_detection``,
the "zombie flow runs" recipe of Prefect's docs) marks a run ``Crashed`` when they stop. A
crashed or failed child is submitted again (a new flow run, ``attempt`` + 1, the same run key)
up to ``max_shard_attempts``. The idempotency key names the shard and attempt, so re-running the
parent with the same run key finds the children it already started instead of starting more.
What a flow's parent sums and merges from its children's summary.json is its ``ShardedFlow``
(``tasks.sharding.merge``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any
from uuid import UUID

from pydantic import BaseModel

from tasks.run.plan.layout import shard_idempotency_key, shard_run_key
from tasks.sharding.shards import Shard

HEARTBEAT_S = 30  # the least Prefect allows
CRASH_AFTER_S = 90  # no heartbeat for this long: the run is marked Crashed
SHARD_TAG = "docflow-shard"  # every shard's flow run: what the crash automation watches
CRASH_AUTOMATION = "docflow: mark shard runs that stop heartbeating as crashed"
RERUN_STATES = ("CRASHED", "FAILED")


class ShardRun(BaseModel):
    """One shard's child flow run, as the parent last saw it."""

    index: int
    count: int
    run_key: str
    attempt: int = 1
    flow_run_id: str | None = None
    state: str = "SCHEDULED"
    state_message: str | None = None
    worker: str | None = None
    summary: dict[str, Any] | None = None

    @property
    def shard(self) -> Shard:
        """The shard this run processes."""
        return Shard(index=self.index, count=self.count)


def plan_shards(run_key: str, count: int) -> list[ShardRun]:
    """The child runs of a run with ``count`` shards (nothing submitted yet)."""
    return [
        ShardRun(index=i, count=count, run_key=shard_run_key(run_key, i, count))
        for i in range(count)
    ]


def child_parameters(parameters: Mapping[str, Any], shard: ShardRun) -> dict[str, Any]:
    """The parent's parameters for one shard: its run key and shard, never sharded again."""
    child = {k: v for k, v in parameters.items() if k != "sharding"}
    child.update(run_key=shard.run_key, shard=shard.shard.model_dump())
    return child


def ensure_crash_detection(within_s: int = CRASH_AFTER_S) -> bool:
    """Create the server automation that marks silent shard runs Crashed; True when created."""
    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture

    try:
        # Prefect's sync/async dispatch: called from sync code, this returns the automation.
        existing: Any = Automation.read(name=CRASH_AUTOMATION)
        if existing is not None:
            return False
    except ValueError:
        pass  # not there yet
    Automation(
        name=CRASH_AUTOMATION,
        description="A shard's flow run that sent heartbeats and then went silent lost its "
        "process (worker or machine gone): mark it Crashed so its sharded run runs it again.",
        # Only shard runs, which send heartbeats every HEARTBEAT_S: other flow runs keep
        # Prefect's default of one every 180 s, which this window would take for a crash.
        trigger=EventTrigger(
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related={"prefect.resource.id": f"prefect.tag.{SHARD_TAG}"},
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.*"},
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=within_s),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                message=f"no heartbeat for {within_s} s: the flow run's process is gone",
            )
        ],
    ).create()
    return True


def submit_shard(deployment: str, parameters: Mapping[str, Any], shard: ShardRun) -> ShardRun:
    """Start (or find, by its idempotency key) the shard's flow run for its current attempt."""
    from prefect.deployments import run_deployment

    flow_run: Any = run_deployment(
        deployment,
        parameters=child_parameters(parameters, shard),
        timeout=0,
        idempotency_key=shard_idempotency_key(shard.run_key, shard.index, shard.attempt),
        job_variables={"env": {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_S)}},
        tags=[SHARD_TAG],
    )
    return shard.model_copy(update={"flow_run_id": str(flow_run.id), **_observed(flow_run)})


def _observed(flow_run: Any) -> dict[str, Any]:
    """State, its message and the worker that took the run, from a flow run read from the API."""
    state = flow_run.state
    labels = getattr(flow_run, "labels", None) or {}
    return {
        "state": state.type.value if state is not None else "SCHEDULED",
        "state_message": state.message if state is not None else None,
        "worker": labels.get("prefect.worker.name"),
    }


def refresh(shards: list[ShardRun]) -> list[ShardRun]:
    """Read every unfinished shard's flow run from the API.

    A run that is pending or running on a worker the server has marked offline (the worker
    stopped sending heartbeats) is set to Crashed here: a run that a lost worker had taken but
    not yet started sends no flow-run heartbeats, so the crash automation never sees it.
    """
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        offline: dict[str, set[str]] = {}
        out = []
        for shard in shards:
            if shard.flow_run_id is None or shard.state == "COMPLETED":
                out.append(shard)
                continue
            flow_run = client.read_flow_run(UUID(shard.flow_run_id))
            seen = _observed(flow_run)
            pool = flow_run.work_pool_name
            if seen["state"] in ("PENDING", "RUNNING") and seen["worker"] and pool:
                if pool not in offline:
                    offline[pool] = _offline_workers(client, pool)
                if seen["worker"] in offline[pool]:
                    seen = _crash(client, flow_run, f"its worker {seen['worker']} went offline")
            out.append(shard.model_copy(update=seen))
        return out


def _offline_workers(client: Any, pool: str) -> set[str]:
    """Names of the pool's workers the server marks offline (heartbeats stopped)."""
    from prefect.client.schemas.objects import WorkerStatus

    workers = client.read_workers_for_work_pool(pool)
    return {w.name for w in workers if w.status == WorkerStatus.OFFLINE}


def _crash(client: Any, flow_run: Any, why: str) -> dict[str, Any]:
    """Set a lost flow run Crashed (forced: it has no process left to say so)."""
    from prefect.states import Crashed

    message = f"{why}: the flow run's process is gone"
    client.set_flow_run_state(flow_run.id, Crashed(message=message), force=True)
    return {**_observed(flow_run), "state": "CRASHED", "state_message": message}


class ShardsFailed(RuntimeError):
    """Shards still crashed or failed after their attempts; the message names them."""


def wait_for_shards(
    deployment: str,
    parameters: Mapping[str, Any],
    shards: list[ShardRun],
    *,
    max_shard_attempts: int,
    poll_s: float = 2.0,
    log: Callable[[str], None] = print,
    on_change: Callable[[list[ShardRun]], None] | None = None,
) -> list[ShardRun]:
    """Submit every shard and wait until each completes or was cancelled; re-run crashed ones.

    Resuming: attempts already made (found by idempotency key) are walked through in order, so a
    parent run again after a crash continues with the same children.
    """
    shards = [submit_shard(deployment, parameters, s) for s in shards]
    shards = _advance(deployment, parameters, shards, max_shard_attempts, log)
    last = ""
    while any(s.state not in ("COMPLETED", "CANCELLED") for s in shards):
        time.sleep(poll_s)
        shards = _advance(deployment, parameters, refresh(shards), max_shard_attempts, log)
        line = _progress_line(shards)
        if line != last:
            log(line)
            last = line
            if on_change is not None:
                on_change(shards)
    return shards


def _advance(
    deployment: str,
    parameters: Mapping[str, Any],
    shards: list[ShardRun],
    max_attempts: int,
    log: Callable[[str], None],
) -> list[ShardRun]:
    """Submit the next attempt of every crashed or failed shard; raise when one is out of attempts."""
    out = []
    for shard in shards:
        while shard.state in RERUN_STATES:
            if shard.attempt >= max_attempts:
                raise ShardsFailed(
                    f"shard {shard.shard.label} ({shard.run_key}) ended {shard.state} "
                    f"{shard.attempt} times, last: {shard.state_message or 'no message'}; "
                    "resume the run with the same run_key once the cause is fixed, or raise "
                    "max_shard_attempts"
                )
            log(
                f"shard {shard.shard.label} {shard.state.lower()} on "
                f"{shard.worker or 'an unknown worker'} ({shard.state_message or 'no message'}); "
                f"running it again (attempt {shard.attempt + 1})"
            )
            shard = submit_shard(
                deployment, parameters, shard.model_copy(update={"attempt": shard.attempt + 1})
            )
        out.append(shard)
    return out


def _progress_line(shards: list[ShardRun]) -> str:
    """``shards: 5 completed, 2 running, 1 scheduled``."""
    counts: dict[str, int] = {}
    for shard in shards:
        counts[shard.state.lower()] = counts.get(shard.state.lower(), 0) + 1
    return "shards: " + ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))


def shard_deployment_name(explicit: str | None) -> str:
    """The deployment the shards run on: ``explicit``, else the one this parent run came from."""
    if explicit:
        return explicit
    from prefect.runtime import deployment, flow_run

    if deployment.name is None:
        flow = flow_run.flow_name
        raise ValueError(
            f"shards > 1 runs every shard as a flow run of a {flow} deployment, and this run was "
            f"not started from one; start it from one (`prefect deployment run {flow}/<name> "
            f"-p shards=N`) or pass shard_deployment='{flow}/<deployment name>'"
        )
    return f"{flow_run.flow_name}/{deployment.name}"
