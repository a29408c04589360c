"""Aggregation on localcloud S3: one row per input row, every outcome with its reason, files written."""

from __future__ import annotations

import io
import json
import weakref
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import pytest

from tasks.aws.clients import aws_client
from tasks.aws.s3 import split_s3_uri
from tasks.corpus.documents import Corpus, load_corpus
from tasks.endpoint.usage import EndpointUsage
from tasks.run.fanout.spool import OutputSpool
from tasks.run.plan.batching import BatchPayload, make_batches, split_batch
from tasks.run.plan.layout import inference_id, run_uri
from tasks.run.plan.manifest import BatchRecord, BatchStatus, RunManifest
from tasks.run.request.prompts import GenerationParameters, PromptTemplate
from tasks.run.results import outputs
from tasks.run.results.aggregate import aggregate_run
from tasks.run.results.summary import RunSummary, summary_markdown
from tasks.settings import Profile

RUN = "aggtest0001"
T0 = datetime(2026, 11, 21, 4, 0, tzinfo=UTC)


def _corpus(tmp_path: Path) -> Corpus:
    """31 good documents (one too big for a payload) and 2 bad rows."""
    lines = [
        json.dumps({"id": f"d{i:02d}", "text": f"document {i} " * 3, "source": "news", "n": i})
        for i in range(30)
    ]
    lines.insert(3, json.dumps({"id": "d01", "text": "duplicate"}))
    lines.insert(7, json.dumps({"id": "blank", "text": " "}))
    lines.append(json.dumps({"id": "huge", "text": "x" * 3000, "source": "report", "n": 99}))
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return load_corpus(str(path))


def _record(profile: Profile, batch: BatchPayload, parent: str | None = None) -> BatchRecord:
    return BatchRecord(
        batch_id=batch.batch_id,
        doc_ids=batch.doc_ids,
        input_uri=run_uri(profile, RUN, "inputs", f"{batch.batch_id}.jsonl"),
        output_uri=profile.s3_uri(profile.prefixes.outputs, RUN, f"{batch.batch_id}.out"),
        failure_uri=profile.s3_uri(profile.prefixes.failures, RUN, f"{batch.batch_id}-error.out"),
        inference_id=inference_id(RUN, batch.batch_id),
        parent=parent,
    )


def _write_output(profile: Profile, record: BatchRecord, lines: list[dict[str, object]]) -> None:
    bucket, key = split_s3_uri(record.output_uri)
    body = "".join(json.dumps(line) + "\n" for line in lines).encode()
    aws_client("s3", profile).put_object(Bucket=bucket, Key=key, Body=body)


def _ok(doc_id: str) -> dict[str, object]:
    return {
        "id": doc_id,
        "text": f"summary of {doc_id}",
        "prompt_tokens": 10,
        "completion_tokens": 4,
        "finish_reason": "stop",
    }


def _complete(m: RunManifest, record: BatchRecord, seconds: float) -> None:
    m.mark(
        record.batch_id,
        BatchStatus.COMPLETED,
        attempts=1,
        submitted_at=T0,
        received_time=T0 + timedelta(seconds=0.5),
        completed_at=T0 + timedelta(seconds=seconds),
    )


def _scenario(profile: Profile, corpus: Corpus) -> RunManifest:
    """Batches of 5: completed, completed with a per-doc error and a missing line, failed,
    split into a completed and a failed half, still submitted, completed but output lost."""
    batches, late = make_batches(
        corpus.documents, PromptTemplate(), GenerationParameters(), max_docs=5, max_bytes=2000
    )
    assert [len(b.doc_ids) for b in batches] == [5] * 6 and len(late) == 1
    m = RunManifest(run_key=RUN, endpoint=profile.endpoint_name, model_artifact="s3://m")
    m.rejected.extend([*corpus.rejected, *late])  # as the flow records them
    records = [_record(profile, b) for b in batches]
    for r in records:
        m.add(r)
    ok, partial, failed, parent, lost, waiting = records
    _write_output(profile, ok, [_ok(d) for d in ok.doc_ids])
    _complete(m, ok, 2.0)
    per_doc = [_ok(d) for d in partial.doc_ids[:3]]
    per_doc.append({"id": partial.doc_ids[3], "error": "prompt is 9000 tokens; context is 8192"})
    _write_output(profile, partial, per_doc)  # the 5th line is missing
    _complete(m, partial, 4.0)
    m.mark(failed.batch_id, BatchStatus.FAILED, attempts=3, reason="ClientError: model error 500")
    left, right = split_batch(batches[3])
    m.mark(parent.batch_id, BatchStatus.SPLIT, attempts=3)
    halves = [_record(profile, left, parent.batch_id), _record(profile, right, parent.batch_id)]
    for h in halves:
        m.add(h)
    _write_output(profile, halves[0], [_ok(d) for d in halves[0].doc_ids])
    _complete(m, halves[0], 6.0)
    m.mark(halves[1].batch_id, BatchStatus.FAILED, attempts=1, reason="poison document")
    _complete(m, lost, 8.0)  # notification said completed, but no object exists
    m.mark(waiting.batch_id, BatchStatus.SUBMITTED, attempts=1, submitted_at=T0)  # never ends
    m.notifications.received = 7
    m.notifications.duplicates = 2
    return m


def test_every_input_row_gets_exactly_one_outcome(profile: Profile, tmp_path: Path) -> None:
    corpus = _corpus(tmp_path)
    assert corpus.size == 33 and len(corpus.documents) == 31
    m = _scenario(profile, corpus)
    # 12 s of one ml.g5.2xlarge, then a second instance for the last 6 s (autoscaling).
    usage = EndpointUsage(
        window_s=12.0, instance_seconds={"ml.g5.2xlarge": 18.0}, instances_min=1, instances_max=2
    )
    summary, _ = aggregate_run(
        m, corpus, profile, wall_time_s=12.0, local_dir=str(tmp_path / "out"), usage=usage
    )

    assert summary.documents == 33 == summary.completed + summary.failed + summary.rejected
    assert (summary.completed, summary.failed, summary.rejected) == (10, 20, 3)
    body = aws_client("s3", profile).get_object(
        Bucket=profile.bucket, Key=f"runs/{RUN}/results.parquet"
    )["Body"]
    table = pd.read_parquet(io.BytesIO(body.read()))
    assert len(table) == 33 and table["row"].tolist() == list(range(1, 34))
    by_row = table.set_index("row")
    assert by_row.loc[4, "status"] == "rejected" and "duplicate id 'd01'" in by_row.loc[4, "reason"]
    assert by_row.loc[8, "status"] == "rejected" and "empty text" in by_row.loc[8, "reason"]
    status = table[table["doc_id"].notna()].drop_duplicates("doc_id").set_index("doc_id")
    assert status.loc["huge", "status"] == "rejected"
    assert "over the payload limit of 2000 bytes" in status.loc["huge", "reason"]

    ok, partial, failed, parent, lost, waiting = list(m.batches.values())[:6]
    for d in ok.doc_ids:
        assert status.loc[d, "status"] == "completed"
        assert status.loc[d, "text"] == f"summary of {d}"
        assert status.loc[d, "finish_reason"] == "stop"
    assert status.loc[partial.doc_ids[3], "reason"] == "prompt is 9000 tokens; context is 8192"
    assert "no result line for this document" in status.loc[partial.doc_ids[4], "reason"]
    assert set(status.loc[failed.doc_ids, "reason"]) == {"ClientError: model error 500"}
    halves = [r for r in m.batches.values() if r.parent == parent.batch_id]
    assert set(status.loc[halves[0].doc_ids, "status"]) == {"completed"}
    assert set(status.loc[halves[1].doc_ids, "reason"]) == {"poison document"}
    assert all("could not be read" in r for r in status.loc[lost.doc_ids, "reason"])
    assert all("still submitted" in r for r in status.loc[waiting.doc_ids, "reason"])
    assert table.loc[table["status"] == "completed", "source"].eq("news").all()
    assert table["n"].dtype.kind in "if"

    assert (summary.prompt_tokens, summary.completion_tokens) == (100, 40)
    assert summary.batches == 8 and summary.invocations == 1 + 1 + 3 + 3 + 1 + 1 + 1 + 1
    assert summary.latency_p50_s == 4.5  # receivedTime → eventTime of the 2, 4, 6, 8 s batches
    assert summary.turnaround_p50_s == pytest.approx(5.0)
    assert summary.turnaround_p99_s == pytest.approx(7.94)
    assert summary.docs_per_s == pytest.approx(33 / 12, abs=1e-3)
    # The instance-seconds that ran, not the profile's 1 instance × 12 s.
    assert summary.instance_seconds == 18.0 and summary.instances_max == 2
    assert summary.estimated_cost_usd == pytest.approx(18 / 3600 * profile.instance_hourly_usd)
    assert summary.duplicate_notifications == 2

    failures = pd.read_parquet(tmp_path / "out" / "failures.parquet")
    assert len(failures) == 23 and set(failures["status"]) == {"failed", "rejected"}
    local = pd.read_parquet(tmp_path / "out" / "results.parquet")
    pd.testing.assert_frame_equal(local, table)
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert saved["completed"] == 10 and saved["results_uri"] == summary.results_uri
    keys = aws_client("s3", profile).list_objects_v2(Bucket=profile.bucket, Prefix=f"runs/{RUN}/")
    names = sorted(o["Key"].rsplit("/", 1)[1] for o in keys["Contents"])
    assert names == ["failures.parquet", "results.parquet", "summary.json"]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_csv_and_jsonl_on_request(
    profile: Profile, tmp_path: Path, fmt: Literal["csv", "jsonl"]
) -> None:
    corpus = _corpus(tmp_path)
    m = _scenario(profile, corpus)
    summary, _ = aggregate_run(
        m,
        corpus,
        profile,
        wall_time_s=1.0,
        output_format=fmt,
        local_dir=str(tmp_path),
    )
    assert summary.results_uri.endswith(f"/runs/{RUN}/results.{fmt}")
    assert summary.local_results_path == str(tmp_path / f"results.{fmt}")
    path = Path(summary.local_results_path)
    table = pd.read_csv(path) if fmt == "csv" else pd.read_json(path, lines=True)
    assert len(table) == 33 and table["status"].value_counts().to_dict() == {
        "failed": 20,
        "completed": 10,
        "rejected": 3,
    }
    bucket, key = split_s3_uri(summary.results_uri)
    assert aws_client("s3", profile).head_object(Bucket=bucket, Key=key)["ContentLength"] > 0


def _results_table(
    manifest: RunManifest, corpus: Corpus, profile: Profile, tmp_path: Path
) -> pd.DataFrame:
    """What aggregate_run writes as results.parquet, read back."""
    aggregate_run(manifest, corpus, profile, wall_time_s=1.0, local_dir=str(tmp_path / "out"))
    return pd.read_parquet(tmp_path / "out" / "results.parquet")


def test_documents_missing_from_the_manifest_fail_with_a_reason(
    profile: Profile, tmp_path: Path
) -> None:
    corpus = _corpus(tmp_path)
    m = RunManifest(run_key=RUN, endpoint="e", model_artifact="m")
    table = _results_table(m, corpus, profile, tmp_path)
    assert len(table) == corpus.size
    assert (table["status"] == "failed").sum() == len(corpus.documents)
    assert table.loc[table["status"] == "failed", "reason"].str.contains("in no batch").all()


def test_mixed_metadata_types_are_stored_as_json_text(profile: Profile, tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    rows = [
        {"id": "a", "text": "t", "tags": ["x", "y"], "status": "draft"},
        {"id": "b", "text": "t", "tags": "z", "status": "final"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    corpus = load_corpus(str(path))
    table = _results_table(
        RunManifest(run_key=RUN, endpoint="e", model_artifact="m"), corpus, profile, tmp_path
    )
    assert table["tags"].tolist() == ['["x", "y"]', '"z"']
    assert table["metadata_status"].tolist() == ["draft", "final"]  # clashes with a result column
    table.to_parquet(tmp_path / "t.parquet")


def test_summary_markdown_has_the_numbers(profile: Profile, tmp_path: Path) -> None:
    corpus = _corpus(tmp_path)
    summary, _ = aggregate_run(_scenario(profile, corpus), corpus, profile, wall_time_s=12.0)
    text = summary_markdown(summary)
    assert "| 33 | 10 | 20 | 3 |" in text
    assert "4.50 s" in text and "100 / 40" in text
    assert summary.results_uri in text
    assert "ClientError: model error 500" in text
    assert summary.local_results_path is None


def test_bad_output_format_is_refused(profile: Profile, tmp_path: Path) -> None:
    corpus = _corpus(tmp_path)
    m = RunManifest(run_key=RUN, endpoint="e", model_artifact="m")
    with pytest.raises(ValueError, match="parquet, csv, jsonl"):
        aggregate_run(m, corpus, profile, wall_time_s=1.0, output_format="xlsx")  # type: ignore[arg-type]


# --- streaming in chunks ------------------------------------------------------------------------

CHUNK = 7


def _chunked_corpus(tmp_path: Path) -> Corpus:
    """32 documents with 3 bad rows between them; 'mixed' and 'score' are null in chunk 0."""
    lines = []
    for i in range(32):
        doc: dict[str, object] = {"id": f"c{i:02d}", "text": f"document {i} " * 3, "n": i}
        if i >= 10:
            doc["mixed"] = i if i % 2 else f"s{i}"
        if i >= 14:
            doc["score"] = i / 4
        lines.append(json.dumps(doc))
    lines.insert(2, json.dumps({"id": "c01", "text": "duplicate"}))
    lines.insert(9, json.dumps({"id": "blank", "text": " "}))
    lines.insert(20, "{not json")
    path = tmp_path / "chunked.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return load_corpus(str(path))


def _chunked_scenario(profile: Profile, corpus: Corpus) -> RunManifest:
    """Batches of 5: ok, failed, split (halves in chunks 1 and 2), output lost, ok with a long
    text, ok, ok (2 documents)."""
    batches, late = make_batches(
        corpus.documents, PromptTemplate(), GenerationParameters(), max_docs=5, max_bytes=2000
    )
    assert [len(b.doc_ids) for b in batches] == [5] * 6 + [2] and not late
    m = RunManifest(run_key=RUN, endpoint=profile.endpoint_name, model_artifact="s3://m")
    m.rejected.extend(corpus.rejected)
    records = [_record(profile, b) for b in batches]
    for r in records:
        m.add(r)
    ok, failed, parent, lost, long, *rest = records
    for r in [ok, *rest]:
        _write_output(profile, r, [_ok(d) for d in r.doc_ids])
        _complete(m, r, 2.0)
    m.mark(failed.batch_id, BatchStatus.FAILED, attempts=3, reason="ClientError: model error 500")
    m.mark(parent.batch_id, BatchStatus.SPLIT, attempts=3)
    for half in split_batch(batches[2]):
        record = _record(profile, half, parent.batch_id)
        m.add(record)
        _write_output(profile, record, [_ok(d) for d in record.doc_ids])
        _complete(m, record, 3.0)
    _complete(m, lost, 4.0)  # no output object
    lines = [_ok(d) for d in long.doc_ids]
    lines[0]["text"] = "y" * 300
    _write_output(profile, long, lines)
    _complete(m, long, 5.0)
    return m


def _aggregate_to(
    m: RunManifest, corpus: Corpus, profile: Profile, out: Path, **kwargs: Any
) -> tuple[RunSummary, pd.DataFrame, pd.DataFrame]:
    summary, _ = aggregate_run(m, corpus, profile, wall_time_s=2.0, local_dir=str(out), **kwargs)
    body = aws_client("s3", profile).get_object(
        Bucket=profile.bucket, Key=f"runs/{RUN}/results.parquet"
    )["Body"]
    table = pd.read_parquet(io.BytesIO(body.read()))
    pd.testing.assert_frame_equal(table, pd.read_parquet(out / "results.parquet"))
    return summary, table, pd.read_parquet(out / "failures.parquet")


def _chunk_of(table: pd.DataFrame, doc_ids: list[str]) -> set[int]:
    positions = table.index[table["doc_id"].isin(doc_ids)]
    return {int(p) // CHUNK for p in positions}


def test_chunks_give_the_same_tables_as_one_chunk(profile: Profile, tmp_path: Path) -> None:
    corpus = _chunked_corpus(tmp_path)
    m = _chunked_scenario(profile, corpus)
    whole = _aggregate_to(m, corpus, profile, tmp_path / "whole", chunk_rows=10_000)
    summary, table, failures = _aggregate_to(m, corpus, profile, tmp_path / "c", chunk_rows=CHUNK)

    pd.testing.assert_frame_equal(table, whole[1])
    pd.testing.assert_frame_equal(failures, whole[2])
    assert summary.model_dump(exclude={"local_results_path"}) == whole[0].model_dump(
        exclude={"local_results_path"}
    )
    assert len(table) == corpus.size == 35 and table["row"].tolist() == list(range(1, 36))
    assert (summary.completed, summary.failed, summary.rejected) == (22, 10, 3)
    assert (summary.prompt_tokens, summary.completion_tokens) == (220, 88)
    assert table.loc[[2, 9, 20], "status"].tolist() == ["rejected"] * 3
    halves = [r for r in m.batches.values() if r.parent is not None]
    assert [_chunk_of(table, h.doc_ids) for h in halves] == [{1}, {2}]
    assert set(table.loc[table["doc_id"].isin(halves[1].doc_ids), "status"]) == {"completed"}
    lost = list(m.batches.values())[3]
    reasons = table.loc[table["doc_id"].isin(lost.doc_ids), "reason"]
    assert reasons.str.contains(f"output object {lost.output_uri} could not be read").all()
    assert summary.top_failure_reasons["ClientError: model error 500"] == 5
    # 'mixed' holds ints and strings (JSON text); it and 'score' are all null in chunk 0.
    assert table["mixed"].iloc[:CHUNK].isna().all() and table["score"].iloc[:CHUNK].isna().all()
    assert table.loc[table["doc_id"] == "c10", "mixed"].item() == '"s10"'
    assert table.loc[table["doc_id"] == "c11", "mixed"].item() == "11"
    assert str(table["mixed"].dtype) == "string" and table["score"].dtype == "float64"
    assert table["n"].dtype == "float64"  # ints with nulls (the rejected rows), as before
    assert table.dtypes.to_dict() == failures.dtypes.to_dict()
    assert failures["row"].tolist() == table.loc[table["status"] != "completed", "row"].tolist()


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_chunked_text_results_match_one_chunk(profile: Profile, tmp_path: Path, fmt: str) -> None:
    corpus = _chunked_corpus(tmp_path)
    m = _chunked_scenario(profile, corpus)
    texts = []
    for chunk_rows in (10_000, CHUNK):
        summary, _ = aggregate_run(
            m,
            corpus,
            profile,
            wall_time_s=1.0,
            output_format=fmt,  # type: ignore[arg-type]
            local_dir=str(tmp_path / str(chunk_rows)),
            chunk_rows=chunk_rows,
        )
        assert summary.local_results_path is not None
        texts.append(Path(summary.local_results_path).read_text())
    assert texts[0] == texts[1]
    assert len(texts[1].splitlines()) == 35 + (fmt == "csv")


def test_outputs_are_held_one_chunk_at_a_time(
    profile: Profile, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    corpus = _chunked_corpus(tmp_path)
    m = _chunked_scenario(profile, corpus)
    reads: list[str] = []
    live: set[int] = set()
    most = 0
    real = outputs.read_output

    def counted(record: BatchRecord, *args: Any) -> Any:
        nonlocal most
        output = real(record, *args)
        reads.append(record.batch_id)
        live.add(id(output))
        weakref.finalize(output, live.discard, id(output))
        most = max(most, len(live))
        return output

    monkeypatch.setattr(outputs, "read_output", counted)
    _, table, _ = _aggregate_to(m, corpus, profile, tmp_path / "c", chunk_rows=CHUNK)

    completed = {b for b, r in m.batches.items() if r.status is BatchStatus.COMPLETED}
    per_chunk = [
        set(table["batch_id"].iloc[start : start + CHUNK].dropna()) & completed
        for start in range(0, len(table), CHUNK)
    ]
    assert sorted(reads) == sorted(completed)  # each output read once, across chunk boundaries
    assert most <= max(len(needed) for needed in per_chunk) < len(completed)
    assert not live  # nothing kept after the run


def test_spool_outputs_are_used_and_the_rest_read_from_s3(profile: Profile, tmp_path: Path) -> None:
    corpus = _chunked_corpus(tmp_path)
    m = _chunked_scenario(profile, corpus)
    _, expected, expected_failures = _aggregate_to(m, corpus, profile, tmp_path / "s3")
    completed = [r for r in m.batches.values() if r.status is BatchStatus.COMPLETED]
    spooled = completed[::2]
    s3 = aws_client("s3", profile)
    with OutputSpool(profile) as spool:
        for record in spooled:
            spool.fetch(record.output_uri)
        for record in spooled:
            if spool.read(record.output_uri) is not None:  # downloaded: S3 no longer needed
                bucket, key = split_s3_uri(record.output_uri)
                s3.delete_object(Bucket=bucket, Key=key)
        deleted = [
            r
            for r in spooled
            if "Contents"
            not in s3.list_objects_v2(Bucket=profile.bucket, Prefix=split_s3_uri(r.output_uri)[1])
        ]
        assert len(deleted) >= 2  # the lost batch's output never existed
        _, table, failures = _aggregate_to(
            m, corpus, profile, tmp_path / "spool", spool=spool, chunk_rows=CHUNK
        )
    pd.testing.assert_frame_equal(table, expected)
    pd.testing.assert_frame_equal(failures, expected_failures)


def test_preview_holds_the_first_rows(profile: Profile, tmp_path: Path) -> None:

    corpus = _chunked_corpus(tmp_path)
    m = _chunked_scenario(profile, corpus)
    summary, preview = aggregate_run(
        m, corpus, profile, wall_time_s=1.0, local_dir=str(tmp_path), preview_rows=12, chunk_rows=5
    )
    assert preview.results == read_rows(str(tmp_path / "results.parquet"), 12)
    assert preview.failures == read_rows(str(tmp_path / "failures.parquet"), 12)
    assert [r["row"] for r in preview.results] == list(range(1, 13))
    assert len(preview.failures) == 12 and summary.failed + summary.rejected > 12
    assert all(r["status"] != "completed" for r in preview.failures)
    json.dumps([preview.results, preview.failures])  # JSON-friendly
    # The long text is past the first 12 rows: it is checked in a bigger preview.
    _, bigger = aggregate_run(m, corpus, profile, wall_time_s=1.0, preview_rows=100, chunk_rows=5)
    assert len(bigger.results) == 35
    long = [r["text"] for r in bigger.results if r["text"] and r["text"].startswith("y")]
    assert long == ["y" * 200 + "…"]
    _, none = aggregate_run(m, corpus, profile, wall_time_s=1.0)
    assert none.results == [] and none.failures == []


def read_rows(path: str, n: int) -> list[dict[str, Any]]:
    """The first ``n`` rows of a Parquet file as the preview promises them: None for nulls, text cut."""
    frame = pd.read_parquet(path).head(n)
    frame = frame.astype(object).where(frame.notna(), None)
    return [
        {k: (v[:200] + "…" if isinstance(v, str) and len(v) > 200 else v) for k, v in row.items()}
        for row in frame.to_dict(orient="records")
    ]
