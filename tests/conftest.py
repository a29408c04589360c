"""Shared fixtures: localcloud on a free port, a fresh profile per test, a Prefect test server."""

from __future__ import annotations

import logging
import os
import queue
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from localcloud.testing.artifacts import upload_echo_model
from tasks.aws.clients import aws_client, clear_client_cache
from tasks.settings import Autoscaling, Profile, load_profile
from tests.deployments.ui_stack import UiRun
from tests.flows.endpoint_helpers import FAST_WAIT, profile_file
from tests.pool import PoolStack, pool_stack
from tests.runs import Deployment, EndpointProbe

# Session fixtures that start a stack, and the test files that use each: under pytest-xdist
# (make test) those files run on one process, so the stack starts once per session.
SHARED_STACKS = {
    "prefect_pool": (
        "tests/flows/test_sharded_runs.py",
        "tests/flows/test_sharded_archives.py",
        "tests/flows/test_sharded_asks.py",
        "tests/docflow/test_sharded_runs_cli.py",
    ),
    "docflow_ui": (
        "tests/deployments/test_prefect_deployments.py",
        "tests/deployments/test_ui_stack.py",  # last: it kills a worker and restarts the stack
    ),
}
# prefect_pool: the deployments the sharded tests run, and its workers.
POOL_DEPLOYMENTS = ["process-documents/sharded", "ask-documents/local"]
POOL_WORKERS = 3
POOL_WORKER_LIMIT = 2
UI_WORKERS = 3  # docflow_ui: a sharded run's parent and shards spread over three workers


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--soak", action="store_true", help="run the long reliability soak tests")
    parser.addoption(
        "--bench", action="store_true", help="run the quick bench and check what it reports"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Soak tests run with --soak, the quick bench with --bench (make bench runs the real one);
    a test that uses a shared stack lives in one of the files listed for it (SHARED_STACKS)."""
    for item in items:
        for fixture, files in SHARED_STACKS.items():
            path = item.nodeid.split("::", 1)[0]
            if fixture in getattr(item, "fixturenames", ()) and path not in files:
                raise pytest.UsageError(
                    f"{item.nodeid} uses {fixture}: add {path} to SHARED_STACKS in tests/conftest.py"
                )
    for option in ("soak", "bench"):
        if config.getoption(f"--{option}"):
            continue
        skip = pytest.mark.skip(reason=f"{option} test: run with --{option}")
        for item in items:
            if option in item.keywords:
                item.add_marker(skip)


@pytest.hookimpl(optionalhook=True)  # also runs without xdist (-p no:xdist)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """make test's ``-n 3 --dist loadfile``: a file runs in order on one process (a module-scoped
    fixture starts once; a test that ends its module's stack runs last), and the files that share
    a session stack (SHARED_STACKS) run on one process, so that stack starts once."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    unit = {path: fixture for fixture, files in SHARED_STACKS.items() for path in files}

    class SharedStackScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return unit.get(path, path)

    return SharedStackScheduling(config, log)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Drop Prefect events still queued for test servers that have already stopped.

    Prefect's EventsWorker retries every queued event at interpreter exit, one refused
    connection at a time: a finished session once stayed alive for hours sending ~2,500 events
    to a stopped server. The sentinel (None) that ends a worker's loop is kept.
    """
    from prefect._internal.concurrency.services import _active_services

    # Every test server has stopped by now: the event clients' reconnect attempts at exit
    # ("Unable to connect ... websocket", with a traceback each) say nothing a user can act on.
    for name in ("prefect.events.clients", "prefect._internal.concurrency"):
        logging.getLogger(name).setLevel(logging.CRITICAL)

    # Every live queue service, including ones a harness already drained out of the cache.
    for worker in list(_active_services):
        kept: list[Any] = []
        while True:
            try:
                item = worker._queue.get_nowait()
            except queue.Empty:
                break
            worker._queue.task_done()
            if item is None:
                kept.append(item)
        for item in kept:
            worker._queue.put_nowait(item)


@pytest.fixture(scope="session", autouse=True)
def local_results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The local profile's results/<run key>/ copies go to a session folder, not the checkout."""
    folder = tmp_path_factory.mktemp("local-results")
    saved = os.environ.get("DOCFLOW_LOCAL_RESULTS_DIR")
    os.environ["DOCFLOW_LOCAL_RESULTS_DIR"] = str(folder)
    yield folder
    if saved is None:
        os.environ.pop("DOCFLOW_LOCAL_RESULTS_DIR", None)
    else:
        os.environ["DOCFLOW_LOCAL_RESULTS_DIR"] = saved


@pytest.fixture(scope="session")
def localcloud() -> Iterator[Any]:
    """One localcloud (moto + SageMaker emulator) for the session, on a free port.

    Sets AWS_* and DOCFLOW_ENDPOINT_URL in os.environ so unmodified boto3 clients reach it.
    """
    from localcloud import LocalCloud

    cloud = LocalCloud(port=0)
    cloud.start()
    saved = {k: os.environ.get(k) for k in cloud.environment()}
    os.environ.update(cloud.environment())
    clear_client_cache()
    try:
        yield cloud
    finally:
        cloud.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        clear_client_cache()


@pytest.fixture
def faults(localcloud: Any) -> Iterator[Any]:
    """localcloud's fault switchboard, off at the start and the end of the test (the session shares it)."""
    localcloud.faults.reset()
    yield localcloud.faults
    localcloud.faults.reset()


@pytest.fixture
def profile(localcloud: Any) -> Profile:
    """A local profile with its own bucket and endpoint name, so tests never share state."""
    suffix = uuid.uuid4().hex[:8]
    base = load_profile("local")
    prof = base.model_copy(
        update={
            "bucket": f"docflow-test-{suffix}",
            "endpoint_url": localcloud.url,
            "endpoint_name": f"docflow-test-{suffix}",
        }
    )
    aws_client("s3", prof).create_bucket(Bucket=prof.bucket)
    return prof


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """A throwaway Prefect server and database for tests that run flows."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def prefect_pool(localcloud: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PoolStack]:
    """One Prefect stack for every sharded test of the session (SHARED_STACKS): PostgreSQL, a server, the local pool, `prefect deploy` of
    the sharded deployments and POOL_WORKERS workers, each running at most POOL_WORKER_LIMIT flow
    runs at once (a parent and its shards cannot all land on one worker). Started once instead of
    once per test file: each start costs PostgreSQL, a server, a deploy and three workers."""
    home = tmp_path_factory.mktemp("prefect-pool")
    with pool_stack(
        home, POOL_DEPLOYMENTS, POOL_WORKERS, worker_limit=POOL_WORKER_LIMIT
    ) as running:
        yield running


@pytest.fixture(scope="session")
def docflow_ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UiRun]:
    """`docflow ui --workers 3` as a user starts it (PostgreSQL, server, localcloud, blocks,
    `prefect deploy --all`, three workers) on free ports with a temp PREFECT_HOME; one for the
    files in SHARED_STACKS, whose last tests kill a worker and restart the whole stack."""
    from docflow.postgres import data_dir_for

    home = tmp_path_factory.mktemp("docflow-ui") / "prefect-home"
    run = UiRun(home, workers=UI_WORKERS)
    try:
        run.start()
        yield run
    finally:
        run.close()
        shutil.rmtree(data_dir_for(home), ignore_errors=True)


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
