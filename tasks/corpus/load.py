"""The corpus as a flow's tasks: load it (or one shard of it), or scan it without loading."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.corpus.documents import ColumnMapping, Corpus, load_corpus
from tasks.corpus.sources import SourceScan, scan_source
from tasks.params.groups import DEFAULT_MAX_DOC_BYTES, ReadOptions
from tasks.settings import Profile
from tasks.sharding.shards import Shard, keeps


@task(name="load-corpus", cache_policy=NO_CACHE)
def load_documents(
    uri: str,
    mapping: ColumnMapping,
    profile: Profile,
    max_doc_bytes: int = DEFAULT_MAX_DOC_BYTES,
    shard: Shard | None = None,
    options: ReadOptions | None = None,
) -> Corpus:
    """Read and validate the corpus (only ``shard``'s rows when given, streamed past the rest);
    bad rows become rejected records, never silent drops."""
    corpus = load_corpus(
        uri,
        mapping,
        profile=profile,
        max_doc_bytes=max_doc_bytes,
        keep=keeps(shard) if shard else None,
        report_ignored=shard is None or shard.index == 0,
        options=options,
    )
    logger = get_run_logger()
    logger.info(
        "corpus %s%s: %d documents, %d rejected",
        uri,
        f" (shard {shard.label})" if shard else "",
        len(corpus.documents),
        len(corpus.rejected),
    )
    for reason in corpus.ignored:
        logger.warning("corpus %s: %s", uri, reason)
    for pattern, count in corpus.excluded.items():
        logger.info("corpus %s: %d files left out by %s", uri, count, pattern)
    return corpus


@task(name="scan-corpus", cache_policy=NO_CACHE)
def scan_corpus(uri: str, profile: Profile, reading: ReadOptions | None = None) -> SourceScan:
    """One streaming pass over the corpus files: fingerprint and rows, no document held (the
    parent of a sharded run keys on it and sizes its shards by it)."""
    reading = reading or ReadOptions()
    scan = scan_source(uri, profile, reading.include, reading.exclude)
    get_run_logger().info(
        "corpus %s: %d files, %d bytes, about %d rows", uri, scan.files, scan.bytes, scan.rows
    )
    return scan
