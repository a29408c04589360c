"""The reduce step of ``long_documents='map_reduce'`` for summarize: one prompt per long document
over its chunks' summaries, run as a run of its own (``layout.reduce_run_key``: named by the run key and its own corpus) so that it is
batched, recorded in a manifest and resumed like any run.

Its corpus is rebuilt from the map step's outputs, which are final once the map step is done: a
resumed run builds the same documents, the same batches and finds the same manifest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tasks.corpus.documents import Corpus, Document, corpus_fingerprint
from tasks.run.long.combine import REDUCE_SUMMARIZE
from tasks.run.long.split import LongDocuments
from tasks.run.plan.manifest import BatchStatus, RunManifest
from tasks.run.request.prompts import PromptTemplate
from tasks.run.results.join import leaf_batches
from tasks.run.results.outputs import OutputCache
from tasks.settings import Profile

if TYPE_CHECKING:
    from tasks.run.fanout.spool import OutputSpool


def reduce_template() -> PromptTemplate:
    """The reduce prompt for summarize: the summaries of the parts, in order."""
    return PromptTemplate(kind="custom", template=REDUCE_SUMMARIZE)


def reduce_corpus(
    manifest: RunManifest,
    plan: LongDocuments,
    corpus: Corpus,
    profile: Profile,
    spool: OutputSpool | None = None,
) -> Corpus:
    """One reduce document per split document whose chunks all completed (same id, row, metadata):
    its text is the chunks' answers, numbered, in order. The others get their chunk's reason at
    aggregation."""
    leaves = leaf_batches(manifest)
    cache = OutputCache(profile, spool)
    documents: list[Document] = []
    for doc in corpus.documents:
        pieces = plan.chunks.get(doc.doc_id)
        if not pieces:
            continue
        records = [leaves.get(p) for p in pieces]
        if any(r is None or r.status is not BatchStatus.COMPLETED for r in records):
            continue
        outputs = cache.for_chunk([r for r in records if r is not None])
        answers: list[str] = []
        for piece, record in zip(pieces, records, strict=True):
            assert record is not None
            line = outputs[record.batch_id].lines.get(piece)
            if (
                line is None
                or line.get("error") is not None
                or not isinstance(line.get("text"), str)
            ):
                break
            answers.append(line["text"].strip())
        else:
            text = "\n\n".join(f"Part {i + 1}: {a}" for i, a in enumerate(answers))
            documents.append(doc.model_copy(update={"text": text}))
    return Corpus(
        source=f"{corpus.source} (reduce step)",
        fingerprint=corpus_fingerprint(documents),
        documents=documents,
        rejected=[],
    )
