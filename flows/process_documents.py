"""Run a document corpus through the LLM on a SageMaker async endpoint and gather one row per document."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Cancelled

from tasks.run.aggregate import Preview, aggregate_run
from tasks.run.answers import Answers
from tasks.run.batching import compute_run_key
from tasks.run.controls import run_controls
from tasks.run.corpus import ColumnMapping, Corpus, load_corpus
from tasks.run.drive import drive_run
from tasks.run.driver import DriveStats
from tasks.run.layout import run_artifact_key, validate_run_key
from tasks.run.manifest import RunManifest
from tasks.run.messages import process_run_name, template_problem
from tasks.run.notifications import (
    EndpointOutputs,
    RunQueue,
    close_run_queue,
    endpoint_outputs,
    open_run_queue,
)
from tasks.run.notify import notify_run_end
from tasks.run.policy import DriveOptions
from tasks.run.prepare import prepare_manifest
from tasks.run.prompts import PromptTemplate
from tasks.run.quoting import quoted
from tasks.run.reconcile import resume_reconcile
from tasks.run.scale import scale_to_zero_if_idle
from tasks.run.spool import OutputSpool
from tasks.run.summary import RunSummary, summary_markdown
from tasks.settings import Profile, load_profile

TABLE_ROWS = 20


@task(name="load-corpus", cache_policy=NO_CACHE)
def load_documents(
    uri: str, mapping: ColumnMapping, profile: Profile, max_doc_bytes: int = 100_000
) -> Corpus:
    """Read and validate the corpus; bad rows become rejected records, never silent drops."""
    corpus = load_corpus(uri, mapping, profile=profile, max_doc_bytes=max_doc_bytes)
    logger = get_run_logger()
    logger.info(
        "corpus %s: %d documents, %d rejected", uri, len(corpus.documents), len(corpus.rejected)
    )
    for reason in corpus.ignored:
        logger.warning("corpus %s: %s", uri, reason)
    return corpus


@task(name="describe-endpoint", cache_policy=NO_CACHE)
def describe_target(profile: Profile, endpoint: str) -> EndpointOutputs:
    """The endpoint's topics, output paths and model artifact."""
    return endpoint_outputs(profile, endpoint)


@task(name="open-run-queue", cache_policy=NO_CACHE)
def open_queue(profile: Profile, target: EndpointOutputs, run_key: str) -> RunQueue:
    """The run's queue and DLQ, subscribed to the endpoint's topics before the first invoke."""
    return open_run_queue(profile, target, run_key)


@task(name="close-run-queue", cache_policy=NO_CACHE)
def close_queue(profile: Profile, queue: RunQueue) -> None:
    """Remove the run's subscriptions and queues."""
    close_run_queue(profile, queue)


@task(name="aggregate-results", cache_policy=NO_CACHE)
def aggregate(
    manifest: RunManifest,
    corpus: Corpus,
    profile: Profile,
    wall_time_s: float,
    output_format: Literal["parquet", "csv", "jsonl"],
    output_dir: str | None,
    spool: OutputSpool | None,
    answers: Answers | None = None,
) -> tuple[RunSummary, Preview]:
    """Join every output back to its input row and write results, failures and summary."""
    return aggregate_run(
        manifest,
        corpus,
        profile,
        wall_time_s=wall_time_s,
        output_format=output_format,
        local_dir=output_dir,
        preview_rows=TABLE_ROWS,
        spool=spool,
        answers=answers,
    )


@task(name="publish-artifacts", cache_policy=NO_CACHE)
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


def build_template(
    template: str, fields: list[str] | None, labels: list[str] | None, custom_template: str | None
) -> PromptTemplate:
    """The prompt template from the flow's parameters (a clear error for an unknown kind)."""
    problem = template_problem(template, fields, labels, custom_template)
    if problem:
        raise ValueError(problem)
    return run_controls(
        template=template,
        fields=fields,
        labels=labels,
        custom_template=custom_template,
        multi_label=False,
        system_prompt=None,
        messages_column=None,
        max_new_tokens=1,
        temperature=None,
        top_p=None,
        top_k=None,
        repetition_penalty=None,
        stop=None,
        seed=None,
    ).template


def run_parameters(corpus: str, **shaping: Any) -> dict[str, Any]:
    """What a run's manifest keeps of its parameters: the corpus (a local path made absolute) and
    everything that shapes its results, so that ``docflow runs retry`` runs it the same way."""
    local = Path(corpus)
    where = str(local.resolve()) if "://" not in corpus and local.exists() else corpus
    return {"corpus": where, **shaping}


def _on_completion(flow: Any, flow_run: Any, state: Any) -> None:
    notify_run_end("completed", flow_run, state)


def _on_failure(flow: Any, flow_run: Any, state: Any) -> None:
    notify_run_end("failed", flow_run, state)


def _on_cancellation(flow: Any, flow_run: Any, state: Any) -> None:
    notify_run_end("cancelled", flow_run, state)


@flow(
    name="process-documents",
    flow_run_name=process_run_name,
    # The run's end reaches the <endpoint>-runs SNS topic (tasks/run/notify.py).
    on_completion=[_on_completion],
    on_failure=[_on_failure],
    on_cancellation=[_on_cancellation],
    on_crashed=[_on_failure],
)
def process_documents(
    corpus: str = "datasets/sample",
    profile: str = "local",
    endpoint: str | None = None,
    template: Literal["summarize", "extract", "classify", "custom"] = "summarize",
    fields: list[str] | dict[str, Any] | str | None = None,
    labels: list[str] | None = None,
    custom_template: str | None = None,
    multi_label: bool = False,
    system_prompt: str | None = None,
    messages_column: str | None = None,
    id_column: str = "id",
    text_column: str = "text",
    metadata_columns: list[str] | None = None,
    max_new_tokens: int = 128,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    repetition_penalty: float | None = None,
    stop: list[str] | None = None,
    seed: int | None = None,
    max_doc_bytes: int = 100_000,
    batch_size: int = 16,
    max_batch_bytes: int = 1_000_000,
    run_key: str | None = None,
    max_attempts: int = 3,
    output_dir: str | None = None,
    output_format: Literal["parquet", "csv", "jsonl"] = "parquet",
    deadline_s: float | None = None,
    request_ttl_s: int | None = None,
    invocation_timeout_s: int | None = None,
    reconcile_every_s: float = 10.0,
    retry_failed: bool = False,
    retry_reason: str | None = None,
    scale_to_zero: bool = False,
) -> dict[str, Any]:
    """Process a corpus on the async endpoint: one result row per document, every document accounted for.

    Args:
        corpus: Local path or s3:// URI of a .jsonl/.csv/.parquet file, or a folder (prefix) of
            documents (.pdf .docx .html .eml .md .txt; every other file is rejected with its reason).
        profile: Deployment profile name (deployments/<name>.yaml) or path to one.
        endpoint: SageMaker endpoint name; default: the profile's endpoint_name.
        template: Prompt kind: summarize, extract (fields), classify (labels) or custom.
        fields: template=extract: the fields, with types, e.g. {"party": "string", "amount":
            "number", "signed": "boolean", "when": "date", "tags": "list[string]", "kind":
            ["sale", "lease"]} (or a JSON Schema fragment per field); a list of names (all
            strings); or the path of a JSON Schema file. The answer is constrained to it and
            stored as one typed column per field, beside the raw JSON in ``text``.
        labels: Labels to choose from (template=classify); the answer is always one of them,
            stored as a categorical column ``label``.
        custom_template: A template with {text} and other {metadata} placeholders (template=custom).
        multi_label: template=classify: the answer is a list of the labels (column ``labels``).
        system_prompt: A system message sent before every prompt.
        messages_column: Input column holding each document's own chat messages (a list of
            {role, content}, or its JSON text), sent instead of a template's prompt.
        id_column: Input column holding the document id.
        text_column: Input column holding the document text.
        metadata_columns: Columns kept as metadata; default: all other columns.
        max_new_tokens: Generation budget per document.
        temperature: Sampling temperature (> 0 samples; 0 or unset: greedy).
        top_p: Nucleus sampling (0 < top_p <= 1); turns sampling on.
        top_k: Sample among the k likeliest tokens (>= 1); turns sampling on.
        repetition_penalty: > 1 discourages repeating tokens.
        stop: Strings that end a document's answer (not with extract or classify).
        seed: Seed of each document's sampling (needs sampling), for reproducible answers.
        max_doc_bytes: Longest document text (UTF-8 bytes); longer ones are rejected.
        batch_size: Documents per invocation payload.
        max_batch_bytes: Bytes per invocation payload.
        run_key: Name of the run; the same key resumes it. Default: derived from the inputs.
        max_attempts: Invocations per batch before its documents are failed.
        output_dir: Also write the results table here (local folder).
        output_format: Format of the results table.
        deadline_s: Give up on outstanding batches after this long; default from TTL and timeout.
        request_ttl_s: RequestTTLSeconds of each invocation (60-21600); default: the service's.
        invocation_timeout_s: InvocationTimeoutSeconds (1-3600), doubled on each re-invoke of an expired request.
        reconcile_every_s: How often outstanding batches are looked up in S3 (lost notifications).
        retry_failed: Run the failed documents of an existing run (run_key) again; their rows are replaced.
        retry_reason: With retry_failed, only the failures whose reason contains this text.
        scale_to_zero: When the run ends, set the endpoint to 0 instances unless another run holds its slots.
    """
    logger = get_run_logger()
    started = time.monotonic()
    prof = load_profile(profile)
    endpoint_name = endpoint or prof.endpoint_name
    tmpl, params, answers = run_controls(
        template=template,
        fields=fields,
        labels=labels,
        custom_template=custom_template,
        multi_label=multi_label,
        system_prompt=system_prompt,
        messages_column=messages_column,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        repetition_penalty=repetition_penalty,
        stop=stop,
        seed=seed,
    )
    mapping = ColumnMapping(
        id=id_column,
        text=messages_column or text_column,
        metadata=metadata_columns,
        messages=messages_column is not None,
    )

    loaded = load_documents(corpus, mapping, prof, max_doc_bytes)
    target = describe_target(prof, endpoint_name)
    key = validate_run_key(run_key) if run_key else None
    key = key or compute_run_key(
        loaded.fingerprint, endpoint_name, target.model_artifact, tmpl, params
    )
    if retry_failed and not run_key:
        raise ValueError("retry_failed needs the run_key of the run whose failures to retry")
    prepared = prepare_manifest(
        prof,
        target,
        key,
        quoted(loaded),
        tmpl,
        params,
        batch_size,
        max_batch_bytes,
        parameters=run_parameters(
            corpus,
            template=template,
            fields=fields,
            labels=labels,
            custom_template=custom_template,
            multi_label=multi_label,
            system_prompt=system_prompt,
            messages_column=messages_column,
            id_column=id_column,
            text_column=text_column,
            metadata_columns=metadata_columns,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            repetition_penalty=repetition_penalty,
            stop=stop,
            seed=seed,
            batch_size=batch_size,
            max_batch_bytes=max_batch_bytes,
            max_attempts=max_attempts,
            output_format=output_format,
        ),
        retry_failed=retry_failed,
        retry_reason=retry_reason,
    )
    manifest, resumed = prepared.manifest, prepared.resumed
    logger.info(
        "run %s: %d batches, %s", key, len(manifest.batches), "resumed" if resumed else "new"
    )

    stats = DriveStats()
    with OutputSpool(prof) as spool:  # outputs are downloaded while the run waits for the rest
        if not manifest.is_done():
            queue = open_queue(prof, target, key)  # subscribed before the first invoke
            if resumed:  # settle what finished while no one was listening
                resume_reconcile(prof, manifest, target, max_attempts=max_attempts)
            options = DriveOptions.from_parameters(
                max_attempts=max_attempts,
                request_ttl_s=request_ttl_s,
                invocation_timeout_s=invocation_timeout_s,
                reconcile_every_s=reconcile_every_s,
                deadline_s=deadline_s,
            )
            stats = drive_run(
                prof,
                quoted(manifest),
                target,
                queue,
                options,
                payloads=quoted(prepared.take_payloads()),
                spool=quoted(spool),
                request_ttl_s=request_ttl_s,
                invocation_timeout_s=invocation_timeout_s,
            )
            # Not in a finally: a failed or cancelled run keeps its queue, so resuming it with
            # the same run key still receives the results of what it had in flight.
            if manifest.canceled is None:
                close_queue(prof, queue)

        summary, preview = aggregate(
            quoted(manifest),
            quoted(loaded),
            prof,
            time.monotonic() - started,
            output_format,
            output_dir,
            quoted(spool),
            answers,
        )
    publish_artifacts(summary, quoted(preview), key)
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
    result = summary.model_dump(mode="json")
    result.update(run_key=key, resumed=resumed, fanout=stats.model_dump())
    if scale_to_zero:
        result["endpoint_after_run"] = scale_to_zero_if_idle(prof, endpoint_name)
    if manifest.canceled is not None:
        # A returned State is the flow run's final state: Cancelled, not Completed (a direct
        # caller gets CancelledRun with this message); the summary is in S3 (summary.json).
        return Cancelled(  # type: ignore[return-value]
            message=f"{manifest.canceled}: {summary.completed} completed, {summary.failed} failed, "
            f"{summary.canceled} canceled; summary {summary.summary_uri}; resume with run_key {key}"
        )
    return result


if __name__ == "__main__":
    process_documents()
