"""ask_documents' answer shape and generation controls, validated by ``run_controls``.

``fields`` (extract) or ``labels`` (classify) constrain every question's answer the way they
constrain a process_documents answer: the session request carries the same ``json_schema`` or
``choices`` in its parameters, the container decodes under them, and each completed answer is
parsed into typed values (one per field, or ``label`` / ``labels``) beside the raw text.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, NamedTuple

from tasks.run.request.controls import run_controls
from tasks.run.request.typed_answers import AnswerError, Answers

# The columns every ask row has (tasks.ask.asker.pair_row); a field may not take one's name.
ROW_COLUMNS = (
    "document_id",
    "question_index",
    "question",
    "status",
    "answer",
    "prompt_tokens",
    "cached_tokens",
    "completion_tokens",
    "finish_reason",
    "latency_s",
    "reason",
)


class AskControls(NamedTuple):
    """What every question's request carries and how its answer is typed."""

    parameters: dict[str, Any]  # the wire ``parameters`` of each question
    answers: Answers | None  # the typed answer, when fields or labels are given
    instruction: str  # appended to each question: the answer's expected shape ("" when free)

    def shaping(self) -> dict[str, Any]:
        """What of the controls goes into the run key (free text with only a budget: as before)."""
        extra = {
            k: v for k, v in self.parameters.items() if k not in ("max_new_tokens", "do_sample")
        }
        shape: dict[str, Any] = {"max_new_tokens": self.parameters["max_new_tokens"]}
        if extra or self.parameters.get("do_sample") or self.instruction:
            shape.update(generation=self.parameters, instruction=self.instruction)
        return shape


def answer_columns(answers: Answers | None) -> tuple[str, ...]:
    """The typed answer columns every row has (none for free text)."""
    return tuple(name for name, _ in answers.columns()) if answers else ()


def typed_values(answers: Answers | None, text: Any) -> dict[str, Any]:
    """An answer's typed values as JSON values (dates as YYYY-MM-DD); AnswerError when it does
    not validate."""
    if answers is None:
        return {}
    return {
        name: value.isoformat() if isinstance(value, dt.date) else value
        for name, value in answers.parse(text).items()
    }


def ask_controls(
    *,
    max_new_tokens: int,
    fields: list[str] | dict[str, Any] | str | None = None,
    labels: list[str] | None = None,
    multi_label: bool = False,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    repetition_penalty: float | None = None,
    stop: list[str] | str | None = None,
    seed: int | None = None,
) -> AskControls:
    """Validate ask_documents' controls; ValueError names the parameter to change."""
    if fields is not None and labels is not None:
        raise ValueError(
            "give fields (a typed extraction) or labels (a classification), not both: every "
            "question's answer has one shape"
        )
    if multi_label and labels is None:
        raise ValueError("multi_label needs labels: the labels each answer chooses from")
    template = (
        "extract" if fields is not None else "classify" if labels is not None else "summarize"
    )
    controls = run_controls(
        template=template,
        max_new_tokens=max_new_tokens,
        fields=fields,
        labels=labels,
        multi_label=multi_label,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        repetition_penalty=repetition_penalty,
        stop=stop,
        seed=seed,
    )
    answers = controls.answers
    if answers is not None:
        clashes = sorted(set(answer_columns(answers)) & set(ROW_COLUMNS))
        if clashes:
            raise ValueError(
                f"fields: field(s) {clashes} would clash with ask_documents' result columns of "
                "the same name; rename them"
            )
    return AskControls(controls.params.to_wire(), answers, _instruction(template, controls))


def _instruction(template: str, controls: Any) -> str:
    """What each question is told about its answer's shape (the constraint enforces it)."""
    prompt = controls.template
    if template == "extract":
        return (
            "\n\nAnswer with a single JSON object with exactly these keys: "
            + ", ".join(prompt.fields)
            + "."
        )
    if template == "classify" and prompt.multi_label:
        return (
            "\n\nAnswer with a JSON list of every one of these labels that applies: "
            + ", ".join(prompt.labels)
        )
    if template == "classify":
        return "\n\nAnswer with exactly one of these labels: " + ", ".join(prompt.labels)
    return ""


__all__ = [
    "ROW_COLUMNS",
    "AnswerError",
    "AskControls",
    "answer_columns",
    "ask_controls",
    "typed_values",
]
