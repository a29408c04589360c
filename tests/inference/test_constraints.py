"""Constrained output (constraints.py): schema-valid JSON and exact choices from random tiny models."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import pytest
import request_contract
from constraints import choice_grammar

from tests.inference.conftest import Run

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "party": {"type": "string", "maxLength": 12},
        "amount": {"type": "number", "minimum": -1e6, "maximum": 1e6},
        "count": {"type": "integer", "minimum": 0, "maximum": 1000},
        "kind": {"enum": ["sale", "lease"]},
        "signed": {"type": "boolean"},
        "when": {"type": "string", "format": "date"},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 2},
    },
    "required": ["party", "amount", "count", "kind", "signed", "when", "tags"],
    "additionalProperties": False,
}
LABELS = ["spam", "ham", "other thing", 'quote " and \\ slash']
PROMPTS = ["Contract between Acme and Bob", "Invoice 17: 300 EUR", "Lease of a flat", "Hello"]


def _fresh(handler: ModuleType, path: Path, monkeypatch: pytest.MonkeyPatch, engine: str) -> Any:
    """A model of its own (fresh grammar cache) on the given engine."""
    monkeypatch.setenv("DOCFLOW_ENGINE", engine)
    return handler.model_fn(str(path))


def _docs(parameters: dict[str, Any], tag: str = "d") -> list[dict[str, Any]]:
    return [
        {"id": f"{tag}{i}", "prompt": p, "parameters": parameters} for i, p in enumerate(PROMPTS)
    ]


@pytest.mark.parametrize("engine", ["continuous", "static"])
def test_extraction_from_a_random_model_always_validates_and_compiles_once(
    handler: ModuleType,
    tiny_dirs: dict[str, Path],
    arch: str,
    engine: str,
    run: Run,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = _fresh(handler, tiny_dirs[arch], monkeypatch, engine)
    greedy = {"max_new_tokens": 200, "json_schema": SCHEMA}
    sampled = {**greedy, "do_sample": True, "temperature": 2.0, "seed": 7}
    rows = run(model, _docs(greedy) + _docs(sampled, "s"))
    assert len(rows) == 2 * len(PROMPTS)
    for row in rows:
        assert "error" not in row, row
        assert row["finish_reason"] == "stop"
        jsonschema.validate(json.loads(row["text"]), SCHEMA)
    assert model.grammars.compilations == 1  # 8 documents, 2 invocations' worth, one schema
    run(model, _docs(greedy, "again"))
    assert model.grammars.compilations == 1
    other = {**SCHEMA, "required": ["party"]}
    run(model, _docs({"max_new_tokens": 200, "json_schema": other}, "o"))
    assert model.grammars.compilations == 2


@pytest.mark.parametrize("engine", ["continuous", "static"])
def test_choices_are_always_one_of_the_labels(
    handler: ModuleType,
    tiny_dirs: dict[str, Path],
    arch: str,
    engine: str,
    run: Run,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = _fresh(handler, tiny_dirs[arch], monkeypatch, engine)
    params = {"max_new_tokens": 40, "choices": LABELS}
    sampled = {**params, "do_sample": True, "temperature": 3.0, "top_k": 50, "seed": 1}
    rows = run(model, _docs(params) + _docs(sampled, "s") + _docs({**sampled, "seed": 2}, "t"))
    assert all(row.get("text") in LABELS for row in rows), rows
    assert model.grammars.compilations == 1


def test_unconstrained_documents_beside_constrained_ones_are_unchanged(
    handler: ModuleType, tiny_dirs: dict[str, Path], run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _fresh(handler, tiny_dirs["mistral"], monkeypatch, "continuous")
    free = _docs({"max_new_tokens": 12}, "f")
    alone = run(model, free)
    mixed = run(model, free + _docs({"max_new_tokens": 60, "choices": LABELS}, "c"))
    assert mixed[: len(free)] == alone


def test_a_budget_that_runs_out_mid_object_is_an_error_line(
    handler: ModuleType,
    tiny_dirs: dict[str, Path],
    arch: str,
    run: Run,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for engine in ("continuous", "static"):
        model = _fresh(handler, tiny_dirs[arch], monkeypatch, engine)
        rows = run(model, _docs({"max_new_tokens": 5, "json_schema": SCHEMA}))
        assert all("max_new_tokens=5 ran out" in row["error"] for row in rows), rows


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"json_schema": "not an object"}, "json_schema must be a non-empty JSON Schema object"),
        ({"json_schema": {}}, "json_schema must be a non-empty JSON Schema object"),
        ({"choices": []}, "choices must be a non-empty list"),
        ({"choices": ["a", ""]}, "choices must be a non-empty list"),
        ({"choices": ["a"], "json_schema": SCHEMA}, "at most one of parameters json_schema"),
        ({"choices": ["a"], "stop": "x"}, "stop cannot be combined"),
    ],
)
def test_bad_constraint_parameters_are_rejected_by_name(
    parameters: dict[str, Any], message: str
) -> None:
    with pytest.raises(request_contract.DocumentError, match=message):
        request_contract.parse_params(parameters)


def test_a_schema_the_compiler_refuses_is_that_documents_error(
    handler: ModuleType, loaded: Any, run: Run
) -> None:
    bad = {"type": "object", "properties": {"x": {"$ref": "#/nowhere"}}, "required": ["x"]}
    rows = run(loaded, [*_docs({"json_schema": bad})[:1], *_docs({"max_new_tokens": 3})[1:2]])
    assert rows[0]["error"].startswith("json_schema cannot be compiled")
    assert "text" in rows[1]


def test_choice_grammar_quotes_every_label() -> None:
    assert choice_grammar(["a", 'b"c']) == 'root ::= "a" | "b\\"c"'
