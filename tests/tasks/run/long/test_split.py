"""Counting prompts with a real tokenizer, and what reject, truncate and map_reduce make of long documents."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from tasks.corpus.documents import Corpus, Document
from tasks.run.long.combine import combine_chunks, json_object, merge_objects
from tasks.run.long.split import (
    LongDocumentsError,
    check_long_documents,
    plan_long_documents,
)
from tasks.run.request.prompts import PromptTemplate
from tasks.run.request.tokens import TokenCounter
from tests.tiny_models import CORPUS, make_tiny_tokenizer

CONTEXT = 256
MAX_NEW = 32
SUMMARIZE = PromptTemplate(kind="summarize")


@pytest.fixture(scope="module")
def counter(tmp_path_factory: pytest.TempPathFactory) -> TokenCounter:
    """The tiny Mistral tokenizer with its chat template, as saved in a packaged model folder."""
    from transformers import MistralConfig

    folder = tmp_path_factory.mktemp("tok")
    make_tiny_tokenizer("mistral").save_pretrained(folder)
    MistralConfig(max_position_embeddings=CONTEXT, vocab_size=400).save_pretrained(folder)
    return TokenCounter.from_folder(Path(folder))


def corpus_of(*texts: str) -> Corpus:
    docs = [Document(doc_id=f"d{i}", text=t, row=i + 1) for i, t in enumerate(texts)]
    return Corpus(source="mem", fingerprint="f", documents=docs, rejected=[])


def long_text(counter: TokenCounter, times_context: float) -> str:
    """Text whose own tokens are about ``times_context`` x the context."""
    text = ""
    while len(counter.text_ids(text)) < times_context * CONTEXT:
        text += " ".join(CORPUS) + " "
    return text


def test_counts_equal_the_handlers_prompt_ids(counter: TokenCounter) -> None:
    from request_contract import Document as Wire
    from request_contract import Params, prompt_ids

    prompt = SUMMARIZE.render(Document(doc_id="a", text="The quick brown fox."))
    wire = Wire("a", Params(max_new_tokens=MAX_NEW), prompt=prompt)
    assert counter.prompt_tokens(prompt) == len(prompt_ids(wire, counter.tokenizer)) > 10
    assert counter.context_length == CONTEXT


def test_reject_names_the_option_and_its_alternatives(counter: TokenCounter) -> None:
    corpus = corpus_of("short one", long_text(counter, 2))
    planned, plan = plan_long_documents(corpus, counter, SUMMARIZE, MAX_NEW, "reject")
    assert [d.doc_id for d in planned.documents] == ["d0"]
    (rejected,) = planned.rejected
    assert rejected.doc_id == "d1" and rejected.row == 2
    for needle in ("long_documents='truncate'", "long_documents='map_reduce'", "'reject'"):
        assert needle in rejected.reason
    assert f"context of {CONTEXT} tokens" in rejected.reason
    assert plan.rejected == 1 and set(plan.prompt_tokens) == {"d0"}


@pytest.mark.parametrize("times", [2, 10])
def test_truncate_keeps_the_first_tokens_that_fit(counter: TokenCounter, times: int) -> None:
    text = long_text(counter, times)
    planned, plan = plan_long_documents(corpus_of(text), counter, SUMMARIZE, MAX_NEW, "truncate")
    (kept,) = planned.documents
    assert text.startswith(kept.text[:50]) and len(kept.text) < len(text)
    count = counter.prompt_tokens(SUMMARIZE.render(kept))
    assert plan.prompt_tokens["d0"] == count <= CONTEXT - MAX_NEW
    assert count > CONTEXT - MAX_NEW - 8  # it keeps as much as fits
    total = len(counter.text_ids(text))
    assert plan.tokens_cut["d0"] == total - len(counter.text_ids(kept.text)) > (times - 1) * CONTEXT


@pytest.mark.parametrize("times", [2, 10])
def test_map_reduce_chunks_cover_the_text_with_overlap(counter: TokenCounter, times: int) -> None:
    text = long_text(counter, times)
    planned, plan = plan_long_documents(
        corpus_of(text, "short"), counter, SUMMARIZE, MAX_NEW, "map_reduce", overlap=16
    )
    pieces = plan.chunks["d0"]
    assert len(pieces) >= times and pieces[0] == f"d0#1/{len(pieces)}"
    chunks = {d.doc_id: d for d in planned.documents}
    assert list(chunks) == [*pieces, "d1"]
    for piece in pieces:
        prompt = SUMMARIZE.render(chunks[piece])
        assert plan.prompt_tokens[piece] == counter.prompt_tokens(prompt) <= CONTEXT - MAX_NEW
        assert chunks[piece].row == 1
    # Consecutive chunks share text (the overlap), and together they hold every token.
    first, second = chunks[pieces[0]].text, chunks[pieces[1]].text
    assert first[-20:] in second
    covered = sum(len(counter.text_ids(chunks[p].text)) for p in pieces)
    assert covered >= len(counter.text_ids(text))


def test_parameters_that_cannot_work_are_refused_by_name(counter: TokenCounter) -> None:
    classify = PromptTemplate(kind="classify", labels=["a", "b"])
    with pytest.raises(LongDocumentsError, match="long_documents='truncate'"):
        check_long_documents("map_reduce", classify, 16, counter)
    with pytest.raises(LongDocumentsError, match="long_documents='reject'"):
        check_long_documents("truncate", SUMMARIZE, 16, None)
    check_long_documents("reject", SUMMARIZE, 16, None)  # the echo model keeps working
    with pytest.raises(LongDocumentsError, match="chunk_overlap_tokens"):
        plan_long_documents(
            corpus_of(long_text(counter, 2)), counter, SUMMARIZE, MAX_NEW, "map_reduce", 10_000
        )
    with pytest.raises(LongDocumentsError, match="lower max_new_tokens"):
        plan_long_documents(corpus_of("x"), counter, SUMMARIZE, CONTEXT, "truncate")


def test_extract_answers_merge_by_field() -> None:
    answers = [
        'Here it is: {"party": "Acme", "amount": null, "items": ["bolts"]}',
        '```json\n{"party": "Other", "amount": 12, "items": ["nuts", "bolts"]}\n```',
        "no json here",
    ]
    objects = [o for a in answers if (o := json_object(a)) is not None]
    assert merge_objects(objects) == {"party": "Acme", "amount": 12, "items": ["bolts", "nuts"]}
    rows = [
        {
            "status": "completed",
            "text": a,
            "prompt_tokens": 10,
            "completion_tokens": 5,
            "batch_id": "b",
        }
        for a in answers
    ]
    row = combine_chunks("extract", rows, None)
    assert row["status"] == "completed" and row["chunks"] == 3
    assert json.loads(row["text"])["amount"] == 12
    assert row["prompt_tokens"] == 30 and row["completion_tokens"] == 15


def test_a_failed_chunk_fails_its_document_with_the_chunk_named() -> None:
    ok = {"status": "completed", "text": "s", "prompt_tokens": 1, "completion_tokens": 1}
    bad = {"status": "failed", "reason": "generation failed"}
    row = combine_chunks("summarize", [ok, bad, ok], None)
    assert row["status"] == "failed" and row["reason"] == "chunk 2/3: generation failed"
    reduce = {"status": "completed", "text": "all", "prompt_tokens": 7, "completion_tokens": 2}
    row = combine_chunks("summarize", [ok, ok], reduce | {"finish_reason": "stop"})
    assert row["status"] == "completed" and row["text"] == "all" and row["prompt_tokens"] == 9


def test_merged_extract_answers_fill_the_typed_columns_or_fail_with_the_reason() -> None:
    from tasks.run.request.typed_answers import extraction_answers

    answers = extraction_answers({"party": "string", "count": "integer", "when": "date"}, set())
    chunk = {"status": "completed", "prompt_tokens": 1, "completion_tokens": 1}
    texts = [
        '{"party": "", "count": 3, "when": "2024-05-01"}',
        '{"party": "Acme", "count": 7, "when": "2023-01-01"}',
    ]
    row = combine_chunks("extract", [chunk | {"text": t} for t in texts], None, answers)
    assert row["status"] == "completed"
    assert (row["party"], row["count"], row["when"]) == ("Acme", 3, dt.date(2024, 5, 1))
    # A merge that does not validate: failed with the reason, no typed value, no text.
    bad = ['{"party": "Acme", "count": "many", "when": "2024-05-01"}', '{"count": 2}']
    row = combine_chunks("extract", [chunk | {"text": t} for t in bad], None, answers)
    assert row["status"] == "failed" and "text" not in row and "count" not in row
    assert row["reason"] == (
        "invalid answer: the 2 chunk answers merged by field: answer field 'count' is \"many\", "
        "not a integer"
    )


def test_a_long_messages_conversation_is_rejected_not_cut(counter: TokenCounter) -> None:
    chat = PromptTemplate(from_messages=True, system="Be terse.")
    short = json.dumps([{"role": "user", "content": "Hi there"}])
    long = json.dumps([{"role": "user", "content": long_text(counter, 2)}])
    planned, plan = plan_long_documents(
        corpus_of(short, long), counter, chat, MAX_NEW, "map_reduce"
    )
    assert [d.doc_id for d in planned.documents] == ["d0"] and plan.chunks == {}
    # Counted as the handler counts it: the system prompt folded into the first user turn.
    assert plan.prompt_tokens["d0"] == counter.request_tokens(
        {"messages": [{"role": "user", "content": "Be terse.\n\nHi there"}]}
    )
    (rejected,) = planned.rejected
    assert rejected.doc_id == "d1" and "not a messages_column conversation" in rejected.reason
