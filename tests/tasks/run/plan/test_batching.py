"""Batching: limits honoured, content-derived ids, deterministic order, wire format, run keys."""

from __future__ import annotations

import json

import pytest

from tasks.corpus.documents import Document
from tasks.run.plan.batching import (
    batch_id_for,
    compute_run_key,
    make_batches,
    split_batch,
)
from tasks.run.plan.layout import inference_id, inference_prefix, validate_run_key
from tasks.run.request.prompts import GenerationParameters, PromptTemplate, TemplateError

TEMPLATE = PromptTemplate()
PARAMS = GenerationParameters(max_new_tokens=32)


def _docs(n: int, words: int = 5) -> list[Document]:
    return [
        Document(doc_id=f"doc-{i}", text=" ".join(["word"] * (words + i % 7)), row=i)
        for i in range(n)
    ]


def test_lines_follow_the_wire_contract() -> None:
    docs = [Document(doc_id="a", text="Über\u2028line\nbreak")]
    (batch,), rejected = make_batches(docs, TEMPLATE, PARAMS)
    assert rejected == []
    assert batch.body.count(b"\n") == 1 and batch.body.endswith(b"\n")
    assert len(batch.body.decode("utf-8").splitlines()) == 1  # U+2028 escaped
    line = json.loads(batch.body)
    assert line == {
        "id": "a",
        "prompt": TEMPLATE.render(docs[0]),
        "parameters": {"max_new_tokens": 32, "do_sample": False},
    }


def test_max_docs_and_max_bytes_are_honoured_and_nothing_is_lost() -> None:
    docs = _docs(100)
    batches, rejected = make_batches(docs, TEMPLATE, PARAMS, max_docs=7, max_bytes=800)
    assert rejected == []
    assert all(len(b.doc_ids) <= 7 and len(b.body) <= 800 for b in batches)
    assert [d for b in batches for d in b.doc_ids] == [d.doc_id for d in docs]
    assert all(len(b.lines()) == len(b.doc_ids) for b in batches)
    assert any(len(b.doc_ids) < 7 for b in batches[:-1])  # the byte limit cut some early


def test_batch_ids_are_content_hashes_and_deterministic() -> None:
    first, _ = make_batches(_docs(40), TEMPLATE, PARAMS, max_docs=16)
    again, _ = make_batches(_docs(40), TEMPLATE, PARAMS, max_docs=16)
    assert [b.batch_id for b in first] == [b.batch_id for b in again]
    assert all(b.batch_id == batch_id_for(b.body) and len(b.batch_id) == 16 for b in first)
    assert len({b.batch_id for b in first}) == len(first)
    other, _ = make_batches(_docs(40), TEMPLATE, GenerationParameters(max_new_tokens=33))
    assert first[0].batch_id != other[0].batch_id


def test_a_document_over_the_payload_limit_is_rejected_with_the_fix() -> None:
    docs = _docs(3)
    docs.insert(1, Document(doc_id="huge", text="x" * 5000, row=9))
    batches, rejected = make_batches(docs, TEMPLATE, PARAMS, max_bytes=2000)
    assert len(rejected) == 1
    assert rejected[0].doc_id == "huge" and rejected[0].row == 9
    assert "over the payload limit of 2000 bytes; raise max_batch_bytes" in rejected[0].reason
    assert sum(len(b.doc_ids) for b in batches) + len(rejected) == len(docs)


def test_duplicate_ids_passed_in_are_rejected_not_batched_twice() -> None:
    docs = [Document(doc_id="a", text="one"), Document(doc_id="a", text="two")]
    batches, rejected = make_batches(docs, TEMPLATE, PARAMS)
    assert [b.doc_ids for b in batches] == [["a"]]
    assert len(rejected) == 1 and "duplicate id 'a'" in rejected[0].reason


def test_a_placeholder_missing_in_one_document_rejects_only_that_one() -> None:
    template = PromptTemplate(kind="custom", template="{source}: {text}")
    docs = [
        Document(doc_id="a", text="t", metadata={"source": "news"}),
        Document(doc_id="b", text="t"),
    ]
    batches, rejected = make_batches(docs, template, PARAMS)
    assert [b.doc_ids for b in batches] == [["a"]]
    assert rejected[0].doc_id == "b" and "{source}" in rejected[0].reason


def test_a_template_no_document_can_render_is_an_error() -> None:
    template = PromptTemplate(kind="custom", template="{nope}: {text}")
    with pytest.raises(TemplateError, match=r"\{nope\}"):
        make_batches(_docs(3), template, PARAMS)


def test_split_batch_halves_with_new_ids() -> None:
    (batch,), _ = make_batches(_docs(16), TEMPLATE, PARAMS)
    left, right = split_batch(batch)
    assert left.doc_ids == batch.doc_ids[:8] and right.doc_ids == batch.doc_ids[8:]
    assert left.body + right.body == batch.body
    assert len({batch.batch_id, left.batch_id, right.batch_id}) == 3
    assert left.batch_id == batch_id_for(left.body)
    a, b = split_batch(right)
    x, y = split_batch(a)
    assert len(x.doc_ids) == 2 and len(split_batch(x)[0].doc_ids) == 1
    with pytest.raises(ValueError, match="one document"):
        split_batch(split_batch(x)[0])
    (odd,), _ = make_batches(_docs(5), TEMPLATE, PARAMS)
    assert [len(h.doc_ids) for h in split_batch(odd)] == [2, 3]


def test_run_key_is_deterministic_and_sensitive_to_every_input() -> None:
    args = ("fp", "endpoint", "s3://b/models/m.tar.gz", TEMPLATE, PARAMS)
    key = compute_run_key(*args)
    assert key == compute_run_key(*args)
    assert len(key) == 12 and int(key, 16) >= 0
    variants = [
        ("fp2", "endpoint", "s3://b/models/m.tar.gz", TEMPLATE, PARAMS),
        ("fp", "endpoint2", "s3://b/models/m.tar.gz", TEMPLATE, PARAMS),
        ("fp", "endpoint", "s3://b/models/n.tar.gz", TEMPLATE, PARAMS),
        (
            "fp",
            "endpoint",
            "s3://b/models/m.tar.gz",
            PromptTemplate(kind="classify", labels=["a"]),
            PARAMS,
        ),
        ("fp", "endpoint", "s3://b/models/m.tar.gz", TEMPLATE, GenerationParameters(seed=3)),
    ]
    assert len({compute_run_key(*v) for v in variants} | {key}) == 6


def test_inference_id_and_prefix() -> None:
    key = compute_run_key("fp", "e", "m", TEMPLATE, PARAMS)
    value = inference_id(key, "0123456789abcdef")
    assert value == f"{key}-0123456789abcdef" and value.startswith(inference_prefix(key))
    longest = "k" * 47
    assert len(inference_id(longest, "0123456789abcdef")) == 64
    with pytest.raises(ValueError, match="run key"):
        inference_id("k" * 48, "0123456789abcdef")


@pytest.mark.parametrize("bad", ["", "night-1", "a/b", "_x", "a b"])
def test_user_run_keys_are_checked(bad: str) -> None:
    with pytest.raises(ValueError, match="no '-'"):
        validate_run_key(bad)


def test_user_run_key_accepts_dots_and_underscores() -> None:
    assert validate_run_key("nightly_2026.11.21") == "nightly_2026.11.21"
