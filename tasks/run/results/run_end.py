"""Tell people when a run ends: a short JSON summary published to the ``<endpoint>-runs`` SNS topic.

Published from the process-documents flow's Prefect state hooks (completion, failure,
cancellation); who receives it is the topic's subscriptions (email, SQS, HTTPS: the user's
choice). A hook never fails the run: a notification that cannot be sent is logged.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from tasks.settings import Profile

logger = logging.getLogger("docflow.notify")

COUNTS = ("documents", "completed", "failed", "rejected", "canceled")


def run_message(
    event: str,
    *,
    run_key: str | None,
    endpoint: str,
    flow_run: Any,
    summary: dict[str, Any] | None,
    error: str | None = None,
) -> dict[str, Any]:
    """The notification body: what ended, how, the counts and where the results are."""
    counts = {k: int(summary.get(k, 0)) for k in COUNTS} if summary else None
    outcome = event
    if event == "completed" and counts and counts["failed"]:
        outcome = "completed_with_failures"
    return {
        "source": "docflow",
        "event": f"run.{event}",
        "outcome": outcome,
        "run_key": run_key or (summary or {}).get("run_key"),
        "endpoint": endpoint,
        "flow_run_id": str(flow_run.id),
        "flow_run_name": flow_run.name,
        "counts": counts,
        "results_uri": (summary or {}).get("results_uri"),
        "failures_uri": (summary or {}).get("failures_uri"),
        "error": error,
    }


def subject_of(message: dict[str, Any]) -> str:
    """An e-mail subject line (SNS allows 100 characters)."""
    counts = message.get("counts") or {}
    tail = f": {counts.get('failed', 0)} failed" if message["outcome"] != "completed" else ""
    return f"docflow run {message['run_key'] or '?'} {message['outcome']}{tail}"[:100]


def publish(profile: Profile, endpoint: str, message: dict[str, Any]) -> str:
    """Publish ``message`` to ``<endpoint>-runs`` (created when missing); returns the MessageId."""
    from tasks.aws.clients import aws_client
    from tasks.endpoint.spec import runs_topic_name
    from tasks.endpoint.topics import ensure_topic

    arn, _ = ensure_topic(profile, runs_topic_name(endpoint))
    sent = aws_client("sns", profile).publish(
        TopicArn=arn,
        Subject=subject_of(message),
        Message=json.dumps(message),
        MessageAttributes={"outcome": {"DataType": "String", "StringValue": message["outcome"]}},
    )
    return str(sent["MessageId"])


def notify_run_end(event: str, flow_run: Any, state: Any) -> None:
    """A Prefect state hook's work: read the run's parameters and summary, publish, never raise."""
    try:
        from tasks.settings import load_profile

        params = dict(flow_run.parameters or {})
        if params.get("shard"):  # one shard of a sharded run: its parent notifies for the run
            return
        profile = load_profile(params.get("profile") or "local")
        endpoint = params.get("endpoint") or profile.endpoint_name
        summary = None
        if event == "completed":
            data = state.result(raise_on_failure=False)
            summary = data if isinstance(data, dict) else None
        elif event == "cancelled" and params.get("run_key"):
            from tasks.run.results.status import (
                read_summary,  # a cancelled run wrote it before ending
            )

            summary = read_summary(profile, str(params["run_key"]))
        message = run_message(
            event,
            run_key=params.get("run_key"),
            endpoint=endpoint,
            flow_run=flow_run,
            summary=summary,
            error=None if event == "completed" else state.message,
        )
        publish(profile, endpoint, message)
    except Exception:  # a notification must never turn a finished run into a failed one
        logger.exception("could not publish the run notification for flow run %s", flow_run.id)


def _on_completion(flow: Any, flow_run: Any, state: Any) -> None:
    notify_run_end("completed", flow_run, state)


def _on_failure(flow: Any, flow_run: Any, state: Any) -> None:
    notify_run_end("failed", flow_run, state)


def _on_cancellation(flow: Any, flow_run: Any, state: Any) -> None:
    notify_run_end("cancelled", flow_run, state)


# A flow's state hooks that publish the run's end to the ``<endpoint>-runs`` topic.
RUN_END_HOOKS: dict[str, Any] = {
    "on_completion": [_on_completion],
    "on_failure": [_on_failure],
    "on_cancellation": [_on_cancellation],
    "on_crashed": [_on_failure],
}
