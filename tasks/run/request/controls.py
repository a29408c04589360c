"""process_documents' prompt and generation parameters, validated up front into what a run sends:
the prompt template, the generation parameters and the typed answer (extract, classify)."""

from __future__ import annotations

from typing import Any, NamedTuple

from pydantic import ValidationError

from tasks.params.groups import GenerationOptions, PromptOptions
from tasks.run.request.columns import COLUMNS
from tasks.run.request.messages import one_sentence, template_problem
from tasks.run.request.prompts import GenerationParameters, PromptTemplate
from tasks.run.request.typed_answers import (
    Answers,
    SchemaError,
    classification_answers,
    extraction_answers,
)

KINDS = ("summarize", "extract", "classify", "custom")


class RunControls(NamedTuple):
    """What shapes every document's request and result (all of it is in the run key)."""

    template: PromptTemplate
    params: GenerationParameters
    answers: Answers | None


def _describe(answers: Answers) -> list[str]:
    """The fields as the extract prompt lists them: ``name (type)``."""
    out = []
    for field in answers.fields:
        kind = {"list": "list of strings", "date": "date, YYYY-MM-DD"}.get(field.kind, field.kind)
        if field.kind == "enum":
            kind = "one of: " + ", ".join(field.labels)
        out.append(f"{field.name} ({kind})")
    return out


def sampling(
    temperature: float | None,
    top_p: float | None,
    top_k: int | None,
    seed: int | None,
) -> dict[str, Any]:
    """The sampling part of the generation parameters: greedy unless a knob asks for sampling.

    ``temperature=0`` means greedy, as in most APIs; ``seed`` needs sampling.
    """
    for name, value in (("temperature", temperature), ("top_p", top_p)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ValueError(f"{name} must be a number, got {value!r}")
    if temperature is not None and temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0: greedy), got {temperature}")
    greedy_temperature = temperature is not None and temperature == 0
    do_sample = (temperature is not None and not greedy_temperature) or bool(top_p or top_k)
    if greedy_temperature and (top_p is not None or top_k is not None):
        raise ValueError("top_p and top_k apply only when sampling; temperature=0 means greedy")
    if seed is not None and not do_sample:
        raise ValueError(
            "seed applies only when sampling; set temperature (> 0), top_p or top_k, or leave "
            "seed out (greedy decoding is deterministic)"
        )
    return {
        "do_sample": do_sample,
        "temperature": None if greedy_temperature else temperature,
        "top_p": top_p,
        "top_k": top_k,
        "seed": seed,
    }


def run_controls(
    *,
    template: str,
    max_new_tokens: int,
    fields: list[str] | dict[str, Any] | str | None = None,
    labels: list[str] | None = None,
    custom_template: str | None = None,
    multi_label: bool = False,
    system_prompt: str | None = None,
    messages_column: str | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    repetition_penalty: float | None = None,
    stop: list[str] | str | None = None,
    seed: int | None = None,
) -> RunControls:
    """Validate the flow's prompt and generation parameters; ValueError names the parameter."""
    if template not in KINDS:
        raise ValueError(f"template {template!r} is unknown; use one of {list(KINDS)}")
    if multi_label and template != "classify":
        raise ValueError("multi_label applies to template='classify'")
    if messages_column is not None and (template == "custom" or custom_template):
        raise ValueError(
            "messages_column gives each document's prompt as chat messages, so custom_template "
            "cannot apply; leave one of them out"
        )
    if system_prompt is not None and not system_prompt.strip():
        raise ValueError("system_prompt is empty; give some text or leave it out")
    answers: Answers | None = None
    try:
        if template == "extract":
            answers = extraction_answers(fields, set(COLUMNS))
            fields = _describe(answers)
        elif template == "classify":
            answers = classification_answers(labels, multi_label)
    except SchemaError as exc:
        raise ValueError(str(exc)) from None
    if template == "custom" and not (custom_template and custom_template.strip()):
        raise ValueError(
            "template='custom' needs the parameter custom_template, e.g. 'Translate to French: {text}'"
        )
    try:
        prompt = PromptTemplate.model_validate(
            {
                "kind": template,
                "fields": fields if isinstance(fields, list) else [],
                "labels": labels or [],
                "template": custom_template,
                "multi_label": multi_label,
                "system": system_prompt,
                "from_messages": messages_column is not None,
            }
        )
    except ValidationError as exc:
        whole = "custom_template" if template == "custom" else "template"
        raise ValueError(one_sentence(exc, whole=whole)) from None
    stops = [stop] if isinstance(stop, str) else stop
    try:
        params = GenerationParameters.model_validate(
            {
                "max_new_tokens": max_new_tokens,
                **sampling(temperature, top_p, top_k, seed),
                "repetition_penalty": repetition_penalty,
                "stop": stops,
                **(answers.wire() if answers else {}),
            }
        )
    except ValidationError as exc:
        raise ValueError(one_sentence(exc, whole="the generation parameters")) from None
    return RunControls(prompt, params, answers)


def controls_of(prompt: PromptOptions, generation: GenerationOptions) -> RunControls:
    """``run_controls`` of a flow's prompt and generation groups (process_documents, its dry run
    and ``docflow estimate`` alike); what a template lacks is said first, naming the parameter."""
    problem = template_problem(
        prompt.template, prompt.fields, prompt.labels, prompt.custom_template
    )
    if problem:
        raise ValueError(problem)
    return run_controls(**prompt.model_dump(), **generation.model_dump())
