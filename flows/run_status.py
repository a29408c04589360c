"""The run status read-out for the UI: what `docflow runs show KEY` (or `docflow runs list`) prints,
as a flow run's Markdown artifact and return value."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from tasks.artifacts import artifact_key
from tasks.run.plan.layout import run_artifact_key, validate_run_key
from tasks.run.results.status import format_list, format_show, list_runs, read_status
from tasks.settings import load_profile


def _status_run_name() -> str:
    from prefect.runtime import flow_run

    key = flow_run.parameters.get("run_key")
    return f"status-{key}" if key else "status-recent-runs"


@flow(name="run-status", flow_run_name=_status_run_name)
def run_status(run_key: str | None = None, profile: str = "local", limit: int = 20) -> Any:
    """Read a run's state back from S3: counts as the batch services' request_counts, progress,
    failures by reason and where the results are; without run_key, the recent runs.

    Args:
        run_key: The run to show (as `docflow runs show KEY`); empty: list the recent runs.
        profile: Deployment profile name (deployments/<name>.yaml) or path to one.
        limit: How many recent runs to list when no run_key is given.
    """
    prof = load_profile(profile)
    logger = get_run_logger()
    if not run_key:
        runs = list_runs(prof, limit=limit)
        text = format_list(runs)
        create_markdown_artifact(
            f"# docflow runs\n\n```\n{text}```\n",
            key=artifact_key("docflow", "runs"),
            description=f"the {len(runs)} most recent runs",
        )
        logger.info("%d runs:\n%s", len(runs), text)
        return [r.model_dump(mode="json") for r in runs]
    status = read_status(prof, validate_run_key(run_key))
    if status is None:
        raise ValueError(
            f"no run {run_key!r} in s3://{prof.bucket}/{prof.prefixes.runs}/; run run-status "
            "without run_key to list the runs there"
        )
    text = format_show(status)
    create_markdown_artifact(
        f"# Run `{status.run_key}`: {status.state}\n\n```\n{text}```\n",
        key=run_artifact_key(status.run_key, "status"),
        description=f"run {status.run_key}: {status.state}, {status.progress_pct:.1f} % finished",
    )
    logger.info("%s", text.rstrip())
    return status.model_dump(mode="json")
