"""Ask the same questions of every document of a corpus on a real-time endpoint with sessions.

Per document: open a session (the document is read once and cached on one instance), ask every
question (each costs only its own tokens), close the session. One row per (document, question);
every pair ends completed, failed (reason) or rejected (reason); answered pairs are kept in S3
as they arrive, so the same run key resumes a run without asking them again.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from tasks.ask.asker import AskPlan
from tasks.ask.merge import ask_sharding
from tasks.ask.question_controls import ask_controls
from tasks.ask.results import publish_artifacts, summarize, write_results
from tasks.ask.run import answered_pairs, ask_questions, ask_run_key
from tasks.corpus.documents import ColumnMapping
from tasks.corpus.load import load_documents, scan_corpus
from tasks.endpoint.spec import ask_endpoint_name
from tasks.params.groups import (
    AnswerOptions,
    ColumnOptions,
    GenerationOptions,
    ReadOptions,
    ShardingOptions,
)
from tasks.run.plan.layout import validate_run_key
from tasks.settings import load_profile
from tasks.sharding.parent import run_shards
from tasks.sharding.shards import Shard, check_shard, shard_count


def ask_run_name() -> str:
    """``ask-<corpus file name>`` for the flow run."""
    from prefect.runtime import flow_run

    corpus = str(flow_run.parameters.get("corpus", "corpus"))
    return f"ask-{Path(corpus.rstrip('/')).name}"


@flow(name="ask-documents", flow_run_name=ask_run_name)
def ask_documents(
    corpus: str = "datasets/sample",
    questions: list[str] | None = None,
    profile: str = "local",
    endpoint: str | None = None,
    answers: AnswerOptions = AnswerOptions(),
    generation: GenerationOptions = GenerationOptions(),
    columns: ColumnOptions = ColumnOptions(),
    reading: ReadOptions = ReadOptions(),
    max_parallel_documents: int = 4,
    run_key: str | None = None,
    output_dir: str | None = None,
    sharding: ShardingOptions = ShardingOptions(),
    shard: Shard | None = None,
) -> dict[str, Any]:
    """Ask every question of every document, one session per document; one row per pair.

    Args:
        corpus: Local path or s3:// URI of a .jsonl/.csv/.parquet file or a folder of documents.
        questions: The questions to ask of each document (at least one).
        profile: Deployment profile name (deployments/<name>.yaml) or path to one.
        endpoint: A real-time endpoint (deploy_endpoint with endpoint_mode 'realtime' or
            'both'); default: the profile's, or <endpoint_name>-rt when its mode is 'both'.
        answers: The answers' shape (fields, labels) and the sessions' system prompt.
        generation: How answers are generated: max_new_tokens and the sampling knobs.
        columns: Which input columns hold the id and the text; the longest document.
        reading: Folders: include/exclude patterns, OCR, and the limits of archives.
        max_parallel_documents: Documents (sessions) in flight at once; each also holds a slot
            of the endpoint's shared concurrency limit, so other runs are counted too.
        run_key: Name of the run; the same key resumes it. Default: derived from the inputs.
        output_dir: Also write the results table here (local folder).
        sharding: Split the corpus into child flow runs spread over the pool's workers.
        shard: Set by a sharded run on its children: ask only this shard of the corpus.
    """
    started = time.monotonic()
    if not questions:
        raise ValueError('ask_documents needs questions: pass questions=["...", ...]')
    prof = load_profile(profile)
    endpoint_name = endpoint or ask_endpoint_name(prof)
    controls = ask_controls(
        **generation.model_dump(),
        **answers.model_dump(exclude={"system_prompt"}),
    )
    check_shard(shard, run_key)  # a child of a sharded run, under the key its parent gave
    key = validate_run_key(run_key) if run_key else None
    shaping = {**controls.shaping(), "system": answers.system_prompt}
    if shard is None and sharding.wanted:
        scan = scan_corpus(corpus, prof, reading)  # the parent holds no document: shards load them
        count = shard_count(sharding.shards, sharding.shard_size, scan.rows)
        if count > 1:  # one child ask run per shard, their tables merged
            key = key or ask_run_key(scan.fingerprint, endpoint_name, questions, shaping)
            return run_shards(
                prof,
                key,
                count,
                sharding.shard_deployment,
                sharding.max_shard_attempts,
                started,
                ask_sharding(output_dir),
            )
    mapping = ColumnMapping.of(columns)
    loaded = load_documents(corpus, mapping, prof, columns.max_doc_bytes, shard, reading)
    key = key or ask_run_key(loaded.fingerprint, endpoint_name, questions, shaping)
    answered = answered_pairs(prof, key)
    plan = AskPlan(
        endpoint=endpoint_name,
        run_key=key,
        questions=tuple(questions),
        parameters=controls.parameters,
        system=answers.system_prompt,
        max_parallel_documents=max_parallel_documents,
        instruction=controls.instruction,
        answers=controls.answers,
    )
    get_run_logger().info(
        "run %s: %d documents x %d questions on %s (%d pairs answered before)",
        key,
        len(loaded.documents),
        len(questions),
        endpoint_name,
        len(answered),
    )
    rows = ask_questions(prof, plan, loaded, answered)
    uri = write_results(prof, key, rows, output_dir)
    summary = summarize(
        prof,
        key,
        endpoint_name,
        rows,
        documents=loaded.size,
        questions=len(questions),
        answered_before=len(answered),
        results_uri=uri,
        started=started,
    )
    publish_artifacts(summary, rows, key)
    return summary


if __name__ == "__main__":
    ask_documents(questions=["What is this document about?"])
