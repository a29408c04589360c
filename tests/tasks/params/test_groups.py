"""The flows' parameter groups: what the UI form shows, flat names of older runs and the CLI, and
one owner for every default."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from tasks.params.flat import ASK_GROUPS, PROCESS_GROUPS, grouped
from tasks.params.groups import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_DOC_BYTES,
    DEFAULT_MAX_NEW_TOKENS,
    GenerationOptions,
    PromptOptions,
)

ROOT = Path(__file__).resolve().parents[3]


def _schema(flow: Any) -> Any:
    return flow.to_deployment(name="schema")._parameter_openapi_schema


def test_the_deployment_form_shows_groups_each_field_described() -> None:
    from flows.ask_documents import ask_documents
    from flows.process_documents import process_documents

    for flow, groups in ((process_documents, PROCESS_GROUPS), (ask_documents, ASK_GROUPS)):
        schema = _schema(flow)
        assert len(schema.properties) <= 16
        for name, model in groups.items():
            assert schema.properties[name]["$ref"] == f"#/definitions/{model.__name__}"
            definition = schema.definitions[model.__name__]
            assert definition["description"]
            for field, spec in definition["properties"].items():
                assert spec.get("description"), f"{model.__name__}.{field} has no description"
                assert not spec["description"].startswith(">"), "renders as a quote in the UI"


def test_flat_names_of_older_runs_and_the_cli_land_in_their_groups() -> None:
    flat = {
        "corpus": "c.jsonl",
        "template": "classify",
        "labels": ["a", "b"],
        "max_new_tokens": 8,
        "batch_size": 4,
        "long_documents": "truncate",
        "system": "Be brief.",
        "output_format": "csv",
        "shards": 3,
        "retry_failed": True,
    }
    groups = grouped(flat)
    assert groups == {
        "corpus": "c.jsonl",
        "prompt": {"template": "classify", "labels": ["a", "b"], "system_prompt": "Be brief."},
        "generation": {"max_new_tokens": 8},
        "batching": {"batch_size": 4},
        "long_documents": {"mode": "truncate"},
        "output": {"output_format": "csv"},
        "sharding": {"shards": 3},
        "retry": {"retry_failed": True},
    }
    assert grouped(groups) == groups  # grouped parameters pass through


def test_a_manifest_of_flat_parameters_replays_through_the_grouped_flow() -> None:
    """`docflow runs retry` on a run started before the groups: its manifest's flat names."""
    from flows.ask_documents import ask_documents
    from flows.process_documents import process_documents

    older = {
        "corpus": "/data/c.jsonl",
        "template": "extract",
        "fields": {"amount": "number"},
        "custom_template": None,
        "id_column": "id",
        "text_column": "text",
        "metadata_columns": None,
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
        "max_doc_bytes": 100_000,
        "long_documents": "reject",
        "chunk_overlap_tokens": 64,
        "batch_size": 8,
        "max_batch_bytes": 1_000_000,
        "max_attempts": 3,
        "output_format": "parquet",
    }
    checked = process_documents.validate_parameters(grouped(older))
    assert checked["prompt"].fields == {"amount": "number"}
    assert checked["batching"].batch_size == 8 and checked["generation"].max_new_tokens == 64
    asked = ask_documents.validate_parameters(
        grouped({"questions": ["q?"], "system": "Be brief.", "max_new_tokens": 4}, ASK_GROUPS)
    )
    assert asked["answers"].system_prompt == "Be brief."


def test_a_misspelt_group_field_is_refused_by_name() -> None:
    with pytest.raises(ValidationError, match="templat"):
        PromptOptions(templat="classify")  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="max_new_token"):
        GenerationOptions.model_validate({"max_new_token": 3})


@pytest.mark.parametrize("path", ["prefect.yaml", "deployments/prefect-aws.yaml"])
def test_every_deployment_parameter_set_validates_against_its_flow(path: str) -> None:
    import importlib

    spec = yaml.safe_load((ROOT / path).read_text())
    checked = 0
    for deployment in spec["deployments"]:
        file, name = deployment["entrypoint"].split(":")
        module = importlib.import_module(file.removesuffix(".py").replace("/", "."))
        params = deployment.get("parameters") or {}
        getattr(module, name).validate_parameters(params)  # raises on a flat or unknown name
        checked += 1
    assert checked >= 2


SOURCES = ("docflow", "flows", "tasks")


def _literal_uses(pattern: str) -> list[str]:
    found = []
    for package in SOURCES:
        for path in (ROOT / package).rglob("*.py"):
            if path.name == "groups.py":
                continue
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if re.search(pattern, line):
                    found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    return found


def test_each_default_and_the_run_key_recipe_have_one_owner() -> None:
    assert DEFAULT_MAX_DOC_BYTES == 100_000 and DEFAULT_BATCH_SIZE == 16
    assert DEFAULT_MAX_NEW_TOKENS == 256
    for name in ("max_doc_bytes", "batch_size", "max_batch_bytes", "max_new_tokens", "max_docs"):
        assert not _literal_uses(rf"\b{name}: int = \d"), f"{name}'s default is written twice"
    # Run keys: one recipe (tasks.run.plan.layout.digest_key); no other truncated digest.
    assert not [
        u
        for u in _literal_uses(r"hexdigest\(\)\[:RUN_KEY_CHARS\]|hexdigest\(\)\[:12\]")
        if "layout.py" not in u and "postgres.py" not in u
    ]
