"""Run a document corpus through the LLM on a SageMaker async endpoint and gather one row per document."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Cancelled

from tasks.endpoint.usage import EndpointUsage
from tasks.model.grammar import check_grammar
from tasks.run.aggregate import Preview, aggregate_run
from tasks.run.answers import Answers
from tasks.run.batching import compute_run_key
from tasks.run.controls import run_controls
from tasks.run.corpus import ColumnMapping, Corpus
from tasks.run.drive import drive_run
from tasks.run.driver import DriveStats
from tasks.run.estimate import Estimate, estimate_run, estimate_text
from tasks.run.layout import local_run_dir, reduce_run_key, run_artifact_key, validate_run_key
from tasks.run.load import load_documents, scan_corpus
from tasks.run.long_documents import (
    LongDocuments,
    LongMode,
    check_long_documents,
    plan_long_documents,
)
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
from tasks.run.prepare import PreparedRun, prepare_manifest
from tasks.run.prompts import GenerationParameters, PromptTemplate
from tasks.run.quoting import quoted
from tasks.run.reconcile import resume_reconcile
from tasks.run.reduce import reduce_corpus, reduce_template
from tasks.run.scale import scale_to_zero_if_idle
from tasks.run.sharded_run import run_shards
from tasks.run.sharding import PROCESS_DOCUMENTS
from tasks.run.shards import Shard, check_shard, shard_count
from tasks.run.spool import OutputSpool
from tasks.run.summary import RunSummary, summary_markdown
from tasks.run.tokens import TokenCounter, token_counter
from tasks.settings import Profile, load_profile

TABLE_ROWS = 20
# SmolLM2 on the 50 sample documents (summarize): 46 answers end by themselves within 256 tokens
# (median 76, longest 216); the other 4 repeat a phrase until any budget ends (README, defaults).
DEFAULT_MAX_NEW_TOKENS = 256


@task(name="describe-endpoint", cache_policy=NO_CACHE)
def describe_target(profile: Profile, endpoint: str) -> EndpointOutputs:
    """The endpoint's topics, output paths and model artifact."""
    return endpoint_outputs(profile, endpoint)


@task(name="count-tokens", cache_policy=NO_CACHE)
def count_tokens(
    corpus: Corpus,
    profile: Profile,
    target: EndpointOutputs,
    template: PromptTemplate,
    max_new_tokens: int,
    long_documents: LongMode,
    chunk_overlap_tokens: int,
) -> tuple[Corpus, LongDocuments, TokenCounter | None]:
    """Count every prompt with the model's own tokenizer; reject, truncate or split the long ones.

    A model without a tokenizer (the echo model) is not counted: the run goes on as before and a
    document over the context fails at the endpoint with the handler's reason.
    """
    logger = get_run_logger()
    counter = token_counter(profile, target.model_artifact, target.model_environment)
    check_long_documents(long_documents, template, chunk_overlap_tokens, counter)
    if counter is None:
        logger.info(
            "model %s has no tokenizer: prompts are not counted before invoking (a document over "
            "the context fails at the endpoint)",
            target.model_artifact or "(unknown)",
        )
        return corpus, LongDocuments(mode=long_documents), None
    planned, plan = plan_long_documents(
        corpus, counter, template, max_new_tokens, long_documents, chunk_overlap_tokens
    )
    logger.info(
        "%d prompt tokens counted with the model's tokenizer (context %d, max_new_tokens %d): "
        "%d documents rejected as too long, %d truncated, %d split into %d chunks",
        sum(plan.prompt_tokens.values()),
        counter.context_length,
        max_new_tokens,
        plan.rejected,
        len(plan.tokens_cut),
        len(plan.chunks),
        sum(len(c) for c in plan.chunks.values()),
    )
    return planned, plan, counter


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
        wall_time_s=wall_time_s,
        output_format=output_format,
        local_dir=output_dir,
        preview_rows=TABLE_ROWS,
        spool=spool,
        long_documents=long_documents,
        kind=kind,
        reduce_manifest=reduce_manifest,
        usage=usage,
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
        max_new_tokens=1,
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
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    repetition_penalty: float | None = None,
    stop: list[str] | None = None,
    seed: int | None = None,
    max_doc_bytes: int = 100_000,
    long_documents: Literal["reject", "truncate", "map_reduce"] = "reject",
    chunk_overlap_tokens: int = 64,
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
    dry_run: bool = False,
    shards: int = 1,
    shard_size: int | None = None,
    shard_deployment: str | None = None,
    max_shard_attempts: int = 3,
    shard: Shard | None = None,
) -> dict[str, Any]:
    """Process a corpus on the async endpoint: one result row per document, every document accounted for.

    Args:
        corpus: Local path or s3:// URI of a .jsonl/.csv/.parquet file, of a folder (prefix) or
            glob (``s3://bucket/corpora/part-*.parquet``) of such files, read a piece at a time, or
            of a folder of documents (.pdf .docx .html .eml .md .txt; every other file is rejected with its reason).
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
        long_documents: A prompt over the model's context minus max_new_tokens (counted with the
            model's tokenizer): reject it, truncate it to its first tokens that fit (tokens_cut
            column), or map_reduce it (split by tokens with overlap, run each chunk, combine the
            answers into one row; summarize and extract).
        chunk_overlap_tokens: map_reduce: tokens each chunk repeats from the end of the one before.
        batch_size: Documents per invocation payload.
        max_batch_bytes: Bytes per invocation payload.
        run_key: Name of the run; the same key resumes it. Default: derived from the inputs.
        max_attempts: Invocations per batch before its documents are failed.
        output_dir: Also write the results table here (local folder); default: the profile's
            local_results_dir/<run key> (the local profile: results/<run key>), else none.
        output_format: Format of the results table.
        deadline_s: Give up on outstanding batches after this long; default from TTL and timeout.
        request_ttl_s: RequestTTLSeconds of each invocation (60-21600); default: the service's.
        invocation_timeout_s: InvocationTimeoutSeconds (1-3600), doubled on each re-invoke of an expired request.
        reconcile_every_s: How often outstanding batches are looked up in S3 (lost notifications).
        retry_failed: Run the failed documents of an existing run (run_key) again; their rows are replaced.
        retry_reason: With retry_failed, only the failures whose reason contains this text.
        scale_to_zero: When the run ends, set the endpoint to 0 instances unless another run holds its slots.
        dry_run: Invoke nothing: return the estimate (documents accepted and rejected, batches,
            prompt tokens, generation budget, instance-hours and dollars).
        shards: Split the corpus into this many shards (by a stable hash of the document id), each
            run as a child flow run on the work pool; this run waits and sums them up.
        shard_size: Documents per shard: enough shards for this many each (at least ``shards``).
            A sharded run's parent reads the corpus files once for their fingerprint and row
            count; each shard streams them and keeps its own documents only.
        shard_deployment: The deployment the shards run on; default: the one this run came from.
        max_shard_attempts: Flow runs per shard before the run fails (a crashed shard resumes).
        shard: Set by a sharded run on its children: process only this shard of the corpus.
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

    check_shard(shard, run_key)  # a child of a sharded run, under the key its parent gave
    if retry_failed and not run_key:
        raise ValueError("retry_failed needs the run_key of the run whose failures to retry")
    target = describe_target(prof, endpoint_name)
    check_grammar(prof, target.model_artifact, constrained=answers is not None)  # before invoking
    key = validate_run_key(run_key) if run_key else None
    extra = long_key(long_documents, chunk_overlap_tokens)
    if shard is None and not dry_run and (shards > 1 or shard_size):
        scan = scan_corpus(corpus, prof)  # the parent holds no document: the shards load them
        count = shard_count(shards, shard_size, scan.rows)
        if count > 1:
            key = key or compute_run_key(
                scan.fingerprint, endpoint_name, target.model_artifact, tmpl, params, extra=extra
            )
            return run_shards(
                prof, key, count, shard_deployment, max_shard_attempts, started, PROCESS_DOCUMENTS
            )
    loaded = load_documents(corpus, mapping, prof, max_doc_bytes, shard)
    key = key or compute_run_key(
        loaded.fingerprint, endpoint_name, target.model_artifact, tmpl, params, extra=extra
    )
    output_dir = output_dir or local_run_dir(prof, key)  # local profiles: results/<run key>/
    planned, plan, counter = count_tokens(
        quoted(loaded), prof, target, tmpl, max_new_tokens, long_documents, chunk_overlap_tokens
    )
    if dry_run:
        estimate = estimate_run(
            loaded=loaded,
            planned=planned,
            plan=plan,
            template=tmpl,
            params=params,
            batch_size=batch_size,
            max_batch_bytes=max_batch_bytes,
            profile=prof,
            endpoint=endpoint_name,
            model_artifact=target.model_artifact,
        )
        publish_estimate(estimate)
        return estimate.model_dump(mode="json")
    shaping = {
        "template": template,
        "fields": fields,
        "labels": labels,
        "custom_template": custom_template,
        "id_column": id_column,
        "text_column": text_column,
        "metadata_columns": metadata_columns,
        "multi_label": multi_label,
        "system_prompt": system_prompt,
        "messages_column": messages_column,
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "top_p": top_p,
        "top_k": top_k,
        "repetition_penalty": repetition_penalty,
        "stop": stop,
        "seed": seed,
        "max_doc_bytes": max_doc_bytes,
        "long_documents": long_documents,
        "chunk_overlap_tokens": chunk_overlap_tokens,
        "batch_size": batch_size,
        "max_batch_bytes": max_batch_bytes,
        "max_attempts": max_attempts,
        "output_format": output_format,
    }
    prepared = prepare_manifest(
        prof,
        target,
        key,
        quoted(planned),
        tmpl,
        params,
        batch_size,
        max_batch_bytes,
        parameters=run_parameters(corpus, **shaping),
        retry_failed=retry_failed,
        retry_reason=retry_reason,
    )
    manifest, resumed = prepared.manifest, prepared.resumed
    logger.info(
        "run %s: %d batches, %s", key, len(manifest.batches), "resumed" if resumed else "new"
    )
    phase = Phase(
        prof,
        target,
        max_attempts=max_attempts,
        request_ttl_s=request_ttl_s,
        invocation_timeout_s=invocation_timeout_s,
        reconcile_every_s=reconcile_every_s,
        deadline_s=deadline_s,
    )

    reduce_manifest: RunManifest | None = None
    with OutputSpool(prof) as spool:  # outputs are downloaded while the run waits for the rest
        stats = phase.drive(key, prepared, spool)
        if plan.chunks and tmpl.kind == "summarize" and manifest.canceled is None:
            assert counter is not None  # map_reduce is refused without a tokenizer
            reduce_manifest, reduce_stats = reduce_step(
                phase,
                (retry_failed, retry_reason),
                key,
                manifest,
                plan,
                loaded,
                counter,
                params,
                batch_size,
                max_batch_bytes,
                spool,
            )
            stats = stats.model_copy(
                update={"invocations": stats.invocations + reduce_stats.invocations}
            )
        canceled = manifest.canceled or (reduce_manifest.canceled if reduce_manifest else None)
        summary, preview = aggregate(
            quoted(manifest),
            quoted(loaded),
            prof,
            time.monotonic() - started,
            output_format,
            output_dir,
            quoted(spool),
            quoted(plan),
            tmpl.kind,
            quoted(reduce_manifest),
            stats.usage,  # the instances the endpoint kept up while the run was driven
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
    if scale_to_zero:
        result["endpoint_after_run"] = scale_to_zero_if_idle(prof, endpoint_name)
    if canceled is not None:
        # A returned State is the flow run's final state: Cancelled, not Completed (a direct
        # caller gets CancelledRun with this message); the summary is in S3 (summary.json).
        return Cancelled(  # type: ignore[return-value]
            message=f"{canceled}: {summary.completed} completed, {summary.failed} failed, "
            f"{summary.canceled} canceled; summary {summary.summary_uri}; resume with run_key {key}"
        )
    return result


def long_key(long_documents: str, chunk_overlap_tokens: int) -> dict[str, object] | None:
    """What the long-document parameters add to the run key (nothing for the default, reject)."""
    if long_documents == "reject":
        return None
    extra: dict[str, object] = {"long_documents": long_documents}
    if long_documents == "map_reduce":
        extra["chunk_overlap_tokens"] = chunk_overlap_tokens
    return extra


class Phase:
    """Drives one set of batches (a run, or its reduce step) to the end: queue, resume, fan-out."""

    def __init__(
        self,
        profile: Profile,
        target: EndpointOutputs,
        *,
        max_attempts: int,
        request_ttl_s: int | None,
        invocation_timeout_s: int | None,
        reconcile_every_s: float,
        deadline_s: float | None,
    ) -> None:
        self.profile = profile
        self.target = target
        self.max_attempts = max_attempts
        self.request_ttl_s = request_ttl_s
        self.invocation_timeout_s = invocation_timeout_s
        self.options = DriveOptions.from_parameters(
            max_attempts=max_attempts,
            request_ttl_s=request_ttl_s,
            invocation_timeout_s=invocation_timeout_s,
            reconcile_every_s=reconcile_every_s,
            deadline_s=deadline_s,
        )

    def drive(self, key: str, prepared: PreparedRun, spool: OutputSpool) -> DriveStats:
        """Invoke every outstanding batch of the run ``key`` until each is terminal (or cancelled)."""
        manifest = prepared.manifest
        if manifest.is_done():
            return DriveStats()
        queue = open_queue(self.profile, self.target, key)  # subscribed before the first invoke
        if prepared.resumed:  # settle what finished while no one was listening
            resume_reconcile(self.profile, manifest, self.target, max_attempts=self.max_attempts)
        stats = drive_run(
            self.profile,
            quoted(manifest),
            self.target,
            queue,
            self.options,
            payloads=quoted(prepared.take_payloads()),
            spool=quoted(spool),
            request_ttl_s=self.request_ttl_s,
            invocation_timeout_s=self.invocation_timeout_s,
        )
        # Not in a finally: a failed or cancelled run keeps its queue, so resuming it with
        # the same run key still receives the results of what it had in flight.
        if manifest.canceled is None:
            close_queue(self.profile, queue)
        return stats


@task(name="reduce-step", cache_policy=NO_CACHE)
def build_reduce_corpus(
    manifest: RunManifest,
    plan: LongDocuments,
    corpus: Corpus,
    profile: Profile,
    counter: TokenCounter,
    max_new_tokens: int,
    spool: OutputSpool,
) -> Corpus:
    """The reduce prompts' corpus: per split document, its chunks' summaries (cut to fit the context)."""
    documents = reduce_corpus(manifest, plan, corpus, profile, spool)
    planned, cut = plan_long_documents(
        documents, counter, reduce_template(), max_new_tokens, "truncate"
    )
    if cut.tokens_cut:
        get_run_logger().warning(
            "%d reduce prompts were over the context and keep only their first summaries: %s",
            len(cut.tokens_cut),
            ", ".join(sorted(cut.tokens_cut)[:10]),
        )
    return planned


def reduce_step(
    phase: Phase,
    retry: tuple[bool, str | None],
    key: str,
    manifest: RunManifest,
    plan: LongDocuments,
    loaded: Corpus,
    counter: TokenCounter,
    params: GenerationParameters,
    batch_size: int,
    max_batch_bytes: int,
    spool: OutputSpool,
) -> tuple[RunManifest | None, DriveStats]:
    """map_reduce + summarize: summarize each split document's chunk summaries, as the run
    ``<run key>_r<corpus>`` (its own manifest, batches and resume). ``retry``: the run's
    retry_failed and retry_reason, applied to the reduce step's failures as well."""
    documents = build_reduce_corpus(
        quoted(manifest),
        quoted(plan),
        quoted(loaded),
        phase.profile,
        quoted(counter),
        params.max_new_tokens,
        quoted(spool),
    )
    if not documents.documents:
        return None, DriveStats()
    rkey = reduce_run_key(key, documents.fingerprint)
    prepared = prepare_manifest(
        phase.profile,
        phase.target,
        rkey,
        quoted(documents),
        reduce_template(),
        params,
        batch_size,
        max_batch_bytes,
        parameters={"reduce_of": key},
        retry_failed=retry[0],
        retry_reason=retry[1],
    )
    get_run_logger().info(
        "run %s: reduce step %s, %d prompts in %d batches, %s",
        key,
        rkey,
        len(documents.documents),
        len(prepared.manifest.batches),
        "resumed" if prepared.resumed else "new",
    )
    return prepared.manifest, phase.drive(rkey, prepared, spool)


@task(name="publish-estimate", cache_policy=NO_CACHE)
def publish_estimate(estimate: Estimate) -> None:
    """The estimate as a markdown artifact and in the log."""
    from prefect.artifacts import create_markdown_artifact

    text = estimate_text(estimate)
    get_run_logger().info("estimate (nothing invoked):\n%s", text)
    create_markdown_artifact(
        f"# Estimate\n\n```\n{text}```\n", description="process-documents dry run"
    )


if __name__ == "__main__":
    process_documents()
