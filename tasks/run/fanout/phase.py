"""Driving a run's batches to the end: the run's queue, resume, fan-out, and map_reduce's reduce step."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.corpus.documents import Corpus
from tasks.params.groups import BatchingOptions, RetryOptions
from tasks.run.fanout.drive_task import drive_run
from tasks.run.fanout.policy import DriveOptions
from tasks.run.fanout.reconcile import resume_reconcile
from tasks.run.fanout.run_queue import RunQueue, close_run_queue, open_run_queue
from tasks.run.fanout.spool import OutputSpool
from tasks.run.fanout.stats import DriveStats
from tasks.run.long.reduce import reduce_corpus, reduce_template
from tasks.run.long.split import LongDocuments, plan_long_documents
from tasks.run.plan.layout import reduce_run_key
from tasks.run.plan.manifest import RunManifest
from tasks.run.plan.prepare import PreparedRun, prepare_manifest
from tasks.run.plan.target import EndpointOutputs
from tasks.run.quoting import quoted
from tasks.run.request.prompts import GenerationParameters
from tasks.run.request.tokens import TokenCounter
from tasks.settings import Profile


@task(name="open-run-queue", cache_policy=NO_CACHE)
def open_queue(profile: Profile, target: EndpointOutputs, run_key: str) -> RunQueue:
    """The run's queue and DLQ, subscribed to the endpoint's topics before the first invoke."""
    return open_run_queue(profile, target, run_key)


@task(name="close-run-queue", cache_policy=NO_CACHE)
def close_queue(profile: Profile, queue: RunQueue) -> None:
    """Remove the run's subscriptions and queues."""
    close_run_queue(profile, queue)


class Phase:
    """Drives one set of batches (a run, or its reduce step) to the end: queue, resume, fan-out."""

    def __init__(
        self, profile: Profile, target: EndpointOutputs, batching: BatchingOptions
    ) -> None:
        self.profile = profile
        self.target = target
        self.batching = batching
        self.options = DriveOptions.from_parameters(
            max_attempts=batching.max_attempts,
            request_ttl_s=batching.request_ttl_s,
            invocation_timeout_s=batching.invocation_timeout_s,
            reconcile_every_s=batching.reconcile_every_s,
            deadline_s=batching.deadline_s,
        )

    def drive(self, key: str, prepared: PreparedRun, spool: OutputSpool) -> DriveStats:
        """Invoke every outstanding batch of the run ``key`` until each is terminal (or cancelled)."""
        manifest = prepared.manifest
        if manifest.is_done():
            return DriveStats()
        queue = open_queue(self.profile, self.target, key)  # subscribed before the first invoke
        if prepared.resumed:  # settle what finished while no one was listening
            resume_reconcile(
                self.profile,
                manifest,
                self.target,
                max_attempts=self.batching.max_attempts,
                bodies=prepared.inline_bodies(),
            )
        stats = drive_run(
            self.profile,
            quoted(manifest),
            self.target,
            queue,
            self.options,
            payloads=quoted(prepared.take_payloads()),
            spool=quoted(spool),
            request_ttl_s=self.batching.request_ttl_s,
            invocation_timeout_s=self.batching.invocation_timeout_s,
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
    retry: RetryOptions,
    key: str,
    manifest: RunManifest,
    plan: LongDocuments,
    loaded: Corpus,
    counter: TokenCounter,
    params: GenerationParameters,
    spool: OutputSpool,
) -> tuple[RunManifest | None, DriveStats]:
    """map_reduce + summarize: summarize each split document's chunk summaries, as the run
    ``<run key>_r<corpus>`` (its own manifest, batches and resume); the run's ``retry`` applies
    to the reduce step's failures as well."""
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
        phase.batching.batch_size,
        phase.batching.max_batch_bytes,
        parameters={"reduce_of": key},
        retry_failed=retry.retry_failed,
        retry_reason=retry.retry_reason,
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


def drive_with_reduce(
    phase: Phase,
    key: str,
    prepared: PreparedRun,
    spool: OutputSpool,
    *,
    plan: LongDocuments,
    loaded: Corpus,
    counter: TokenCounter | None,
    params: GenerationParameters,
    kind: str,
    retry: RetryOptions,
) -> tuple[DriveStats, RunManifest | None]:
    """Drive the run's batches and, for a split summarize run, its reduce step; their stats summed."""
    manifest = prepared.manifest
    stats = phase.drive(key, prepared, spool)
    if not (plan.chunks and kind == "summarize" and manifest.canceled is None):
        return stats, None
    assert counter is not None  # map_reduce is refused without a tokenizer
    reduce_manifest, reduce_stats = reduce_step(
        phase, retry, key, manifest, plan, loaded, counter, params, spool
    )
    total = stats.invocations + reduce_stats.invocations
    return stats.model_copy(update={"invocations": total}), reduce_manifest
