"""Typed answers and the flow's generation controls: validated up front, parsed into typed values,
and all part of the run key."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from tasks.corpus.documents import Document
from tasks.run.plan.batching import compute_run_key, payload_line
from tasks.run.request.controls import run_controls
from tasks.run.request.typed_answers import AnswerError, classification_answers, extraction_answers

FIELDS = {
    "party": "string",
    "amount": "number",
    "count": "integer",
    "signed": "boolean",
    "when": "date",
    "tags": "list[string]",
    "kind": ["sale", "lease"],
}
DOC = Document(doc_id="d1", text="Acme sells a chair.", row=1)


def _controls(**overrides: Any) -> Any:
    values: dict[str, Any] = {
        "template": "summarize",
        "fields": None,
        "labels": None,
        "custom_template": None,
        "multi_label": False,
        "system_prompt": None,
        "messages_column": None,
        "max_new_tokens": 64,
        "temperature": None,
        "top_p": None,
        "top_k": None,
        "repetition_penalty": None,
        "stop": None,
        "seed": None,
    }
    return run_controls(**(values | overrides))


def test_fields_become_a_bounded_json_schema_and_typed_columns() -> None:
    answers = extraction_answers(FIELDS, set())
    schema = answers.wire()["json_schema"]
    assert list(schema["properties"]) == list(FIELDS) == schema["required"]
    assert schema["properties"]["party"] == {"type": "string", "maxLength": 200}
    assert schema["properties"]["tags"]["maxItems"] == 20
    assert "pattern" in schema["properties"]["when"]
    assert dict(answers.columns()) == {
        "party": pa.large_string(),
        "amount": pa.float64(),
        "count": pa.int64(),
        "signed": pa.bool_(),
        "when": pa.date32(),
        "tags": pa.list_(pa.large_string()),
        "kind": pa.dictionary(pa.int32(), pa.string()),
    }
    text = json.dumps(
        {
            "party": "Acme",
            "amount": 3,
            "count": 2,
            "signed": True,
            "when": "2024-03-01",
            "tags": ["x"],
            "kind": "sale",
        }
    )
    parsed = answers.parse(text)
    assert parsed["amount"] == 3.0 and isinstance(parsed["amount"], float)
    assert parsed["when"] == dt.date(2024, 3, 1)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('{"party": "Acme"', "not valid JSON"),
        ('["a"]', "not a JSON object"),
        ('{"party": "Acme"}', r"lacks the field\(s\)"),
        (None, "no answer text"),
    ],
)
def test_answers_that_do_not_validate_say_why(text: str | None, reason: str) -> None:
    with pytest.raises(AnswerError, match=reason):
        extraction_answers(FIELDS, set()).parse(text)


def test_a_wrongly_typed_field_is_named() -> None:
    answers = extraction_answers({"count": "integer", "when": "date"}, set())
    with pytest.raises(AnswerError, match="'count' is 1.5, not a integer"):
        answers.parse('{"count": 1.5, "when": "2024-01-01"}')
    with pytest.raises(AnswerError, match="'when' is \"2023-02-29\", not a date"):
        answers.parse('{"count": 1, "when": "2023-02-29"}')


def test_a_json_schema_file_gives_the_fields(tmp_path: Path) -> None:
    path = tmp_path / "contract.schema.json"
    properties = {
        "party": {"type": "string", "maxLength": 40},
        "signed_on": {"type": "string", "format": "date"},
        "kind": {"enum": ["sale", "lease"]},
    }
    path.write_text(json.dumps({"type": "object", "properties": properties}))
    answers = extraction_answers(str(path), set())
    assert [(f.name, f.kind) for f in answers.fields] == [
        ("party", "string"),
        ("signed_on", "date"),
        ("kind", "enum"),
    ]
    assert answers.fields[0].json_schema == {"type": "string", "maxLength": 40}


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"template": "extract"}, "needs the parameter fields"),
        ({"template": "extract", "fields": {"a": "money"}}, "fields: field 'a' has type 'money'"),
        ({"template": "extract", "fields": {"a": {"type": "object"}}}, "field 'a' has JSON Schema"),
        ({"template": "extract", "fields": {"status": "string"}}, "clash with result columns"),
        ({"template": "extract", "fields": "/no/such.json"}, "fields '/no/such.json' is no file"),
        ({"template": "classify"}, "needs the parameter labels"),
        ({"template": "classify", "labels": ["a", "a"]}, "labels has duplicates"),
        ({"multi_label": True}, "multi_label applies to template='classify'"),
        ({"seed": 3}, "seed applies only when sampling"),
        ({"temperature": -1.0}, "temperature must be >= 0"),
        ({"temperature": 0, "top_k": 5}, "top_p and top_k apply only when sampling"),
        ({"top_p": 1.5}, "top_p"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"template": "classify", "labels": ["a"], "stop": ["x"]}, "stop cannot be combined"),
        ({"system_prompt": "  "}, "system_prompt is empty"),
        ({"messages_column": "chat", "template": "custom"}, "messages_column"),
    ],
)
def test_bad_controls_are_refused_naming_the_parameter(
    overrides: dict[str, Any], words: str
) -> None:
    with pytest.raises(ValueError) as caught:
        _controls(**overrides)
    assert words in str(caught.value), caught.value
    assert "\n" not in str(caught.value)


def test_sampling_knobs_turn_sampling_on_and_temperature_zero_is_greedy() -> None:
    assert _controls(temperature=0).params.do_sample is False
    sampled = _controls(temperature=0.7, top_p=0.9, seed=5).params.to_wire()
    assert sampled == {
        "max_new_tokens": 64,
        "do_sample": True,
        "temperature": 0.7,
        "top_p": 0.9,
        "seed": 5,
    }
    assert _controls(top_k=40).params.do_sample is True


def test_every_control_is_part_of_the_run_key() -> None:
    def key(**overrides: Any) -> str:
        template, params, _ = _controls(**overrides)
        return compute_run_key("corpus", "endpoint", "s3://m", template, params)

    variants: list[dict[str, Any]] = [
        {},
        {"system_prompt": "Be brief."},
        {"temperature": 0.5},
        {"temperature": 0.5, "seed": 1},
        {"top_p": 0.5},
        {"top_k": 5},
        {"repetition_penalty": 1.2},
        {"stop": ["\n\n"]},
        {"messages_column": "chat"},
        {"template": "classify", "labels": ["a", "b"]},
        {"template": "classify", "labels": ["a", "c"]},
        {"template": "classify", "labels": ["a", "b"], "multi_label": True},
        {"template": "extract", "fields": {"a": "string"}},
        {"template": "extract", "fields": {"a": "integer"}},
    ]
    keys = [key(**v) for v in variants]
    assert len(set(keys)) == len(keys)
    assert key() == key()


def test_system_prompt_and_messages_column_shape_the_wire_line() -> None:
    template, params, _ = _controls(system_prompt="You are terse.")
    line = json.loads(payload_line(DOC, template, params))
    assert line["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": template.render(DOC)},
    ]
    chat = [{"role": "user", "content": "Hi"}]
    as_messages = DOC.model_copy(update={"text": json.dumps(chat)})
    template, params, _ = _controls(messages_column="chat", system_prompt="Be kind.")
    line = json.loads(payload_line(as_messages, template, params))
    assert line["messages"] == [{"role": "system", "content": "Be kind."}, *chat]
    assert "prompt" not in line


def test_classification_answers_are_labels() -> None:
    one = classification_answers(["bug", "question"], multi_label=False)
    assert one.wire() == {"choices": ["bug", "question"]}
    assert one.parse("bug") == {"label": "bug"}
    with pytest.raises(AnswerError):
        one.parse("feature")
    many = classification_answers(["bug", "question"], multi_label=True)
    assert many.wire()["json_schema"]["items"] == {"enum": ["bug", "question"]}
    assert many.parse('["bug", "bug", "question"]') == {"labels": ["bug", "question"]}
    with pytest.raises(AnswerError, match="not a list of the labels"):
        many.parse("[]")
