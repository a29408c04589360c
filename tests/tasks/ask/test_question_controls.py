"""ask_documents' controls: the same validation as process_documents (run_controls), the typed
values of an answer as JSON, and what goes into the run key."""

from __future__ import annotations

import pytest

from tasks.ask.question_controls import AnswerError, ask_controls, typed_values


def test_free_text_with_a_budget_keeps_the_run_key_shape_it_had() -> None:
    controls = ask_controls(max_new_tokens=64)
    assert controls.answers is None and controls.instruction == ""
    assert controls.shaping() == {"max_new_tokens": 64}
    assert controls.parameters == {"max_new_tokens": 64, "do_sample": False}


def test_generation_controls_go_on_the_wire_and_into_the_run_key() -> None:
    controls = ask_controls(max_new_tokens=64, temperature=0.7, top_k=20, seed=3, stop="\n")
    assert controls.parameters == {
        "max_new_tokens": 64,
        "do_sample": True,
        "temperature": 0.7,
        "top_k": 20,
        "seed": 3,
        "stop": ["\n"],
    }
    assert controls.shaping()["generation"] == controls.parameters
    assert ask_controls(max_new_tokens=64, temperature=0).shaping() == {"max_new_tokens": 64}


def test_fields_constrain_with_a_schema_and_type_the_answer() -> None:
    controls = ask_controls(
        max_new_tokens=64, fields={"party": "string", "when": "date", "kind": ["a", "b"]}
    )
    schema = controls.parameters["json_schema"]
    assert schema["required"] == ["party", "when", "kind"]
    assert "party (string), when (date, YYYY-MM-DD), kind (one of: a, b)" in controls.instruction
    typed = typed_values(controls.answers, '{"party": "X", "when": "2024-02-03", "kind": "b"}')
    assert typed == {"party": "X", "when": "2024-02-03", "kind": "b"}
    with pytest.raises(AnswerError, match="'kind' is \"c\""):
        typed_values(controls.answers, '{"party": "X", "when": "2024-02-03", "kind": "c"}')
    labels = ask_controls(max_new_tokens=8, labels=["yes", "no"])
    assert labels.parameters["choices"] == ["yes", "no"]
    assert typed_values(labels.answers, "no") == {"label": "no"}
    multi = ask_controls(max_new_tokens=8, labels=["yes", "no"], multi_label=True)
    assert typed_values(multi.answers, '["no", "yes"]') == {"labels": ["no", "yes"]}
    assert len({str(c.shaping()) for c in (controls, labels, multi)}) == 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fields": ["a"], "labels": ["x"]}, "give fields .* or labels .*, not both"),
        ({"multi_label": True}, "multi_label needs labels"),
        ({"fields": {"answer": "string"}}, r"fields: field\(s\) \['answer'\] would clash"),
        ({"labels": []}, "needs the parameter labels"),
        ({"fields": {"a": "complex"}}, "field 'a' has type 'complex'"),
        ({"labels": ["x"], "stop": ["."]}, "stop cannot be combined"),
        ({"seed": 1}, "seed applies only when sampling"),
    ],
)
def test_bad_controls_name_the_parameter(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ask_controls(max_new_tokens=8, **kwargs)  # type: ignore[arg-type]
