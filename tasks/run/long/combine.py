"""One result row per document from its chunks' rows (``long_documents='map_reduce'``).

extract: the chunks' JSON objects merged by field (the first non-empty value of each field wins;
lists are concatenated without duplicates). summarize: the answer of the reduce prompt over the
chunks' summaries. Token counts are the sums over every chunk and the reduce step. With typed
answers (``fields``), the merged object is parsed into the same typed columns as a document that
was not split, and a merge that does not validate fails the document with the reason.
"""

from __future__ import annotations

import json
from typing import Any

from tasks.run.request.typed_answers import AnswerError, Answers

REDUCE_SUMMARIZE = (
    "The following are summaries of consecutive parts of one long document.\n"
    "Summarize the whole document in two or three sentences.\n\nSummaries:\n{text}"
)


def json_object(text: str | None) -> dict[str, Any] | None:
    """The first JSON object in an answer (models wrap it in prose or code fences), or None."""
    if not text:
        return None
    decoder = json.JSONDecoder()
    for start in (i for i, c in enumerate(text) if c == "{"):
        try:
            value, _ = decoder.raw_decode(text[start:])
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def _empty(value: Any) -> bool:
    return value is None or value == "" or value == [] or value == {}


def merge_objects(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """Merge by field, in chunk order: first non-empty value wins; lists concatenated, no duplicates."""
    merged: dict[str, Any] = {}
    for obj in objects:
        for name, value in obj.items():
            known = merged.get(name)
            if isinstance(value, list):
                base = known if isinstance(known, list) else ([] if _empty(known) else [known])
                for item in value:
                    if not _empty(item) and item not in base:
                        base.append(item)
                merged[name] = base
            elif _empty(known):
                merged[name] = value
            elif isinstance(known, list) and not _empty(value) and value not in known:
                known.append(value)
    return merged


def combine_chunks(
    kind: str,
    chunk_rows: list[dict[str, Any]],
    reduce_row: dict[str, Any] | None,
    answers: Answers | None = None,
) -> dict[str, Any]:
    """The document's outcome columns from its chunks' outcomes (in order) and the reduce step's;
    with ``answers`` (extract), the merged answer's typed columns too."""
    count = len(chunk_rows)
    steps = [*chunk_rows, *([reduce_row] if reduce_row else [])]
    row: dict[str, Any] = {
        "chunks": count,
        "batch_id": (reduce_row or chunk_rows[0]).get("batch_id"),
        "prompt_tokens": sum(r.get("prompt_tokens") or 0 for r in steps),
        "completion_tokens": sum(r.get("completion_tokens") or 0 for r in steps),
    }
    unfinished = [(i, r) for i, r in enumerate(chunk_rows) if r["status"] != "completed"]
    if unfinished:
        status = "failed" if any(r["status"] == "failed" for _, r in unfinished) else "canceled"
        i, first = next((i, r) for i, r in unfinished if r["status"] == status)
        more = f" (and {len(unfinished) - 1} more chunks)" if len(unfinished) > 1 else ""
        return row | {"status": status, "reason": f"chunk {i + 1}/{count}: {first['reason']}{more}"}
    if kind == "extract":
        objects = [o for r in chunk_rows if (o := json_object(r.get("text"))) is not None]
        if not objects:
            reason = (
                f"none of the {count} chunk answers holds a JSON object, so there is nothing to "
                "merge; see the model's answers by running with long_documents='truncate'"
            )
            return row | {"status": "failed", "reason": reason}
        lengths = any(r.get("finish_reason") == "length" for r in chunk_rows)
        text = json.dumps(merge_objects(objects), ensure_ascii=False)
        typed: dict[str, Any] = {}
        if answers is not None:
            try:
                typed = answers.parse(text)
            except AnswerError as exc:
                reason = f"invalid answer: the {count} chunk answers merged by field: {exc}"
                return row | {"status": "failed", "reason": reason}
        return (
            typed
            | row
            | {
                "status": "completed",
                "text": text,
                "finish_reason": "length" if lengths else "stop",
            }
        )
    if reduce_row is None:
        reason = (
            "the reduce step over the chunk summaries did not run; resume the run with its run_key"
        )
        return row | {"status": "failed", "reason": reason}
    if reduce_row["status"] != "completed":
        return row | {
            "status": reduce_row["status"],
            "reason": f"reduce step: {reduce_row['reason']}",
        }
    return row | {
        "status": "completed",
        "text": reduce_row.get("text"),
        "finish_reason": reduce_row.get("finish_reason"),
    }
