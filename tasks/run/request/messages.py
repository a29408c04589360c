"""Errors in the flow's own words: flow parameters, not Python classes or pydantic dumps."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

from pydantic import ValidationError

# PromptTemplate field -> the process-documents parameter that sets it.
FLOW_PARAMETERS = {"kind": "template", "template": "custom_template"}


def one_sentence(
    exc: ValidationError, parameters: dict[str, str] | None = None, whole: str | None = None
) -> str:
    """A pydantic ValidationError as one sentence naming the flow parameters involved.

    ``whole``: the parameter to name for an error about the model as a whole (no field).
    """
    names = {**FLOW_PARAMETERS, **(parameters or {})}
    parts = []
    for error in exc.errors():
        message = str(error.get("msg", "")).removeprefix("Value error, ")
        loc = [str(p) for p in error.get("loc", ())]
        field = names.get(loc[0], loc[0]) if loc else whole
        if field:
            message = f"{field}: {message}"
        parts.append(message)
    return "; ".join(parts)


def template_problem(
    template: str, fields: Any, labels: list[str] | None, custom_template: str | None
) -> str | None:
    """What the prompt parameters lack for ``template``, or None when they fit."""
    if template == "extract" and not fields:
        return (
            "template='extract' needs the parameter fields: field names with types, e.g. "
            '{"party": "string", "amount": "number"} (or a list of names, all strings)'
        )
    if template == "classify" and not labels:
        return "template='classify' needs the parameter labels: the labels to choose from"
    if template == "custom" and not (custom_template and custom_template.strip()):
        return (
            "template='custom' needs the parameter custom_template, "
            "e.g. 'Translate to French: {text}'"
        )
    return None


def short_corpus_name(corpus: str, limit: int = 40) -> str:
    """The last part of a corpus path or s3:// URI, for run names people read in the UI."""
    name = PurePosixPath(corpus.rstrip("/").replace("\\", "/")).name or corpus
    return name if len(name) <= limit else name[: limit - 3] + "..."


def process_run_name() -> str:
    """process-documents run name: ``<template>-<last part of the corpus path>``."""
    from prefect.runtime import flow_run

    parameters = flow_run.parameters
    template = parameters.get("template", "summarize")
    return f"{template}-{short_corpus_name(str(parameters.get('corpus', 'corpus')))}"


def end_to_end_run_name() -> str:
    """end-to-end run name: ``<model>-on-<corpus>``, each the last part of its path."""
    from prefect.runtime import flow_run

    parameters = flow_run.parameters
    model = short_corpus_name(str(parameters.get("model_source", "model")))
    return f"{model}-on-{short_corpus_name(str(parameters.get('corpus', 'corpus')))}"
