"""A run's summary: counts, timings, latency percentiles, tokens and cost, as ``summary.json``
and as the Markdown of the Prefect summary artifact."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, Field

from tasks.endpoint.usage import EndpointUsage, instance_cost
from tasks.run.plan.layout import run_uri, summary_uri
from tasks.run.plan.manifest import BatchStatus, RunManifest
from tasks.settings import Profile


class RunSummary(BaseModel):
    """The small summary a run returns and writes as summary.json."""

    run_key: str
    endpoint: str
    documents: int
    completed: int
    failed: int
    rejected: int
    canceled: int = 0
    batches: int
    invocations: int
    wall_time_s: float
    attempts: int = 1
    total_wall_time_s: float = 0.0
    docs_per_s: float
    latency_p50_s: float | None = None
    latency_p90_s: float | None = None
    latency_p99_s: float | None = None
    turnaround_p50_s: float | None = None
    turnaround_p90_s: float | None = None
    turnaround_p99_s: float | None = None
    prompt_tokens: int
    completion_tokens: int
    hit_budget: int = Field(
        0, description="Completed answers that stopped at max_new_tokens (finish_reason 'length')."
    )
    instance_type: str = Field(
        description="The instance type(s) that ran (the endpoint's config, not the profile's)."
    )
    instances_min: int = 0
    instances_max: int = 0
    instance_seconds: float = Field(
        0.0, description="Instance-seconds the endpoint kept up while the run was driven."
    )
    instance_seconds_by_type: dict[str, float] = {}
    instance_samples: int = Field(0, description="DescribeEndpoint samples they come from.")
    estimated_cost_usd: float | None = Field(
        description="instance_seconds × the profile's on-demand price of each type that ran "
        "(None: a type without a price in the profile)."
    )
    cost_note: str | None = None
    notifications_received: int = 0
    duplicate_notifications: int = 0
    unknown_notifications: int = 0
    top_failure_reasons: dict[str, int] = {}
    excluded: dict[str, int] = Field(
        {}, description="Folder files left out by the include/exclude patterns, per pattern."
    )
    results_uri: str
    failures_uri: str
    summary_uri: str
    local_results_path: str | None = None


@dataclass
class Totals:
    """Counts and sums accumulated over the chunks for the summary."""

    rows: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    hit_budget: int = 0
    reasons: Counter[str] = field(default_factory=Counter)

    def add(self, table: pa.Table) -> None:
        """Count one written chunk."""
        self.rows += table.num_rows
        columns = ("status", "reason", "prompt_tokens", "completion_tokens", "finish_reason")
        for status, reason, prompt, completion, finish in zip(
            *(table[c].to_pylist() for c in columns), strict=True
        ):
            if status is not None:
                self.statuses[status] += 1
            if status == "completed":
                self.prompt_tokens += prompt or 0
                self.completion_tokens += completion or 0
                self.hit_budget += finish == "length"
            elif reason is not None:
                self.reasons[reason] += 1


def build_summary(
    manifest: RunManifest,
    documents: int,
    profile: Profile,
    totals: Totals,
    wall_time_s: float,
    results_name: str,
    local_dir: str | None,
    usage: EndpointUsage | None = None,
) -> RunSummary:
    """The run's summary from the streamed totals, the manifest's timings and the endpoint's
    metered instances (``usage``; None: not metered, e.g. nothing was left to run)."""
    service, turnaround = latencies(manifest)
    lat = percentiles(service)
    tur = percentiles(turnaround)
    usage = usage or EndpointUsage()
    cost = instance_cost(usage, profile)
    note = None
    if cost.unpriced:
        note = (
            f"no price for {', '.join(cost.unpriced)}: add it to instance_hourly_usd_by_type "
            "in the profile"
        )
    return RunSummary(
        run_key=manifest.run_key,
        endpoint=manifest.endpoint,
        documents=documents,
        completed=totals.statuses.get("completed", 0),
        failed=totals.statuses.get("failed", 0),
        rejected=totals.statuses.get("rejected", 0),
        canceled=totals.statuses.get("canceled", 0),
        batches=len(manifest.batches),
        invocations=sum(r.attempts for r in manifest.batches.values()),
        wall_time_s=round(wall_time_s, 3),
        attempts=max(1, len(manifest.attempt_log)),
        # The earlier attempts as far as their last manifest save shows, plus this one.
        total_wall_time_s=round(
            sum(a.duration_s for a in manifest.attempt_log[:-1]) + max(wall_time_s, 0.0), 3
        ),
        docs_per_s=round(documents / wall_time_s, 3) if wall_time_s > 0 else 0.0,
        latency_p50_s=lat[0],
        latency_p90_s=lat[1],
        latency_p99_s=lat[2],
        turnaround_p50_s=tur[0],
        turnaround_p90_s=tur[1],
        turnaround_p99_s=tur[2],
        prompt_tokens=totals.prompt_tokens,
        completion_tokens=totals.completion_tokens,
        hit_budget=totals.hit_budget,
        instance_type=", ".join(sorted(usage.instance_seconds)) or "none metered",
        instances_min=usage.instances_min,
        instances_max=usage.instances_max,
        instance_seconds=round(usage.total_seconds, 3),
        instance_seconds_by_type=usage.instance_seconds,
        instance_samples=usage.samples,
        estimated_cost_usd=cost.usd,
        cost_note=note,
        notifications_received=manifest.notifications.received,
        duplicate_notifications=manifest.notifications.duplicates,
        unknown_notifications=manifest.notifications.unknown,
        top_failure_reasons=dict(totals.reasons.most_common(5)),
        results_uri=run_uri(profile, manifest.run_key, results_name),
        failures_uri=run_uri(profile, manifest.run_key, "failures.parquet"),
        summary_uri=summary_uri(profile, manifest.run_key),
        local_results_path=str(Path(local_dir) / results_name) if local_dir else None,
    )


def percentiles(values: list[float]) -> tuple[float | None, float | None, float | None]:
    if not values:
        return None, None, None
    p50, p90, p99 = np.percentile(np.asarray(values, dtype=float), [50, 90, 99])
    return round(float(p50), 3), round(float(p90), 3), round(float(p99), 3)


def latencies(manifest: RunManifest) -> tuple[list[float], list[float]]:
    """Per batch: receivedTime→eventTime (service latency) and submit→eventTime (turnaround)."""
    service: list[float] = []
    turnaround: list[float] = []
    for record in manifest.batches.values():
        if record.status not in (BatchStatus.COMPLETED, BatchStatus.FAILED):
            continue
        if record.completed_at is None:
            continue
        if record.received_time is not None:
            service.append((record.completed_at - record.received_time).total_seconds())
        if record.submitted_at is not None:
            turnaround.append((record.completed_at - record.submitted_at).total_seconds())
    return service, turnaround


def _fmt(value: float | None, unit: str = "s") -> str:
    return "–" if value is None else f"{value:.2f} {unit}"


def _instances(summary: RunSummary) -> str:
    low, high = summary.instances_min, summary.instances_max
    return f"{low} instance(s)" if low == high else f"{low}–{high} instances"


def _cost(summary: RunSummary) -> str:
    if summary.estimated_cost_usd is None:
        return f"unknown: {summary.cost_note}"
    return f"${summary.estimated_cost_usd:.4f}"


def summary_markdown(summary: RunSummary) -> str:
    """The run summary as Markdown (the Prefect markdown artifact)."""
    lines = [
        f"# Run `{summary.run_key}` on `{summary.endpoint}`",
        "",
        "| documents | completed | failed | rejected | canceled |",
        "|---:|---:|---:|---:|---:|",
        f"| {summary.documents} | {summary.completed} | {summary.failed} | {summary.rejected} "
        f"| {summary.canceled} |",
        "",
        "| measure | value |",
        "|---|---:|",
        f"| wall time (this attempt) | {_fmt(summary.wall_time_s)} |",
        f"| wall time over {summary.attempts} attempt(s) | {_fmt(summary.total_wall_time_s)} |",
        f"| documents per second | {summary.docs_per_s:.2f} |",
        f"| batches / invocations | {summary.batches} / {summary.invocations} |",
        f"| latency p50 / p90 / p99 (received → done) | {_fmt(summary.latency_p50_s)} / "
        f"{_fmt(summary.latency_p90_s)} / {_fmt(summary.latency_p99_s)} |",
        f"| turnaround p50 / p90 / p99 (submitted → done) | {_fmt(summary.turnaround_p50_s)} / "
        f"{_fmt(summary.turnaround_p90_s)} / {_fmt(summary.turnaround_p99_s)} |",
        f"| tokens in / out | {summary.prompt_tokens} / {summary.completion_tokens} |",
        f"| answers cut at max_new_tokens (finish_reason length) | {summary.hit_budget} of "
        f"{summary.completed} |",
        f"| notifications (duplicates, unknown) | {summary.notifications_received} "
        f"({summary.duplicate_notifications}, {summary.unknown_notifications}) |",
        f"| instance-seconds on {summary.instance_type} ({_instances(summary)}, "
        f"{summary.instance_samples} samples) | {summary.instance_seconds:.1f} |",
        f"| estimated instance cost | {_cost(summary)} |",
        "",
        f"Results: `{summary.results_uri}`  ",
        f"Failures: `{summary.failures_uri}`",
    ]
    if summary.local_results_path:
        lines.append(f"  \nLocal copy: `{summary.local_results_path}`")
    if summary.top_failure_reasons:
        lines += [
            "",
            "## Top failure and rejection reasons",
            "",
            "| reason | documents |",
            "|---|---:|",
        ]
        for reason, count in summary.top_failure_reasons.items():
            lines.append(f"| {reason.replace('|', '/')[:200]} | {count} |")
    return "\n".join(lines) + "\n"
