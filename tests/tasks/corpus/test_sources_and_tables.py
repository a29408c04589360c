"""Corpora read a piece at a time: the same rows as a whole-file read, shards that hold only
their own documents, a parent's scan that parses nothing, shard results merged batch by batch."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.aws.clients import aws_client
from tasks.corpus import tables
from tasks.corpus.documents import load_corpus
from tasks.corpus.sources import scan_source
from tasks.corpus.tables import CorpusError, iter_table
from tasks.settings import Profile
from tasks.sharding.merge import conform_table
from tasks.sharding.shards import Shard, keeps, shard_count
from tests.oracles import parse_table, select_shard
from tests.runs import write_corpus


def _awkward_jsonl() -> bytes:
    lines = [
        b'\xef\xbb\xbf{"id": "a", "text": "first, after a BOM"}',
        b'{"id": "b", "text": "caf\xe9"}',  # not UTF-8
        b"",  # blank in the middle
        b'{"id": "c", "text": ',  # broken JSON
        json.dumps({"id": "d", "text": "x" * 300}).encode(),  # longer than a chunk
        b"[1]",
        json.dumps({"id": "e", "text": "last, no newline"}).encode(),
    ]
    return b"\n".join(lines)


@pytest.mark.parametrize("chunk", [1, 7, 64, 1 << 20])
def test_jsonl_read_in_chunks_gives_the_rows_of_a_whole_read(
    chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _awkward_jsonl() + b"\n  "  # a last line of blanks, without a newline: not a row
    whole = parse_table("c.jsonl", ".jsonl", data)  # one chunk: the whole file
    monkeypatch.setattr(tables, "CHUNK", chunk)
    streamed = list(iter_table("c.jsonl", ".jsonl", io.BytesIO(data)))
    as_seen = [r if isinstance(r, dict) else r.reason for r in streamed]
    assert as_seen == [r if isinstance(r, dict) else r.reason for r in whole]
    assert len(streamed) == 7 and streamed[0] == {"id": "a", "text": "first, after a BOM"}
    assert "line 2 is not valid UTF-8" in streamed[1].reason  # type: ignore[union-attr]
    assert "line 3 is blank" in streamed[2].reason  # type: ignore[union-attr]


def test_parquet_and_csv_stream_in_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tables, "PARQUET_BATCH_ROWS", 3)
    ids = [f"p{i}" for i in range(10)]
    sink = io.BytesIO()
    pq.write_table(pa.table({"id": ids, "text": ids}), sink, row_group_size=4)
    rows = list(iter_table("p.parquet", ".parquet", io.BytesIO(sink.getvalue())))
    assert [r["id"] for r in rows] == ids  # type: ignore[index]
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerows([["id", "text"], ["1", "one,\nwith a newline"], ["2", "two"]])
    rows = list(iter_table("c.csv", ".csv", io.BytesIO(b"\xef\xbb\xbf" + text.getvalue().encode())))
    assert rows == [{"id": "1", "text": "one,\nwith a newline"}, {"id": "2", "text": "two"}]


def test_shards_loaded_while_streaming_are_the_shards_of_the_whole(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    ids = write_corpus(path, 300)
    with path.open("a") as fh:  # a duplicate, a row without an id, an empty text
        fh.write(
            '{"id": "doc-00007", "text": "again"}\n{"text": "no id"}\n{"id": "e", "text": ""}\n'
        )
    whole = load_corpus(str(path))
    count = 4
    for index in range(count):
        shard = Shard(index=index, count=count)
        streamed = load_corpus(str(path), keep=keeps(shard), report_ignored=index == 0)
        expected = select_shard(whole, shard)
        assert streamed.documents == expected.documents  # rows numbered over the whole file
        assert streamed.rejected == expected.rejected
        assert streamed.fingerprint == expected.fingerprint
    reasons = [r.reason for r in whole.rejected]
    assert any("duplicate id 'doc-00007'" in r for r in reasons)  # found inside its shard
    assert len(whole.documents) == len(ids)


PEAKS = """
import json, sys, tracemalloc
from tasks.corpus.documents import ColumnMapping, load_corpus
from tasks.sharding.shards import Shard, keeps

def peak(**kwargs):
    tracemalloc.start()
    try:
        load_corpus(sys.argv[1], ColumnMapping(), **kwargs)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

load_corpus(sys.argv[1], ColumnMapping())  # imports and first-use caches out of the way
print(json.dumps([peak(), peak(keep=keeps(Shard(index=3, count=8)))]))
"""


def test_a_shard_holds_its_own_documents_not_the_corpus(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    write_corpus(path, 40_000, words=40)
    # Measured in a fresh interpreter: tracemalloc counts every thread's allocations, and the
    # test process has servers running in threads of its own.
    done = subprocess.run(
        [sys.executable, "-c", PEAKS, str(path)], capture_output=True, text=True, check=True
    )
    everything, one_of_eight = json.loads(done.stdout)
    # An eighth of the documents and a chunk of the file, not the file: 10 of 53 MB here.
    assert one_of_eight < everything / 4, (one_of_eight, everything)


def test_a_scan_counts_and_fingerprints_without_parsing(tmp_path: Path, profile: Profile) -> None:
    folder = tmp_path / "corpus"
    folder.mkdir()
    write_corpus(folder / "a.jsonl", 120)
    sink = io.BytesIO()
    pq.write_table(pa.table({"id": ["x", "y"], "text": ["1", "2"]}), sink)
    (folder / "b.parquet").write_bytes(sink.getvalue())
    (folder / "c.csv").write_text('id,text\n1,"multi\nline"\n2,two\n')
    (folder / "README.md").write_text("not a row")
    scan = scan_source(str(folder))
    assert (scan.rows, scan.files) == (124, 3)
    assert scan_source(str(folder)) == scan  # the same files, the same fingerprint
    s3 = aws_client("s3", profile)
    for path in folder.iterdir():
        s3.put_object(Bucket=profile.bucket, Key=f"scan/{path.name}", Body=path.read_bytes())
    assert scan_source(f"s3://{profile.bucket}/scan/", profile) == scan
    remote = load_corpus(f"s3://{profile.bucket}/scan/", profile=profile)
    assert remote.fingerprint == load_corpus(str(folder)).fingerprint
    assert len(remote.documents) == 124
    with (folder / "a.jsonl").open("a") as fh:
        fh.write('{"id": "new", "text": "one more"}\n')
    changed = scan_source(str(folder))
    assert changed.fingerprint != scan.fingerprint and changed.rows == 125


def test_a_glob_names_the_files_locally_and_in_s3(tmp_path: Path, profile: Profile) -> None:
    folder = tmp_path / "data"
    (folder / "2026").mkdir(parents=True)
    write_corpus(folder / "part-0.jsonl", 5, prefix="a")
    write_corpus(folder / "2026" / "part-1.jsonl", 4, prefix="b")
    write_corpus(folder / "other.jsonl", 3, prefix="c")  # not matched
    local = load_corpus(str(folder / "*part-*.jsonl"))
    assert len(local.documents) == 9 and {d.doc_id[0] for d in local.documents} == {"a", "b"}
    s3 = aws_client("s3", profile)
    for path in folder.rglob("*.jsonl"):
        key = f"globbed/{path.relative_to(folder).as_posix()}"
        s3.put_object(Bucket=profile.bucket, Key=key, Body=path.read_bytes())
    remote = load_corpus(f"s3://{profile.bucket}/globbed/*part-*.jsonl", profile=profile)
    assert remote.fingerprint == local.fingerprint
    with pytest.raises(CorpusError, match="no files match"):
        load_corpus(str(folder / "*.csv"))


def test_shard_count_from_a_target_size() -> None:
    assert shard_count(1, 200, 750) == 4
    assert shard_count(8, 200, 750) == 8  # never fewer than asked
    assert shard_count(1, None, 10**6) == 1
    with pytest.raises(ValueError, match="shard_size"):
        shard_count(1, 0, 10)
    with pytest.raises(ValueError, match="raise shard_size"):
        shard_count(1, 1, 10**6)


def test_shard_results_with_different_columns_merge_into_one_schema() -> None:
    first = pa.table({"doc_id": ["a"], "error": pa.nulls(1)})  # no failures: an all-null column
    second = pa.table({"doc_id": ["b"], "error": ["boom"], "extra": [1]})
    schema = pa.unify_schemas([first.schema, second.schema], promote_options="permissive")
    merged = pa.concat_tables([conform_table(first, schema), conform_table(second, schema)])
    assert merged.schema == schema
    assert merged.to_pylist() == [
        {"doc_id": "a", "error": None, "extra": None},
        {"doc_id": "b", "error": "boom", "extra": 1},
    ]
