"""Package the model, deploy the async endpoint, process a corpus — and `docflow demo`, which runs it locally."""

from __future__ import annotations

import os
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Literal

from prefect import flow

from flows.deploy_endpoint import deploy_endpoint
from flows.package_model import package_model
from flows.process_documents import process_documents
from tasks.run.messages import end_to_end_run_name

DEMO_RESULTS_DIR = "results"
DEMO_SERVER_STARTUP_S = 180


@flow(name="end-to-end", flow_run_name=end_to_end_run_name)
def end_to_end(
    corpus: str = "datasets/sample",
    profile: str = "local",
    model_source: str = "smollm2",
    endpoint: str | None = None,
    template: Literal["summarize", "extract", "classify", "custom"] = "summarize",
    max_new_tokens: int = 64,
    batch_size: int = 8,
    output_dir: str | None = None,
    output_format: Literal["parquet", "csv", "jsonl"] = "parquet",
    environment: dict[str, str] | None = None,
    wait_delay_s: int = 2,
    wait_max_attempts: int = 300,
) -> dict[str, Any]:
    """Package → deploy → process: the whole path from a model and a corpus to a results table.

    Args:
        corpus: Local path or s3:// URI of the corpus (see process-documents).
        profile: Deployment profile name or path.
        model_source: What package-model packages: "smollm2" (local default), a folder, a .gguf, a hub id.
        endpoint: Endpoint name; default: the profile's.
        template: Prompt kind for process-documents.
        max_new_tokens: Generation budget per document.
        batch_size: Documents per invocation payload.
        output_dir: Also write the results table to this local folder.
        output_format: Results table format.
        environment: Extra environment variables for the model container.
        wait_delay_s: Seconds between endpoint status polls while deploying.
        wait_max_attempts: Polls before deployment gives up.
    """
    artifact = package_model(source=model_source, profile=profile)
    deployed = deploy_endpoint(
        profile=profile,
        model_artifact=artifact,
        endpoint_name=endpoint,
        environment=environment,
        wait_delay_s=wait_delay_s,
        wait_max_attempts=wait_max_attempts,
    )
    return process_documents(
        corpus=corpus,
        profile=profile,
        endpoint=deployed["endpoint_name"],
        template=template,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        output_dir=output_dir,
        output_format=output_format,
    )


def _start_localcloud(stack: ExitStack) -> str:
    """Use the localcloud at $DOCFLOW_ENDPOINT_URL, or start one in this process for the demo."""
    url = os.environ.get("DOCFLOW_ENDPOINT_URL")
    if url:
        return url
    from localcloud import LocalCloud

    cloud = stack.enter_context(LocalCloud(port=0))
    os.environ.update(cloud.environment())
    from tasks.aws import clear_client_cache

    clear_client_cache()
    return cloud.url


def _ensure_bucket(profile_name: str) -> None:
    """Create the profile's bucket in localcloud if it is not there yet (a first run)."""
    from botocore.exceptions import ClientError

    from tasks.aws import aws_client
    from tasks.settings import load_profile

    prof = load_profile(profile_name)
    s3 = aws_client("s3", prof)
    try:
        s3.head_bucket(Bucket=prof.bucket)
    except ClientError:
        s3.create_bucket(Bucket=prof.bucket)


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

    out = Path(results_dir)
    with ExitStack() as stack:
        # A first run migrates Prefect's database: give the embedded server more than 20 s; and
        # the demo runs offline, so the server does not try to send telemetry.
        wanted: dict[Any, Any] = {PREFECT_SERVER_ANALYTICS_ENABLED: False}
        if PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value() < DEMO_SERVER_STARTUP_S:
            wanted[PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS] = DEMO_SERVER_STARTUP_S
        stack.enter_context(temporary_settings(wanted))
        _start_localcloud(stack)
        _ensure_bucket(profile)
        result = end_to_end(
            corpus=corpus, profile=profile, model_source=model_source, output_dir=str(out)
        )
        print_summary(result, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_demo())
