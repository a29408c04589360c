"""ask_documents end to end: deploy_endpoint(endpoint_mode="realtime") with a tiny real model on
localcloud (2 instances), sessions per document, exactly one row per (document, question), and a
SIGKILLed run resumed without asking an answered pair again (a ledger of the endpoint's requests).
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tasks.aws.clients import aws_client
from tasks.aws.s3 import split_s3_uri
from tasks.run.plan.layout import answers_prefix
from tasks.settings import Profile
from tests.realtime import deploy_tiny_realtime
from tests.reliability.test_process_kill import _env, wait_for
from tests.runs import run_ask

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
    result = run_ask(corpus=CORPUS, questions=QUESTIONS, profile=path, max_new_tokens=4)
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
    params: dict[str, Any] = {
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
    result = run_ask(corpus=str(PROJECT / CORPUS), **params)
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


def _contracts(path: Path) -> Path:
    from tests.flows.test_constrained_answers import TEXTS

    with path.open("w", encoding="utf-8") as fh:
        for i, text in enumerate(TEXTS):
            fh.write(json.dumps({"id": f"doc-{i}", "text": text}) + "\n")
    return path


def test_constrained_answers_on_sessions_from_a_random_model(
    realtime: tuple[Profile, str], tmp_path: Path
) -> None:
    """fields / labels constrain every question's answer in the container (the session request
    carries json_schema / choices); each row holds the typed values beside the raw answer."""
    from tasks.ask.asker import AskPlan, ask_all
    from tasks.ask.run import ask_run_key
    from tasks.corpus.documents import ColumnMapping, load_corpus
    from tasks.run.request.typed_answers import classification_answers
    from tests.flows.test_constrained_answers import LABELS, SCHEMA, TEXTS

    prof, path = realtime
    corpus = str(_contracts(tmp_path / "contracts.jsonl"))
    questions = ["What are the terms?", "Who signed it?"]
    pairs = len(TEXTS) * len(questions)

    # Extraction: every answer validates against the schema, its values typed in the row.
    extracted = run_ask(
        corpus=corpus, questions=questions, profile=path, fields=SCHEMA, max_new_tokens=300
    )
    rows = _rows(prof, extracted["results_uri"])
    assert extracted["completed"] == len(rows) == pairs, [r["reason"] for r in rows][:3]
    full = {
        "type": "object",
        "properties": {
            k: ({"enum": v} if isinstance(v, list) else v if isinstance(v, dict) else {})
            for k, v in SCHEMA.items()
        },
    }
    for row in rows:
        answer = json.loads(row["answer"])
        jsonschema.validate(answer, full)
        assert list(answer) == list(SCHEMA)
        assert {k: row[k] for k in SCHEMA} == {**answer, "amount": float(answer["amount"])}
        assert isinstance(row["count"], int) and isinstance(row["signed"], bool)
        assert dt.date.fromisoformat(row["date"]).isoformat() == row["date"]
        assert 0 < row["cached_tokens"] < row["prompt_tokens"], row  # the document was cached

    # Classification sampled hot: always one of the labels.
    classified = run_ask(
        corpus=corpus,
        questions=questions,
        profile=path,
        labels=LABELS,
        temperature=2.5,
        seed=11,
        max_new_tokens=20,
    )
    rows = _rows(prof, classified["results_uri"])
    assert classified["completed"] == pairs, [r["reason"] for r in rows][:3]
    assert all(row["label"] in LABELS and row["answer"] == row["label"] for row in rows)
    assert len({row["label"] for row in rows}) > 1  # sampled, not one label forced

    # Several labels: a list of distinct labels per answer.
    multi = run_ask(
        corpus=corpus,
        questions=questions,
        profile=path,
        labels=LABELS,
        multi_label=True,
        max_new_tokens=40,
    )
    rows = _rows(prof, multi["results_uri"])
    assert multi["completed"] == pairs, [r["reason"] for r in rows][:3]
    for row in rows:
        assert row["labels"] and set(row["labels"]) <= set(LABELS)
        assert len(set(row["labels"])) == len(row["labels"]) and "label" not in row

    # A budget too small for the answer: each pair failed with that reason, no typed values.
    short = run_ask(
        corpus=corpus, questions=questions, profile=path, fields=SCHEMA, max_new_tokens=4
    )
    rows = _rows(prof, short["results_uri"])
    assert short["failed"] == pairs and short["completed"] == 0, short
    assert all("max_new_tokens=4 ran out" in row["reason"] for row in rows)
    assert all(row["party"] is None and row["answer"] is None for row in rows)

    # The controls are in the run key; free text with a budget keeps the key it had before.
    keys = {r["run_key"] for r in (extracted, classified, multi, short)}
    assert len(keys) == 4
    loaded = load_corpus(corpus, ColumnMapping(), profile=prof, max_doc_bytes=100_000)
    free = run_ask(corpus=corpus, questions=questions, profile=path, max_new_tokens=4)
    before = ask_run_key(
        loaded.fingerprint, prof.endpoint_name, questions, {"max_new_tokens": 4, "system": None}
    )
    assert free["run_key"] == before and free["completed"] == pairs

    # An answer that is not a label (asked without the constraint, typed with it): that pair
    # FAILED with the reason, nothing half-parsed, nothing kept for a resume.
    plan = AskPlan(
        endpoint=prof.endpoint_name,
        run_key="askunconstrained",
        questions=tuple(questions),
        parameters={"max_new_tokens": 4},
        answers=classification_answers(LABELS, False),
    )
    rows = ask_all(prof, plan, loaded.documents, {})
    assert len(rows) == pairs
    assert all(r["status"] == "failed" and r["label"] is None for r in rows), rows[:2]
    assert all(r["reason"].startswith("invalid answer: answer field 'label' is") for r in rows)
    assert _answers(prof, "askunconstrained") == {}
