"""A real Prefect stack for sharded-run tests: PostgreSQL, a server, the local work pool, some of
prefect.yaml's deployments and several process workers, all child processes; and reading flow
runs back from its API. localcloud stays the session's (in the test process), so its counters
see every invocation any worker makes."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

from docflow.postgres import data_dir_for, start_postgres
from docflow.prefect_server import (
    ChildProcess,
    api_url_for,
    ensure_work_pool,
    free_port,
    prefect_api,
    prefect_deploy,
    prefect_env,
    spawn_server,
    spawn_worker,
    wait_for_server,
    wait_for_worker,
    wait_until,
    worker_name,
)
from tasks.sharding.children import SHARD_TAG


@dataclass
class PoolStack:
    """A Prefect server with the local pool, the deployments it was given and several workers."""

    home: Path
    api_url: str
    server: ChildProcess
    workers: dict[str, ChildProcess]
    env: dict[str, str]
    worker_limit: int | None = None

    def restart(self, name: str) -> None:
        """Start the worker ``name`` again (after a test killed it), for the tests that follow."""
        number = int(name.rsplit("-", 1)[1])
        self.workers[name] = spawn_worker(
            self.home, self.env, number=number, limit=self.worker_limit
        )
        wait_for_worker(self.workers[name], timeout_s=120)


@contextmanager
def pool_stack(
    home: Path, deployments: list[str], workers: int, worker_limit: int | None = None
) -> Iterator[PoolStack]:
    """PostgreSQL, server, pool, `prefect deploy --name D` for each deployment, ``workers`` workers
    (each running at most ``worker_limit`` flow runs at once when given); all stopped at the end."""
    # Several workers: PostgreSQL, as `docflow ui --workers N` does (SQLite locks under them),
    # on a fresh cluster (its folder is named after home, which a rerun's --basetemp repeats).
    shutil.rmtree(data_dir_for(home), ignore_errors=True)
    postgres = start_postgres(home, free_port())
    port = free_port()
    api_url = api_url_for(port)
    server = spawn_server(home, port, database_url=postgres.url)
    running: dict[str, ChildProcess] = {}
    try:
        wait_for_server(server, port)
        ensure_work_pool(api_url)
        env = prefect_env(home, api_url)
        names = [arg for name in deployments for arg in ("--name", name)]
        prefect_deploy(env, *names)  # raises with its output
        for number in range(1, workers + 1):
            running[worker_name(number)] = spawn_worker(
                home, env, number=number, limit=worker_limit
            )
        for worker in running.values():
            wait_for_worker(worker, timeout_s=120)
        yield PoolStack(home, api_url, server, running, env, worker_limit)
    finally:
        for worker in running.values():
            worker.stop()
        server.stop()
        postgres.stop()
        shutil.rmtree(postgres.data_dir, ignore_errors=True)


def flow_run(api_url: str, flow_run_id: UUID) -> Any:
    """The flow run as the server has it now."""
    from prefect.client.orchestration import get_client

    with prefect_api(api_url), get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id)


def shard_runs(api_url: str) -> list[Any]:
    """Every shard's flow run (tagged SHARD_TAG) the server knows."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    with prefect_api(api_url), get_client(sync_client=True) as client:
        return client.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[SHARD_TAG]))
        )


def run_parent(
    api_url: str, deployment: str, parameters: dict[str, Any], timeout_s: float = 600
) -> Any:
    """Start a sharded run through ``deployment`` (flat parameter names, grouped as the flow takes
    them) and wait for its final state; the flow run."""
    from prefect.deployments import run_deployment

    from tasks.params.flat import ASK_GROUPS, PROCESS_GROUPS, grouped

    groups = ASK_GROUPS if deployment.startswith("ask-") else PROCESS_GROUPS
    with prefect_api(api_url):
        parent = run_deployment(deployment, parameters=grouped(parameters, groups), timeout=0)
    parent_id = parent.id  # type: ignore[union-attr]

    def done() -> bool:
        state = flow_run(api_url, parent_id).state
        return state is not None and state.is_final()

    wait_until(done, what="the sharded run to end", timeout_s=timeout_s)
    return flow_run(api_url, parent_id)
