"""Planning a run before anything is invoked: the endpoint it targets, its prompts counted with the
model's tokenizer (long documents rejected, truncated or split), and the dry run's estimate.

``process_documents(dry_run=True)`` and ``docflow estimate`` both call ``plan_prompts`` and
``estimate_run``: one copy of the counting and planning.
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.corpus.documents import Corpus
from tasks.params.groups import BatchingOptions, LongDocumentOptions
from tasks.run.long.split import LongDocuments, check_long_documents, plan_long_documents
from tasks.run.plan.estimate import estimate_run, estimate_text
from tasks.run.plan.target import EndpointOutputs, endpoint_outputs
from tasks.run.request.prompts import GenerationParameters, PromptTemplate
from tasks.run.request.tokens import TokenCounter, token_counter
from tasks.settings import Profile


@task(name="describe-endpoint", cache_policy=NO_CACHE)
def describe_target(profile: Profile, endpoint: str) -> EndpointOutputs:
    """The endpoint's topics, output paths and model artifact."""
    return endpoint_outputs(profile, endpoint)


def plan_prompts(
    corpus: Corpus,
    counter: TokenCounter | None,
    template: PromptTemplate,
    max_new_tokens: int,
    long: LongDocumentOptions,
) -> tuple[Corpus, LongDocuments]:
    """Count every prompt; reject, truncate or split the long ones (nothing counted without a
    tokenizer: a document over the context then fails at the endpoint with the handler's reason)."""
    check_long_documents(long.mode, template, long.chunk_overlap_tokens, counter)
    if counter is None:
        return corpus, LongDocuments(mode=long.mode)
    return plan_long_documents(
        corpus, counter, template, max_new_tokens, long.mode, long.chunk_overlap_tokens
    )


@task(name="count-tokens", cache_policy=NO_CACHE)
def count_tokens(
    corpus: Corpus,
    profile: Profile,
    target: EndpointOutputs,
    template: PromptTemplate,
    max_new_tokens: int,
    long: LongDocumentOptions,
) -> tuple[Corpus, LongDocuments, TokenCounter | None]:
    """Count every prompt with the model's own tokenizer; reject, truncate or split the long ones."""
    logger = get_run_logger()
    counter = token_counter(profile, target.model_artifact, target.model_environment)
    planned, plan = plan_prompts(corpus, counter, template, max_new_tokens, long)
    if counter is None:
        logger.info(
            "model %s has no tokenizer: prompts are not counted before invoking (a document over "
            "the context fails at the endpoint)",
            target.model_artifact or "(unknown)",
        )
        return planned, plan, None
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


@task(name="estimate-run", cache_policy=NO_CACHE)
def dry_run_estimate(
    loaded: Corpus,
    planned: Corpus,
    plan: LongDocuments,
    template: PromptTemplate,
    params: GenerationParameters,
    batching: BatchingOptions,
    profile: Profile,
    target: EndpointOutputs,
) -> dict[str, Any]:
    """A dry run's estimate (``estimate_run``, as ``docflow estimate`` makes it), published as a
    markdown artifact and in the log; returned as the flow's result."""
    from prefect.artifacts import create_markdown_artifact

    estimate = estimate_run(
        loaded=loaded,
        planned=planned,
        plan=plan,
        template=template,
        params=params,
        batch_size=batching.batch_size,
        max_batch_bytes=batching.max_batch_bytes,
        profile=profile,
        endpoint=target.endpoint,
        model_artifact=target.model_artifact,
    )
    text = estimate_text(estimate)
    get_run_logger().info("estimate (nothing invoked):\n%s", text)
    create_markdown_artifact(
        f"# Estimate\n\n```\n{text}```\n", description="process-documents dry run"
    )
    return estimate.model_dump(mode="json")
