"""The end of a run: aggregate its outputs into tables, publish artifacts, report and return."""

from __future__ import annotations

import time
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Cancelled, State

from tasks.corpus.documents import Corpus
from tasks.endpoint.usage import EndpointUsage
from tasks.params.groups import OutputOptions
from tasks.run.fanout.spool import OutputSpool
from tasks.run.fanout.stats import DriveStats
from tasks.run.long.split import LongDocuments
from tasks.run.plan.layout import run_artifact_key
from tasks.run.plan.manifest import RunManifest
from tasks.run.request.typed_answers import Answers
from tasks.run.results.aggregate import Preview, aggregate_run
from tasks.run.results.summary import RunSummary, summary_markdown
from tasks.settings import Profile

TABLE_ROWS = 20


@task(name="aggregate-results", cache_policy=NO_CACHE)
def aggregate(
    manifest: RunManifest,
    corpus: Corpus,
    profile: Profile,
    started: float,
    output: OutputOptions,
    spool: OutputSpool | None,
    long_documents: LongDocuments | None = None,
    kind: str = "summarize",
    reduce_manifest: RunManifest | None = None,
    usage: EndpointUsage | None = None,
    answers: Answers | None = None,
) -> tuple[RunSummary, Preview]:
    """Join every output back to its input row and write results, failures and summary."""
    return aggregate_run(
        manifest,
        corpus,
        profile,
        wall_time_s=time.monotonic() - started,
        output_format=output.output_format,
        local_dir=output.output_dir,
        preview_rows=TABLE_ROWS,
        spool=spool,
        long_documents=long_documents,
        kind=kind,
        reduce_manifest=reduce_manifest,
        usage=usage,
        answers=answers,
    )


@task(name="publish-run-artifacts", cache_policy=NO_CACHE)
def publish_artifacts(summary: RunSummary, preview: Preview, run_key: str) -> None:
    """The markdown summary, the first result rows and, when any, the failures, as artifacts."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    create_markdown_artifact(
        summary_markdown(summary),
        key=run_artifact_key(run_key, "summary"),
        description="process-documents summary",
    )
    if preview.results:
        create_table_artifact(
            preview.results,
            key=run_artifact_key(run_key, "results"),
            description="first result rows",
        )
    if summary.failed or summary.rejected or summary.canceled:
        create_table_artifact(
            preview.failures,
            key=run_artifact_key(run_key, "failures"),
            description=f"{summary.failed} failed, {summary.rejected} rejected and "
            f"{summary.canceled} canceled documents "
            f"with their reasons (first {TABLE_ROWS}; all in {summary.failures_uri})",
        )


def report_run(
    summary: RunSummary,
    key: str,
    max_new_tokens: int,
    *,
    resumed: bool,
    stats: DriveStats,
    reduce_manifest: RunManifest | None,
) -> dict[str, Any]:
    """Log what needs a person's attention and return the flow's result (summary + fan-out)."""
    logger = get_run_logger()
    if summary.failed or summary.rejected or summary.canceled:
        logger.warning(
            "run %s: %d completed, %d failed, %d rejected, %d canceled — see %s",
            key,
            summary.completed,
            summary.failed,
            summary.rejected,
            summary.canceled,
            summary.failures_uri,
        )
    if summary.hit_budget:
        logger.info(
            "run %s: %d of %d answers stopped at max_new_tokens=%d (finish_reason length); raise "
            "max_new_tokens for complete answers",
            key,
            summary.hit_budget,
            summary.completed,
            max_new_tokens,
        )
    result = summary.model_dump(mode="json")
    result.update(run_key=key, resumed=resumed, fanout=stats.model_dump())
    if reduce_manifest is not None:
        result["reduce_run_key"] = reduce_manifest.run_key
    return result


def canceled_state(reason: str, summary: RunSummary, key: str) -> State[Any]:
    """A canceled run's final state: Cancelled, not Completed (a direct caller gets CancelledRun
    with this message); the summary is in S3 (summary.json)."""
    return Cancelled(
        message=f"{reason}: {summary.completed} completed, {summary.failed} failed, "
        f"{summary.canceled} canceled; summary {summary.summary_uri}; resume with run_key {key}"
    )
