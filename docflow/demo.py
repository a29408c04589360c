"""`docflow demo`: the whole pipeline on localcloud with the local default model, and its summary."""

from __future__ import annotations

import os
from contextlib import ExitStack
from pathlib import Path
from typing import Any

DEMO_RESULTS_DIR = "results"
DEMO_SERVER_STARTUP_S = 180


def start_localcloud(stack: ExitStack) -> str:
    """Use the localcloud at $DOCFLOW_ENDPOINT_URL, or start one in this process for the demo."""
    url = os.environ.get("DOCFLOW_ENDPOINT_URL")
    if url:
        return url
    from localcloud import LocalCloud

    cloud = stack.enter_context(LocalCloud(port=0))
    os.environ.update(cloud.environment())
    from tasks.aws.clients import clear_client_cache

    clear_client_cache()
    return cloud.url


def print_summary(result: dict[str, Any], results_dir: Path | None) -> None:
    """The run's counts, timings and the first generated texts, as rich tables."""
    import pandas as pd
    from rich.console import Console
    from rich.table import Table

    console = Console()
    counts = Table(title=f"docflow run {result.get('run_key')}", show_header=False)
    for name in (
        "documents",
        "completed",
        "failed",
        "rejected",
        "batches",
        "invocations",
        "wall_time_s",
        "docs_per_s",
        "latency_p50_s",
        "latency_p90_s",
        "prompt_tokens",
        "completion_tokens",
        "hit_budget",
        "estimated_cost_usd",
    ):
        if name in result:
            value = result[name]
            counts.add_row(name, f"{value:.3f}" if isinstance(value, float) else str(value))
    console.print(counts)
    local = result.get("local_results_path")
    if local and Path(local).exists():
        frame = pd.read_parquet(local) if local.endswith(".parquet") else None
        if frame is not None:
            rows = Table(title="first results")
            for column in ("doc_id", "status", "text"):
                rows.add_column(column, overflow="fold")
            for record in frame.head(10).to_dict(orient="records"):
                text = record.get("text") if record.get("status") == "completed" else None
                shown = text if isinstance(text, str) else str(record.get("reason") or "")
                rows.add_row(str(record.get("doc_id")), str(record.get("status")), shown[:160])
            console.print(rows)
    console.print(f"results: {result.get('results_uri')}")
    if results_dir is not None:
        console.print(f"local copy: {results_dir.resolve()}")


def run_demo(
    corpus: str = "datasets/sample",
    profile: str = "local",
    model_source: str = "smollm2",
    results_dir: str = DEMO_RESULTS_DIR,
) -> int:
    """`docflow demo`: end_to_end on localcloud with the local default model; results in ./results/."""
    from prefect.settings import (
        PREFECT_SERVER_ANALYTICS_ENABLED,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        temporary_settings,
    )

    from flows.end_to_end import end_to_end
    from tasks.aws.clients import aws_client
    from tasks.aws.s3 import ensure_bucket
    from tasks.params.groups import OutputOptions
    from tasks.settings import load_profile

    out = Path(results_dir)
    with ExitStack() as stack:
        # A first run migrates Prefect's database: give the embedded server more than 20 s; and
        # the demo runs offline, so the server does not try to send telemetry.
        wanted: dict[Any, Any] = {PREFECT_SERVER_ANALYTICS_ENABLED: False}
        if PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value() < DEMO_SERVER_STARTUP_S:
            wanted[PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS] = DEMO_SERVER_STARTUP_S
        stack.enter_context(temporary_settings(wanted))
        start_localcloud(stack)
        prof = load_profile(profile)
        ensure_bucket(aws_client("s3", prof), prof.bucket)
        result = end_to_end(
            corpus=corpus,
            profile=profile,
            model_source=model_source,
            output=OutputOptions(output_dir=str(out)),
        )
        print_summary(result, out)
    return 0
