"""The end of an ask run: its results table, its summary and its artifacts."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.ask.asker import Row
from tasks.aws.clients import aws_client
from tasks.aws.s3 import split_s3_uri
from tasks.run.plan.layout import ask_results_file, ask_results_uri, run_artifact_key
from tasks.run.results.status import write_summary
from tasks.settings import Profile

TABLE_ROWS = 20
STATUSES = ("completed", "failed", "rejected")


@task(name="write-results", cache_policy=NO_CACHE)
def write_results(profile: Profile, run_key: str, rows: list[Row], output_dir: str | None) -> str:
    """The results table (JSON Lines) in S3 under the run, and in ``output_dir`` when given."""
    body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
    uri = ask_results_uri(profile, run_key)
    bucket, key = split_s3_uri(uri)
    aws_client("s3", profile).put_object(Bucket=bucket, Key=key, Body=body)
    if output_dir:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        ask_results_file(output_dir, run_key).write_bytes(body)
    return uri


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


@task(name="summarize-ask-run", cache_policy=NO_CACHE)
def summarize(
    profile: Profile,
    run_key: str,
    endpoint: str,
    rows: list[Row],
    *,
    documents: int,
    questions: int,
    answered_before: int,
    results_uri: str,
    started: float,
) -> dict[str, Any]:
    """The run's counts and means, written as its summary.json; problems logged."""
    completed = [r for r in rows if r["status"] == "completed"]
    summary: dict[str, Any] = {
        "run_key": run_key,
        "endpoint": endpoint,
        "documents": documents,
        "questions": questions,
        "pairs": len(rows),
        **{status: sum(r["status"] == status for r in rows) for status in STATUSES},
        "resumed_pairs": answered_before,
        "asked_pairs": len(rows) - answered_before - sum(r["status"] == "rejected" for r in rows),
        "mean_cached_tokens": _mean([float(r["cached_tokens"] or 0) for r in completed]),
        "mean_latency_s": _mean([float(r["latency_s"] or 0) for r in completed]),
        "results_uri": results_uri,
        "wall_time_s": round(time.monotonic() - started, 3),
    }
    summary["summary_uri"] = write_summary(profile, run_key, summary)
    if summary["failed"] or summary["rejected"]:
        get_run_logger().warning(
            "run %s: %d completed, %d failed, %d rejected — see %s",
            run_key,
            summary["completed"],
            summary["failed"],
            summary["rejected"],
            results_uri,
        )
    return summary


@task(name="publish-ask-artifacts", cache_policy=NO_CACHE)
def publish_artifacts(summary: dict[str, Any], rows: list[Row], run_key: str) -> None:
    """A markdown summary, the first rows and the failures as Prefect artifacts."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    lines = [
        f"# ask-documents {run_key}",
        "",
        f"{summary['documents']} documents x {summary['questions']} questions = "
        f"{summary['pairs']} pairs: {summary['completed']} completed, {summary['failed']} "
        f"failed, {summary['rejected']} rejected ({summary['resumed_pairs']} answered before).",
        f"Mean cached tokens per answer: {summary['mean_cached_tokens']}; "
        f"mean latency {summary['mean_latency_s']} s. Results: {summary['results_uri']}",
    ]
    create_markdown_artifact(
        "\n".join(lines),
        key=run_artifact_key(run_key, "summary"),
        description="ask-documents summary",
    )
    table = [{k: v for k, v in r.items() if k != "reason"} for r in rows[:TABLE_ROWS]]
    if table:
        create_table_artifact(
            table, key=run_artifact_key(run_key, "results"), description="first rows"
        )
    failures = [r for r in rows if r["status"] != "completed"][:TABLE_ROWS]
    if failures:
        create_table_artifact(
            failures,
            key=run_artifact_key(run_key, "failures"),
            description=f"{summary['failed']} failed and {summary['rejected']} rejected pairs "
            f"with their reasons (first {TABLE_ROWS})",
        )
