"""ask_documents end to end: deploy_endpoint(endpoint_mode="realtime") with a tiny real model on
localcloud (2 instances), sessions per document, exactly one row per (document, question), and a
SIGKILLed run resumed without asking an answered pair again (a ledger of the endpoint's requests).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from flows.ask_documents import ask_documents
from tasks.aws.clients import aws_client
from tasks.aws.s3 import split_s3_uri
from tasks.run.layout import answers_prefix
from tasks.settings import Profile
from tests.realtime import deploy_tiny_realtime
from tests.reliability.test_process_kill import _env, wait_for

CORPUS = "datasets/sample/documents.jsonl"
QUESTIONS = ["Who is it about?", "What happened?", "Is it urgent?"]
PROJECT = Path(__file__).resolve().parents[2]


@pytest.fixture
def realtime(profile: Profile, tmp_path: Path, prefect_harness: None) -> tuple[Profile, str]:
    """A real-time endpoint on 2 instances serving a tiny Llama (2,048-token context)."""
    return deploy_tiny_realtime(profile, tmp_path)


def _rows(profile: Profile, uri: str) -> list[dict[str, Any]]:
    bucket, key = split_s3_uri(uri)
    body = aws_client("s3", profile).get_object(Bucket=bucket, Key=key)["Body"].read()
    return [json.loads(line) for line in body.decode().splitlines()]


def _documents() -> list[str]:
    return [
        json.loads(line)["id"] for line in Path(CORPUS).read_text().splitlines() if line.strip()
    ]


def test_three_questions_give_three_rows_per_document(realtime: tuple[Profile, str]) -> None:
    prof, path = realtime
    result = ask_documents(corpus=CORPUS, questions=QUESTIONS, profile=path, max_new_tokens=4)
    rows = _rows(prof, result["results_uri"])
    docs = _documents()
    assert sorted((r["document_id"], r["question_index"]) for r in rows) == sorted(
        (d, i) for d in docs for i in range(3)
    )
    assert result["completed"] == len(rows) == 3 * len(docs), [
        r["reason"] for r in rows if r["reason"]
    ][:3]
    for row in rows:  # the document came from the session's cache, the question did not
        assert 0 < row["prompt_tokens"] - row["cached_tokens"] < 40, row
        assert row["answer"] is not None and row["latency_s"] > 0
        assert row["question"] == QUESTIONS[row["question_index"]]


def _answers(profile: Profile, run_key: str) -> dict[str, tuple[str, Any]]:
    s3 = aws_client("s3", profile)
    listed = s3.list_objects_v2(Bucket=profile.bucket, Prefix=answers_prefix(profile, run_key))
    return {o["Key"]: (o["ETag"], o["LastModified"]) for o in listed.get("Contents", [])}


def test_sigkill_then_resume_asks_no_answered_pair_again(
    realtime: tuple[Profile, str], localcloud: Any, tmp_path: Path
) -> None:
    prof, path = realtime
    run_key = f"askkill{int(time.time())}"
    params = {
        "corpus": str(PROJECT / CORPUS),
        "questions": QUESTIONS,
        "profile": path,
        "max_new_tokens": 24,
        "run_key": run_key,
        "max_parallel_documents": 2,
    }
    (tmp_path / "params.json").write_text(json.dumps(params))
    log = (tmp_path / "flow.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.flows.ask_runner",
            str(tmp_path / "params.json"),
            str(tmp_path / "r.json"),
        ],
        cwd=PROJECT,
        env=_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    wait_for(
        lambda: len(_answers(prof, run_key)) >= 30 or proc.poll() is not None, 300, "30 answers"
    )
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.kill()
    proc.wait(timeout=30)
    time.sleep(1.0)  # requests it had in flight finish on the endpoint
    before = _answers(prof, run_key)
    answered = len(before)
    assert 30 <= answered < 3 * len(_documents())
    _free_slots(prof.endpoint_name)

    received = localcloud.stats.snapshot()[prof.endpoint_name]["received"]
    params.pop("corpus")
    result = ask_documents(corpus=str(PROJECT / CORPUS), **params)
    asked = localcloud.stats.snapshot()[prof.endpoint_name]["received"] - received

    after = _answers(prof, run_key)
    assert all(after[key] == value for key, value in before.items())  # none written again
    rows = _rows(prof, result["results_uri"])
    assert len(rows) == 3 * len(_documents()) == result["completed"]
    assert result["resumed_pairs"] == answered
    # The ledger: each document with questions left costs open + its questions + close, and
    # nothing else reached the endpoint: no answered pair was asked again.
    todo = 3 * len(_documents()) - answered
    left_docs = len({r["document_id"] for r in rows} - _complete_docs(before, prof, run_key))
    assert asked == todo + 2 * left_docs, (asked, todo, left_docs)


def _complete_docs(answers: dict[str, Any], profile: Profile, run_key: str) -> set[str]:
    """Documents whose three answers all existed before the resume."""
    s3 = aws_client("s3", profile)
    per_doc: dict[str, int] = {}
    for key in answers:
        row = json.loads(s3.get_object(Bucket=profile.bucket, Key=key)["Body"].read())
        per_doc[row["document_id"]] = per_doc.get(row["document_id"], 0) + 1
    return {doc for doc, n in per_doc.items() if n == 3}


def _free_slots(endpoint: str) -> None:
    """Give back the slots the killed run held (the test server runs no lease repossessor)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

    from tasks.endpoint.spec import concurrency_limit_name

    with get_client(sync_client=True) as client:
        client.update_global_concurrency_limit(
            concurrency_limit_name(endpoint), GlobalConcurrencyLimitUpdate(active_slots=0)
        )
