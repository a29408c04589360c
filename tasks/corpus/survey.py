"""What docflow makes of a folder before any endpoint exists: documents accepted per format,
rejected per reason, files left out per pattern; tokens and cost need a model."""

from __future__ import annotations

import re
from collections import Counter

from pydantic import BaseModel, Field

from tasks.corpus.documents import ColumnMapping, load_corpus
from tasks.params.groups import DEFAULT_MAX_DOC_BYTES, ReadOptions
from tasks.settings import Profile

NEEDS_MODEL = (
    "tokens, batches and cost need the model's tokenizer: pass --endpoint NAME (a deployed "
    "endpoint) or --model s3://…/model.tar.gz (a packaged model; deploy none)"
)


class CorpusSurvey(BaseModel):
    """The corpus part of an estimate, with no model: what would be sent, and what would not."""

    corpus: str
    documents: int = Field(description="Input rows: files, archive members, table rows.")
    accepted: int
    rejected: int
    accepted_by_format: dict[str, int]
    rejected_by_reason: dict[str, int] = Field(
        description="Reasons with the file name left out, most common first."
    )
    excluded: dict[str, int] = Field(description="Files left out, per include/exclude pattern.")
    text_bytes: int = Field(description="UTF-8 bytes of the accepted documents' text.")
    note: str = NEEDS_MODEL


def reason_kind(reason: str) -> str:
    """A rejection reason without the name it is about, so like reasons count together."""
    return re.sub(r"^(file|member|archive) '(?:[^'\\]|\\.)*'", r"\1 …", reason, count=1)


def survey_corpus(
    uri: str,
    profile: Profile,
    mapping: ColumnMapping | None = None,
    *,
    max_doc_bytes: int = DEFAULT_MAX_DOC_BYTES,
    options: ReadOptions | None = None,
) -> CorpusSurvey:
    """Load ``uri`` as a run would and count what it holds; nothing is invoked."""
    corpus = load_corpus(
        uri, mapping, profile=profile, max_doc_bytes=max_doc_bytes, options=options
    )
    formats = Counter(str(d.metadata.get("format", "table row")) for d in corpus.documents)
    reasons = Counter(reason_kind(r.reason) for r in corpus.rejected)
    return CorpusSurvey(
        corpus=uri,
        documents=corpus.size,
        accepted=len(corpus.documents),
        rejected=len(corpus.rejected),
        accepted_by_format=dict(formats.most_common()),
        rejected_by_reason=dict(reasons.most_common()),
        excluded=corpus.excluded,
        text_bytes=sum(len(d.text.encode("utf-8")) for d in corpus.documents),
    )


def survey_text(survey: CorpusSurvey) -> str:
    """The survey for a terminal."""
    lines = [
        f"corpus {survey.corpus}: {survey.documents} documents, {survey.accepted} accepted, "
        f"{survey.rejected} rejected, {survey.text_bytes} bytes of text",
        "accepted, per format:",
        *(f"  {count:>6}  {fmt}" for fmt, count in survey.accepted_by_format.items()),
    ]
    if survey.rejected_by_reason:
        lines.append("rejected, per reason:")
        lines += [f"  {count:>6}  {reason}" for reason, count in survey.rejected_by_reason.items()]
    if survey.excluded:
        lines.append("left out by include/exclude:")
        lines += [f"  {count:>6}  {pattern}" for pattern, count in survey.excluded.items()]
    lines.append(survey.note)
    return "\n".join(lines) + "\n"
