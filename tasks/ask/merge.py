"""What the parent of a sharded ask run (``ask_documents(shards=N)``) sums and merges.

Each shard is an ask run of its own (its answered pairs kept per pair, its ``ask-results.jsonl``
and ``summary.json``); the parent sums the shards' counts and streams their results tables, one
after the other, into one ``ask-results.jsonl`` under its own run (and ``output_dir`` when
given), never holding more than a chunk in memory. Shards hold disjoint documents, so every
(document, question) pair is in the merged table once.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tasks.aws.clients import aws_client
from tasks.aws.s3 import split_s3_uri
from tasks.run.plan.layout import ask_results_file, ask_results_uri
from tasks.settings import Profile
from tasks.sharding.children import ShardRun
from tasks.sharding.merge import ShardedFlow

logger = logging.getLogger("docflow.ask")

CHUNK_BYTES = 1 << 20


def merge_ask_results(
    profile: Profile, run_key: str, shards: list[ShardRun], output_dir: str | None = None
) -> str | None:
    """The shards' ``ask-results.jsonl`` as one under the parent's run; its URI.

    A shard without results (cancelled before it wrote them) is left out and named in the log;
    the parent's summary lists every shard's state.
    """
    s3 = aws_client("s3", profile)
    with tempfile.TemporaryFile() as sink:
        for shard in shards:
            uri = (shard.summary or {}).get("results_uri")
            if not isinstance(uri, str):
                logger.warning(
                    "shard %s (%s) ended %s without results: its pairs are not in the merged "
                    "table; resume the run with the same run_key to ask them",
                    shard.shard.label,
                    shard.run_key,
                    shard.state,
                )
                continue
            bucket, key = split_s3_uri(uri)
            shutil.copyfileobj(s3.get_object(Bucket=bucket, Key=key)["Body"], sink, CHUNK_BYTES)
        if output_dir:
            path = ask_results_file(output_dir, run_key)
            path.parent.mkdir(parents=True, exist_ok=True)
            sink.seek(0)
            with Path(path).open("wb") as out:
                shutil.copyfileobj(sink, out, CHUNK_BYTES)
        target = ask_results_uri(profile, run_key)
        bucket, key = split_s3_uri(target)
        sink.seek(0)
        s3.upload_fileobj(sink, bucket, key)  # last: s3transfer closes the file it uploaded
    return target


def ask_headline(summary: Mapping[str, Any]) -> str:
    """``40 documents x 2 questions = 80 pairs in 4 shards: 80 completed, …``."""
    return (
        f"{summary['documents']} documents x {summary['questions']} questions = "
        f"{summary['pairs']} pairs in {summary['shards']} shards: {summary['completed']} "
        f"completed, {summary['failed']} failed, {summary['rejected']} rejected "
        f"({summary['resumed_pairs']} answered before, {summary['asked_pairs']} asked now)."
    )


def ask_sharding(output_dir: str | None) -> ShardedFlow:
    """The sharded ask run's sums and merge (the merged table also to ``output_dir``)."""
    return ShardedFlow(
        flow="ask-documents",
        summed=(
            "documents",
            "pairs",
            "completed",
            "failed",
            "rejected",
            "resumed_pairs",
            "asked_pairs",
        ),
        carried=("endpoint", "questions"),
        averaged=("mean_cached_tokens", "mean_latency_s"),
        merge=lambda profile, run_key, shards: merge_ask_results(
            profile, run_key, shards, output_dir
        ),
        headline=ask_headline,
    )
