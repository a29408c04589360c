"""Run a document corpus through the LLM on a SageMaker async endpoint and gather one row per document."""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, get_run_logger

from tasks.capacity.scale import scale_to_zero_if_idle
from tasks.corpus.documents import ColumnMapping
from tasks.corpus.load import load_documents, scan_corpus
from tasks.model.grammar import check_grammar
from tasks.params.groups import (
    BatchingOptions,
    ColumnOptions,
    GenerationOptions,
    LongDocumentOptions,
    OutputOptions,
    PromptOptions,
    ReadOptions,
    RetryOptions,
    ShardingOptions,
)
from tasks.run.fanout.phase import Phase, drive_with_reduce
from tasks.run.fanout.spool import OutputSpool
from tasks.run.plan.batching import compute_run_key, long_key
from tasks.run.plan.layout import local_run_dir, validate_run_key
from tasks.run.plan.planning import count_tokens, describe_target, dry_run_estimate
from tasks.run.plan.prepare import prepare_manifest, run_parameters
from tasks.run.quoting import quoted
from tasks.run.request.controls import controls_of
from tasks.run.request.messages import process_run_name
from tasks.run.results.publish import aggregate, canceled_state, publish_artifacts, report_run
from tasks.run.results.run_end import RUN_END_HOOKS
from tasks.settings import load_profile
from tasks.sharding.merge import PROCESS_DOCUMENTS
from tasks.sharding.parent import run_shards
from tasks.sharding.shards import Shard, check_shard, shard_count


@flow(name="process-documents", flow_run_name=process_run_name, **RUN_END_HOOKS)
def process_documents(
    corpus: str = "datasets/sample",
    profile: str = "local",
    endpoint: str | None = None,
    prompt: PromptOptions = PromptOptions(),
    generation: GenerationOptions = GenerationOptions(),
    columns: ColumnOptions = ColumnOptions(),
    reading: ReadOptions = ReadOptions(),
    long_documents: LongDocumentOptions = LongDocumentOptions(),
    batching: BatchingOptions = BatchingOptions(),
    output: OutputOptions = OutputOptions(),
    run_key: str | None = None,
    retry: RetryOptions = RetryOptions(),
    sharding: ShardingOptions = ShardingOptions(),
    scale_to_zero: bool = False,
    dry_run: bool = False,
    shard: Shard | None = None,
) -> dict[str, Any]:
    """Process a corpus on the async endpoint: one result row per document, every document accounted for.

    Args:
        corpus: Local path or s3:// URI of a .jsonl/.csv/.parquet file, a folder, prefix or glob
            of such files, or a folder of documents (PDF, Office, OpenDocument, RTF, EPUB, HTML,
            e-mail, text of any name, scans by OCR, compressed files, archives member by member;
            every file read or rejected with its reason).
        profile: Deployment profile name (deployments/<name>.yaml) or path to one.
        endpoint: SageMaker endpoint name; default: the profile's endpoint_name.
        prompt: What each document is asked: template, fields, labels, system prompt.
        generation: How answers are generated: max_new_tokens and the sampling knobs.
        columns: Which input columns hold the id, text and metadata; the longest document.
        reading: Folders: include/exclude patterns, OCR, and the limits of archives.
        long_documents: A prompt over the model's context: reject, truncate or map_reduce it.
        batching: Documents and bytes per invocation, attempts, TTL, timeouts, deadline.
        output: The local copy of the results table and its format.
        run_key: Name of the run; the same key resumes it. Default: derived from the inputs.
        retry: Run the failed documents of run_key again (optionally only some reasons).
        sharding: Split the corpus into child flow runs spread over the pool's workers.
        scale_to_zero: When the run ends, set the endpoint to 0 instances unless another run holds its slots.
        dry_run: Invoke nothing: return the estimate (documents, batches, tokens, hours, dollars).
        shard: Set by a sharded run on its children: process only this shard of the corpus.
    """
    started = time.monotonic()
    prof = load_profile(profile)
    endpoint_name = endpoint or prof.endpoint_name
    tmpl, params, answers = controls_of(prompt, generation)
    check_shard(shard, run_key)  # a child of a sharded run, under the key its parent gave
    if retry.retry_failed and not run_key:
        raise ValueError("retry_failed needs the run_key of the run whose failures to retry")
    target = describe_target(prof, endpoint_name)
    check_grammar(prof, target.model_artifact, constrained=answers is not None)  # before invoking
    key = validate_run_key(run_key) if run_key else None
    extra = long_key(long_documents)
    if shard is None and not dry_run and sharding.wanted:
        scan = scan_corpus(corpus, prof, reading)  # the parent holds no document: shards load them
        count = shard_count(sharding.shards, sharding.shard_size, scan.rows)
        if count > 1:
            key = key or compute_run_key(
                scan.fingerprint, endpoint_name, target.model_artifact, tmpl, params, extra=extra
            )
            return run_shards(
                prof,
                key,
                count,
                sharding.shard_deployment,
                sharding.max_shard_attempts,
                started,
                PROCESS_DOCUMENTS,
            )
    mapping = ColumnMapping.of(columns, prompt.messages_column)
    loaded = load_documents(corpus, mapping, prof, columns.max_doc_bytes, shard, reading)
    key = key or compute_run_key(
        loaded.fingerprint, endpoint_name, target.model_artifact, tmpl, params, extra=extra
    )
    output = output.model_copy(update={"output_dir": output.output_dir or local_run_dir(prof, key)})
    planned, plan, counter = count_tokens(
        quoted(loaded), prof, target, tmpl, generation.max_new_tokens, long_documents
    )
    if dry_run:  # what the run would send and cost; nothing invoked
        return dry_run_estimate(loaded, planned, plan, tmpl, params, batching, prof, target)
    shaping = {"prompt": prompt, "generation": generation, "columns": columns, "reading": reading}
    shaping |= {"long_documents": long_documents, "batching": batching, "output": output}
    prepared = prepare_manifest(
        prof,
        target,
        key,
        quoted(planned),
        tmpl,
        params,
        batching.batch_size,
        batching.max_batch_bytes,
        parameters=run_parameters(corpus, shaping),
        retry_failed=retry.retry_failed,
        retry_reason=retry.retry_reason,
    )
    manifest, resumed = prepared.manifest, prepared.resumed
    get_run_logger().info(
        "run %s: %d batches, %s", key, len(manifest.batches), "resumed" if resumed else "new"
    )
    phase = Phase(prof, target, batching)
    with OutputSpool(prof) as spool:  # outputs are downloaded while the run waits for the rest
        stats, reduce_manifest = drive_with_reduce(
            phase,
            key,
            prepared,
            spool,
            plan=plan,
            loaded=loaded,
            counter=counter,
            params=params,
            kind=tmpl.kind,
            retry=retry,
        )
        canceled = manifest.canceled or (reduce_manifest.canceled if reduce_manifest else None)
        summary, preview = aggregate(
            quoted(manifest),
            quoted(loaded),
            prof,
            started,
            output,
            quoted(spool),
            quoted(plan),
            tmpl.kind,
            quoted(reduce_manifest),
            stats.usage,  # the instances the endpoint kept up while the run was driven
            answers,
        )
    publish_artifacts(summary, quoted(preview), key)
    result = report_run(
        summary,
        key,
        generation.max_new_tokens,
        resumed=resumed,
        stats=stats,
        reduce_manifest=reduce_manifest,
    )
    if scale_to_zero:
        result["endpoint_after_run"] = scale_to_zero_if_idle(prof, endpoint_name)
    if canceled is not None:
        return canceled_state(canceled, summary, key)  # type: ignore[return-value]
    return result


if __name__ == "__main__":
    process_documents()
