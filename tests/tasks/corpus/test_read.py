"""Folders as they really are: text of any name, compressed files and archives, every member
accounted for, and archive bombs stopped at a named limit."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import zstandard

from benchmarks import documents as make
from tasks.corpus.documents import load_corpus
from tasks.corpus.limits import ArchiveLimits
from tasks.corpus.read import FileDocument, read_file
from tasks.params.groups import ReadOptions
from tasks.settings import Profile

LICENSE = b"Permission is hereby granted, free of charge, to any person obtaining a copy.\n"
PYTHON = b"#!/usr/bin/env python3\nimport sys\n\n\ndef main():\n    print(sys.argv)\n\n\nmain()\n"

EXECUTABLE = Path(sys.executable).resolve().read_bytes()  # a real program (ELF on Linux)


def zip_bytes(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return out.getvalue()


def tar_gz_bytes(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


def read_one(name: str, data: bytes, options: ReadOptions | None = None) -> list[FileDocument]:
    return list(read_file(name, lambda _: data, options))


def test_text_without_a_suffix_is_text_and_code_is_named() -> None:
    [license_] = read_one("LICENSE", LICENSE)
    assert license_.text == LICENSE.decode() and license_.metadata["format"] == "text"
    [script] = read_one("bin/run", PYTHON)
    assert script.metadata["format"] == "code:python" and "def main" in (script.text or "")


@pytest.mark.parametrize(
    ("suffix", "compress"),
    [
        (".gz", gzip.compress),
        (".bz2", bz2.compress),
        (".xz", lzma.compress),
        (".zst", lambda d: zstandard.ZstdCompressor().compress(d)),
    ],
)
def test_compressed_text_and_pdf_are_read_through(suffix: str, compress: object) -> None:
    assert callable(compress)
    [notes] = read_one(f"notes.txt{suffix}", compress(b"Gzipped minutes of the May meeting."))
    assert notes.text == "Gzipped minutes of the May meeting."
    assert notes.metadata["format"] == "text" and notes.metadata["compression"] in (
        "gzip",
        "bzip2",
        "xz",
        "zstd",
    )
    pdf = compress(make.pdf_bytes("The compressed report sentence.", pages=2))
    [report] = read_one(f"report.pdf{suffix}", pdf)
    assert "The compressed report sentence." in (report.text or "")
    assert report.metadata["pages"] == 2 and report.metadata["bytes"] == len(pdf)


def test_gzip_of_a_file_without_suffix_is_found_by_content() -> None:
    [doc] = read_one("changelog.Debian.gz", gzip.compress(b"docflow (1.0) stable; urgency=low\n"))
    assert doc.text is not None and doc.metadata["format"] == "text"


def test_a_zip_holds_a_pdf_a_docx_a_nested_zip_and_a_member_over_the_limit() -> None:
    big = bytes(range(32, 127)) * 1100  # 104,500 bytes of text, over max_member_bytes=60,000
    bundle = zip_bytes(
        {
            "reports/q3.pdf": make.pdf_bytes("The third quarter closed ahead of plan."),
            "memo.docx": make.docx_bytes("The memo asks for comments by Friday."),
            "inner.zip": zip_bytes({"c.txt": b"Inner text of the nested zip."}),
            "big.txt": big,
            ".DS_Store": b"hidden, left out as in folders",
        }
    )
    options = ReadOptions(archive_limits=ArchiveLimits(max_member_bytes=60_000))
    docs = {d.name: d for d in read_one("bundle.zip", bundle, options)}
    assert sorted(docs) == [
        "bundle.zip!big.txt",
        "bundle.zip!inner.zip!c.txt",
        "bundle.zip!memo.docx",
        "bundle.zip!reports/q3.pdf",
    ]
    assert "ahead of plan" in (docs["bundle.zip!reports/q3.pdf"].text or "")
    assert "comments by Friday" in (docs["bundle.zip!memo.docx"].text or "")
    assert docs["bundle.zip!inner.zip!c.txt"].text == "Inner text of the nested zip."
    reason = docs["bundle.zip!big.txt"].reason or ""
    assert "over archive_limits.max_member_bytes=60000" in reason
    assert "raise the flow parameter archive_limits.max_member_bytes" in reason
    assert docs["bundle.zip!memo.docx"].metadata["path"] == "bundle.zip!memo.docx"


def test_a_tar_gz_is_one_row_per_member() -> None:
    data = tar_gz_bytes({"a/one.txt": b"First member.", "b/two.md": b"# Two\n\nSecond member."})
    docs = read_one("site.tar.gz", data)
    assert [(d.name, d.text) for d in docs] == [
        ("site.tar.gz!a/one.txt", "First member."),
        ("site.tar.gz!b/two.md", "# Two\n\nSecond member."),
    ]
    assert docs[1].metadata["title"] == "Two"


def test_a_zip_bomb_is_rejected_naming_the_ratio_limit() -> None:
    bomb = zip_bytes({"zeros.txt": bytes(50_000_000), "ok.txt": b"A small honest member."})
    assert len(bomb) < 100_000
    docs = {d.name: d for d in read_one("bomb.zip", bomb)}
    assert docs["bomb.zip!ok.txt"].text == "A small honest member."
    reason = docs["bomb.zip!zeros.txt"].reason or ""
    assert "over archive_limits.max_ratio=100" in reason, reason
    # A gzip bomb too, read a piece at a time and stopped at the limit.
    [gz] = read_one("zeros.txt.gz", gzip.compress(bytes(50_000_000)))
    assert "over archive_limits.max_ratio=100" in (gz.reason or "")


def test_member_count_total_bytes_and_depth_limits_are_named() -> None:
    many = zip_bytes({f"m{i}.txt": f"member {i}".encode() for i in range(5)})
    docs = read_one("many.zip", many, ReadOptions(archive_limits=ArchiveLimits(max_members=3)))
    assert [d.text for d in docs[:3]] == ["member 0", "member 1", "member 2"]
    assert all("over archive_limits.max_members=3" in (d.reason or "") for d in docs[3:])
    assert len(docs) == 5  # every member accounted for
    total = ReadOptions(archive_limits=ArchiveLimits(max_total_bytes=20))
    docs = read_one("many.zip", many, total)
    assert [d.text is not None for d in docs] == [True, True, False, False, False]
    assert "over archive_limits.max_total_bytes=20" in (docs[2].reason or "")
    nested = zip_bytes({"l1.zip": zip_bytes({"l2.zip": zip_bytes({"deep.txt": b"deep"})})})
    [deep] = read_one("l0.zip", nested, ReadOptions(archive_limits=ArchiveLimits(max_depth=2)))
    assert deep.name == "l0.zip!l1.zip!l2.zip" and "archive_limits.max_depth=2" in (
        deep.reason or ""
    )
    [ok] = read_one("l0.zip", nested)  # the default depth (3) opens all three
    assert (ok.name, ok.text) == ("l0.zip!l1.zip!l2.zip!deep.txt", "deep")


def test_a_damaged_archive_and_a_binary_say_what_they_are() -> None:
    [broken] = read_one("broken.zip", b"PK\x03\x04 not a zip at all")
    assert broken.name == "broken.zip" and "is damaged or not a zip archive" in (
        broken.reason or ""
    )
    [elf] = read_one("tool", EXECUTABLE)
    assert "which docflow does not read" in (elf.reason or "") and "ELF" in (elf.reason or "")


def test_a_folder_ledger_accounts_for_every_file_and_member(tmp_path: Path) -> None:
    """Each file and archive member is one row, accepted or rejected: none lost, none twice."""
    files = {
        "LICENSE": LICENSE,
        "notes.txt.gz": gzip.compress(b"Notes of the spring meeting."),
        "bundle.zip": zip_bytes(
            {
                "a.pdf": make.pdf_bytes("Member PDF sentence."),
                "b.docx": make.docx_bytes("Member DOCX sentence."),
                "inner.zip": zip_bytes({"c.txt": b"Nested member."}),
                "zeros.txt": bytes(5_000_000),
            }
        ),
        "site.tar.gz": tar_gz_bytes({"d.txt": b"Tar member.", "e.bin": bytes(range(256)) * 8}),
        "tool": EXECUTABLE,
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    corpus = load_corpus(str(tmp_path))
    ledger = {d.doc_id: "accepted" for d in corpus.documents}
    ledger.update({r.doc_id or "": "rejected" for r in corpus.rejected})
    assert ledger == {
        "LICENSE": "accepted",
        "bundle.zip!a.pdf": "accepted",
        "bundle.zip!b.docx": "accepted",
        "bundle.zip!inner.zip!c.txt": "accepted",
        "bundle.zip!zeros.txt": "rejected",
        "notes.txt.gz": "accepted",
        "site.tar.gz!d.txt": "accepted",
        "site.tar.gz!e.bin": "rejected",
        "tool": "rejected",
    }
    assert corpus.size == len(ledger)  # no row twice
    rows = sorted([d.row or 0 for d in corpus.documents] + [r.row or 0 for r in corpus.rejected])
    assert rows == list(range(1, corpus.size + 1))
    # Every document has the same columns, so the results table has one schema.
    assert len({tuple(sorted(d.metadata)) for d in corpus.documents}) == 1


def test_an_s3_prefix_with_archives_and_suffixless_text_reads_like_a_folder(
    profile: Profile, tmp_path: Path
) -> None:
    from tasks.aws.clients import aws_client

    files = {
        "LICENSE": LICENSE,
        "notes.txt.gz": gzip.compress(b"Notes of the spring meeting."),
        "bundle.zip": zip_bytes({"a.md": b"# A\n\nMember text.", "b/c.txt": b"Deeper member."}),
    }
    s3 = aws_client("s3", profile)
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        s3.put_object(Bucket=profile.bucket, Key=f"real/{name}", Body=data)
    remote = load_corpus(f"s3://{profile.bucket}/real/", profile=profile)
    local = load_corpus(str(tmp_path))
    assert [d.doc_id for d in remote.documents] == [
        "LICENSE",
        "bundle.zip!a.md",
        "bundle.zip!b/c.txt",
        "notes.txt.gz",
    ]
    assert remote.rejected == [] and remote.fingerprint == local.fingerprint
