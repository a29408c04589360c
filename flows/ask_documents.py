"""Ask the same questions of every document of a corpus on a real-time endpoint with sessions.

Per document: open a session (the document is read once and cached on one instance), ask every
question (each costs only its own tokens), close the session. One row per (document, question);
every pair ends completed, failed (reason) or rejected (reason); answered pairs are kept in S3
as they arrive, so the same run key resumes a run without asking them again.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.ask.answers import load_answers
from tasks.ask.asker import AskPlan, Row, ask_all
from tasks.ask.controls import ask_controls
from tasks.ask.sharded import ask_sharding
from tasks.aws.clients import aws_client
from tasks.aws.s3 import split_s3_uri
from tasks.run.corpus import ColumnMapping, Corpus
from tasks.run.layout import ask_results_file, ask_results_uri, run_artifact_key, validate_run_key
from tasks.run.load import load_documents, scan_corpus
from tasks.run.sharded_run import run_shards
from tasks.run.shards import Shard, check_shard, shard_count
from tasks.run.status import write_summary
from tasks.settings import Profile, load_profile

TABLE_ROWS = 20
STATUSES = ("completed", "failed", "rejected")


@task(name="load-answers", cache_policy=NO_CACHE)
def answered_pairs(profile: Profile, run_key: str) -> dict[tuple[str, int], Row]:
    """The pairs this run answered before (a resumed run)."""
    return load_answers(profile, run_key)


@task(name="ask-questions", cache_policy=NO_CACHE)
def ask_questions(
    profile: Profile, plan: AskPlan, corpus: Corpus, answered: dict[tuple[str, int], Row]
) -> list[Row]:
    """Sessions per document, documents in parallel under the endpoint's shared cap."""
    logger = get_run_logger()

    def progress(rows: list[Row]) -> None:
        done = sum(r["status"] == "completed" for r in rows)
        logger.info("document %s: %d/%d answered", rows[0]["document_id"], done, len(rows))

    return ask_all(profile, plan, corpus.documents, answered, on_rows=progress)


@task(name="write-results", cache_policy=NO_CACHE)
def write_results(profile: Profile, run_key: str, rows: list[Row], output_dir: str | None) -> str:
    """The results table (JSON Lines) in S3 under the run, and in ``output_dir`` when given."""
    body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
    uri = ask_results_uri(profile, run_key)
    bucket, key = split_s3_uri(uri)
    aws_client("s3", profile).put_object(Bucket=bucket, Key=key, Body=body)
    if output_dir:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        ask_results_file(output_dir, run_key).write_bytes(body)
    return uri


@task(name="publish-artifacts", cache_policy=NO_CACHE)
def publish_artifacts(summary: dict[str, Any], rows: list[Row], run_key: str) -> None:
    """A markdown summary, the first rows and the failures as Prefect artifacts."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    lines = [
        f"# ask-documents {run_key}",
        "",
        f"{summary['documents']} documents x {summary['questions']} questions = "
        f"{summary['pairs']} pairs: {summary['completed']} completed, {summary['failed']} "
        f"failed, {summary['rejected']} rejected ({summary['resumed_pairs']} answered before).",
        f"Mean cached tokens per answer: {summary['mean_cached_tokens']}; "
        f"mean latency {summary['mean_latency_s']} s. Results: {summary['results_uri']}",
    ]
    create_markdown_artifact(
        "\n".join(lines),
        key=run_artifact_key(run_key, "summary"),
        description="ask-documents summary",
    )
    table = [{k: v for k, v in r.items() if k != "reason"} for r in rows[:TABLE_ROWS]]
    if table:
        create_table_artifact(
            table, key=run_artifact_key(run_key, "results"), description="first rows"
        )
    failures = [r for r in rows if r["status"] != "completed"][:TABLE_ROWS]
    if failures:
        create_table_artifact(
            failures,
            key=run_artifact_key(run_key, "failures"),
            description=f"{summary['failed']} failed and {summary['rejected']} rejected pairs "
            f"with their reasons (first {TABLE_ROWS})",
        )


def ask_run_key(
    fingerprint: str, endpoint: str, questions: list[str], shaping: dict[str, Any]
) -> str:
    """A run key derived from everything that shapes the answers (the same inputs resume)."""
    canonical = json.dumps([fingerprint, endpoint, questions, shaping], sort_keys=True)
    return "ask" + hashlib.sha256(canonical.encode()).hexdigest()[:12]


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


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
    system: str | None = None,
    id_column: str = "id",
    text_column: str = "text",
    max_new_tokens: int = 128,
    max_doc_bytes: int = 100_000,
    max_parallel_documents: int = 4,
    run_key: str | None = None,
    output_dir: str | None = None,
    fields: list[str] | dict[str, Any] | str | None = None,
    labels: list[str] | None = None,
    multi_label: bool = False,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    repetition_penalty: float | None = None,
    stop: list[str] | str | None = None,
    seed: int | None = None,
    shards: int = 1,
    shard_size: int | None = None,
    shard_deployment: str | None = None,
    max_shard_attempts: int = 3,
    shard: Shard | None = None,
) -> dict[str, Any]:
    """Ask every question of every document, one session per document; one row per pair.

    Args:
        corpus: Local path or s3:// URI of a .jsonl/.csv/.parquet file or a folder of documents.
        questions: The questions to ask of each document (at least one).
        profile: Deployment profile name (deployments/<name>.yaml) or path to one.
        endpoint: A real-time endpoint (deploy_endpoint with endpoint_mode 'realtime' or
            'both'); default: the profile's endpoint_name, or <endpoint_name>-rt when the
            profile's endpoint_mode is 'both'.
        system: An optional system prompt for every session.
        id_column: Input column holding the document id.
        text_column: Input column holding the document text.
        max_new_tokens: Generation budget per answer.
        max_doc_bytes: Longest document text (UTF-8 bytes); longer ones are rejected.
        max_parallel_documents: Documents (sessions) in flight at once; each also holds a slot
            of the endpoint's shared concurrency limit, so other runs are counted too.
        run_key: Name of the run; the same key resumes it. Default: derived from the inputs.
        output_dir: Also write the results table here (local folder).
        fields: Every answer is a JSON object of these fields, constrained on the endpoint and
            typed into one value per field in each row (as process_documents' template
            'extract': names, a {name: type} mapping or a JSON Schema file).
        labels: Every answer is exactly one of these labels, in the row's ``label``.
        multi_label: With labels: every answer is a list of distinct labels (``labels``).
        temperature: Sampling temperature (0 or unset: greedy).
        top_p: Nucleus sampling probability mass (sampling).
        top_k: Sample among the k likeliest tokens.
        repetition_penalty: Penalty (> 1) on tokens already in the prompt or answer.
        stop: Stop string(s) that end an answer (not with fields or labels).
        seed: Seed of each answer's sampling (needs sampling), for reproducible answers.
        shards: Split the corpus into this many shards (by a stable hash of the document id), each
            asked by a flow run of its own on any worker of the pool; results merged at the end.
        shard_size: Documents per shard: enough shards for this many each (at least ``shards``).
        shard_deployment: The deployment the shards run on; default: the one this run came from.
        max_shard_attempts: Flow runs per shard before the run fails (a crashed shard resumes).
        shard: Set by a sharded run on its children: ask only this shard of the corpus.
    """
    from tasks.endpoint.spec import realtime_endpoint_name

    logger = get_run_logger()
    started = time.monotonic()
    if not questions:
        raise ValueError('ask_documents needs questions: pass questions=["...", ...]')
    prof = load_profile(profile)
    default_endpoint = (
        realtime_endpoint_name(prof.endpoint_name)
        if prof.endpoint_mode == "both"
        else prof.endpoint_name
    )
    endpoint_name = endpoint or default_endpoint
    controls = ask_controls(
        max_new_tokens=max_new_tokens,
        fields=fields,
        labels=labels,
        multi_label=multi_label,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        repetition_penalty=repetition_penalty,
        stop=stop,
        seed=seed,
    )
    check_shard(shard, run_key)  # a child of a sharded run, under the key its parent gave
    key = validate_run_key(run_key) if run_key else None
    shaping = {**controls.shaping(), "system": system}
    if shard is None and (shards > 1 or shard_size):
        scan = scan_corpus(corpus, prof)  # the parent holds no document: the shards load them
        count = shard_count(shards, shard_size, scan.rows)
        if count > 1:  # one child ask run per shard, their tables merged
            key = key or ask_run_key(scan.fingerprint, endpoint_name, questions, shaping)
            return run_shards(
                prof,
                key,
                count,
                shard_deployment,
                max_shard_attempts,
                started,
                ask_sharding(output_dir),
            )
    mapping = ColumnMapping(id=id_column, text=text_column)
    loaded = load_documents(corpus, mapping, prof, max_doc_bytes, shard)
    key = key or ask_run_key(loaded.fingerprint, endpoint_name, questions, shaping)
    answered = answered_pairs(prof, key)
    plan = AskPlan(
        endpoint=endpoint_name,
        run_key=key,
        questions=tuple(questions),
        parameters=controls.parameters,
        system=system,
        max_parallel_documents=max_parallel_documents,
        instruction=controls.instruction,
        answers=controls.answers,
    )
    logger.info(
        "run %s: %d documents x %d questions on %s (%d pairs answered before)",
        key,
        len(loaded.documents),
        len(questions),
        endpoint_name,
        len(answered),
    )
    rows = ask_questions(prof, plan, loaded, answered)
    for n, rejected in enumerate(loaded.rejected):
        doc_id = rejected.doc_id or f"row {rejected.row if rejected.row is not None else n}"
        rows += [
            plan.row(doc_id, i, "rejected", reason=rejected.reason) for i in range(len(questions))
        ]
    uri = write_results(prof, key, rows, output_dir)
    completed = [r for r in rows if r["status"] == "completed"]
    summary: dict[str, Any] = {
        "run_key": key,
        "endpoint": endpoint_name,
        "documents": len(loaded.documents) + len(loaded.rejected),
        "questions": len(questions),
        "pairs": len(rows),
        **{status: sum(r["status"] == status for r in rows) for status in STATUSES},
        "resumed_pairs": len(answered),
        "asked_pairs": len(rows) - len(answered) - sum(r["status"] == "rejected" for r in rows),
        "mean_cached_tokens": _mean([float(r["cached_tokens"] or 0) for r in completed]),
        "mean_latency_s": _mean([float(r["latency_s"] or 0) for r in completed]),
        "results_uri": uri,
        "wall_time_s": round(time.monotonic() - started, 3),
    }
    summary["summary_uri"] = write_summary(prof, key, summary)
    publish_artifacts(summary, rows, key)
    if summary["failed"] or summary["rejected"]:
        logger.warning(
            "run %s: %d completed, %d failed, %d rejected — see %s",
            key,
            summary["completed"],
            summary["failed"],
            summary["rejected"],
            uri,
        )
    return summary


if __name__ == "__main__":
    ask_documents(questions=["What is this document about?"])
