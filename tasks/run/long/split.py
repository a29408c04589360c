"""Documents longer than the model's context: count every prompt, then reject, truncate or split.

``plan_long_documents`` counts each document's prompt with the model's tokenizer
(``tasks.run.request.tokens``) against the context minus the generation budget (``max_new_tokens``) and
returns the corpus to batch: documents that fit unchanged; a longer one rejected (``reject``, with
a reason naming ``long_documents`` and its other values), cut to its first tokens that fit
(``truncate``, the tokens cut recorded), or split by tokens with overlap into chunks that are
documents of their own, ``<doc id>#<i>/<n>`` (``map_reduce``). Chunks are batched, recorded in the
run's manifest and resumed like any document; ``tasks.run.long.reduce`` combines their answers.
"""

from __future__ import annotations

from typing import get_args

from pydantic import BaseModel, Field

from tasks.corpus.documents import Corpus, Document, Rejected
from tasks.params.groups import LongMode
from tasks.run.request.prompts import PromptTemplate, TemplateError
from tasks.run.request.tokens import TokenCounter

LONG_MODES: tuple[str, ...] = get_args(LongMode)
MAP_REDUCE_KINDS = ("summarize", "extract")
CHUNK_MARK = "#"


class LongDocumentsError(ValueError):
    """The long-document parameters cannot work together; the message names the one to change."""


def chunk_id(doc_id: str, index: int, count: int) -> str:
    """The id of chunk ``index`` (0-based) of ``count`` of a document: ``<doc id>#<i>/<n>``."""
    return f"{doc_id}{CHUNK_MARK}{index + 1}/{count}"


class LongDocuments(BaseModel):
    """What the run did to documents over the context (the aggregation and the reduce need it)."""

    mode: LongMode = "reject"
    context_length: int | None = None
    budget: int | None = Field(
        None, description="Prompt tokens a document may have: context - max_new_tokens."
    )
    tokens_cut: dict[str, int] = Field(
        default_factory=dict, description="truncate: doc id → tokens cut."
    )
    chunks: dict[str, list[str]] = Field(
        default_factory=dict, description="map_reduce: doc id → chunk ids."
    )
    prompt_tokens: dict[str, int] = Field(
        default_factory=dict, description="Counted prompt tokens of every document (or chunk) sent."
    )
    rejected: int = 0

    @property
    def counted(self) -> bool:
        """Whether prompts were counted (the model has a tokenizer)."""
        return self.context_length is not None


def check_long_documents(
    mode: str, template: PromptTemplate, overlap: int, counter: TokenCounter | None
) -> None:
    """Refuse parameter combinations that cannot work, naming the parameter to change."""
    if mode not in LONG_MODES:
        raise LongDocumentsError(
            f"long_documents={mode!r} is unknown; use one of {list(LONG_MODES)}"
        )
    if mode == "map_reduce" and template.kind not in MAP_REDUCE_KINDS:
        raise LongDocumentsError(
            f"long_documents='map_reduce' combines chunk answers for template summarize or extract, "
            f"not {template.kind!r}; use long_documents='truncate' or 'reject'"
        )
    if overlap < 0:
        raise LongDocumentsError(f"chunk_overlap_tokens must be >= 0, got {overlap}")
    if mode != "reject" and counter is None:
        raise LongDocumentsError(
            f"long_documents={mode!r} needs the model's tokenizer to cut documents by tokens, and "
            "the endpoint's model artifact has none; package a model with its tokenizer or use "
            "long_documents='reject'"
        )


def plan_long_documents(
    corpus: Corpus,
    counter: TokenCounter,
    template: PromptTemplate,
    max_new_tokens: int,
    mode: LongMode,
    overlap: int = 64,
) -> tuple[Corpus, LongDocuments]:
    """Count every document's prompt; the corpus to batch and what was done to the long ones."""
    budget = counter.context_length - max_new_tokens
    plan = LongDocuments(mode=mode, context_length=counter.context_length, budget=budget)
    if budget < 1:
        raise LongDocumentsError(
            f"max_new_tokens={max_new_tokens} leaves no room for a prompt in the model's context "
            f"of {counter.context_length} tokens; lower max_new_tokens"
        )
    documents: list[Document] = []
    rejected: list[Rejected] = list(corpus.rejected)
    for doc in corpus.documents:
        try:
            count = _count(counter, template, doc)
        except TemplateError:
            documents.append(doc)  # batching rejects it with the template's reason
            continue
        if count <= budget:
            plan.prompt_tokens[doc.doc_id] = count
            documents.append(doc)
            continue
        if mode == "reject" or template.from_messages:
            reason = too_long(count, max_new_tokens, counter.context_length)
            if template.from_messages:
                reason = (
                    f"prompt is {count} tokens + max_new_tokens {max_new_tokens} > the model's "
                    f"context of {counter.context_length} tokens; long_documents={mode!r} cuts a "
                    "document's text, not a messages_column conversation: shorten the "
                    "conversation or lower max_new_tokens"
                )
            rejected.append(Rejected(doc_id=doc.doc_id, row=doc.row, reason=reason))
            plan.rejected += 1
            continue
        pieces = _cut(doc, counter, template, budget, overlap, whole=mode == "map_reduce")
        if pieces is None:
            reason = (
                f"the prompt template alone leaves no room for the document's text in the budget "
                f"of {budget} tokens (context {counter.context_length} - max_new_tokens "
                f"{max_new_tokens}); lower max_new_tokens or shorten the template"
            )
            rejected.append(Rejected(doc_id=doc.doc_id, row=doc.row, reason=reason))
            plan.rejected += 1
            continue
        texts, cut = pieces
        if mode == "truncate":
            kept = doc.model_copy(update={"text": texts[0]})
            plan.tokens_cut[doc.doc_id] = cut
            plan.prompt_tokens[doc.doc_id] = _count(counter, template, kept)
            documents.append(kept)
            continue
        ids = [chunk_id(doc.doc_id, i, len(texts)) for i in range(len(texts))]
        plan.chunks[doc.doc_id] = ids
        for piece_id, text in zip(ids, texts, strict=True):
            chunk = doc.model_copy(update={"doc_id": piece_id, "text": text})
            plan.prompt_tokens[piece_id] = _count(counter, template, chunk)
            documents.append(chunk)
    planned = corpus.model_copy(update={"documents": documents, "rejected": rejected})
    return planned, plan


def _count(counter: TokenCounter, template: PromptTemplate, doc: Document) -> int:
    """The handler's prompt tokens for what ``doc`` sends (system prompt and messages included)."""
    return counter.request_tokens(template.request(doc))


def too_long(count: int, max_new_tokens: int, context: int) -> str:
    """The rejection reason of a document over the context, naming every way out."""
    return (
        f"prompt is {count} tokens + max_new_tokens {max_new_tokens} > the model's context of "
        f"{context} tokens; set long_documents='truncate' (keep the first "
        f"{max(context - max_new_tokens, 0)} tokens) or long_documents='map_reduce' (split it, run "
        "each chunk and combine the answers) instead of 'reject', or lower max_new_tokens"
    )


def _cut(
    doc: Document,
    counter: TokenCounter,
    template: PromptTemplate,
    budget: int,
    overlap: int,
    *,
    whole: bool,
) -> tuple[list[str], int] | None:
    """The document's text cut into prompts that fit ``budget``: the first piece only (and the
    tokens cut), or (``whole``) every piece, consecutive pieces sharing ``overlap`` tokens."""
    ids = counter.text_ids(doc.text)
    # The template's own tokens (an empty text could make an empty prompt, which is refused).
    probe = "x"
    overhead = _count(counter, template, doc.model_copy(update={"text": probe}))
    overhead -= len(counter.text_ids(probe))
    size = budget - overhead
    if size < 1:
        return None
    if whole and overlap >= size:
        raise LongDocumentsError(
            f"chunk_overlap_tokens={overlap} is not smaller than a chunk ({size} tokens of text fit "
            "the context beside the prompt and max_new_tokens); lower chunk_overlap_tokens"
        )
    texts: list[str] = []
    start = 0
    while start < len(ids):
        end = _fit(doc, counter, template, budget, ids, start, min(start + size, len(ids)))
        if end is None:
            return None
        texts.append(counter.decode(ids[start:end]))
        if not whole:
            return texts, len(ids) - end
        if end >= len(ids):
            break
        start = max(end - overlap, start + 1)
    return texts, 0


def _fit(
    doc: Document,
    counter: TokenCounter,
    template: PromptTemplate,
    budget: int,
    ids: list[int],
    start: int,
    end: int,
) -> int | None:
    """The largest end <= ``end`` whose piece's prompt fits (re-tokenising at the seams may differ)."""
    while end > start:
        text = counter.decode(ids[start:end])
        count = _count(counter, template, doc.model_copy(update={"text": text}))
        if count <= budget:
            return end
        end -= max(1, count - budget)
    return None
