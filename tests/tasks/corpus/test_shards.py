"""Sharded runs over archives: shards split by member, each member in exactly one shard, and a
shard extracts only its own documents."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from tasks.corpus.documents import load_corpus
from tasks.corpus.read import OTHER_SHARD, read_file
from tasks.corpus.sources import scan_source
from tasks.sharding.shards import Shard, keeps


def test_shards_split_an_archive_by_member(tmp_path: Path) -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for i in range(12):
            archive.writestr(f"m{i:02d}.txt", f"member {i}")
    (tmp_path / "bundle.zip").write_bytes(out.getvalue())
    (tmp_path / "loose.txt").write_text("a loose file")
    whole = load_corpus(str(tmp_path))
    assert whole.size == 13
    seen: list[str] = []
    for index in range(3):
        part = load_corpus(str(tmp_path), keep=keeps(Shard(index=index, count=3)))
        seen += [d.doc_id for d in part.documents] + [r.doc_id or "" for r in part.rejected]
        # Rows keep their numbers across shards: the results table's key stays unique.
        rows = {d.doc_id: d.row for d in whole.documents}
        assert all(rows[d.doc_id] == d.row for d in part.documents)
    assert sorted(seen) == sorted(d.doc_id for d in whole.documents)  # each in one shard
    assert len({s for s in seen if s.startswith("bundle.zip!")}) == 12
    assert scan_source(str(tmp_path)).rows == 13  # the parent sizes shards by member


def test_a_shard_does_not_extract_other_shards_documents() -> None:
    calls: list[str] = []

    def read(name: str) -> bytes:
        calls.append(name)
        return b"text"

    [doc] = list(read_file("a.pdf", read, keep=lambda _id: False))
    assert doc.reason == OTHER_SHARD and calls == []  # not even read


def test_an_archive_in_a_folder_is_streamed_never_held_whole(tmp_path: Path) -> None:
    """A 16 MB zip of 16 one-MB members loads with far less than 16 MB allocated at once."""
    import os
    import tracemalloc

    with zipfile.ZipFile(tmp_path / "big.zip", "w", zipfile.ZIP_STORED) as archive:
        for i in range(16):
            archive.writestr(f"part-{i:02d}.txt", os.urandom(500_000).hex())
    assert (tmp_path / "big.zip").stat().st_size > 16_000_000
    tracemalloc.start()
    try:
        corpus = load_corpus(str(tmp_path), max_doc_bytes=2_000_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [d.doc_id for d in corpus.documents] == [f"big.zip!part-{i:02d}.txt" for i in range(16)]
    # Documents are kept (16 MB of text) by the loader; the archive itself is never read whole:
    # the peak stays within the kept text plus a few members' worth.
    kept = sum(len(d.text) for d in corpus.documents)
    assert peak < kept + 6_000_000, (peak, kept)
