"""The steps of one ask run: its key, the pairs answered before, asking, and rejected rows."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.ask.asker import AskPlan, Row, ask_all
from tasks.ask.saved_answers import load_answers
from tasks.corpus.documents import Corpus
from tasks.run.plan.layout import digest_key
from tasks.settings import Profile


def ask_run_key(
    fingerprint: str, endpoint: str, questions: list[str], shaping: dict[str, Any]
) -> str:
    """A run key derived from everything that shapes the answers (the same inputs resume)."""
    return digest_key([fingerprint, endpoint, questions, shaping], prefix="ask")


@task(name="load-answers", cache_policy=NO_CACHE)
def answered_pairs(profile: Profile, run_key: str) -> dict[tuple[str, int], Row]:
    """The pairs this run answered before (a resumed run)."""
    return load_answers(profile, run_key)


@task(name="ask-questions", cache_policy=NO_CACHE)
def ask_questions(
    profile: Profile, plan: AskPlan, corpus: Corpus, answered: dict[tuple[str, int], Row]
) -> list[Row]:
    """Sessions per document, documents in parallel under the endpoint's shared cap; the
    corpus's rejected rows follow, one per (document, question), with their reasons."""
    logger = get_run_logger()

    def progress(rows: list[Row]) -> None:
        done = sum(r["status"] == "completed" for r in rows)
        logger.info("document %s: %d/%d answered", rows[0]["document_id"], done, len(rows))

    rows = ask_all(profile, plan, corpus.documents, answered, on_rows=progress)
    for n, rejected in enumerate(corpus.rejected):
        doc_id = rejected.doc_id or f"row {rejected.row if rejected.row is not None else n}"
        rows += [
            plan.row(doc_id, i, "rejected", reason=rejected.reason)
            for i in range(len(plan.questions))
        ]
    return rows
