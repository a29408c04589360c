"""Test oracles: the whole-corpus versions of what docflow does a piece at a time, to compare with."""

from __future__ import annotations

import io

from tasks.corpus.documents import Corpus, Rejected, corpus_fingerprint
from tasks.corpus.tables import Row, iter_table
from tasks.sharding.shards import Shard, keeps


def parse_table(uri: str, suffix: str, data: bytes) -> list[Row]:
    """Rows of a JSONL, CSV or Parquet file held in memory (one chunk: the whole file)."""
    return list(iter_table(uri, suffix, io.BytesIO(data)))


def _rejected_key(rejected: Rejected) -> str:
    """A rejected row is sharded by its id, or by its row number when it has no readable id."""
    return rejected.doc_id if rejected.doc_id is not None else f"row {rejected.row}"


def select_shard(corpus: Corpus, shard: Shard) -> Corpus:
    """The documents and rejected rows of a loaded ``corpus`` that fall in ``shard`` (input order
    kept): what ``load_corpus(keep=keeps(shard))`` must load without holding the rest.

    Every input row lands in exactly one shard; the files ignored beside the data are reported
    by the first shard only, so a sharded run names each of them once.
    """
    keep = keeps(shard)
    documents = [d for d in corpus.documents if keep(d.doc_id)]
    rejected = [r for r in corpus.rejected if keep(_rejected_key(r))]
    return Corpus(
        source=corpus.source,
        fingerprint=corpus_fingerprint(documents),
        documents=documents,
        rejected=rejected,
        ignored=corpus.ignored if shard.index == 0 else [],
    )
