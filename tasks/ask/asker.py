"""Ask every question of every document: one session per document, documents in parallel.

Each document in flight holds one slot of the endpoint's shared concurrency limit
(``tasks.endpoint.spec.concurrency_limit_name``, the cap process_documents runs share), so asks
and batch runs on the same endpoint never exceed it between them. Per document: open a session,
ask each unanswered question (saving each answer at once), close the session. A session that
goes away mid-document (expired, evicted, its instance replaced) is opened again once. Every
(document, question) pair ends as exactly one row: completed, failed (reason) or rejected
(reason).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from tasks.ask.question_controls import ROW_COLUMNS, AnswerError, answer_columns, typed_values
from tasks.ask.saved_answers import save_answer
from tasks.ask.session_client import SessionGoneError, ask, close_session, open_session
from tasks.aws.clients import aws_client
from tasks.capacity.leases import LeaseBook, LimitMissing
from tasks.capacity.limit import FREE_POLL_S, SLOT_LEASE_S, CapacityError
from tasks.corpus.documents import Document
from tasks.endpoint.spec import concurrency_limit_name
from tasks.run.request.typed_answers import Answers
from tasks.settings import Profile

logger = logging.getLogger("docflow.ask")

Row = dict[str, Any]


@dataclass(frozen=True)
class AskPlan:
    """What to ask, where, and how."""

    endpoint: str
    run_key: str
    questions: tuple[str, ...]
    parameters: dict[str, Any]
    system: str | None = None
    max_parallel_documents: int = 4
    instruction: str = ""  # appended to every question sent: the answer's expected shape
    answers: Answers | None = None  # typed answers (fields or labels), None for free text

    def row(self, document_id: str, index: int, status: str, **fields: Any) -> Row:
        """A row of this run: its typed answer columns too."""
        columns = answer_columns(self.answers)
        return pair_row(document_id, index, self.questions[index], status, columns, **fields)


def pair_row(
    document_id: str,
    index: int,
    question: str,
    status: str,
    columns: tuple[str, ...] = (),
    **fields: Any,
) -> Row:
    """One result row; every row of a run has the same columns (``columns``: typed answers)."""
    row: Row = dict.fromkeys(ROW_COLUMNS) | dict.fromkeys(columns)
    row.update(document_id=document_id, question_index=index, question=question, status=status)
    row.update(fields)
    return row


def _error(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return f"{error.get('Code')}: {error.get('Message')}"
    return f"{type(exc).__name__}: {exc}"


class _Slots:
    """One slot of the endpoint's shared limit per document in flight."""

    def __init__(self, endpoint: str) -> None:
        self.name = concurrency_limit_name(endpoint)
        self.book = LeaseBook(lease_s=SLOT_LEASE_S)

    def take(self) -> Any:
        while True:
            try:
                lease = self.book.take(self.name, 1)
            except LimitMissing:
                raise CapacityError(
                    f"the global concurrency limit {self.name!r} does not exist; deploy the "
                    "endpoint with the deploy-endpoint flow (it creates the limit) or create it: "
                    f"prefect gcl create {self.name} --limit <slots>"
                ) from None
            if lease is not None:
                return lease
            time.sleep(FREE_POLL_S)

    def release(self, lease: Any) -> None:
        self.book.release(lease)

    def close(self) -> None:
        self.book.close()


def ask_document(profile: Profile, plan: AskPlan, document: Document, todo: list[int]) -> list[Row]:
    """Open a session on ``document``, ask questions ``todo`` (saving each answer), close it."""
    runtime = aws_client("sagemaker-runtime", profile, read_timeout_s=profile.read_timeout_s)
    rows: list[Row] = []
    session: str | None = None
    reopened = False
    try:
        for index in todo:
            question = plan.questions[index]
            while True:
                started = time.monotonic()
                try:
                    if session is None:
                        session = open_session(runtime, plan.endpoint, document.text, plan.system)
                    answer = ask(
                        runtime,
                        plan.endpoint,
                        session,
                        question + plan.instruction,
                        plan.parameters,
                    )
                except SessionGoneError as exc:
                    session = None
                    if not reopened:  # expired, evicted or its instance gone: once more
                        reopened = True
                        logger.info("document %s: %s; reopening", document.doc_id, exc)
                        continue
                    rows.append(plan.row(document.doc_id, index, "failed", reason=str(exc)))
                    break
                except (ClientError, BotoCoreError, RuntimeError) as exc:
                    rows.append(plan.row(document.doc_id, index, "failed", reason=_error(exc)))
                    break
                try:
                    typed = typed_values(plan.answers, answer.get("text"))
                except AnswerError as exc:  # not stored half-parsed; a resumed run asks again
                    reason = f"invalid answer: {exc}"
                    rows.append(plan.row(document.doc_id, index, "failed", reason=reason))
                    break
                row = plan.row(
                    document.doc_id,
                    index,
                    "completed",
                    **typed,
                    answer=answer.get("text"),
                    prompt_tokens=answer.get("prompt_tokens"),
                    cached_tokens=answer.get("cached_tokens"),
                    completion_tokens=answer.get("completion_tokens"),
                    finish_reason=answer.get("finish_reason"),
                    latency_s=round(time.monotonic() - started, 4),
                )
                save_answer(profile, plan.run_key, row)
                rows.append(row)
                break
    finally:
        if session is not None:
            try:
                close_session(runtime, plan.endpoint, session)
            except (ClientError, BotoCoreError) as exc:  # it expires on its own
                logger.warning("document %s: closing session failed: %s", document.doc_id, exc)
    return rows


def ask_all(
    profile: Profile,
    plan: AskPlan,
    documents: list[Document],
    answered: dict[tuple[str, int], Row],
    on_rows: Callable[[list[Row]], None] | None = None,
) -> list[Row]:
    """Rows for every (document, question): answered ones as kept, the rest asked now."""
    slots = _Slots(plan.endpoint)
    every = range(len(plan.questions))

    def one(document: Document) -> list[Row]:
        todo = [i for i in every if (document.doc_id, i) not in answered]
        if not todo:
            return []
        lease = slots.take()
        try:
            return ask_document(profile, plan, document, todo)
        except Exception as exc:  # never lose a pair: an unexpected error fails the rest
            return [plan.row(document.doc_id, i, "failed", reason=_error(exc)) for i in todo]
        finally:
            slots.release(lease)

    fresh: dict[tuple[str, int], Row] = {}
    try:
        with ThreadPoolExecutor(max_workers=max(1, plan.max_parallel_documents)) as pool:
            for rows in pool.map(one, documents):
                for row in rows:
                    fresh[(row["document_id"], row["question_index"])] = row
                if on_rows is not None and rows:
                    on_rows(rows)
    finally:
        slots.close()
    out: list[Row] = []
    for document in documents:
        for i in every:
            key = (document.doc_id, i)
            found = fresh.get(key) or answered.get(key)
            if found is None:  # cannot happen: one() returns a row for every pair it was given
                found = plan.row(document.doc_id, i, "failed", reason="lost")
            out.append(found)
    return out
