"""Joining a run's input rows to its batch outputs: one result row per input row, in row order,
a chunk of rows at a time (``aggregate_run`` writes the chunks' tables)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tasks.corpus.documents import Corpus, Document, Rejected
from tasks.run.long.combine import combine_chunks
from tasks.run.long.split import LongDocuments
from tasks.run.plan.manifest import BatchRecord, BatchStatus, RunManifest
from tasks.run.request.columns import prefixed
from tasks.run.request.typed_answers import AnswerError, Answers
from tasks.run.results.outputs import BatchOutput, OutputCache


def outcome_row(
    doc_id: str,
    record: BatchRecord,
    output: BatchOutput | None,
    canceled: str | None = None,
    answers: Answers | None = None,
) -> dict[str, Any]:
    """The result columns of one batched document (``canceled``: why the run was cancelled).

    With ``answers``, a completed document's text is parsed into the typed answer columns; one
    whose text is not a valid answer is failed with the reason, never stored half-parsed.
    """
    row: dict[str, Any] = {"doc_id": doc_id, "batch_id": record.batch_id}
    if record.status is BatchStatus.FAILED:
        return row | {"status": "failed", "reason": record.reason or "batch failed"}
    if record.status is not BatchStatus.COMPLETED and canceled is not None:
        reason = (
            f"{canceled} while batch {record.batch_id} was {record.status.value}; "
            "resume the run with the same run_key to run it"
        )
        return row | {"status": "canceled", "reason": reason}
    if record.status is not BatchStatus.COMPLETED:
        reason = f"batch {record.batch_id} was still {record.status.value} when the run ended"
        return row | {"status": "failed", "reason": reason}
    assert output is not None
    if output.error:
        return row | {"status": "failed", "reason": output.error}
    line = output.lines.get(doc_id)
    if line is None:
        extra = f" ({output.unparsed} lines could not be parsed)" if output.unparsed else ""
        reason = f"no result line for this document in {record.output_uri}{extra}"
        return row | {"status": "failed", "reason": reason}
    if line.get("error") is not None:
        return row | {"status": "failed", "reason": str(line["error"])}
    typed: dict[str, Any] = {}
    if answers is not None:
        try:
            typed = answers.parse(line.get("text"))
        except AnswerError as exc:
            return row | {"status": "failed", "reason": f"invalid answer: {exc}"}
    return (
        typed
        | row
        | {
            "status": "completed",
            "text": line.get("text"),
            "prompt_tokens": line.get("prompt_tokens"),
            "completion_tokens": line.get("completion_tokens"),
            "finish_reason": line.get("finish_reason"),
        }
    )


def _row_order(corpus: Corpus) -> np.ndarray:
    """Positions in documents + rejected, stably sorted by input row (rows without one last)."""
    last = np.iinfo(np.int64).max
    rows = [d.row for d in corpus.documents] + [r.row for r in corpus.rejected]
    keys = np.fromiter((last if r is None else r for r in rows), dtype=np.int64, count=len(rows))
    return np.argsort(keys, kind="stable")


def input_chunks(corpus: Corpus, chunk_rows: int) -> Iterator[list[Document | Rejected]]:
    """The input rows in row order, ``chunk_rows`` at a time (one empty chunk for no rows)."""
    order = _row_order(corpus)
    documents, rejected = corpus.documents, corpus.rejected
    for start in range(0, max(len(order), 1), chunk_rows):
        yield [
            documents[p] if p < len(documents) else rejected[p - len(documents)]
            for p in order[start : start + chunk_rows].tolist()
        ]


def leaf_batches(manifest: RunManifest) -> dict[str, BatchRecord]:
    """The leaf batch of each batched document: a non-split batch, a completed one preferred."""
    leaf_of: dict[str, BatchRecord] = {}
    for record in manifest.batches.values():
        if record.status is BatchStatus.SPLIT:
            continue
        for doc_id in record.doc_ids:
            known = leaf_of.get(doc_id)
            if known is None or (
                record.status is BatchStatus.COMPLETED and known.status is not BatchStatus.COMPLETED
            ):
                leaf_of[doc_id] = record
    return leaf_of


def late_rejects(manifest: RunManifest, corpus: Corpus) -> dict[str, Rejected]:
    """Documents the run rejected after loading (too big for a payload), by id."""
    # manifest.rejected may repeat the corpus's own rejections; those rows are already counted.
    early = {(r.doc_id, r.row, r.reason) for r in corpus.rejected}
    return {
        r.doc_id: r
        for r in manifest.rejected
        if r.doc_id is not None and (r.doc_id, r.row, r.reason) not in early
    }


@dataclass
class RowJoiner:
    """Turns a chunk of input rows into result rows (one dict per row, in the chunk's order).

    ``leaves`` maps each batched document to its leaf batch (found once for the whole run);
    ``outputs`` reads each chunk's batch outputs.
    """

    manifest: RunManifest
    late: dict[str, Rejected]
    leaves: dict[str, BatchRecord]
    outputs: OutputCache
    plan: LongDocuments | None = None
    kind: str = "summarize"
    reduce_leaves: dict[str, BatchRecord] = field(default_factory=dict)
    answers: Answers | None = None

    def rows(self, chunk: list[Document | Rejected]) -> list[dict[str, Any]]:
        """Result rows of ``chunk``; reads the outputs of its documents' completed batches."""
        pieces = self.plan.chunks if self.plan else {}
        wanted = [
            i for e in chunk if isinstance(e, Document) for i in pieces.get(e.doc_id, [e.doc_id])
        ]
        leaves = {i: self.leaves.get(i) for i in wanted}
        reduce = {
            e.doc_id: self.reduce_leaves.get(e.doc_id)
            for e in chunk
            if isinstance(e, Document) and e.doc_id in pieces
        }
        completed = {
            r.batch_id: r
            for r in [*leaves.values(), *reduce.values()]
            if r is not None and r.status is BatchStatus.COMPLETED
        }
        outputs = self.outputs.for_chunk(list(completed.values()))
        return [
            self._long(e, leaves, reduce.get(e.doc_id), outputs)
            if isinstance(e, Document) and e.doc_id in pieces
            else self._document(e, leaves[e.doc_id], outputs)
            if isinstance(e, Document)
            else {"row": e.row, "doc_id": e.doc_id, "status": "rejected", "reason": e.reason}
            for e in chunk
        ]

    def _long(
        self,
        doc: Document,
        leaves: dict[str, BatchRecord | None],
        reduce_leaf: BatchRecord | None,
        outputs: dict[str, BatchOutput],
    ) -> dict[str, Any]:
        """A map_reduce document: its chunks' outcomes combined into one row."""
        assert self.plan is not None
        canceled = self.manifest.canceled
        chunk_rows = []
        for piece in self.plan.chunks[doc.doc_id]:
            leaf = leaves.get(piece)
            chunk_rows.append(
                {
                    "status": "failed",
                    "reason": f"chunk is in no batch of run {self.manifest.run_key}",
                }
                if leaf is None
                else outcome_row(piece, leaf, outputs.get(leaf.batch_id), canceled)
            )
        reduce_row = None
        if reduce_leaf is not None:
            reduce_row = outcome_row(
                doc.doc_id, reduce_leaf, outputs.get(reduce_leaf.batch_id), canceled
            )
        combined = combine_chunks(self.kind, chunk_rows, reduce_row, self.answers)
        typed = {name for name, _ in self.answers.columns()} if self.answers else set()
        return {"row": doc.row, **prefixed(doc.metadata, typed), "doc_id": doc.doc_id, **combined}

    def _document(
        self, doc: Document, leaf: BatchRecord | None, outputs: dict[str, BatchOutput]
    ) -> dict[str, Any]:
        cut = self.plan.tokens_cut.get(doc.doc_id) if self.plan else None
        if cut is not None:
            return {**self._row(doc, leaf, outputs), "tokens_cut": cut}
        return self._row(doc, leaf, outputs)

    def _row(
        self, doc: Document, leaf: BatchRecord | None, outputs: dict[str, BatchOutput]
    ) -> dict[str, Any]:
        if leaf is not None:
            outcome = outcome_row(
                doc.doc_id,
                leaf,
                outputs.get(leaf.batch_id),
                self.manifest.canceled,
                self.answers,
            )
        elif doc.doc_id in self.late:
            reason = self.late[doc.doc_id].reason
            outcome = {"doc_id": doc.doc_id, "status": "rejected", "reason": reason}
        else:
            reason = f"document is in no batch of run {self.manifest.run_key}"
            outcome = {"doc_id": doc.doc_id, "status": "failed", "reason": reason}
        typed = {name for name, _ in self.answers.columns()} if self.answers else set()
        return {"row": doc.row, **prefixed(doc.metadata, typed), **outcome}
