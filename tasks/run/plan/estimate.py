"""What a run will cost before it runs: documents, batches, tokens, instance-hours and dollars.

Nothing is invoked. Prompt tokens are counted with the packaged model's tokenizer
(``tasks.run.request.tokens``); time and money come from the generated tokens/s measured for that model on
that kind of instance (``MEASURED``, each figure with its source), for the whole generation budget
(every document generating ``max_new_tokens``: an upper bound).
"""

from __future__ import annotations

from collections import Counter

from pydantic import BaseModel, Field

from tasks.corpus.documents import Corpus, Rejected
from tasks.run.long.split import LongDocuments
from tasks.run.plan.batching import make_batches
from tasks.run.request.prompts import GenerationParameters, PromptTemplate
from tasks.settings import Profile

LOCALCLOUD = "localcloud (this machine's CPU)"


class Throughput(BaseModel):
    """Generated tokens per second measured for one model on one instance type, and where from."""

    model: str
    instance_type: str
    generated_tokens_per_s: float
    source: str


# Measured figures only. Add a row per model and instance type from the serving benchmark
# (`python -m benchmarks --sections serving`): its "generated tok/s" of the engine at the
# concurrency the endpoint runs (MaxConcurrentInvocationsPerInstance).
MEASURED = [
    Throughput(
        model="smollm2",
        instance_type=LOCALCLOUD,
        generated_tokens_per_s=31.9,
        source="README 'Serving section': SmolLM2-135M-Instruct, engine, 4 concurrent invocations "
        "of 16 documents, 1 torch thread on a shared 2-core machine, 2026-12-01 "
        "(benchmarks/results/full-partial-20261201T131037Z.json)",
    ),
]


class RejectedRow(BaseModel):
    """A row the run would not send, and why."""

    row: int | None
    doc_id: str | None
    reason: str


class Estimate(BaseModel):
    """The dry run's answer (``process_documents(dry_run=True)``, ``docflow estimate``)."""

    corpus: str
    endpoint: str | None
    model_artifact: str
    model: str
    documents: int = Field(description="Input rows.")
    accepted: int
    rejected: int
    rejected_by_reason: dict[str, int]
    rejections: list[RejectedRow] = Field(description="The first rejected rows.")
    long_documents: str
    truncated: int
    split: int
    chunks: int
    entries: int = Field(description="Prompts sent in the first step: documents and chunks.")
    batches: int
    batch_size: int
    counted: bool = Field(description="Prompt tokens were counted with the model's tokenizer.")
    context_length: int | None
    prompt_tokens: int | None
    max_new_tokens: int
    generation_budget_tokens: int = Field(description="entries x max_new_tokens (upper bound).")
    reduce_prompts: int = Field(0, description="map_reduce + summarize: reduce prompts run after.")
    instance_type: str
    generated_tokens_per_s: float | None
    throughput_source: str | None
    instance_hours: float | None
    cost_usd: float | None
    invocations: int = 0
    note: str = ""


def throughput_for(model: str, instance_type: str) -> Throughput | None:
    """The measured figure for this model on this instance type, if there is one."""
    for row in MEASURED:
        if row.model == model and row.instance_type == instance_type:
            return row
    return None


def model_name(model_artifact: str) -> str:
    """The packaged model's name: the folder above the content hash in ``models/<name>/<sha>/…``."""
    parts = [p for p in model_artifact.removeprefix("s3://").split("/") if p]
    if parts and parts[-1] == "model.tar.gz":
        parts = parts[:-1]
    if parts and parts[-1] == "uncompressed":
        parts = parts[:-1]
    return parts[-2] if len(parts) >= 3 else (parts[-1] if parts else "")


def estimate_run(
    *,
    loaded: Corpus,
    planned: Corpus,
    plan: LongDocuments,
    template: PromptTemplate,
    params: GenerationParameters,
    batch_size: int,
    max_batch_bytes: int,
    profile: Profile,
    endpoint: str | None,
    model_artifact: str,
    show_rejections: int = 20,
) -> Estimate:
    """Batch the planned corpus as the run would and price the generation budget."""
    payloads, late = make_batches(
        planned.documents, template, params, max_docs=batch_size, max_bytes=max_batch_bytes
    )
    last = max(loaded.size, 1) + 1
    rejected: list[Rejected] = sorted(
        [*planned.rejected, *late], key=lambda r: last if r.row is None else r.row
    )
    entries = sum(len(p.doc_ids) for p in payloads)
    late_ids = {r.doc_id for r in late}
    counted = plan.counted
    prompt_tokens = (
        sum(n for doc_id, n in plan.prompt_tokens.items() if doc_id not in late_ids)
        if counted
        else None
    )
    reduce_prompts = len(plan.chunks) if template.kind == "summarize" else 0
    budget = (entries + reduce_prompts) * params.max_new_tokens
    model = model_name(model_artifact)
    where = LOCALCLOUD if profile.endpoint_url else profile.instance_type
    measured = throughput_for(model, where)
    hours = None if measured is None else budget / measured.generated_tokens_per_s / 3600.0
    notes = []
    if not counted:
        notes.append("the model artifact has no tokenizer: prompt tokens are not counted")
    if measured is None:
        notes.append(
            f"no measured throughput for model {model!r} on {where}: run the serving benchmark "
            "on it and add the figure to tasks/run/plan/estimate.py MEASURED"
        )
    if reduce_prompts:
        notes.append(
            f"{reduce_prompts} reduce prompts (one per split document) are counted in the "
            "generation budget; their prompt tokens depend on the chunk answers"
        )
    return Estimate(
        corpus=loaded.source,
        endpoint=endpoint,
        model_artifact=model_artifact,
        model=model,
        documents=loaded.size,
        accepted=loaded.size - len(rejected),
        rejected=len(rejected),
        rejected_by_reason=dict(Counter(_reason_kind(r.reason) for r in rejected).most_common()),
        rejections=[
            RejectedRow(row=r.row, doc_id=r.doc_id, reason=r.reason)
            for r in rejected[:show_rejections]
        ],
        long_documents=plan.mode,
        truncated=len(plan.tokens_cut),
        split=len(plan.chunks),
        chunks=sum(len(c) for c in plan.chunks.values()),
        entries=entries,
        batches=len(payloads),
        batch_size=batch_size,
        counted=counted,
        context_length=plan.context_length,
        prompt_tokens=prompt_tokens,
        max_new_tokens=params.max_new_tokens,
        generation_budget_tokens=budget,
        reduce_prompts=reduce_prompts,
        instance_type=where,
        generated_tokens_per_s=None if measured is None else measured.generated_tokens_per_s,
        throughput_source=None if measured is None else measured.source,
        instance_hours=None if hours is None else round(hours, 4),
        cost_usd=None if hours is None else round(hours * profile.instance_hourly_usd, 4),
        note="; ".join(notes),
    )


def _reason_kind(reason: str) -> str:
    """A reason without its numbers and names, so that equal causes count together."""
    head = reason.split(";")[0]
    return "".join("N" if c.isdigit() else c for c in head)[:120]


def estimate_text(estimate: Estimate) -> str:
    """The estimate as the command line prints it."""
    e = estimate
    lines = [
        f"corpus        {e.corpus}",
        f"model         {e.model} ({e.model_artifact})"
        + (f" on endpoint {e.endpoint}" if e.endpoint else ""),
        f"documents     {e.documents}: {e.accepted} accepted, {e.rejected} rejected",
    ]
    for r in e.rejections[:10]:
        reason = r.reason if len(r.reason) <= 160 else r.reason[:160] + "…"
        lines.append(f"  rejected    row {r.row} {r.doc_id}: {reason}")
    if e.rejected > 10:
        lines.append(f"  ... and {e.rejected - 10} more (--json lists {len(e.rejections)})")
    if e.long_documents != "reject" or e.truncated or e.split:
        lines.append(
            f"long docs     long_documents={e.long_documents}: {e.truncated} truncated, "
            f"{e.split} split into {e.chunks} chunks"
        )
    lines += [
        f"batches       {e.batches} (batch_size {e.batch_size}), {e.entries} prompts",
        "prompt tokens "
        + (
            f"{e.prompt_tokens:,} (counted with the model's tokenizer; context {e.context_length})"
            if e.prompt_tokens is not None
            else "not counted (the model has no tokenizer)"
        ),
        f"generation    up to {e.generation_budget_tokens:,} tokens "
        f"({e.entries + e.reduce_prompts} prompts x max_new_tokens {e.max_new_tokens})",
    ]
    if e.instance_hours is not None and e.cost_usd is not None:
        lines += [
            f"time          {e.instance_hours:.4f} instance-hours on {e.instance_type} at "
            f"{e.generated_tokens_per_s} generated tokens/s",
            f"cost          ${e.cost_usd:.4f} (upper bound: every prompt uses the whole budget)",
            f"throughput    {e.throughput_source}",
        ]
    else:
        lines.append(f"time, cost    unknown on {e.instance_type}")
    lines.append(f"invocations   {e.invocations} (nothing was invoked)")
    if e.note:
        lines.append(f"note          {e.note}")
    return "\n".join(lines) + "\n"
