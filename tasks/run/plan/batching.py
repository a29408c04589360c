"""Group documents into JSON Lines invocation payloads; content-derived batch ids and run keys."""

from __future__ import annotations

import hashlib
import json

from pydantic import BaseModel, ConfigDict

from tasks.corpus.documents import Document, Rejected
from tasks.params.groups import DEFAULT_BATCH_SIZE, DEFAULT_MAX_BATCH_BYTES, LongDocumentOptions
from tasks.run.plan.layout import BATCH_ID_CHARS, digest_key
from tasks.run.request.prompts import GenerationParameters, PromptTemplate, TemplateError

_LINE_BREAKS = {0x85: "\\u0085", 0x2028: "\\u2028", 0x2029: "\\u2029"}


class BatchPayload(BaseModel):
    """One invocation payload: JSON Lines per docs/contracts.md, and the documents it carries."""

    model_config = ConfigDict(frozen=True)

    batch_id: str
    doc_ids: list[str]
    body: bytes

    def lines(self) -> list[bytes]:
        """The payload's lines, one per document, each ending in a newline."""
        return self.body.splitlines(keepends=True)


def payload_line(doc: Document, template: PromptTemplate, params: GenerationParameters) -> bytes:
    """The wire line for one document: {"id", "prompt" or "messages", "parameters"} and a newline."""
    line = {"id": doc.doc_id, **template.request(doc), "parameters": params.to_wire()}
    text = json.dumps(line, ensure_ascii=False, separators=(",", ":"))
    # Escape the code points str.splitlines() breaks on, so any reader sees one line per document.
    text = text.translate(_LINE_BREAKS)
    return (text + "\n").encode("utf-8")


def batch_id_for(body: bytes) -> str:
    """The content-derived batch id: 16 hex chars of sha256 over the payload."""
    return hashlib.sha256(body).hexdigest()[:BATCH_ID_CHARS]


def _payload(doc_ids: list[str], lines: list[bytes]) -> BatchPayload:
    body = b"".join(lines)
    return BatchPayload(batch_id=batch_id_for(body), doc_ids=list(doc_ids), body=body)


def make_batches(
    docs: list[Document],
    template: PromptTemplate,
    params: GenerationParameters,
    *,
    max_docs: int = DEFAULT_BATCH_SIZE,
    max_bytes: int = DEFAULT_MAX_BATCH_BYTES,
) -> tuple[list[BatchPayload], list[Rejected]]:
    """Pack documents in input order into payloads of at most max_docs documents and max_bytes bytes."""
    if max_docs < 1:
        raise ValueError(f"max_docs must be at least 1, got {max_docs}")
    if max_bytes < 1:
        raise ValueError(f"max_bytes must be at least 1, got {max_bytes}")
    batches: list[BatchPayload] = []
    rejected: list[Rejected] = []
    template_errors: list[TemplateError] = []
    seen: set[str] = set()
    ids: list[str] = []
    lines: list[bytes] = []
    size = 0
    for doc in docs:
        if doc.doc_id in seen:
            rejected.append(
                Rejected(doc_id=doc.doc_id, row=doc.row, reason=f"duplicate id {doc.doc_id!r}")
            )
            continue
        try:
            line = payload_line(doc, template, params)
        except TemplateError as exc:
            template_errors.append(exc)
            rejected.append(Rejected(doc_id=doc.doc_id, row=doc.row, reason=str(exc)))
            continue
        if len(line) > max_bytes:
            rejected.append(
                Rejected(
                    doc_id=doc.doc_id,
                    row=doc.row,
                    reason=(
                        f"payload line is {len(line)} bytes, over the payload limit of "
                        f"{max_bytes} bytes; raise max_batch_bytes or shorten it"
                    ),
                )
            )
            continue
        seen.add(doc.doc_id)
        if ids and (len(ids) >= max_docs or size + len(line) > max_bytes):
            batches.append(_payload(ids, lines))
            ids, lines, size = [], [], 0
        ids.append(doc.doc_id)
        lines.append(line)
        size += len(line)
    if ids:
        batches.append(_payload(ids, lines))
    if docs and len(template_errors) == len(docs):
        # Every document failed to render: the template is wrong, not the documents.
        raise template_errors[0]
    return batches, rejected


def split_batch(batch: BatchPayload) -> tuple[BatchPayload, BatchPayload]:
    """Halve a batch (to isolate a failing document); each half gets its own content-derived id."""
    lines = batch.lines()
    if len(lines) != len(batch.doc_ids):
        raise ValueError(
            f"batch {batch.batch_id} has {len(lines)} lines for {len(batch.doc_ids)} documents"
        )
    if len(lines) < 2:
        raise ValueError(f"batch {batch.batch_id} has one document and cannot be split")
    mid = len(lines) // 2
    return _payload(batch.doc_ids[:mid], lines[:mid]), _payload(batch.doc_ids[mid:], lines[mid:])


def compute_run_key(
    corpus_fingerprint: str,
    endpoint: str,
    model_artifact: str,
    template: PromptTemplate,
    params: GenerationParameters,
    extra: dict[str, object] | None = None,
) -> str:
    """The deterministic run key: 12 hex chars over everything that decides the outputs.

    ``extra``: further parameters that change the results (long_documents and its chunking);
    left out when empty, so that runs with the defaults keep their keys.
    """
    parts: list[object] = [
        corpus_fingerprint,
        endpoint,
        model_artifact,
        template.fingerprint(),
        params.fingerprint(),
    ]
    if extra:
        parts.append(extra)
    return digest_key(parts)


def long_key(long: LongDocumentOptions) -> dict[str, object] | None:
    """What the long-document parameters add to the run key (nothing for the default, reject)."""
    if long.mode == "reject":
        return None
    extra: dict[str, object] = {"long_documents": long.mode}
    if long.mode == "map_reduce":
        extra["chunk_overlap_tokens"] = long.chunk_overlap_tokens
    return extra
