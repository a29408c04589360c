"""Long documents and the dry-run estimate, end to end: a tiny real Mistral packaged, deployed on
localcloud and run through process_documents over HTTP.

The estimate's prompt tokens (counted before the run with the tokenizer fetched from the
artifact) equal the prompt_tokens the handler reports; a dry run invokes nothing; documents 2x and
10x the context are rejected naming the options, truncated with the tokens cut recorded, or split
and combined into one row per document.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tasks.aws.clients import aws_client
from tasks.run.plan.manifest import load_manifest
from tasks.run.request.tokens import TokenCounter
from tasks.settings import Autoscaling, Profile, load_profile
from tests.flows.endpoint_helpers import FAST_WAIT, profile_file
from tests.long_corpora import CONTEXT, long_corpus, tiny_model
from tests.reliability.ledger import read_results
from tests.runs import InvokeCounter, run_process

SAMPLE = Path(__file__).resolve().parents[2] / "datasets" / "sample"
MAX_NEW = 8
MODEL_ENV = {"DOCFLOW_NUM_THREADS": "1"}


class TinyEndpoint:
    """A tiny Mistral (context 2048) deployed for this module, and the profile file flows get."""

    def __init__(self, profile: Profile, path: str, artifact: dict[str, Any], model: Path) -> None:
        self.profile = profile
        self.path = path
        self.artifact = artifact
        self.counter = TokenCounter.from_folder(model)


@pytest.fixture(scope="module")
def tiny(
    localcloud: Any, prefect_harness: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TinyEndpoint]:
    from flows.deploy_endpoint import deploy_endpoint
    from flows.package_model import package_model
    from flows.teardown_endpoint import teardown_endpoint

    root = tmp_path_factory.mktemp("long")
    suffix = uuid.uuid4().hex[:8]
    prof = load_profile("local").model_copy(
        update={
            "bucket": f"docflow-test-{suffix}",
            "endpoint_url": localcloud.url,
            "endpoint_name": f"docflow-test-{suffix}",
            "autoscaling": Autoscaling(enabled=False),
            "max_concurrent_invocations_per_instance": 2,
        }
    )
    aws_client("s3", prof).create_bucket(Bucket=prof.bucket)
    path = profile_file(prof, root)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("DOCFLOW_CACHE_DIR", str(root / "cache"))
        model = tiny_model(root / "tiny")
        artifact = package_model(source=str(model), profile=path)
        deploy_endpoint(profile=path, model_artifact=artifact, environment=MODEL_ENV, **FAST_WAIT)
        try:
            yield TinyEndpoint(prof, path, artifact, model)
        finally:
            teardown_endpoint(profile=path, mode="delete", **FAST_WAIT)


def test_estimate_counts_what_the_handler_reports_and_invokes_nothing(
    tiny: TinyEndpoint, tmp_path: Path
) -> None:
    corpus = str(SAMPLE / "documents.jsonl")
    with InvokeCounter(tiny.path) as calls:
        estimate = run_process(
            corpus=corpus, profile=tiny.path, max_new_tokens=MAX_NEW, dry_run=True
        )
        assert calls.total == 0
    assert estimate["documents"] == estimate["accepted"] == 50 and estimate["rejected"] == 0
    assert estimate["counted"] is True and estimate["context_length"] == CONTEXT
    assert estimate["batches"] == 4 and estimate["generation_budget_tokens"] == 50 * MAX_NEW
    assert estimate["invocations"] == 0
    assert load_manifest("anything", tiny.profile) is None  # nothing written for a dry run

    result = run_process(corpus=corpus, profile=tiny.path, max_new_tokens=MAX_NEW)
    table = read_results(result, tiny.profile)
    assert (table["status"] == "completed").all()
    reported = int(table["prompt_tokens"].sum())
    assert estimate["prompt_tokens"] == reported == result["prompt_tokens"]
    assert result["hit_budget"] == int((table["finish_reason"] == "length").sum())


def test_reject_names_the_options(tiny: TinyEndpoint, tmp_path: Path) -> None:
    corpus = tmp_path / "long.jsonl"
    long_corpus(corpus, tiny.counter, [2, 10])
    with InvokeCounter(tiny.path) as calls:
        result = run_process(corpus=str(corpus), profile=tiny.path, max_new_tokens=MAX_NEW)
    assert calls.total == 1  # the short document alone is sent
    table = read_results(result, tiny.profile).set_index("doc_id")
    assert table.loc["short", "status"] == "completed"
    for doc_id in ("long-0", "long-1"):
        assert table.loc[doc_id, "status"] == "rejected"
        reason = table.loc[doc_id, "reason"]
        assert "long_documents='truncate'" in reason and "long_documents='map_reduce'" in reason


def test_truncate_records_the_tokens_cut(tiny: TinyEndpoint, tmp_path: Path) -> None:
    corpus = tmp_path / "long.jsonl"
    tokens = long_corpus(corpus, tiny.counter, [2, 10])
    result = run_process(
        corpus=str(corpus), profile=tiny.path, max_new_tokens=MAX_NEW, long_documents="truncate"
    )
    table = read_results(result, tiny.profile).set_index("doc_id")
    assert (table["status"] == "completed").all(), table["reason"]
    assert pd_null(table.loc["short", "tokens_cut"])
    for doc_id in ("long-0", "long-1"):
        # All but what fits beside the prompt template and the generation budget.
        least = tokens[doc_id] - (CONTEXT - MAX_NEW)
        assert least <= table.loc[doc_id, "tokens_cut"] <= least + 64
    # What was sent fits: the handler's own count is within the context minus the budget.
    assert (table["prompt_tokens"] <= CONTEXT - MAX_NEW).all()
    assert table.loc["long-1", "prompt_tokens"] > CONTEXT - MAX_NEW - 16


def test_map_reduce_gives_one_row_per_document(tiny: TinyEndpoint, tmp_path: Path) -> None:
    corpus = tmp_path / "long.jsonl"
    ids = list(long_corpus(corpus, tiny.counter, [2, 10]))
    with InvokeCounter(tiny.path) as calls:
        result = run_process(
            corpus=str(corpus),
            profile=tiny.path,
            max_new_tokens=MAX_NEW,
            long_documents="map_reduce",
            batch_size=4,
        )
    table = read_results(result, tiny.profile)
    assert sorted(table["doc_id"]) == sorted(ids) and len(table) == len(ids)
    assert (table["status"] == "completed").all(), table["reason"]
    rows = table.set_index("doc_id")
    chunks_2, chunks_10 = rows.loc["long-0", "chunks"], rows.loc["long-1", "chunks"]
    assert 2 <= chunks_2 <= 3 and 10 <= chunks_10 <= 12
    # Every chunk and every reduce prompt is a document of a batch in a manifest.
    key = result["run_key"]
    manifest = load_manifest(key, tiny.profile)
    reduce = load_manifest(result["reduce_run_key"], tiny.profile)
    assert manifest is not None and reduce is not None
    mapped = {d for r in manifest.batches.values() if r.parent is None for d in r.doc_ids}
    assert mapped == {"short"} | {f"long-0#{i}/{chunks_2}" for i in range(1, chunks_2 + 1)} | {
        f"long-1#{i}/{chunks_10}" for i in range(1, chunks_10 + 1)
    }
    assert {d for r in reduce.batches.values() for d in r.doc_ids} == {"long-0", "long-1"}
    assert result["batches"] == len(manifest.batches) + len(reduce.batches)
    assert calls.total == result["batches"]  # each batch invoked once, nothing else
    # The row's tokens are the whole document's: every chunk and the reduce prompt.
    assert rows.loc["long-1", "prompt_tokens"] > chunks_10 * (CONTEXT // 2)


def test_map_reduce_extract_fills_the_typed_columns(tiny: TinyEndpoint, tmp_path: Path) -> None:
    """Each chunk's answer is constrained to the schema; their merge by field lands in the same
    typed columns (same Parquet types) as the document that was not split."""
    import datetime as dt
    import io

    import jsonschema
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tasks.aws.s3 import split_s3_uri

    fields = {
        "party": {"type": "string", "maxLength": 8},
        "count": {"type": "integer", "minimum": 0, "maximum": 99},
        "when": "date",
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 4}, "maxItems": 2},
    }
    corpus = tmp_path / "long.jsonl"
    ids = list(long_corpus(corpus, tiny.counter, [2]))
    result = run_process(
        corpus=str(corpus),
        profile=tiny.path,
        template="extract",
        fields=fields,
        max_new_tokens=96,
        long_documents="map_reduce",
        batch_size=4,
    )
    bucket, key = split_s3_uri(str(result["results_uri"]))
    body = aws_client("s3", tiny.profile).get_object(Bucket=bucket, Key=key)["Body"].read()
    table = pq.read_table(io.BytesIO(body))
    assert table.schema.field("count").type == pa.int64()
    assert table.schema.field("when").type == pa.date32()
    assert table.schema.field("tags").type == pa.list_(pa.large_string())
    rows = {r["doc_id"]: r for r in table.to_pylist()}
    assert sorted(rows) == sorted(ids)
    assert all(r["status"] == "completed" for r in rows.values()), [
        r["reason"] for r in rows.values()
    ]
    assert rows["long-0"]["chunks"] >= 2 and rows["short"]["chunks"] is None
    schema = {"type": "object", "properties": {k: v for k, v in fields.items() if k != "when"}}
    for row in rows.values():
        merged = json.loads(row["text"])
        jsonschema.validate({k: v for k, v in merged.items() if k != "tags"}, schema)
        assert row["party"] == merged["party"] and row["count"] == merged["count"]
        assert row["when"] == dt.date.fromisoformat(merged["when"])
        assert row["tags"] == merged["tags"] and all(isinstance(t, str) for t in row["tags"])


def pd_null(value: Any) -> bool:
    import pandas as pd

    return bool(pd.isna(value))


def test_docflow_estimate_prints_the_dry_runs_numbers(
    tiny: TinyEndpoint, capsys: pytest.CaptureFixture[str]
) -> None:
    from docflow.cli import main

    corpus = str(SAMPLE / "documents.jsonl")
    args = ["estimate", corpus, "--profile", tiny.path, "--max-new-tokens", str(MAX_NEW)]
    with InvokeCounter(tiny.path) as calls:
        assert main([*args, "--json"]) == 0
        printed = json.loads(capsys.readouterr().out)
        assert main([*args, "--model", tiny.artifact["model_data_url"]]) == 0
        text = capsys.readouterr().out
        flow = run_process(corpus=corpus, profile=tiny.path, max_new_tokens=MAX_NEW, dry_run=True)
    assert calls.total == 0
    for name in ("documents", "accepted", "rejected", "batches", "prompt_tokens"):
        assert printed[name] == flow[name], name
    assert printed["endpoint"] == tiny.profile.endpoint_name
    assert f"prompt tokens {flow['prompt_tokens']:,} (counted with the model's tokenizer" in text
    assert "invocations   0 (nothing was invoked)" in text
