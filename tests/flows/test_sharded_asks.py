"""Sharded ask runs (``ask_documents(shards=N)``) on a real Prefect server with process workers.

The server (on PostgreSQL), the `ask-documents/local` deployment and three workers are real child
processes; each worker runs at most two flow runs at once, so the parent and its four shards
cannot all land on one worker. The endpoint is a real-time endpoint in the session's localcloud
serving a tiny Llama on one instance; its request counters see every request any worker makes.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from docflow.prefect_server import ensure_global_concurrency_limit
from tasks.ask.merge import ask_sharding, merge_ask_results
from tasks.ask.saved_answers import load_answers
from tasks.aws.clients import aws_client
from tasks.aws.s3 import split_s3_uri
from tasks.endpoint.spec import concurrency_limit_name
from tasks.run.plan.layout import ask_results_file, ask_results_uri, shard_run_key
from tasks.run.results.status import read_summary
from tasks.settings import Profile
from tasks.sharding.children import ShardRun
from tasks.sharding.merge import combine_summaries
from tasks.sharding.shards import Shard, check_shard, keeps, shard_of
from tests.pool import PoolStack, run_parent
from tests.realtime import deploy_tiny_realtime
from tests.runs import run_ask, unique_run_key, write_corpus

# The session's prefect_pool (tests/conftest.py), shared with test_sharded_runs.py: three
# workers of two flow runs each, so the 5 runs (parent + SHARDS) cannot all land on one worker.
pytestmark = pytest.mark.timeout(600)

SHARDS = 4
DOCUMENTS = 40
QUESTIONS = ["Who is it about?", "What happened?"]
CAP = 4


@pytest.fixture
def stack(prefect_pool: PoolStack) -> PoolStack:
    """The session's Prefect stack: server on PostgreSQL, `ask-documents/local`, workers."""
    return prefect_pool


def _rows(profile: Profile, uri: str) -> list[dict[str, Any]]:
    bucket, key = split_s3_uri(uri)
    body = aws_client("s3", profile).get_object(Bucket=bucket, Key=key)["Body"].read()
    return [json.loads(line) for line in body.decode().splitlines()]


def test_a_parent_sums_its_shards_and_weights_their_means() -> None:
    runs = [
        ShardRun(
            index=i,
            count=2,
            run_key=f"k.s00{i + 1}of002",
            state="COMPLETED",
            summary={
                "endpoint": "e",
                "questions": 2,
                "documents": docs,
                "pairs": 2 * docs,
                "completed": 2 * docs,
                "failed": 0,
                "rejected": 0,
                "resumed_pairs": 0,
                "asked_pairs": 2 * docs,
                "mean_cached_tokens": cached,
                "mean_latency_s": None,
                "results_uri": f"s3://b/runs/k.s00{i + 1}of002/ask-results.jsonl",
            },
        )
        for i, (docs, cached) in enumerate(((3, 10.0), (1, 30.0)))
    ]
    summary = combine_summaries("k", runs, ask_sharding(None))
    assert summary["documents"] == 4 and summary["pairs"] == summary["completed"] == 8
    assert summary["endpoint"] == "e" and summary["questions"] == 2  # the same in every shard
    assert summary["mean_cached_tokens"] == 15.0  # (6 x 10 + 2 x 30) / 8
    assert summary["mean_latency_s"] is None
    assert [r["results_uri"] for r in summary["shard_runs"]] == [
        "s3://b/runs/k.s001of002/ask-results.jsonl",
        "s3://b/runs/k.s002of002/ask-results.jsonl",
    ]


def test_the_merge_streams_the_shards_tables_into_one_and_names_a_shard_without_one(
    profile: Profile, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    s3 = aws_client("s3", profile)
    runs = []
    for index, lines in enumerate((["a0", "a1"], ["b0"], None)):
        key = shard_run_key("m", index, 3)
        summary = None
        if lines is not None:
            uri = ask_results_uri(profile, key)
            body = "".join(json.dumps({"document_id": d}) + "\n" for d in lines)
            s3.put_object(Bucket=profile.bucket, Key=split_s3_uri(uri)[1], Body=body.encode())
            summary = {"results_uri": uri}
        state = "COMPLETED" if lines is not None else "CANCELLED"
        runs.append(ShardRun(index=index, count=3, run_key=key, state=state, summary=summary))
    with caplog.at_level("WARNING", logger="docflow.ask"):
        merged = merge_ask_results(profile, "m", runs, output_dir=str(tmp_path / "out"))
    assert merged == ask_results_uri(profile, "m")
    uri = merged
    assert [r["document_id"] for r in _rows(profile, uri)] == ["a0", "a1", "b0"]
    local = ask_results_file(str(tmp_path / "out"), "m").read_bytes()
    assert local == s3.get_object(Bucket=profile.bucket, Key=split_s3_uri(uri)[1])["Body"].read()
    assert "shard 3/3 (m.s003of003) ended CANCELLED without results" in caplog.text


def test_only_a_child_of_a_sharded_run_takes_a_shard(tmp_path: Path) -> None:
    from tasks.corpus.documents import ColumnMapping, load_corpus

    corpus_file = tmp_path / "c.jsonl"
    write_corpus(corpus_file, 10)
    shard = Shard(index=1, count=2)
    check_shard(None, None)
    check_shard(shard, "k.s002of002")
    half = load_corpus(str(corpus_file), ColumnMapping(), keep=keeps(shard))
    assert {shard_of(d.doc_id, 2) for d in half.documents} == {1}
    with pytest.raises(ValueError, match="pass shards=N instead"):
        check_shard(shard, None)


def test_a_sharded_ask_run_answers_every_pair_once_resumes_shards_and_a_rerun_asks_nothing(
    stack: PoolStack,
    profile: Profile,
    localcloud: Any,
    tmp_path: Path,
    prefect_harness: None,
) -> None:
    prof, path = deploy_tiny_realtime(profile, tmp_path, instances=1, cap=CAP)
    endpoint = prof.endpoint_name
    ensure_global_concurrency_limit(stack.api_url, concurrency_limit_name(endpoint), CAP)
    run_key = unique_run_key()
    corpus = tmp_path / "corpus.jsonl"
    ids = write_corpus(corpus, DOCUMENTS, words=3)
    parameters = {
        "corpus": str(corpus),
        "questions": QUESTIONS,
        "profile": path,
        "run_key": run_key,
        "shards": SHARDS,
        "max_new_tokens": 2,
        "max_parallel_documents": 2,
    }

    def received() -> int:
        return int(localcloud.stats.snapshot().get(endpoint, {}).get("received", 0))

    # Shard 1 was asked before, as by an attempt that crashed after its answers were kept: the
    # sharded run's shard 1 resumes from them and asks none of its pairs again.
    early = run_ask(
        corpus=str(corpus),
        questions=QUESTIONS,
        profile=path,
        run_key=shard_run_key(run_key, 0, SHARDS),
        shard=Shard(index=0, count=SHARDS),
        max_new_tokens=2,
    )
    early_docs = [d for d in ids if shard_of(d, SHARDS) == 0]
    assert early["completed"] == len(QUESTIONS) * len(early_docs) > 0
    before = received()
    first = run_parent(stack.api_url, "ask-documents/local", parameters, timeout_s=300)
    logs = "\n".join(w.log_tail(40) for w in stack.workers.values())
    assert first.state.is_completed(), f"{first.state}\n{logs}"
    asked = received() - before

    summary = read_summary(prof, run_key)
    assert summary is not None
    pairs = DOCUMENTS * len(QUESTIONS)
    assert summary["documents"] == DOCUMENTS and summary["questions"] == len(QUESTIONS)
    assert summary["pairs"] == summary["completed"] == pairs
    assert summary["resumed_pairs"] == len(QUESTIONS) * len(early_docs)
    assert summary["asked_pairs"] == pairs - summary["resumed_pairs"]
    assert summary["failed"] == summary["rejected"] == 0
    runs = summary["shard_runs"]
    assert [r["run_key"] for r in runs] == [shard_run_key(run_key, i, SHARDS) for i in range(4)]
    assert all(r["state"] == "COMPLETED" and r["attempts"] == 1 for r in runs), runs
    workers = {r["worker"] for r in runs}
    assert len(workers) >= 2 and None not in workers, runs  # read back from the API

    # The ledger: every (document, question) pair exactly once in the merged table.
    assert summary["results_uri"] == ask_results_uri(prof, run_key)
    rows = _rows(prof, summary["results_uri"])
    got = Counter((r["document_id"], r["question_index"]) for r in rows)
    assert set(got.values()) == {1} and set(got) == {(d, q) for d in ids for q in range(2)}
    assert {r["status"] for r in rows} == {"completed"}
    assert all(r["question"] == QUESTIONS[r["question_index"]] for r in rows)
    for index, run in enumerate(runs):  # each shard asked its own documents only, kept per pair
        shard_rows = _rows(prof, run["results_uri"])
        assert {shard_of(r["document_id"], SHARDS) for r in shard_rows} <= {index}
        assert len(load_answers(prof, run["run_key"])) == len(shard_rows)
    # Per document left: open its session, ask each question, close it; nothing else, nothing
    # twice, nothing for shard 1's documents.
    assert asked == (DOCUMENTS - len(early_docs)) * (len(QUESTIONS) + 2), asked

    again = run_parent(stack.api_url, "ask-documents/local", parameters, timeout_s=300)
    assert again.state.is_completed(), again.state
    assert received() - before == asked  # the re-run found its shards done: nothing asked
    rerun = read_summary(prof, run_key)
    assert rerun is not None
    assert [r["flow_run_id"] for r in rerun["shard_runs"]] == [r["flow_run_id"] for r in runs]
    again_rows = Counter(
        (r["document_id"], r["question_index"]) for r in _rows(prof, rerun["results_uri"])
    )
    assert again_rows == got
