"""Prompt templates (summarise, extract, classify, custom) and generation parameters."""

from __future__ import annotations

import hashlib
import json
import string
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tasks.params.groups import DEFAULT_MAX_NEW_TOKENS

if TYPE_CHECKING:
    from tasks.corpus.documents import Document


class TemplateError(ValueError):
    """A prompt template cannot be rendered; the message names the placeholder and the fix."""


class GenerationParameters(BaseModel):
    """Generation parameters sent with every document (the `parameters` of the wire format)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_new_tokens: int = Field(DEFAULT_MAX_NEW_TOKENS, ge=1, le=32_768)
    do_sample: bool = False
    temperature: float | None = Field(None, gt=0)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=1)
    repetition_penalty: float | None = Field(None, gt=0)
    stop: list[str] | None = Field(None, min_length=1, max_length=16)
    seed: int | None = Field(None, ge=0)
    # Constrained output (tasks/run/request/typed_answers.py): the answer validates against the schema, or is
    # exactly one of the choices.
    json_schema: dict[str, Any] | None = None
    choices: list[str] | None = None

    @model_validator(mode="after")
    def _sampling_knobs_need_sampling(self) -> GenerationParameters:
        knobs = [k for k in ("temperature", "top_p", "top_k") if getattr(self, k) is not None]
        if knobs and not self.do_sample:
            raise ValueError(
                f"{', '.join(knobs)} only apply when sampling; set do_sample=True or leave them out"
            )
        if self.stop is not None and not all(self.stop):
            raise ValueError("stop strings must be non-empty")
        if self.stop and (self.json_schema is not None or self.choices):
            raise ValueError(
                "stop cannot be combined with template extract or classify: a stop string "
                "would cut the constrained answer"
            )
        return self

    def to_wire(self) -> dict[str, Any]:
        """The `parameters` object of a payload line: unset (None) values left out."""
        return self.model_dump(exclude_none=True)

    def fingerprint(self) -> str:
        """A stable hash of the parameters (part of the run key)."""
        return _digest(self.to_wire())


_BUILTIN: dict[str, str] = {
    "summarize": (
        "Summarize the following document in two or three sentences.\n\nDocument:\n{text}"
    ),
    "extract": (
        "Extract the following fields from the document: {fields}.\n"
        "Answer with a single JSON object with exactly these keys.\n\nDocument:\n{text}"
    ),
    "classify": (
        "Classify the document into exactly one of these labels: {labels}.\n"
        "Answer with the label only.\n\nDocument:\n{text}"
    ),
}
_MULTI_LABEL = (
    "Classify the document with every one of these labels that applies: {labels}.\n"
    "Answer with a JSON list of the labels.\n\nDocument:\n{text}"
)

_RESERVED = ("text", "doc_id", "fields", "labels")


class PromptTemplate(BaseModel):
    """Which prompt each document gets: a built-in kind or a user template with placeholders.

    Placeholders: {text}, {doc_id}, {fields}, {labels} and any metadata key of the document.
    Literal braces are written {{ and }}.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["summarize", "extract", "classify", "custom"] = "summarize"
    fields: list[str] = Field(default_factory=list)
    labels: list[str] = Field(default_factory=list)
    template: str | None = None
    multi_label: bool = False
    # A system message before each prompt (or before a messages column's own messages).
    system: str | None = None
    # The document text is its chat messages (a messages column): sent as they are.
    from_messages: bool = False

    @model_validator(mode="after")
    def _check(self) -> PromptTemplate:
        if self.kind == "extract" and not self.fields:
            raise TemplateError("kind 'extract' needs `fields`: the names of the fields to extract")
        if self.kind == "classify" and not self.labels:
            raise TemplateError("kind 'classify' needs `labels`: the labels to choose from")
        if self.kind == "custom" and not (self.template and self.template.strip()):
            raise TemplateError(
                "kind 'custom' needs `template`, e.g. 'Translate to French: {text}'"
            )
        self.placeholders()  # parse errors surface at construction, not per document
        return self

    def source(self) -> str:
        """The template text actually used (the user's, else the kind's built-in)."""
        if self.template is not None:
            return self.template
        if self.kind == "classify" and self.multi_label:
            return _MULTI_LABEL
        return _BUILTIN[self.kind]

    def placeholders(self) -> list[str]:
        """Names of the placeholders in the template, in order of first use."""
        return list(_placeholders(self.source()))

    def render(self, doc: Document) -> str:
        """The prompt for one document; TemplateError names an unknown placeholder."""
        values: dict[str, Any] = {k: v for k, v in doc.metadata.items() if isinstance(k, str)}
        values.update(
            text=doc.text,
            doc_id=doc.doc_id,
            fields=", ".join(self.fields),
            labels=", ".join(self.labels),
        )
        for name in self.placeholders():
            if name not in values:
                known = list(_RESERVED) + sorted(k for k in doc.metadata if k not in _RESERVED)
                raise TemplateError(
                    f"prompt template placeholder {{{name}}} is unknown for document "
                    f"{doc.doc_id!r}; known placeholders: {', '.join(known)}"
                )
        try:
            return self.source().format_map(values)
        except (ValueError, TypeError) as exc:
            raise TemplateError(
                f"prompt template cannot be rendered for document {doc.doc_id!r}: {exc}"
            ) from exc

    def request(self, doc: Document) -> dict[str, Any]:
        """What the document sends: ``{"prompt": ...}``, or ``{"messages": [...]}`` with a
        system prompt or a messages column; TemplateError names what is wrong."""
        if self.from_messages:
            messages = chat_messages(doc)
        elif self.system is None:
            return {"prompt": self.render(doc)}
        else:
            messages = [{"role": "user", "content": self.render(doc)}]
        if self.system is not None and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": self.system}, *messages]
        return {"messages": messages}

    def fingerprint(self) -> str:
        """A stable hash of what the template renders (part of the run key)."""
        shape: dict[str, Any] = {
            "kind": self.kind,
            "fields": self.fields,
            "labels": self.labels,
            "source": self.source(),
        }
        if self.system is not None or self.from_messages:  # run keys of older runs unchanged
            shape.update(system=self.system, from_messages=self.from_messages)
        return _digest(shape)


def chat_messages(doc: Document) -> list[dict[str, str]]:
    """A messages column's value (JSON text of a list of {role, content}); TemplateError if not."""
    try:
        value = json.loads(doc.text)
    except ValueError:
        value = None
    if (
        not isinstance(value, list)
        or not value
        or not all(
            isinstance(m, dict)
            and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str)
            for m in value
        )
    ):
        raise TemplateError(
            f"document {doc.doc_id!r}: its messages column must hold a non-empty list of "
            '{"role": ..., "content": ...} objects (or that list as JSON text)'
        )
    return [{"role": m["role"], "content": m["content"]} for m in value]


@lru_cache(maxsize=64)
def _placeholders(source: str) -> tuple[str, ...]:
    """Parse a template once; TemplateError for malformed text or non-name placeholders."""
    names: list[str] = []
    try:
        parsed = list(string.Formatter().parse(source))
    except ValueError as exc:
        raise TemplateError(
            f"prompt template is malformed ({exc}); write literal braces as {{{{ and }}}}"
        ) from exc
    for _, name, _, _ in parsed:
        if name is None:
            continue
        if not name.isidentifier():
            raise TemplateError(
                f"prompt template placeholder {{{name}}} is not a plain name; use "
                "{text}, {doc_id}, {fields}, {labels} or a metadata key, and "
                "write literal braces as {{ and }}"
            )
        if name not in names:
            names.append(name)
    return tuple(names)


def _digest(value: Any) -> str:
    """16 hex chars of sha256 over canonical JSON."""
    blob = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]
