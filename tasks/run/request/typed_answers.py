"""Typed answers: an extraction schema or a label set, the constraint the endpoint decodes under,
and the typed result columns each answer is parsed into.

The flow parameter ``fields`` lists field names (all strings), or maps field names to a type (``"string"``, ``"integer"``,
``"number"``, ``"boolean"``, ``"date"``, ``"list[string]"``), a list of allowed strings (an enum),
or a JSON Schema fragment for one field (e.g. ``{"type": "string", "maxLength": 40}``); or it is
the path of a JSON Schema file (an object schema whose properties are such fields). Every field is
required; strings and lists get a length bound unless one is given, so an answer has a bounded
size. ``labels`` (template=classify) become ``choices`` (one label) or, with ``multi_label``, a
JSON list of distinct labels.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict

Kind = Literal["string", "integer", "number", "boolean", "date", "enum", "list"]
TYPE_NAMES: dict[str, Kind] = {
    "string": "string",
    "str": "string",
    "integer": "integer",
    "int": "integer",
    "number": "number",
    "float": "number",
    "boolean": "boolean",
    "bool": "boolean",
    "date": "date",
    "list[string]": "list",
    "list": "list",
}
DEFAULT_MAX_CHARS = 200  # a string field's maxLength unless the schema gives one
DEFAULT_MAX_ITEMS = 20  # a list field's maxItems unless the schema gives one
MAX_FIELDS = 100
# A calendar date YYYY-MM-DD (years 1000-9999), days per month checked; "format": "date" alone
# lets the grammar write June 31st. February 29th is allowed in every year, so a non-leap one
# is the only date the grammar lets through that the column refuses (the document fails).
DATE_PATTERN = (
    r"^[1-9][0-9]{3}-(0[13578]-(0[1-9]|[12][0-9]|3[01])|1[02]-(0[1-9]|[12][0-9]|3[01])"
    r"|(0[469]|11)-(0[1-9]|[12][0-9]|30)|02-(0[1-9]|1[0-9]|2[0-9]))$"
)


class AnswerError(ValueError):
    """An answer that does not parse or validate; the message is the document's failure reason."""


class SchemaError(ValueError):
    """The ``schema`` / ``labels`` parameters are unusable; the message names the parameter."""


class AnswerField(BaseModel):
    """One typed field of the answer: its column name, kind, allowed values and JSON Schema."""

    model_config = ConfigDict(frozen=True)

    name: str
    kind: Kind
    labels: list[str] = []
    json_schema: dict[str, Any]

    def arrow(self) -> pa.DataType:
        """The Parquet/Arrow type of the field's column."""
        return {
            "string": pa.large_string(),
            "integer": pa.int64(),
            "number": pa.float64(),
            "boolean": pa.bool_(),
            "date": pa.date32(),
            "enum": pa.dictionary(pa.int32(), pa.string()),
            "list": pa.list_(pa.large_string()),
        }[self.kind]

    def value(self, raw: Any) -> Any:
        """The answer's value for this field as the column's Python type; AnswerError if wrong."""
        ok: bool
        if self.kind == "string":
            ok = isinstance(raw, str)
        elif self.kind == "integer":
            ok = isinstance(raw, int) and not isinstance(raw, bool)
        elif self.kind == "number":
            ok = isinstance(raw, int | float) and not isinstance(raw, bool)
            raw = float(raw) if ok else raw
        elif self.kind == "boolean":
            ok = isinstance(raw, bool)
        elif self.kind == "enum":
            ok = raw in self.labels
        elif self.kind == "list":
            ok = isinstance(raw, list) and all(isinstance(v, str) for v in raw)
        else:  # date
            try:
                raw, ok = dt.date.fromisoformat(raw), True
            except (TypeError, ValueError):
                ok = False
        if not ok:
            raise AnswerError(
                f"answer field {self.name!r} is {json.dumps(raw, default=str)[:80]}, not a {self.kind}"
            )
        return raw


class Answers(BaseModel):
    """The typed answer of every document: its fields, and the constraint sent to the endpoint."""

    model_config = ConfigDict(frozen=True)

    fields: list[AnswerField]
    # object: a JSON object of the fields; choice: exactly one label; labels: a JSON list of them
    mode: Literal["object", "choice", "labels"] = "object"

    def wire(self) -> dict[str, Any]:
        """The constraint's generation parameters: ``choices`` or ``json_schema``."""
        only = self.fields[0]
        if self.mode == "choice":
            return {"choices": list(only.labels)}
        if self.mode == "labels":
            return {"json_schema": only.json_schema}
        return {
            "json_schema": {
                "type": "object",
                "properties": {f.name: f.json_schema for f in self.fields},
                "required": [f.name for f in self.fields],
                "additionalProperties": False,
            }
        }

    def columns(self) -> list[tuple[str, pa.DataType]]:
        """(name, Arrow type) of each answer column, in order."""
        if self.mode == "labels":
            return [("labels", pa.list_(pa.dictionary(pa.int32(), pa.string())))]
        return [(f.name, f.arrow()) for f in self.fields]

    def parse(self, text: Any) -> dict[str, Any]:
        """The answer columns of one result text; AnswerError says why it is not a valid answer."""
        if not isinstance(text, str):
            raise AnswerError("no answer text")
        if self.mode == "choice":
            (field,) = self.fields
            return {field.name: field.value(text)}
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise AnswerError(f"answer is not valid JSON ({exc}): {text[:80]!r}") from None
        if self.mode == "labels":
            labels = self.fields[0].labels
            if not isinstance(value, list) or not value or any(v not in labels for v in value):
                raise AnswerError(f"answer {text[:80]!r} is not a list of the labels")
            return {"labels": list(dict.fromkeys(value))}
        if not isinstance(value, dict):
            raise AnswerError(f"answer is not a JSON object: {text[:80]!r}")
        missing = [f.name for f in self.fields if f.name not in value]
        if missing:
            raise AnswerError(f"answer lacks the field(s) {missing}")
        return {f.name: f.value(value[f.name]) for f in self.fields}


def _field(name: str, spec: Any, where: str) -> AnswerField:
    """One field from a type name, a list of allowed strings, or a JSON Schema fragment."""
    if not isinstance(name, str) or not name.strip():
        raise SchemaError(f"{where}: field names must be non-empty strings, got {name!r}")
    if isinstance(spec, list):
        if not spec or not all(isinstance(v, str) and v for v in spec):
            raise SchemaError(
                f"{where}: field {name!r} lists its allowed values, so they must be non-empty strings"
            )
        labels = list(dict.fromkeys(spec))
        return AnswerField(name=name, kind="enum", labels=labels, json_schema={"enum": labels})
    if isinstance(spec, str):
        kind = TYPE_NAMES.get(spec.strip().lower())
        if kind is None:
            raise SchemaError(
                f"{where}: field {name!r} has type {spec!r}; use one of "
                "string, integer, number, boolean, date, list[string], or a list of allowed values"
            )
        return _field(name, _fragment(kind), where)
    if not isinstance(spec, dict):
        raise SchemaError(
            f"{where}: field {name!r} must be a type name, a list of allowed values or a JSON "
            f"Schema object, got {spec!r}"
        )
    fragment = dict(spec)
    if "enum" in fragment:
        return _field(name, fragment["enum"], where)
    kind_of = {"string": "string", "integer": "integer", "number": "number", "boolean": "boolean"}
    json_type = fragment.get("type")
    if json_type == "string" and fragment.get("format") == "date":
        fragment.pop("format")
        fragment["pattern"] = DATE_PATTERN
        return AnswerField(name=name, kind="date", json_schema=fragment)
    if json_type == "array":
        items = fragment.get("items")
        if not isinstance(items, dict) or items.get("type") != "string":
            raise SchemaError(f"{where}: field {name!r} is an array; only arrays of strings work")
        fragment["items"] = {"maxLength": DEFAULT_MAX_CHARS, **items}
        fragment.setdefault("maxItems", DEFAULT_MAX_ITEMS)
        return AnswerField(name=name, kind="list", json_schema=fragment)
    if json_type not in kind_of:
        raise SchemaError(
            f"{where}: field {name!r} has JSON Schema type {json_type!r}; use string, integer, "
            "number, boolean, a date string, an enum or an array of strings"
        )
    if json_type == "string":
        fragment.setdefault("maxLength", DEFAULT_MAX_CHARS)
    return AnswerField(name=name, kind=kind_of[json_type], json_schema=fragment)  # type: ignore[arg-type]


def _fragment(kind: Kind) -> dict[str, Any]:
    """The JSON Schema of a field given by type name."""
    if kind == "date":
        return {"type": "string", "format": "date"}  # becomes DATE_PATTERN in _field
    if kind == "list":
        return {"type": "array", "items": {"type": "string"}}
    return {"type": kind}


def _from_file(path: str) -> dict[str, Any]:
    """The properties of a JSON Schema file (an object schema)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise SchemaError(
            f"fields {path!r} is no file; pass a JSON Schema file's path or a mapping of field "
            'names to types, e.g. {"party": "string", "amount": "number"}'
        )
    try:
        document = json.loads(file.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise SchemaError(f"fields: schema file {path} is not valid JSON: {exc}") from None
    properties = document.get("properties") if isinstance(document, dict) else None
    if not isinstance(properties, dict) or not properties:
        raise SchemaError(
            f"fields: schema file {path} must be an object schema with 'properties' (one per field)"
        )
    return properties


def extraction_answers(
    fields: list[str] | dict[str, Any] | str | None, reserved: set[str]
) -> Answers:
    """The answer of template=extract from the ``fields`` parameter (names, types or a file)."""
    where = "fields"
    if isinstance(fields, list) and fields:
        if not all(isinstance(name, str) for name in fields):
            raise SchemaError(f"fields must be names (strings), got {fields!r}")
        spec: dict[str, Any] = dict.fromkeys(fields, "string")
    elif isinstance(fields, str) and fields.strip():
        spec = _from_file(fields)
    elif isinstance(fields, dict) and fields:
        spec = fields
    else:
        raise SchemaError(
            "template='extract' needs the parameter fields: field names with types, e.g. "
            '{"party": "string", "amount": "number", "kind": ["sale", "lease"]}, a list of '
            "names (all strings), or a JSON Schema file's path"
        )
    if len(spec) > MAX_FIELDS:
        raise SchemaError(f"{where}: at most {MAX_FIELDS} fields, got {len(spec)}")
    answer_fields = [_field(name, value, where) for name, value in spec.items()]
    clashes = sorted({f.name for f in answer_fields} & reserved)
    if clashes:
        raise SchemaError(
            f"{where}: field(s) {clashes} would clash with result columns of the same name; "
            "rename them"
        )
    return Answers(fields=answer_fields)


def classification_answers(labels: list[str] | None, multi_label: bool) -> Answers:
    """The answer of template=classify: one of ``labels`` (or a list of them)."""
    if not labels or not all(isinstance(v, str) and v.strip() for v in labels):
        raise SchemaError(
            "template='classify' needs the parameter labels: a list of non-empty label strings"
        )
    distinct = list(dict.fromkeys(labels))
    if len(distinct) != len(labels):
        raise SchemaError(
            f"labels has duplicates: {sorted(set(v for v in labels if labels.count(v) > 1))}"
        )
    if multi_label:
        items = {
            "type": "array",
            "items": {"enum": distinct},
            "minItems": 1,
            "maxItems": len(distinct),
        }
        field = AnswerField(name="labels", kind="enum", labels=distinct, json_schema=items)
        return Answers(fields=[field], mode="labels")
    field = AnswerField(name="label", kind="enum", labels=distinct, json_schema={"enum": distinct})
    return Answers(fields=[field], mode="choice")
