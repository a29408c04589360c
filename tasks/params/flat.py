"""Flat parameter names (CLI flags, manifests of older runs, the tests' helpers) to groups.

A group's field keeps its flat parameter's name, so the map is read off the models themselves:
``{"batch_size": 4, "template": "classify"}`` becomes ``{"batching": {"batch_size": 4},
"prompt": {"template": "classify"}}``. Names that are already top-level parameters or groups
pass through unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from tasks.params.groups import (
    AnswerOptions,
    BatchingOptions,
    ColumnOptions,
    GenerationOptions,
    LongDocumentOptions,
    OutputOptions,
    PromptOptions,
    ReadOptions,
    RetryOptions,
    ShardingOptions,
)

# The group parameters of each flow: parameter name -> its model.
PROCESS_GROUPS: dict[str, type[BaseModel]] = {
    "prompt": PromptOptions,
    "generation": GenerationOptions,
    "columns": ColumnOptions,
    "reading": ReadOptions,
    "long_documents": LongDocumentOptions,
    "batching": BatchingOptions,
    "output": OutputOptions,
    "sharding": ShardingOptions,
    "retry": RetryOptions,
}
ASK_GROUPS: dict[str, type[BaseModel]] = {
    "answers": AnswerOptions,
    "generation": GenerationOptions,
    "columns": ColumnOptions,
    "reading": ReadOptions,
    "sharding": ShardingOptions,
}
# Flat names (older runs, CLI flags) of the group fields that are named otherwise.
RENAMED: dict[str, str] = {"system": "system_prompt", "long_documents": "mode"}


def grouped(
    flat: Mapping[str, Any], groups: Mapping[str, type[BaseModel]] = PROCESS_GROUPS
) -> dict[str, Any]:
    """``flat`` with every group field moved into its group's dict (groups already given merge)."""
    owner = {field: group for group, model in groups.items() for field in model.model_fields}
    out: dict[str, Any] = {}
    for name, value in flat.items():
        field = RENAMED.get(name, name)
        if name in groups and isinstance(value, Mapping | BaseModel):
            given = value.model_dump() if isinstance(value, BaseModel) else dict(value)
            out.setdefault(name, {}).update(given)
        elif field in owner:
            out.setdefault(owner[field], {})[field] = value
        else:
            out[name] = value
    return out
