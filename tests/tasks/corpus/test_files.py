"""Folder corpora of real files: every file read or rejected once, with its text or its reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import documents as make
from tasks.aws.clients import aws_client
from tasks.corpus.documents import load_corpus
from tasks.corpus.formats.extract import decode_text
from tasks.corpus.read import extract_format
from tasks.params.groups import ReadOptions
from tasks.settings import Profile
from tests.tasks.corpus.mixed import KNOWN, REJECTED, mixed_folder


def test_every_file_of_a_mixed_folder_is_read_or_rejected_once(tmp_path: Path) -> None:
    folder = mixed_folder(tmp_path / "corpus")
    corpus = load_corpus(str(folder))
    read = {d.doc_id: d for d in corpus.documents}
    rejected = {r.doc_id: r for r in corpus.rejected}
    ids = [d.doc_id for d in corpus.documents] + [str(r.doc_id) for r in corpus.rejected]
    assert sorted(ids) == sorted([*KNOWN, *REJECTED])  # every file exactly once
    assert corpus.size == len(KNOWN) + len(REJECTED)
    for name, sentence in KNOWN.items():
        assert sentence in " ".join(read[name].text.split()), (name, read[name].text[:300])
    for name, needles in REJECTED.items():
        for needle in needles:
            assert needle in rejected[name].reason, (name, rejected[name].reason)
    # Rows are numbered from 1 in file-name order and are unique: the results table's key.
    rows = sorted([d.row or 0 for d in corpus.documents] + [r.row or 0 for r in corpus.rejected])
    assert rows == list(range(1, corpus.size + 1))


def test_format_metadata_becomes_columns(tmp_path: Path) -> None:
    folder = mixed_folder(tmp_path / "corpus")
    docs = {d.doc_id: d.metadata for d in load_corpus(str(folder)).documents}
    pdf = docs["reports/annual.pdf"]
    assert (pdf["format"], pdf["title"], pdf["author"], pdf["pages"]) == (
        "pdf",
        "Annual report",
        "City Council",
        3,
    )
    assert pdf["path"] == "reports/annual.pdf"
    assert pdf["bytes"] == (folder / "reports/annual.pdf").stat().st_size
    assert len(pdf["sha256"]) == 64
    memo = docs["reports/q3/memo.docx"]
    assert (memo["format"], memo["title"], memo["author"]) == ("docx", "Q3 memo", "Finance")
    mail = docs["mail/minutes.eml"]
    assert (mail["title"], mail["author"]) == ("Draft minutes", "ann@example.org")
    assert mail["date"] == "2026-03-04T09:30:00+00:00"
    assert docs["web/story.html"]["title"] == "River festival"
    assert docs["notes/readme.md"]["title"] == "Notes"
    # Every document has the same columns, so the results table has one schema.
    assert len({tuple(sorted(m)) for m in docs.values()}) == 1


def test_html_keeps_the_article_and_drops_navigation() -> None:
    text = extract_format(
        "page.html", make.html_bytes("The main story sentence."), "html", ReadOptions()
    ).text
    assert "The main story sentence." in text
    for boilerplate in ("Menu section", "Site banner", "Copyright notice"):
        assert boilerplate not in text


def test_eml_with_an_html_body() -> None:
    from email.message import EmailMessage

    message = EmailMessage()
    message["Subject"], message["From"] = "Offer", "shop@example.org"
    message.set_content(
        "<html><body><p>Half price on all kettles until Sunday.</p></body></html>", subtype="html"
    )
    extracted = extract_format("offer.eml", bytes(message), "eml", ReadOptions())
    assert "Half price on all kettles until Sunday." in extracted.text
    assert "<p>" not in extracted.text and extracted.title == "Offer"


@pytest.mark.parametrize(
    "encoding", ["utf-8", "utf-8-sig", "latin-1", "cp1252", "utf-16", "utf-16-le"]
)
def test_plain_text_in_common_encodings(encoding: str) -> None:
    sentence = "Le garçon a payé ses crêpes à la fête de Noël."
    assert sentence in decode_text("a.txt", make.text_bytes(sentence, encoding))


def test_a_folder_of_table_files_names_the_other_files(tmp_path: Path) -> None:
    (tmp_path / "docs.jsonl").write_text('{"id": "a", "text": "one"}\n')
    (tmp_path / "README.md").write_text("# about this data\n")
    corpus = load_corpus(str(tmp_path))
    assert [d.doc_id for d in corpus.documents] == ["a"] and corpus.rejected == []
    assert len(corpus.ignored) == 1 and "'README.md' was not read" in corpus.ignored[0]
    assert "`corpus`" in corpus.ignored[0]


def test_an_s3_prefix_is_read_like_a_folder(profile: Profile, tmp_path: Path) -> None:
    folder = mixed_folder(tmp_path / "corpus")
    s3 = aws_client("s3", profile)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        key = f"corpora/mixed/{path.relative_to(folder).as_posix()}"
        s3.put_object(Bucket=profile.bucket, Key=key, Body=path.read_bytes())
    corpus = load_corpus(f"s3://{profile.bucket}/corpora/mixed/", profile=profile)
    local = load_corpus(str(folder))
    assert [d.doc_id for d in corpus.documents] == [d.doc_id for d in local.documents]
    assert [(r.doc_id, r.reason) for r in corpus.rejected] == [
        (r.doc_id, r.reason) for r in local.rejected
    ]
    assert corpus.fingerprint == local.fingerprint


def test_files_are_read_one_at_a_time() -> None:
    """A folder's files are read as its rows are consumed, never all at once."""
    from tasks.corpus.files import read_documents

    reads: list[str] = []

    def read(name: str) -> bytes:
        reads.append(name)
        return make.text_bytes(f"Document {name}.")

    names = [f"d{i}.txt" for i in range(5)] + ["no-suffix"]
    files = read_documents(names, read)
    assert next(files).text is not None and reads == ["d0.txt"]
    rest = list(files)
    assert reads == names  # a file without a known suffix is read: its type is in its content
    assert rest[-1].text is not None and rest[-1].metadata["format"] == "text"


def test_extraction_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks.extraction import main

    assert main(["--files", "2", "--ocr-pages", "0"]) == 0  # OCR: tests/tasks/corpus/test_ocr.py
    out = capsys.readouterr().out
    assert "pdf (3 pages)" in out and "all formats" in out and "files/s" in out


def test_a_single_document_file_is_a_corpus_of_one(profile: Profile, tmp_path: Path) -> None:
    path = tmp_path / "report.pdf"
    path.write_bytes(make.pdf_bytes("One report on its own.", pages=2))
    corpus = load_corpus(str(path))
    assert [(d.doc_id, d.row, d.metadata["pages"]) for d in corpus.documents] == [
        ("report.pdf", 1, 2)
    ]
    s3 = aws_client("s3", profile)
    s3.put_object(Bucket=profile.bucket, Key="one/report.pdf", Body=path.read_bytes())
    remote = load_corpus(f"s3://{profile.bucket}/one/report.pdf", profile=profile)
    assert remote.fingerprint == corpus.fingerprint
    from tasks.corpus.tables import CorpusError

    with pytest.raises(CorpusError, match="cannot be read from S3"):
        load_corpus(f"s3://{profile.bucket}/one/missing.pdf", profile=profile)


@pytest.mark.parametrize(
    ("name", "data", "words"),
    [
        ("damaged.pdf", b"%PDF-1.4\n1 0 obj garbage", "is not a readable PDF"),
        (
            "locked.docx",
            b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(512),
            "encrypted (password-protected) Word",
        ),
        ("damaged.docx", b"PK\x03\x04 not really a zip", "is not a readable DOCX"),
        ("noheaders.eml", b"\n\njust a body", "is not an e-mail"),
        ("legacy.doc", b"\xd0\xcf\x11\xe0" + bytes(600), "which docflow does not read"),
        ("font.ttf", b"\x00\x01\x00\x00\x00\x0c" + bytes(200), "which docflow does not read"),
    ],
)
def test_damaged_and_unknown_files_are_rejected_with_their_reason(
    name: str, data: bytes, words: str
) -> None:
    from tasks.corpus.files import read_document

    file = read_document(name, lambda _: data)
    assert file.text is None and file.reason is not None
    assert words in file.reason and "`corpus`" in file.reason, file.reason


def test_a_folder_lists_every_file_once_hidden_and_linked_folders_left_out(tmp_path: Path) -> None:
    from tasks.corpus.files import local_names

    root = tmp_path / "corpus"
    (root / "a" / "b").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref")
    (root / "top.txt").write_text("1")
    (root / ".hidden.txt").write_text("2")
    (root / "a" / "b" / "deep.md").write_text("3")
    (root / "a" / ".cache").mkdir()
    (root / "a" / ".cache" / "x.txt").write_text("4")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "o.txt").write_text("5")
    (root / "linked-folder").symlink_to(outside, target_is_directory=True)
    (root / "linked.txt").symlink_to(root / "top.txt")
    (root / "broken.txt").symlink_to(tmp_path / "missing.txt")
    assert local_names(root) == ["a/b/deep.md", "broken.txt", "linked.txt", "top.txt"]
