"""Scale-out: a corpus of many files in S3 through sharded runs on several Prefect workers.

One stack for the section: PostgreSQL, a Prefect server, ``workers`` process workers and the
``process-documents/sharded`` deployment (as ``docflow ui --workers N`` runs them), the bench's
localcloud and its echo endpoint under the bench's cap. First one run of the smallest corpus
unsharded (``shards=1``, the single-run figure), then each size sharded with ``shard_size``
documents per shard. A sampler reads the resident memory of every worker and every process
under it every ``SAMPLE_S``, keyed by the flow run it belongs to (``PREFECT__FLOW_RUN_ID`` in its
environment), so the parent's and each shard's peaks are measured, not estimated.
The ledger: the run's summary counts every document, and the merged results.parquet holds
every id of the corpus exactly once.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from benchmarks.formatting import fmt
from benchmarks.harness import ratio

SAMPLE_S = 0.5
DOCS_PER_FILE = 10_000
DEPLOYMENT = "process-documents/sharded"
MIB = 1 << 20


@dataclass(frozen=True)
class ScaleoutConfig:
    """Sizes of the section (the full bench: 100,000 and 1,000,000 documents)."""

    sizes: tuple[int, ...] = (100_000, 1_000_000)
    shard_size: int = 50_000
    workers: int = 3
    runs_per_worker: int = 2  # flow runs a worker runs at once (the parent takes one)
    batch_size: int = 100
    timeout_s: float = 5400.0


@dataclass
class RssSampler:
    """Peak RSS of each worker and of each flow run's processes, sampled in a thread."""

    workers: dict[str, int]
    worker_peak: dict[str, int] = field(default_factory=dict)
    run_peak: dict[str, int] = field(default_factory=dict)
    _run_of_pid: dict[int, str | None] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)

    def sample(self) -> None:
        """One pass over every worker's process tree."""
        import psutil

        for name, pid in self.workers.items():
            try:
                root = psutil.Process(pid)
                rss = root.memory_info().rss
                children = root.children(recursive=True)
            except psutil.NoSuchProcess:
                continue
            self.worker_peak[name] = max(self.worker_peak.get(name, 0), rss)
            for child in children:
                try:
                    run = self._run_of(child)
                    rss = child.memory_info().rss
                except psutil.Error:
                    continue
                if run is not None:
                    self.run_peak[run] = max(self.run_peak.get(run, 0), rss)

    def _run_of(self, proc: Any) -> str | None:
        if proc.pid not in self._run_of_pid:
            self._run_of_pid[proc.pid] = proc.environ().get("PREFECT__FLOW_RUN_ID")
        return self._run_of_pid[proc.pid]

    @contextmanager
    def running(self) -> Iterator[RssSampler]:
        """Sample until the block ends."""

        def loop() -> None:
            while not self._stop.wait(SAMPLE_S):
                self.sample()

        thread = threading.Thread(target=loop, name="rss-sampler", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join()


def write_s3_corpus(s3: Any, bucket: str, prefix: str, documents: int) -> list[str]:
    """``documents`` short documents as JSONL files of ``DOCS_PER_FILE`` under ``prefix``."""
    keys = []
    for part, start in enumerate(range(0, documents, DOCS_PER_FILE)):
        lines = (
            json.dumps({"id": f"d{i:07d}", "text": f"w{i} alpha beta gamma delta"}) + "\n"
            for i in range(start, min(start + DOCS_PER_FILE, documents))
        )
        key = f"{prefix}/part-{part:04d}.jsonl"
        s3.put_object(Bucket=bucket, Key=key, Body="".join(lines).encode())
        keys.append(key)
    return keys


class PoolStack:
    """PostgreSQL, a Prefect server, the work pool, the sharded deployment and its workers."""

    def __init__(self, home: Path, workers: int, runs_per_worker: int) -> None:
        self.home = home
        self.count = workers
        self.runs_per_worker = runs_per_worker
        self.children: list[Any] = []
        self.workers: dict[str, Any] = {}
        self.api_url = ""
        self._postgres: Any = None

    def __enter__(self) -> PoolStack:
        from docflow.postgres import data_dir_for, start_postgres
        from docflow.prefect_server import (
            api_url_for,
            ensure_work_pool,
            free_port,
            prefect_deploy,
            prefect_env,
            spawn_server,
            spawn_worker,
            wait_for_server,
            wait_for_worker,
            worker_name,
        )

        shutil.rmtree(data_dir_for(self.home), ignore_errors=True)
        self._postgres = start_postgres(self.home, free_port())
        try:
            port = free_port()
            self.api_url = api_url_for(port)
            server = spawn_server(self.home, port, database_url=self._postgres.url)
            self.children.append(server)
            wait_for_server(server, port)
            ensure_work_pool(self.api_url)
            env = prefect_env(self.home, self.api_url)
            prefect_deploy(env, "--name", DEPLOYMENT)
            for number in range(1, self.count + 1):
                worker = spawn_worker(self.home, env, number=number, limit=self.runs_per_worker)
                self.children.append(worker)
                self.workers[worker_name(number)] = worker
            for worker in self.workers.values():
                wait_for_worker(worker, timeout_s=180)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        for child in reversed(self.children):
            child.stop()
        if self._postgres is not None:
            self._postgres.stop()
            shutil.rmtree(self._postgres.data_dir, ignore_errors=True)


def run_and_measure(
    stack: PoolStack, parameters: dict[str, Any], timeout_s: float
) -> tuple[Any, float, RssSampler]:
    """Start the deployment with ``parameters``, sample memory until its flow run is final."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    from docflow.prefect_server import prefect_api, wait_until
    from tasks.params.flat import grouped

    sampler = RssSampler({name: w.pid for name, w in stack.workers.items()})
    with prefect_api(stack.api_url), sampler.running():
        started = time.monotonic()
        flow_run: Any = run_deployment(DEPLOYMENT, parameters=grouped(parameters), timeout=0)

        def final() -> Any:
            with get_client(sync_client=True) as client:
                return client.read_flow_run(flow_run.id)

        wait_until(
            lambda: final().state is not None and final().state.is_final(),
            what=f"the run {parameters['run_key']} to end",
            timeout_s=timeout_s,
        )
        wall = time.monotonic() - started
        return final(), wall, sampler


def ledger(profile: Any, summary: dict[str, Any], documents: int) -> int:
    """Ids in the run's results, checked to be the corpus's, each exactly once; returns the count."""
    import pyarrow.parquet as pq

    from tasks.aws.clients import aws_client
    from tasks.aws.s3 import split_s3_uri

    bucket, key = split_s3_uri(str(summary["results_uri"]))
    with_ids = Path(f"/tmp/docflow-scaleout-{uuid.uuid4().hex[:6]}.parquet")
    try:
        aws_client("s3", profile).download_file(bucket, key, str(with_ids))
        ids = pq.read_table(with_ids, columns=["doc_id"]).column("doc_id").to_pylist()
    finally:
        with_ids.unlink(missing_ok=True)
    expected = {f"d{i:07d}" for i in range(documents)}
    if len(ids) != documents or set(ids) != expected:
        raise AssertionError(
            f"results hold {len(ids)} rows, {len(set(ids))} distinct ids, "
            f"{len(expected - set(ids))} of the corpus missing; expected each of {documents} once"
        )
    return len(ids)


def scaleout(bench: Any, cfg: ScaleoutConfig | None = None) -> dict[str, Any]:
    """The section: the single run, then every size sharded; memory, rate and the ledger."""
    from docflow.prefect_server import ensure_global_concurrency_limit
    from tasks.aws.clients import aws_client
    from tasks.endpoint.spec import concurrency_limit_name
    from tasks.run.results.status import read_summary

    cfg = cfg or ScaleoutConfig()
    env = bench.env
    profile = env.profile
    endpoint = bench.echo.name
    s3 = aws_client("s3", profile)
    rows: list[dict[str, Any]] = []
    with PoolStack(bench.workdir / "scaleout-prefect", cfg.workers, cfg.runs_per_worker) as stack:
        ensure_global_concurrency_limit(stack.api_url, concurrency_limit_name(endpoint), env.cap)
        plan = [(cfg.sizes[0], False)] + [(size, True) for size in cfg.sizes]
        written: set[int] = set()
        for documents, sharded in plan:
            prefix = f"corpora/scaleout-{documents}"
            if documents not in written:
                bench.log(f"scaleout: writing {documents:,} documents under s3://{profile.bucket}/")
                write_s3_corpus(s3, profile.bucket, prefix, documents)
                written.add(documents)
            run_key = f"scale{documents}{'s' if sharded else 'u'}{uuid.uuid4().hex[:4]}"
            parameters = {
                "corpus": f"s3://{profile.bucket}/{prefix}/",
                "profile": "local",
                "endpoint": endpoint,
                "run_key": run_key,
                "batch_size": cfg.batch_size,
                "max_new_tokens": 4,
                "shards": 1,
                **({"shard_size": cfg.shard_size} if sharded else {}),
            }
            bench.log(f"scaleout: {documents:,} documents, {'sharded' if sharded else 'one run'}")
            flow_run, wall, sampler = run_and_measure(stack, parameters, cfg.timeout_s)
            if not flow_run.state.is_completed():
                raise RuntimeError(f"run {run_key} ended {flow_run.state}")
            summary = read_summary(profile, run_key) or {}
            counted = ledger(profile, summary, documents)
            parent = str(flow_run.id)
            children = {k: v for k, v in sampler.run_peak.items() if k != parent}
            rows.append(
                {
                    "documents": documents,
                    "sharded": sharded,
                    "shards": len(summary.get("shard_runs") or []) or 1,
                    "wall_s": round(wall, 1),
                    "docs_per_s": round(documents / wall, 1),
                    "completed": summary.get("completed"),
                    "results_rows": counted,
                    "parent_peak_rss_mib": round(sampler.run_peak.get(parent, 0) / MIB),
                    "shard_peak_rss_mib": round(max(children.values(), default=0) / MIB) or None,
                    "worker_peak_rss_mib": round(max(sampler.worker_peak.values()) / MIB),
                    "workers_used": len(
                        {
                            r.get("worker")
                            for r in summary.get("shard_runs") or []
                            if r.get("worker")
                        }
                    ),
                }
            )
            bench.log(f"scaleout: {rows[-1]}")
    single, small, large = rows[0], rows[1], rows[-1]
    peaks = [r[k] or 0 for r in rows[1:] for k in ("parent_peak_rss_mib", "shard_peak_rss_mib")]
    return {
        "config": vars(cfg) | {"cap": env.cap, "docs_per_file": DOCS_PER_FILE},
        "rows": rows,
        "sharded_vs_single_docs_per_s": ratio(small["docs_per_s"], single["docs_per_s"]),
        "largest_docs_per_s_vs_single": ratio(large["docs_per_s"], single["docs_per_s"]),
        "shard_rss_largest_vs_smallest": ratio(
            large["shard_peak_rss_mib"] or 0, small["shard_peak_rss_mib"] or 1
        ),
        "parent_rss_largest_vs_smallest": ratio(
            large["parent_peak_rss_mib"], small["parent_peak_rss_mib"] or 1
        ),
        "max_peak_rss_mib": max(peaks + [r["worker_peak_rss_mib"] for r in rows]),
    }


def scaleout_table(section: dict[str, Any]) -> Table:
    """The scale-out section as a table."""
    cfg = section["config"]
    table = Table(
        title=(
            f"8. Scale-out, instant echo handler, cap {cfg['cap']}, batch {cfg['batch_size']}: "
            f"JSONL files of {cfg['docs_per_file']:,} in S3, {cfg['workers']} workers x "
            f"{cfg['runs_per_worker']} runs, shards of {cfg['shard_size']:,}"
        )
    )
    for col in ("docs", "run", "shards", "workers used", "docs/s", "wall s", "completed",
                "parent peak MiB", "shard peak MiB", "worker peak MiB"):  # fmt: skip
        table.add_column(col, justify="left" if col == "run" else "right")
    for r in section["rows"]:
        table.add_row(
            f"{r['documents']:,}", "sharded" if r["sharded"] else "one run", str(r["shards"]),
            str(r["workers_used"] or ""), fmt(r["docs_per_s"], 1), fmt(r["wall_s"], 1),
            f"{r['completed']:,}", str(r["parent_peak_rss_mib"]),
            str(r["shard_peak_rss_mib"] or ""), str(r["worker_peak_rss_mib"]),
        )  # fmt: skip
    table.caption = (
        f"sharded ÷ one run (docs/s, smallest size): {fmt(section['sharded_vs_single_docs_per_s'], 2)}x; "
        f"largest sharded ÷ one run: {fmt(section['largest_docs_per_s_vs_single'], 2)}x; "
        f"peak RSS largest ÷ smallest: shard {fmt(section['shard_rss_largest_vs_smallest'], 2)}x, "
        f"parent {fmt(section['parent_rss_largest_vs_smallest'], 2)}x; "
        f"highest peak of any process {section['max_peak_rss_mib']} MiB (target <= 600)"
    )
    return table
