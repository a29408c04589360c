"""The four comparisons; each returns a JSON-ready dict and leaves the table to ``report``."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from benchmarks.config import BenchConfig
from benchmarks.constrained import constrained
from benchmarks.corpus import write_corpus
from benchmarks.endpoints import deploy_echo, deploy_model, download_model
from benchmarks.environment import BenchEnvironment
from benchmarks.extraction import section as extraction
from benchmarks.harness import ratio, run_contender
from benchmarks.metrics import percentile
from benchmarks.scaleout import scaleout
from benchmarks.serving import serving
from benchmarks.sessions import sessions
from benchmarks.spec import ContenderSpec, EndpointInfo


class Bench:
    """One bench invocation: the shared environment, the config, and runs already made."""

    def __init__(
        self,
        env: BenchEnvironment,
        cfg: BenchConfig,
        workdir: Path,
        log: Any,
        profile_dir: Path | None = None,
    ) -> None:
        self.env = env
        self.profile_dir = profile_dir
        self.cfg = cfg
        self.workdir = workdir
        self.log = log
        self._echo: EndpointInfo | None = None
        self.docflow_runs: dict[int, dict[str, Any]] = {}

    @property
    def echo(self) -> EndpointInfo:
        """The echo endpoint every instant-handler comparison shares (deployed on first use)."""
        if self._echo is None:
            self.log("deploying the echo endpoint")
            self._echo = deploy_echo(self.env)
        return self._echo

    def corpus(self, n_docs: int, **kwargs: Any) -> Path:
        """The synthetic corpus of ``n_docs`` documents (written once per bench workdir)."""
        tag = "-".join(f"{k}{v}" for k, v in sorted(kwargs.items()))
        return write_corpus(self.workdir / f"corpus-{n_docs}{tag}.jsonl", n_docs, **kwargs)

    def run(
        self, contender: str, n_docs: int, endpoint: EndpointInfo, **fields: Any
    ) -> dict[str, Any]:
        """Run one contender on the corpus of ``n_docs`` in its own process."""
        corpus = fields.pop("corpus", None) or self.corpus(n_docs)
        spec = ContenderSpec(
            contender=contender,
            corpus=str(corpus),
            n_docs=n_docs,
            batch_size=fields.pop("batch_size", self.cfg.batch_size),
            cap=self.cfg.cap,
            endpoint=endpoint,
            run_id=uuid.uuid4().hex[:10],
            **fields,
        )
        self.log(f"{contender}: {n_docs} documents")
        env = self.env.child_env(endpoint)
        if self.profile_dir is not None and contender in ("docflow", "prefect_floor"):
            self.profile_dir.mkdir(parents=True, exist_ok=True)
            name = f"{contender}-{n_docs}-{spec.run_id}.txt"
            env["BENCH_PROFILE"] = str(self.profile_dir / name)
        before = self._services_cpu_s(endpoint)
        result = run_contender(spec, env, timeout_s=self.cfg.contender_timeout_s)
        # CPU the shared services spent meanwhile: localcloud and the Prefect server (this process)
        # and the endpoint's instances. On a 2-core machine that CPU is taken from the contender.
        result["services_cpu_s"] = self._services_cpu_s(endpoint) - before
        self.log(
            f"{contender}: {result['docs_completed']}/{n_docs} completed in {result['wall_s']:.1f} s "
            f"({result['docs_per_s']:.1f} docs/s, {result['api_calls_per_doc']:.2f} calls/doc, "
            f"peak RSS {result['peak_rss_mb']:.0f} MiB)"
        )
        return result

    def _services_cpu_s(self, endpoint: EndpointInfo) -> float:
        own = os.times()
        return own.user + own.system + self.env.instance_cpu_s(endpoint.name)

    def docflow_echo(self, n_docs: int) -> dict[str, Any]:
        """docflow on the echo endpoint at ``n_docs`` (the overhead section's median run when it ran)."""
        if n_docs not in self.docflow_runs:
            self.docflow_runs[n_docs] = self.run("docflow", n_docs, self.echo)
        return self.docflow_runs[n_docs]


def overhead(bench: Bench) -> dict[str, Any]:
    """Section 1: docflow vs the naive and the hand-written client, instant handler."""
    floor = bench.run("prefect_floor", 0, bench.echo, corpus="-")
    sizes: dict[str, Any] = {}
    for n in bench.cfg.overhead_sizes:
        repeats: dict[str, list[dict[str, Any]]] = {"docflow": [], "handwritten": []}
        for _ in range(bench.cfg.repeat):  # interleaved, so both see the same machine
            for name, done in repeats.items():
                done.append(bench.run(name, n, bench.echo))
        docflow, handwritten = median_run(repeats["docflow"]), median_run(repeats["handwritten"])
        bench.docflow_runs[n] = docflow
        runs = {
            "docflow": docflow,
            "handwritten": handwritten,
            "naive": bench.run("naive", n, bench.echo, time_budget_s=bench.cfg.naive_budget_s),
        }
        beyond_floor_s = docflow["wall_s"] - floor["wall_s"]
        without_floor = n / beyond_floor_s if beyond_floor_s > 0 else None
        sizes[str(n)] = {
            "runs": runs,
            "docflow_vs_naive": ratio(docflow["docs_per_s"], runs["naive"]["docs_per_s"]),
            "docflow_vs_handwritten": ratio(docflow["docs_per_s"], handwritten["docs_per_s"]),
            "docflow_without_prefect_floor_vs_handwritten": (
                None if without_floor is None else ratio(without_floor, handwritten["docs_per_s"])
            ),
        }
    return {
        "cap": bench.cfg.cap,
        "batch_size": bench.cfg.batch_size,
        "repeat": bench.cfg.repeat,
        "prefect_floor_s": floor["wall_s"],
        "sizes": sizes,
    }


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median documents/s, carrying every run's rate under ``repeats_docs_per_s``."""
    ordered = sorted(runs, key=lambda r: r["docs_per_s"])
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    chosen["repeats_docs_per_s"] = [r["docs_per_s"] for r in runs]
    return chosen


def model_efficiency(bench: Bench) -> dict[str, Any]:
    """Section 2: docflow end to end vs the same handler called in-process, SmolLM2 on CPU."""
    cfg = bench.cfg
    bench.log(f"packaging {cfg.model_source} and deploying it")
    threads = cfg.model_threads
    endpoint, artifact = deploy_model(bench.env, cfg.model_source, threads)
    model_dir = download_model(bench.env, artifact, bench.workdir / "model")
    corpus = bench.corpus(cfg.model_docs, min_words=10, max_words=30)
    params = {"max_new_tokens": cfg.model_new_tokens}
    common = {"corpus": corpus, "batch_size": cfg.model_batch_size, "parameters": params}
    alone = bench.run(
        "model_alone", cfg.model_docs, endpoint, model_dir=str(model_dir), threads=threads, **common
    )
    serving_before = bench.env.instance_cpu_s(endpoint.name)
    end_to_end = bench.run("docflow", cfg.model_docs, endpoint, **common)
    # CPU the endpoint's instance processes spent serving docflow's run, next to the model alone's.
    end_to_end["instance_cpu_s"] = bench.env.instance_cpu_s(endpoint.name) - serving_before
    return {
        "model_source": cfg.model_source,
        "artifact": artifact,
        "documents": cfg.model_docs,
        "batch_size": cfg.model_batch_size,
        "max_new_tokens": cfg.model_new_tokens,
        "torch_threads": threads,
        "runs": {"docflow": end_to_end, "model_alone": alone},
        "docs_per_s_ratio": ratio(end_to_end["docs_per_s"], alone["docs_per_s"]),
        "tokens_per_s_ratio": ratio(end_to_end["tokens_per_s"], alone["tokens_per_s"]),
        "model_cpu_s_ratio": ratio(end_to_end["instance_cpu_s"], alone["cpu_s"]),
    }


def completion(bench: Bench) -> dict[str, Any]:
    """Section 3: output written (notification eventTime) -> docflow records the batch done."""
    sizes: dict[str, Any] = {}
    for n in bench.cfg.overhead_sizes:
        delays = bench.docflow_echo(n)["extra"].get("completion_delays_s") or []
        sizes[str(n)] = {
            "batches": len(delays),
            "p50_s": percentile(delays, 50),
            "p95_s": percentile(delays, 95),
            "max_s": max(delays),
        }
    return {"source": "notification eventTime -> RunManifest.mark(completed)", "sizes": sizes}


def scaling(bench: Bench) -> dict[str, Any]:
    """Section 4: docflow's documents/s and peak RSS as the corpus grows, instant handler."""
    sizes = {str(n): bench.docflow_echo(n) for n in bench.cfg.scaling_sizes}
    first = sizes[str(bench.cfg.scaling_sizes[0])]
    last = sizes[str(bench.cfg.scaling_sizes[-1])]
    rows = [
        {
            "docs": int(n),
            "docs_per_s": r["docs_per_s"],
            "peak_rss_mb": r["peak_rss_mb"],
            "rss_before_run_mb": r["rss_before_run_mb"],
            "docs_completed": r["docs_completed"],
            "wall_s": r["wall_s"],
        }
        for n, r in sizes.items()
    ]
    return {
        "rows": rows,
        "rss_growth": ratio(last["peak_rss_mb"], first["peak_rss_mb"]),
        "docs_per_s_change": ratio(last["docs_per_s"], first["docs_per_s"]),
    }


SECTIONS = {
    "overhead": overhead,
    "model": model_efficiency,
    "completion": completion,
    "scaling": scaling,
    "serving": serving,
    "sessions": sessions,
    "constrained": constrained,
    "scaleout": lambda bench: scaleout(bench, bench.cfg.scaleout),
    "extraction": lambda bench: extraction(bench.cfg.extraction_files, bench.cfg.ocr_pages),
}
