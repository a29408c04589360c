"""Errors in the flow's own words: prompt parameters, pydantic errors, run names."""

from __future__ import annotations

import pytest

from tasks.params.groups import GenerationOptions, PromptOptions
from tasks.run.request.controls import controls_of
from tasks.run.request.messages import short_corpus_name


@pytest.mark.parametrize(
    ("template", "fields", "labels", "custom", "parameter"),
    [
        ("classify", None, None, None, "labels"),
        ("extract", None, None, None, "fields"),
        ("custom", None, None, "  ", "custom_template"),
        ("custom", None, None, "Say {oops", "custom_template"),
    ],
)
def test_prompt_parameter_errors_are_one_sentence_naming_the_parameter(
    template: str,
    fields: list[str] | None,
    labels: list[str] | None,
    custom: str | None,
    parameter: str,
) -> None:
    with pytest.raises(ValueError) as caught:
        prompt = PromptOptions(
            template=template,
            fields=fields,
            labels=labels,
            custom_template=custom,  # type: ignore[arg-type]
        )
        controls_of(prompt, GenerationOptions())
    message = str(caught.value)
    assert parameter in message, message
    assert "\n" not in message and "validation error" not in message, message
    assert "pydantic" not in message and "For further information" not in message, message


@pytest.mark.parametrize(
    ("corpus", "name"),
    [
        ("/home/ann/projects/reviews/2026/reviews.jsonl", "reviews.jsonl"),
        ("s3://bucket/corpora/mixed/", "mixed"),
        ("datasets/sample", "sample"),
        ("/data/" + "x" * 80 + ".csv", "x" * 37 + "..."),
    ],
)
def test_run_names_use_the_last_part_of_the_corpus_path(corpus: str, name: str) -> None:
    assert short_corpus_name(corpus) == name
