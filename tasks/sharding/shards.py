"""Splitting a corpus into shards: which shard a document belongs to, and one shard's documents.

A document's shard is a stable hash of its id, so the same corpus always splits the same way
(a resumed sharded run makes the same shards, whatever order the files are read in), and each
shard is a subset of the corpus that a child flow run processes as a run of its own.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_SHARDS = 999


class Shard(BaseModel):
    """Shard ``index`` (0-based) of ``count``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    index: int = Field(ge=0)
    count: int = Field(ge=1, le=MAX_SHARDS)

    @model_validator(mode="after")
    def _index_in_range(self) -> Shard:
        if self.index >= self.count:
            raise ValueError(f"shard index {self.index} must be below the shard count {self.count}")
        return self

    @property
    def label(self) -> str:
        """``3/8`` for people (1-based)."""
        return f"{self.index + 1}/{self.count}"


def shard_of(key: str, count: int) -> int:
    """The shard (0..count-1) of a document id: the first 8 bytes of its sha256, modulo count."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count


def shard_count(shards: int, shard_size: int | None, rows: int) -> int:
    """How many shards: ``shards``, or enough for ``shard_size`` rows each when that is more."""
    if shard_size is not None and shard_size < 1:
        raise ValueError(f"shard_size must be at least 1 document, got {shard_size}")
    by_size = -(-rows // shard_size) if shard_size else 1
    count = max(shards, by_size)
    if count > MAX_SHARDS:
        raise ValueError(
            f"{rows} documents in shards of {shard_size} make {count} shards, over the "
            f"{MAX_SHARDS} allowed; raise shard_size"
        )
    return count


def keeps(shard: Shard) -> Callable[[str], bool]:
    """The test ``load_corpus(keep=…)`` applies to each row's id (``row N`` without one)."""
    return lambda key: shard_of(key, shard.count) == shard.index


def check_shard(shard: Shard | None, run_key: str | None) -> None:
    """A run given a shard is a child of a sharded run, which always passes the shard's run key
    (``<run key>.sNNNofMMM``); anything else is a usage error."""
    if shard is not None and not run_key:
        raise ValueError(
            "shard is set by a sharded run on its children, together with their run_key; "
            "to split a run yourself pass shards=N instead"
        )
