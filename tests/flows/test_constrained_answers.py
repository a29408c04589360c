"""Constrained answers through the whole path: process_documents -> localcloud (HTTP) -> the real
handler with tiny random Mistral/Llama weights -> typed Parquet columns.

A random model follows no instruction, so every valid answer here is the constraint's doing.
"""

from __future__ import annotations

import datetime as dt
import io
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jsonschema
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flows.deploy_endpoint import deploy_endpoint
from flows.package_model import package_model
from flows.teardown_endpoint import teardown_endpoint
from tasks.aws.clients import aws_client
from tasks.aws.s3 import split_s3_uri
from tasks.run.plan.manifest import load_manifest
from tasks.settings import Profile
from tests.flows.endpoint_helpers import FAST_WAIT, profile_file
from tests.runs import run_process
from tests.tiny_models import make_tiny_model

pytestmark = pytest.mark.usefixtures("prefect_harness")

MODEL_ENV = {"DOCFLOW_NUM_THREADS": "1"}
SCHEMA: dict[str, Any] = {
    "party": {"type": "string", "maxLength": 10},
    "amount": {"type": "number", "minimum": -1e6, "maximum": 1e6},
    "count": {"type": "integer", "minimum": 0, "maximum": 999},
    "signed": "boolean",
    "date": "date",
    "kind": ["sale", "lease", "loan"],
    "tags": {"type": "array", "items": {"type": "string", "maxLength": 5}, "maxItems": 2},
}
ARROW = {
    "party": pa.large_string(),
    "amount": pa.float64(),
    "count": pa.int64(),
    "signed": pa.bool_(),
    "date": pa.date32(),
    "kind": pa.dictionary(pa.int32(), pa.string()),
    "tags": pa.list_(pa.large_string()),
}
LABELS = ["invoice", "contract", "complaint"]
TEXTS = [
    "Acme sells Bob 3 chairs for 120.50 EUR on 2024-03-01.",
    "The lease of the flat starts in May; rent 900 a month.",
    "I am unhappy with the late delivery of my order 17.",
    "Loan agreement: 5000 USD at 3 percent, signed by both.",
    "Please find the invoice for March attached.",
    "Nothing to see here.",
]


def _corpus(path: Path) -> Path:
    with path.open("w", encoding="utf-8") as fh:
        for i, text in enumerate(TEXTS):
            fh.write(json.dumps({"id": f"doc-{i}", "text": text}) + "\n")
    return path


@contextmanager
def _tiny_endpoint(profile: Profile, tmp_path: Path, arch: str) -> Iterator[str]:
    """A tiny random model packaged and deployed; the profile file's path; deleted afterwards."""
    model_dir = make_tiny_model(tmp_path / f"tiny-{arch}", arch, context=1024)  # type: ignore[arg-type]
    path = profile_file(profile, tmp_path)
    artifact = package_model(source=str(model_dir), profile=path)
    deploy_endpoint(profile=path, model_artifact=artifact, environment=MODEL_ENV, **FAST_WAIT)
    try:
        yield path
    finally:
        teardown_endpoint(profile=path, mode="delete", **FAST_WAIT)


def _table(profile: Profile, result: dict[str, Any]) -> pa.Table:
    bucket, key = split_s3_uri(str(result["results_uri"]))
    body = aws_client("s3", profile).get_object(Bucket=bucket, Key=key)["Body"].read()
    return pq.read_table(io.BytesIO(body))


def _reasons(table: pa.Table) -> list[str]:
    return [r for r in table.column("reason").to_pylist() if r]


def _output_lines(profile: Profile, run_key: str) -> list[dict[str, Any]]:
    """Every result line the endpoint wrote for the run (its batches' output objects)."""
    manifest = load_manifest(run_key, profile)
    assert manifest is not None
    s3 = aws_client("s3", profile)
    lines = []
    for record in manifest.batches.values():
        bucket, key = split_s3_uri(record.output_uri)
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
        lines += [json.loads(line) for line in body.splitlines() if line.strip()]
    return lines


@pytest.mark.parametrize("arch", ["mistral", "llama"])
def test_constrained_extraction_and_classification_from_a_random_model(
    arch: str, profile: Profile, tmp_path: Path
) -> None:
    corpus = _corpus(tmp_path / "contracts.jsonl")
    with _tiny_endpoint(profile, tmp_path, arch) as path:
        # Extraction: every answer validates, and lands in one typed column per field.
        extracted = run_process(
            corpus=str(corpus),
            profile=path,
            template="extract",
            fields=SCHEMA,
            max_new_tokens=300,
            batch_size=2,
        )
        table = _table(profile, extracted)
        assert extracted["completed"] == len(TEXTS), _reasons(table)
        for name, arrow in ARROW.items():
            assert table.schema.field(name).type == arrow, (name, table.schema)
        rows = table.to_pylist()
        full = {
            "type": "object",
            "properties": {
                k: ({"enum": v} if isinstance(v, list) else v if isinstance(v, dict) else {})
                for k, v in SCHEMA.items()
            },
        }
        for row in rows:
            answer = json.loads(row["text"])  # the raw JSON is kept beside the typed columns
            jsonschema.validate(answer, full)
            assert list(answer) == list(SCHEMA)
            assert row["amount"] == float(answer["amount"]) and row["count"] == answer["count"]
            assert row["date"] == dt.date.fromisoformat(answer["date"])
            assert row["kind"] in SCHEMA["kind"] and row["tags"] == answer["tags"]
            assert isinstance(row["signed"], bool) and row["party"] == answer["party"]
        # 6 documents in 3 invocations, one schema: compiled once on the instance.
        lines = _output_lines(profile, extracted["run_key"])
        assert len(lines) == len(TEXTS)
        assert {line["grammar_compilations"] for line in lines} == {1}

        # Classification, sampled hot: always one of the labels, a categorical column.
        classified = run_process(
            corpus=str(corpus),
            profile=path,
            template="classify",
            labels=LABELS,
            temperature=2.5,
            seed=11,
            max_new_tokens=20,
        )
        table = _table(profile, classified)
        assert classified["completed"] == len(TEXTS), _reasons(table)
        assert table.schema.field("label").type == pa.dictionary(pa.int32(), pa.string())
        assert set(table.column("label").to_pylist()) <= set(LABELS)
        assert table.column("label").combine_chunks().dictionary.to_pylist() == LABELS
        lines = _output_lines(profile, classified["run_key"])
        assert {line["grammar_compilations"] for line in lines} == {2}

        # Several labels: a list of distinct labels per document.
        multi = run_process(
            corpus=str(corpus),
            profile=path,
            template="classify",
            labels=LABELS,
            multi_label=True,
            max_new_tokens=40,
        )
        table = _table(profile, multi)
        assert multi["completed"] == len(TEXTS), _reasons(table)
        assert multi["run_key"] != classified["run_key"]
        for labels in table.column("labels").to_pylist():
            assert labels and set(labels) <= set(LABELS) and len(set(labels)) == len(labels)

        # A budget too small for the answer: every document failed with that reason, no half rows.
        short = run_process(
            corpus=str(corpus),
            profile=path,
            template="extract",
            fields=SCHEMA,
            max_new_tokens=4,
        )
        assert short["failed"] == len(TEXTS) and short["completed"] == 0, short
        table = _table(profile, short).to_pylist()
        assert all("max_new_tokens=4 ran out" in row["reason"] for row in table)
        assert all(row["party"] is None and row["amount"] is None for row in table)


def test_a_messages_column_and_an_answer_that_is_not_a_label(
    deploy_echo: Any, tmp_path: Path
) -> None:
    """The echo model (version 1) answers "v1:" + its prompt upper-cased: from a messages column,
    "yes" is the label v1:YES; "maybe" is no label, so it fails with the reason (no half row)."""
    deployment = deploy_echo()
    corpus = tmp_path / "chats.jsonl"
    chats = {"c-yes": "yes", "c-no": "no", "c-maybe": "maybe"}
    with corpus.open("w", encoding="utf-8") as fh:
        for doc_id, content in chats.items():
            chat = [{"role": "user", "content": content}]
            fh.write(json.dumps({"id": doc_id, "chat": chat, "source": "web"}) + "\n")
    result = run_process(
        corpus=str(corpus),
        profile=deployment.profile_path,
        template="classify",
        labels=["v1:YES", "v1:NO"],
        messages_column="chat",
        max_new_tokens=8,
    )
    rows = {r["doc_id"]: r for r in _table(deployment.profile, result).to_pylist()}
    assert result["completed"] == 2 and result["failed"] == 1, result
    assert rows["c-yes"]["label"] == "v1:YES" and rows["c-no"]["label"] == "v1:NO"
    maybe = rows["c-maybe"]
    assert maybe["status"] == "failed" and maybe["label"] is None
    assert maybe["reason"].startswith("invalid answer: answer field 'label' is \"v1:MAYBE\"")
    assert {r["source"] for r in rows.values()} == {"web"}  # other columns stay metadata
