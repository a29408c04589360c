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
What a flow's parent sums and merges from its children's summary.json is its ``ShardedFlow``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict

from tasks.run.layout import shard_idempotency_key, shard_run_key
from tasks.run.shards import Shard

HEARTBEAT_S = 30  # the least Prefect allows
CRASH_AFTER_S = 90  # no heartbeat for this long: the run is marked Crashed
SHARD_TAG = "docflow-shard"  # every shard's flow run: what the crash automation watches
CRASH_AUTOMATION = "docflow: mark shard runs that stop heartbeating as crashed"
RERUN_STATES = ("CRASHED", "FAILED")
MERGE_ROWS = 1_000_000  # results.parquet as one file for runs up to this many rows


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
    child = {
        k: v for k, v in parameters.items() if k not in ("shards", "shard_size", "shard_deployment")
    }
    child.update(run_key=shard.run_key, shard=shard.shard.model_dump(), shards=1)
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


class ShardedFlow(BaseModel):
    """What differs between the flows that shard: the counts a parent sums, the one results file
    it merges, and how it says the totals. Starting, watching and re-running shards is shared."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    flow: str  # the flow's name, for people: "process-documents"
    summed: tuple[str, ...]  # counts summed over the shards' summary.json
    carried: tuple[str, ...] = ()  # the same in every shard's summary.json: taken from the first
    averaged: tuple[str, ...] = ()  # means, weighted by each shard's "completed"
    # (profile, parent run key, finished shards) -> the merged results file's URI, or None
    merge: Callable[[Any, str, list[ShardRun]], str | None]
    headline: Callable[[Mapping[str, Any]], str]  # the totals in one sentence


def combine_summaries(run_key: str, shards: list[ShardRun], kind: ShardedFlow) -> dict[str, Any]:
    """The whole run's counts: every shard's summary.json summed, and where each shard's are."""
    summaries = [s.summary or {} for s in shards]
    totals: dict[str, Any] = {name: 0 for name in kind.summed}
    for summary in summaries:
        for name in kind.summed:
            value = summary.get(name)
            if isinstance(value, int | float):
                totals[name] += value
    for name, value in totals.items():
        if isinstance(value, float):
            totals[name] = round(value, 6)
    carried = {name: next((s[name] for s in summaries if name in s), None) for name in kind.carried}
    averaged = {name: _weighted_mean(summaries, name) for name in kind.averaged}
    reasons: dict[str, int] = {}
    for summary in summaries:
        for reason, n in (summary.get("top_failure_reasons") or {}).items():
            reasons[reason] = reasons.get(reason, 0) + int(n)
    excluded: dict[str, int] = {}  # files left out by include/exclude (shard 0 reports them)
    for summary in summaries:
        for pattern, n in (summary.get("excluded") or {}).items():
            excluded[pattern] = excluded.get(pattern, 0) + int(n)
    return {
        "run_key": run_key,
        **carried,
        **totals,
        **averaged,
        "shards": len(shards),
        "top_failure_reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1])[:10]),
        **({"excluded": excluded} if excluded else {}),
        "shard_runs": [
            {
                "shard": s.shard.label,
                "run_key": s.run_key,
                "flow_run_id": s.flow_run_id,
                "attempts": s.attempt,
                "state": s.state,
                "worker": s.worker,
                "results_uri": (s.summary or {}).get("results_uri"),
                "failures_uri": (s.summary or {}).get("failures_uri"),
            }
            for s in shards
        ],
    }


def _weighted_mean(summaries: list[dict[str, Any]], name: str) -> float | None:
    """The mean of every shard's ``name`` weighted by its completed count (None: no value)."""
    pairs = [
        (float(s[name]), int(s.get("completed") or 0))
        for s in summaries
        if isinstance(s.get(name), int | float)
    ]
    weight = sum(w for _, w in pairs)
    return round(sum(v * w for v, w in pairs) / weight, 4) if weight else None


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


def merge_results(profile: Any, run_key: str, shards: list[ShardRun]) -> str | None:
    """The shards' results.parquet files as one results.parquet under the parent's prefix.

    Only for Parquet results of at most ``MERGE_ROWS`` rows (None otherwise): bigger runs are read
    as a dataset of the per-shard files that summary.json lists. The files are copied to disk and
    merged a record batch at a time, so the parent's memory does not grow with the run.
    """
    import tempfile
    from pathlib import Path

    import pyarrow as pa
    import pyarrow.parquet as pq

    from tasks.aws.clients import aws_client
    from tasks.aws.s3 import split_s3_uri
    from tasks.run.layout import run_uri

    uris = [(s.summary or {}).get("results_uri") for s in shards]
    rows = sum(int((s.summary or {}).get("documents") or 0) for s in shards)
    if rows > MERGE_ROWS or not all(isinstance(u, str) and u.endswith(".parquet") for u in uris):
        return None
    s3 = aws_client("s3", profile)
    target = run_uri(profile, run_key, "results.parquet")
    with tempfile.TemporaryDirectory(prefix="docflow-merge-") as folder:
        parts = []
        for number, uri in enumerate(uris):
            bucket, key = split_s3_uri(str(uri))
            part = Path(folder) / f"{number:03d}.parquet"
            s3.download_file(bucket, key, str(part))
            parts.append(pq.ParquetFile(part))
        # A column all null in one shard (no failures there) has another type than elsewhere.
        schema = pa.unify_schemas([p.schema_arrow for p in parts], promote_options="permissive")
        merged = Path(folder) / "results.parquet"
        with pq.ParquetWriter(merged, schema) as writer:
            for part in parts:
                for batch in part.iter_batches():
                    writer.write_table(conform_table(pa.Table.from_batches([batch]), schema))
        bucket, key = split_s3_uri(target)
        s3.upload_file(str(merged), bucket, key)
    return target


def conform_table(table: Any, schema: Any) -> Any:
    """``table`` with ``schema``'s columns in its order and types (a missing one all null)."""
    import pyarrow as pa

    columns = []
    for field in schema:
        if field.name in table.column_names:
            column = table[field.name]
            columns.append(column if column.type == field.type else column.cast(field.type))
        else:
            columns.append(pa.nulls(len(table), field.type))
    return pa.Table.from_arrays(columns, schema=schema)


def _documents_headline(summary: Mapping[str, Any]) -> str:
    return (
        f"{summary['documents']} documents in {summary['shards']} shards: "
        f"{summary['completed']} completed, {summary['failed']} failed, "
        f"{summary['rejected']} rejected, {summary['canceled']} canceled; "
        f"{summary['invocations']} invocations."
    )


PROCESS_DOCUMENTS = ShardedFlow(
    flow="process-documents",
    summed=(
        "documents",
        "completed",
        "failed",
        "rejected",
        "canceled",
        "batches",
        "invocations",
        "prompt_tokens",
        "completion_tokens",
        "estimated_cost_usd",
    ),
    merge=merge_results,
    headline=_documents_headline,
)


def sharded_markdown(summary: Mapping[str, Any], kind: ShardedFlow) -> str:
    """The parent's summary artifact: totals and one line per shard."""
    lines = [
        f"# Sharded {kind.flow} run `{summary['run_key']}`",
        "",
        kind.headline(summary),
        "",
        "| shard | run key | state | attempts | worker | results |",
        "|---|---|---|---|---|---|",
    ]
    for run in summary["shard_runs"]:
        lines.append(
            f"| {run['shard']} | `{run['run_key']}` | {run['state']} | {run['attempts']} | "
            f"{run['worker'] or ''} | {run['results_uri'] or ''} |"
        )
    if summary.get("results_uri"):
        lines += ["", f"All results in one file: {summary['results_uri']}"]
    return "\n".join(lines) + "\n"
