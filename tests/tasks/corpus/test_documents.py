"""Corpus loading: every format, local and S3, each bad row kind rejected once with its reason."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tasks.aws.clients import aws_client
from tasks.corpus.documents import ColumnMapping, Document, corpus_fingerprint, load_corpus
from tasks.corpus.tables import CorpusError
from tasks.settings import Profile

REPO = Path(__file__).resolve().parents[3]

GOOD: list[dict[str, Any]] = [
    {"id": "n-1", "text": "Council approves the new bridge.", "source": "news", "lang": "en"},
    {"id": 2, "text": "Printer jams on page two.", "source": "ticket", "lang": "en"},
    {"id": "r-3", "text": "Great kettle, boils fast.", "source": "review", "lang": "en"},
]


def _write_jsonl(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def _row(row: int | None) -> int:
    """A rejected row's number (every row of a table file has one)."""
    assert row is not None
    return row


def _json(row: Mapping[str, object]) -> bytes:
    return json.dumps(row).encode()


def test_jsonl_good_rows_with_metadata_and_int_ids(tmp_path: Path) -> None:
    corpus = load_corpus(str(_write_jsonl(tmp_path / "c.jsonl", [_json(r) for r in GOOD])))
    assert corpus.rejected == []
    assert [d.doc_id for d in corpus.documents] == ["n-1", "2", "r-3"]
    assert corpus.documents[1].metadata == {"source": "ticket", "lang": "en"}
    assert [d.row for d in corpus.documents] == [1, 2, 3]  # rows and lines count from 1
    assert corpus.size == 3 and len(corpus.fingerprint) == 64


def test_every_bad_row_kind_is_rejected_once_with_its_reason(tmp_path: Path) -> None:
    lines = [
        _json(GOOD[0]),
        _json({"text": "no id here"}),  # 1 missing id
        _json({"id": "n-1", "text": "second n-1"}),  # 2 duplicate id
        _json({"id": "e", "text": ""}),  # 3 empty text
        _json({"id": "w", "text": "  \n\t "}),  # 4 whitespace text
        b'{"id": "u", "text": "caf\xe9"}',  # 5 undecodable bytes (latin-1)
        b'{"id": "j", "text": ',  # 6 invalid JSON
        _json({"id": "big", "text": "x" * 501}),  # 7 over max_doc_bytes
        b"",  # 8 blank line in the middle
        b"[1, 2]",  # 9 not an object
        _json({"id": None, "text": "null id"}),  # 10 null id
        _json({"id": "nt", "text": None}),  # 11 null text
        _json({"id": "num", "text": 42}),  # 12 text not a string
        _json(GOOD[2]),  # 13
    ]
    corpus = load_corpus(str(_write_jsonl(tmp_path / "bad.jsonl", lines)), max_doc_bytes=500)
    assert [d.doc_id for d in corpus.documents] == ["n-1", "r-3"]
    assert corpus.documents[0].text == GOOD[0]["text"]  # the first n-1 is kept
    reasons = {_row(r.row) - 1: r.reason for r in corpus.rejected}  # keyed by the index above
    assert sorted(reasons) == list(range(1, 13))  # one Rejected per bad row
    assert "missing id" in reasons[1] and "id_column" in reasons[1]
    assert "duplicate id 'n-1': row 1 already has it" in reasons[2]
    assert "empty text" in reasons[3] and "empty text" in reasons[4]
    assert "line 6 is not valid UTF-8" in reasons[5]
    assert "line 7 is not valid JSON" in reasons[6]
    assert "501 bytes, over max_doc_bytes=500" in reasons[7]
    assert "raise the flow parameter max_doc_bytes" in reasons[7]
    assert "blank" in reasons[8]
    assert "not an object" in reasons[9]
    assert "missing id" in reasons[10]
    assert "missing text" in reasons[11]
    assert "int, not a string" in reasons[12]
    assert {r.doc_id for r in corpus.rejected if r.row in (3, 8)} == {"n-1", "big"}
    # the broken line 7 keeps the id it spells out
    assert {r.row: r.doc_id for r in corpus.rejected}[7] == "j"
    assert len(corpus.documents) + len(corpus.rejected) == len(lines)


def test_csv_with_mapping_and_bad_records(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_bytes(
        b"key,body,source,extra\n"
        b'a,"Line one, with comma",news,1\n'
        b",missing id,news,2\n"
        b"c,   ,news,3\n"
        b"d,caf\xe9,news,4\n"
        b"a,dup,news,5\n"
        b'e,"multi\nline",ticket,6\n'
    )
    mapping = ColumnMapping(id="key", text="body", metadata=["source"])
    corpus = load_corpus(str(path), mapping)
    assert [(d.doc_id, d.text, d.metadata) for d in corpus.documents] == [
        ("a", "Line one, with comma", {"source": "news"}),
        ("e", "multi\nline", {"source": "ticket"}),
    ]
    reasons = {_row(r.row): r.reason for r in corpus.rejected}
    assert sorted(reasons) == [2, 3, 4, 5]  # CSV rows count from 1 after the header
    assert "missing id" in reasons[2] and "empty text" in reasons[3]
    assert "CSV row 4 (after the header) has bytes that are not valid UTF-8" in reasons[4]
    assert "duplicate id 'a': row 1 already has it" in reasons[5]


def test_parquet_keeps_typed_metadata(tmp_path: Path) -> None:
    path = tmp_path / "c.parquet"
    frame = pd.DataFrame(
        {
            "id": [1, 2, 3],
            "text": ["alpha", None, "gamma"],
            "stars": [5, 3, 4],
            "lang": ["en", "en", "de"],
        }
    )
    frame.to_parquet(path)
    corpus = load_corpus(str(path))
    assert [(d.doc_id, d.metadata) for d in corpus.documents] == [
        ("1", {"stars": 5, "lang": "en"}),
        ("3", {"stars": 4, "lang": "de"}),
    ]
    assert [(r.doc_id, r.row) for r in corpus.rejected] == [("2", 2)]


def test_folder_of_text_files(tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "a.txt").write_text("first document")
    (tmp_path / "notes" / "b.md").write_text("# second\n\nbody")
    (tmp_path / "notes" / "bad.txt").write_bytes(b"\xff\xfe\x00broken")
    (tmp_path / "notes" / "empty.md").write_text("\n")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    (tmp_path / ".hidden.txt").write_text("ignored")
    corpus = load_corpus(str(tmp_path))
    assert [d.doc_id for d in corpus.documents] == ["a.txt", "notes/b.md"]
    assert corpus.documents[1].metadata["path"] == "notes/b.md"
    assert corpus.documents[1].metadata["title"] == "second"
    reasons = {r.doc_id: r.reason for r in corpus.rejected}
    assert "'notes/bad.txt' is binary, not text" in reasons["notes/bad.txt"]
    assert "no text after extraction" in reasons["notes/empty.md"]
    assert "not a readable image" in reasons["image.png"]  # not skipped in silence
    assert len(reasons) == 3


def test_folder_of_data_files_reads_them_all_and_names_the_file(tmp_path: Path) -> None:
    _write_jsonl(tmp_path / "a.jsonl", [_json(GOOD[0]), b"{oops"])
    pd.DataFrame([GOOD[2]]).to_parquet(tmp_path / "b.parquet")
    (tmp_path / "README.md").write_text("not a document when data files are present")
    corpus = load_corpus(str(tmp_path))
    assert [d.doc_id for d in corpus.documents] == ["n-1", "r-3"]
    assert [(r.row, r.reason[:29]) for r in corpus.rejected] == [
        (2, "a.jsonl: line 2 is not valid ")
    ]
    assert corpus.ignored == [
        "file 'README.md' was not read: this folder holds table files (.jsonl, .csv, "
        ".parquet), whose rows are the documents; to run documents, give their own folder "
        "as `corpus`"
    ]


def test_s3_sources(profile: Profile, tmp_path: Path) -> None:
    s3 = aws_client("s3", profile)
    body = b"\n".join(_json(r) for r in GOOD) + b"\n"
    s3.put_object(Bucket=profile.bucket, Key="in/corpus.jsonl", Body=body)
    s3.put_object(Bucket=profile.bucket, Key="in/docs/x.txt", Body=b"text x")
    s3.put_object(Bucket=profile.bucket, Key="in/docs/sub/y.md", Body=b"text y")
    s3.put_object(Bucket=profile.bucket, Key="in/docs/z.bin", Body=b"\x00")
    local = load_corpus(str(_write_jsonl(tmp_path / "c.jsonl", [_json(r) for r in GOOD])))
    remote = load_corpus(f"s3://{profile.bucket}/in/corpus.jsonl", profile=profile)
    assert remote.documents == local.documents and remote.fingerprint == local.fingerprint
    folder = load_corpus(f"s3://{profile.bucket}/in/docs", profile=profile)
    assert [(d.doc_id, d.text) for d in folder.documents] == [
        ("sub/y.md", "text y"),
        ("x.txt", "text x"),
    ]
    assert [(r.doc_id, r.row) for r in folder.rejected] == [("z.bin", 3)]
    with pytest.raises(CorpusError, match="cannot be read from S3"):
        load_corpus(f"s3://{profile.bucket}/in/missing.jsonl", profile=profile)
    with pytest.raises(CorpusError, match="no objects under"):
        load_corpus(f"s3://{profile.bucket}/nothing/", profile=profile)


def test_unusable_sources_raise_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="does not exist"):
        load_corpus(str(tmp_path / "nope.jsonl"))
    (tmp_path / "empty.jsonl").write_bytes(b"")
    with pytest.raises(CorpusError, match="has no rows"):
        load_corpus(str(tmp_path / "empty.jsonl"))
    xml = '<?xml version="1.0" encoding="UTF-8"?>\n<catalog>\n  <book id="b1">\n'
    (tmp_path / "c.xml").write_text(xml + "    <title>Tides</title>\n  </book>\n</catalog>\n")
    # Not a table: a corpus of one document, its type found by content.
    assert load_corpus(str(tmp_path / "c.xml")).documents[0].metadata["format"] == "code:xml"
    (tmp_path / "dir").mkdir()
    with pytest.raises(CorpusError, match="has no files; check the path given as `corpus`"):
        load_corpus(str(tmp_path / "dir"))
    (tmp_path / "c.csv").write_text("name,body\nx,y\n")
    with pytest.raises(CorpusError, match=r"no column 'id', 'text'.*flow parameters id_column"):
        load_corpus(str(tmp_path / "c.csv"))
    (tmp_path / "c.parquet").write_bytes(b"not parquet")
    with pytest.raises(CorpusError, match="not a readable Parquet"):
        load_corpus(str(tmp_path / "c.parquet"))


def test_fingerprint_is_stable_and_changes_with_any_document() -> None:
    docs = [Document(doc_id=str(i), text=f"t{i}", metadata={"k": i}) for i in range(5)]
    base = corpus_fingerprint(docs)
    assert base == corpus_fingerprint([d.model_copy() for d in docs])
    changed_text = [*docs[:4], docs[4].model_copy(update={"text": "t4!"})]
    changed_meta = [*docs[:4], docs[4].model_copy(update={"metadata": {"k": 5}})]
    reordered = [docs[1], docs[0], *docs[2:]]
    assert (
        len({base, *map(corpus_fingerprint, (changed_text, changed_meta, reordered, docs[:4]))})
        == 5
    )
    # the input row number is not content: fixing an earlier bad row keeps the fingerprint
    assert corpus_fingerprint([d.model_copy(update={"row": 9}) for d in docs]) == base


def test_shipped_datasets_load() -> None:
    sample = load_corpus(str(REPO / "datasets" / "sample"))
    assert sample.rejected == [] and len(sample.documents) == 50
    assert all({"source", "lang", "date"} <= set(d.metadata) for d in sample.documents)
    assert len({d.metadata["source"] for d in sample.documents}) == 5
    lengths = [len(d.text) for d in sample.documents]
    assert min(lengths) < 200 and max(lengths) > 1000  # varied length
    bad = load_corpus(str(REPO / "datasets" / "bad_rows"))
    assert [d.doc_id for d in bad.documents] == ["news-002", "ticket-1002", "review-2005"]
    reasons = {_row(r.row): r.reason for r in bad.rejected}
    assert sorted(reasons) == [2, 4, 5, 6, 7, 8, 9]
    for row, words in {
        2: "missing id",
        4: "duplicate id",
        5: "empty text",
        6: "empty text",
        7: "line 7 is not valid UTF-8",
        8: "line 8 is not valid JSON",
        9: "over max_doc_bytes=100000",
    }.items():
        assert words in reasons[row]
