"""The results table's columns: the fixed ones, and one per metadata key with a Parquet type
inferred over the whole corpus (one flat rule list), and rows turned into Arrow tables."""

from __future__ import annotations

import json
import math
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pyarrow as pa

from tasks.corpus.documents import Corpus, Document
from tasks.run.request.typed_answers import Answers

COLUMNS = [
    "row",
    "doc_id",
    "status",
    "reason",
    "text",
    "prompt_tokens",
    "completion_tokens",
    "finish_reason",
    "batch_id",
]


INT_COLUMNS = ("row", "prompt_tokens", "completion_tokens")


@dataclass
class _MetaStats:
    """What one metadata column holds across the corpus's documents."""

    kinds: set[type] = field(default_factory=set)
    nulls: bool = False  # some document has None/NaN there
    missing: bool = False  # some document has no such key


@dataclass(frozen=True)
class Column:
    """One output column: its Arrow type, pandas dtype, and whether values become JSON text."""

    name: str
    arrow: pa.DataType
    dtype: str
    as_json: bool = False
    labels: tuple[str, ...] = ()  # a categorical answer column: every label, in order


def prefixed(metadata: dict[str, Any], answers: Collection[str] = ()) -> dict[str, Any]:
    """Metadata as columns; a key that clashes with a result or answer column gets a metadata_
    prefix."""
    return {
        (f"metadata_{k}" if k in COLUMNS or k in answers else str(k)): v
        for k, v in metadata.items()
    }


def _is_null(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _scan_metadata(documents: list[Document], answers: Collection[str]) -> dict[str, _MetaStats]:
    """Per metadata column (in order of first appearance): value types, nulls, missing keys."""
    stats: dict[str, _MetaStats] = {}
    for index, doc in enumerate(documents):
        meta = prefixed(doc.metadata, answers)
        for name, value in meta.items():
            column = stats.get(name)
            if column is None:
                column = stats[name] = _MetaStats(missing=index > 0)
            if _is_null(value):
                column.nulls = True
            else:
                column.kinds.add(type(value))
        for name, column in stats.items():
            if name not in meta:
                column.missing = True
    return stats


def _meta_column(name: str, stats: _MetaStats, rejected_rows: bool) -> Column:
    """A metadata column Parquet can store: one scalar type, else JSON text.

    The types are the ones the pandas-built table had: ints with any null are float64, bools
    with any null are object, a column of only None is Arrow null (float64 if a key was missing).
    """
    kinds = {float} if stats.kinds == {int, float} else stats.kinds  # pandas made it float64
    gaps = stats.nulls or stats.missing or rejected_rows
    if not kinds:
        if stats.missing:
            return Column(name, pa.float64(), "float64")
        return Column(name, pa.null(), "object")
    kind = next(iter(kinds)) if len(kinds) == 1 else None
    if kind is str:
        return Column(name, pa.large_string(), "str")
    if kind is bool:
        return Column(name, pa.bool_(), "object" if gaps else "bool")
    if kind is int and not gaps:
        return Column(name, pa.int64(), "int64")
    if kind in (int, float):
        return Column(name, pa.float64(), "float64")
    # Mixed types, lists and dicts; also datetimes, decimals, bytes: JSON text.
    return Column(name, pa.large_string(), "string", as_json=True)


_ANSWER_DTYPES = {
    pa.large_string(): "string",
    pa.int64(): "Int64",
    pa.float64(): "float64",
    pa.bool_(): "boolean",
}


def answer_columns(answers: Answers | None) -> list[Column]:
    """One typed column per answer field (extract), or the label(s) column (classify)."""
    if answers is None:
        return []
    columns = []
    for (name, arrow), answer in zip(answers.columns(), answers.fields, strict=True):
        if pa.types.is_dictionary(arrow):
            columns.append(Column(name, arrow, "category", labels=tuple(answer.labels)))
        else:
            columns.append(Column(name, arrow, _ANSWER_DTYPES.get(arrow, "object")))
    return columns


def result_columns(corpus: Corpus, answers: Answers | None = None) -> list[Column]:
    """The fixed result columns, the answer's typed columns, then one column per metadata key."""
    fixed = [
        Column(c, pa.int64(), "Int64")
        if c in INT_COLUMNS
        else Column(c, pa.large_string(), "string")
        for c in COLUMNS
    ]
    typed = answer_columns(answers)
    stats = _scan_metadata(corpus.documents, {c.name for c in typed})
    rejected_rows = bool(corpus.rejected)
    return fixed + typed + [_meta_column(n, s, rejected_rows) for n, s in stats.items()]


def arrow_schema(columns: list[Column]) -> pa.Schema:
    """The Arrow schema, with the pandas metadata that restores each column's dtype on read."""
    prototype = pd.DataFrame({c.name: pd.Series([], dtype=c.dtype) for c in columns})
    arrow = pa.schema([pa.field(c.name, c.arrow) for c in columns])
    return pa.Table.from_pandas(prototype, schema=arrow, preserve_index=False).schema


def _as_int(value: Any) -> int | None:
    """A token count or row number as an int (None when absent or not a whole number)."""
    if value is None or isinstance(value, int):
        return None if value is None else int(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if number.is_integer() else None


def _as_text(value: Any) -> str | None:
    return None if _is_null(value) else str(value)


def _as_json(value: Any) -> str | None:
    return None if _is_null(value) else json.dumps(value, default=str, ensure_ascii=False)


def _cell(column: Column, value: Any) -> Any:
    if column.name in INT_COLUMNS:
        return _as_int(value)
    if column.name in COLUMNS:
        return _as_text(value)
    return _as_json(value) if column.as_json else value


def to_table(rows: list[dict[str, Any]], columns: list[Column], schema: pa.Schema) -> pa.Table:
    """The chunk's rows as an Arrow table of exactly ``schema`` (NaN stored as null)."""
    arrays = [
        _labels_array(c, [row.get(c.name) for row in rows])
        if c.labels and pa.types.is_dictionary(c.arrow)
        else pa.array([_cell(c, row.get(c.name)) for row in rows], type=c.arrow, from_pandas=True)
        for c in columns
    ]
    return pa.Table.from_arrays(arrays, schema=schema)


def _labels_array(column: Column, values: list[Any]) -> pa.Array:
    """A categorical column whose dictionary is every label (so unused labels are categories too)."""
    index = {label: i for i, label in enumerate(column.labels)}
    codes = pa.array([None if v is None else index[v] for v in values], type=pa.int32())
    dictionary = pa.array(column.labels, type=column.arrow.value_type)
    return pa.DictionaryArray.from_arrays(codes, dictionary)
