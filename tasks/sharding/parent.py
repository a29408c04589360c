"""The parent of a sharded run: start the shards' flow runs, wait for them, sum them up.

See ``tasks.sharding.children`` for how shards are started, watched and re-run, and
``tasks.sharding.shards`` for which documents a shard holds. The flow that shards says what its
parent sums and merges (a ``ShardedFlow``); everything else here is the same for every flow.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.run.plan.layout import run_artifact_key
from tasks.run.results.status import read_summary, write_summary
from tasks.settings import Profile
from tasks.sharding.children import (
    ShardRun,
    ensure_crash_detection,
    plan_shards,
    shard_deployment_name,
    wait_for_shards,
)
from tasks.sharding.merge import ShardedFlow, combine_summaries, sharded_markdown
from tasks.sharding.shards import MAX_SHARDS


@task(name="run-shards", cache_policy=NO_CACHE)
def run_shard_flows(
    deployment: str, parameters: dict[str, Any], shards: list[ShardRun], max_shard_attempts: int
) -> list[ShardRun]:
    """Submit every shard's flow run and wait for all of them, re-running the crashed ones."""
    logger = get_run_logger()
    return wait_for_shards(
        deployment,
        parameters,
        shards,
        max_shard_attempts=max_shard_attempts,
        log=logger.info,
    )


def run_shards(
    profile: Profile,
    run_key: str,
    shards: int,
    shard_deployment: str | None,
    max_shard_attempts: int,
    started: float,
    kind: ShardedFlow,
) -> dict[str, Any]:
    """Run ``shards`` child runs of this flow run's parameters and return the whole run's summary."""
    from prefect.artifacts import create_markdown_artifact
    from prefect.runtime import flow_run

    if not 1 < shards <= MAX_SHARDS:
        raise ValueError(f"shards must be between 2 and {MAX_SHARDS}, got {shards}")
    if max_shard_attempts < 1:
        raise ValueError(f"max_shard_attempts must be at least 1, got {max_shard_attempts}")
    logger = get_run_logger()
    deployment = shard_deployment_name(shard_deployment)
    if ensure_crash_detection():
        logger.info("created the server automation that marks silent shard runs crashed")
    planned = plan_shards(run_key, shards)
    logger.info("run %s: %d shards on %s", run_key, shards, deployment)
    done = run_shard_flows(deployment, dict(flow_run.parameters), planned, max_shard_attempts)
    done = [s.model_copy(update={"summary": read_summary(profile, s.run_key)}) for s in done]
    summary = combine_summaries(run_key, done, kind)
    summary["results_uri"] = kind.merge(profile, run_key, done)
    summary["wall_time_s"] = round(time.monotonic() - started, 3)
    summary["summary_uri"] = write_summary(profile, run_key, summary)
    if folder := keep_local_copy(profile, run_key, summary):
        logger.info("run %s: merged results and summary copied to %s", run_key, folder)
    create_markdown_artifact(
        sharded_markdown(summary, kind),
        key=run_artifact_key(run_key, "summary"),
        description=f"sharded {kind.flow} summary",
    )
    logger.info("run %s: %s", run_key, kind.headline(summary))
    return summary


def keep_local_copy(profile: Profile, run_key: str, summary: dict[str, Any]) -> str | None:
    """Copy the merged results and summary.json to ``<local_results_dir>/<run key>/`` (a profile
    with ``local_results_dir``, as the local one); the folder, or None when nothing was copied."""
    from pathlib import Path

    from tasks.aws.clients import aws_client
    from tasks.aws.s3 import split_s3_uri
    from tasks.run.plan.layout import local_run_dir

    folder = local_run_dir(profile, run_key)
    uris = [u for u in (summary.get("results_uri"), summary.get("summary_uri")) if u]
    if folder is None or not uris:
        return None
    Path(folder).mkdir(parents=True, exist_ok=True)
    s3 = aws_client("s3", profile)
    for uri in uris:
        bucket, key = split_s3_uri(str(uri))
        s3.download_file(bucket, key, str(Path(folder) / key.rsplit("/", 1)[-1]))
    return folder
