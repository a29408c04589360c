"""include / exclude patterns: the files left out are counted per pattern, never dropped in
silence."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.corpus.documents import load_corpus
from tasks.corpus.patterns import NOT_INCLUDED, matches, select
from tasks.corpus.sources import scan_source
from tasks.corpus.tables import CorpusError
from tasks.params.groups import ReadOptions


@pytest.mark.parametrize(
    ("pattern", "name", "hit"),
    [
        ("*.png", "logo.png", True),
        ("*.png", "img/deep/logo.png", True),  # no '/': the name in any folder
        ("build/**", "build/x/y.txt", True),
        ("build/**", "src/build/y.txt", False),
        ("build/", "build/y.txt", True),
        ("docs/*.md", "docs/a.md", True),
        ("docs/*.md", "docs/sub/a.md", False),
        ("**/test_*.py", "tests/unit/test_a.py", True),
        ("[!a]*.txt", "b.txt", True),
        ("[!a]*.txt", "a.txt", False),
    ],
)
def test_patterns_match_like_gitignore(pattern: str, name: str, hit: bool) -> None:
    assert matches(pattern, name) is hit


def test_excluded_files_are_counted_per_pattern(tmp_path: Path) -> None:
    files = ["a.txt", "logo.png", "img/b.png", "build/out.txt", "build/x/y.txt", "docs/c.md"]
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(f"text of {name}")
    options = ReadOptions(exclude=["*.png", "build/**"])
    corpus = load_corpus(str(tmp_path), options=options)
    assert [d.doc_id for d in corpus.documents] == ["a.txt", "docs/c.md"]
    assert corpus.rejected == []
    assert corpus.excluded == {"*.png": 2, "build/**": 2}
    assert corpus.size + sum(corpus.excluded.values()) == len(files)  # every file accounted for
    only_docs = load_corpus(str(tmp_path), options=ReadOptions(include=["docs/**"]))
    assert [d.doc_id for d in only_docs.documents] == ["docs/c.md"]
    assert only_docs.excluded == {NOT_INCLUDED: 5}
    # The parent of a sharded run counts the same files.
    assert scan_source(str(tmp_path), None, None, ["*.png", "build/**"]).files == 2
    with pytest.raises(CorpusError, match="leave no file"):
        load_corpus(str(tmp_path), options=ReadOptions(include=["*.pdf"]))


def test_select_keeps_order_and_first_matching_pattern_counts() -> None:
    kept, counts = select(["b.log", "a.txt", "c.log"], None, ["*.log", "b.*"])
    assert kept == ["a.txt"] and counts == {"*.log": 2}


def test_a_sharded_run_summary_keeps_the_excluded_counts() -> None:
    from tasks.sharding.children import ShardRun
    from tasks.sharding.merge import PROCESS_DOCUMENTS, combine_summaries

    shards = [
        ShardRun(
            index=0, count=2, run_key="k-0", summary={"documents": 3, "excluded": {"*.png": 2}}
        ),
        ShardRun(index=1, count=2, run_key="k-1", summary={"documents": 4}),
    ]
    combined = combine_summaries("k", shards, PROCESS_DOCUMENTS)
    assert combined["documents"] == 7 and combined["excluded"] == {"*.png": 2}
