"""Prompt templates render each kind, name unknown placeholders, and hash stably."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tasks.corpus.documents import Document
from tasks.params.groups import DEFAULT_MAX_NEW_TOKENS
from tasks.run.request.prompts import GenerationParameters, PromptTemplate, TemplateError

DOC = Document(doc_id="t-1", text="The printer jams on page two.", metadata={"source": "ticket"})


def test_summarize_is_the_default_and_contains_the_text() -> None:
    prompt = PromptTemplate().render(DOC)
    assert prompt.startswith("Summarize")
    assert prompt.endswith("The printer jams on page two.")


def test_extract_lists_the_fields() -> None:
    prompt = PromptTemplate(kind="extract", fields=["product", "severity"]).render(DOC)
    assert "product, severity" in prompt
    assert "JSON" in prompt


def test_classify_lists_the_labels() -> None:
    prompt = PromptTemplate(kind="classify", labels=["bug", "question"]).render(DOC)
    assert "bug, question" in prompt


def test_custom_template_uses_metadata_and_literal_braces() -> None:
    template = PromptTemplate(kind="custom", template="[{source}/{doc_id}] {{json}} {text}")
    assert template.render(DOC) == "[ticket/t-1] {json} The printer jams on page two."


def test_text_with_braces_is_not_interpreted() -> None:
    doc = Document(doc_id="x", text="use {text} and {unknown} literally")
    assert PromptTemplate(kind="custom", template="Q: {text}").render(doc) == (
        "Q: use {text} and {unknown} literally"
    )


def test_unknown_placeholder_is_named() -> None:
    template = PromptTemplate(kind="custom", template="Hi {customer}: {text}")
    with pytest.raises(TemplateError, match=r"\{customer\}.*known placeholders: text, doc_id"):
        template.render(DOC)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "extract"}, "needs `fields`"),
        ({"kind": "classify"}, "needs `labels`"),
        ({"kind": "custom"}, "needs `template`"),
        ({"kind": "custom", "template": "bad {text"}, "malformed"),
        ({"kind": "custom", "template": "{text.upper}"}, "not a plain name"),
        ({"kind": "custom", "template": "{} {text}"}, "not a plain name"),
    ],
)
def test_bad_templates_fail_at_construction(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        PromptTemplate.model_validate(kwargs)


def test_fingerprints_are_stable_and_sensitive() -> None:
    assert PromptTemplate().fingerprint() == PromptTemplate(kind="summarize").fingerprint()
    assert (
        PromptTemplate().fingerprint()
        != PromptTemplate(kind="custom", template="{text}").fingerprint()
    )
    labels_a = PromptTemplate(kind="classify", labels=["a", "b"]).fingerprint()
    labels_b = PromptTemplate(kind="classify", labels=["a", "c"]).fingerprint()
    assert labels_a != labels_b
    assert (
        GenerationParameters().fingerprint()
        == GenerationParameters(max_new_tokens=DEFAULT_MAX_NEW_TOKENS).fingerprint()
    )
    assert GenerationParameters().fingerprint() != GenerationParameters(seed=1).fingerprint()


def test_sampling_knobs_without_sampling_say_what_to_do() -> None:
    with pytest.raises(ValidationError, match="temperature, top_k only apply when sampling"):
        GenerationParameters(temperature=0.5, top_k=5)


def test_parameters_wire_form_leaves_out_unset_values() -> None:
    params = GenerationParameters(max_new_tokens=32, temperature=0.7, do_sample=True, stop=["\n\n"])
    assert params.to_wire() == {
        "max_new_tokens": 32,
        "do_sample": True,
        "temperature": 0.7,
        "stop": ["\n\n"],
    }


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_new_tokens": 0},
        {"temperature": 0, "do_sample": True},
        {"top_p": 1.5, "do_sample": True},
        {"top_k": 0, "do_sample": True},
        {"beam": 2},
        {"temperature": 0.7},  # sampling knob without do_sample
    ],
)
def test_bad_parameters_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        GenerationParameters.model_validate(kwargs)
