"""The handler's wire contract: request bodies into documents, prompts into tokens, tokens into result lines."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

logger = logging.getLogger(__name__)

JSONLINES_TYPES = (
    "application/jsonlines",
    "application/jsonl",
    "application/x-jsonlines",
    "application/x-ndjson",
)
JSON_TYPE = "application/json"
PARAMETER_NAMES = (
    "max_new_tokens",
    "do_sample",
    "temperature",
    "top_p",
    "top_k",
    "repetition_penalty",
    "stop",
    "seed",
    "json_schema",
    "choices",
)
DEFAULT_MAX_NEW_TOKENS = 128
MAX_STOP_STRINGS = 16
MAX_CHOICES = 1000


class DocumentError(ValueError):
    """One document cannot be run; the message becomes its error line."""


class Params(NamedTuple):
    """Validated generation parameters of one document; equal params may share a micro-batch."""

    max_new_tokens: int
    do_sample: bool = False
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    json_schema: str | None = None  # canonical JSON text: the output must validate against it
    choices: tuple[str, ...] = ()  # the output must be exactly one of these

    def key(self) -> tuple[Any, ...]:
        """A hashable identity: documents with equal keys can be generated together."""
        return tuple(self)

    def generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``model.generate`` (sampling knobs only when sampling)."""
        kwargs: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": self.do_sample,
        }
        if self.do_sample:
            kwargs["temperature"] = 1.0 if self.temperature is None else self.temperature
            kwargs["top_p"] = 1.0 if self.top_p is None else self.top_p
            kwargs["top_k"] = 0 if self.top_k is None else self.top_k
        if self.repetition_penalty is not None:
            kwargs["repetition_penalty"] = self.repetition_penalty
        return kwargs


class Document(NamedTuple):
    """A parsed document: its id, chat messages (or plain prompt) and parameters."""

    doc_id: str
    params: Params
    prompt: str | None = None
    messages: list[dict[str, str]] | None = None

    def chat(self) -> list[dict[str, str]]:
        """The conversation to template: the messages, or the prompt as one user turn."""
        if self.messages is not None:
            return self.messages
        return [{"role": "user", "content": self.prompt or ""}]


class Rejected(NamedTuple):
    """A line that could not be parsed into a document; it becomes an error line."""

    doc_id: str
    error: str


Entry = Document | Rejected
# (position in the request, document, prompt token ids)
Item = tuple[int, Document, list[int]]


def env_int(name: str, default: int) -> int:
    """A positive integer from the environment, or ``default`` when unset."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(
            f"{name}={raw!r} is not an integer; set it to a positive whole number"
        ) from None
    if value < 1:
        raise ValueError(f"{name}={value} must be >= 1")
    return value


def media_type(value: str | None) -> str:
    return (value or "").split(";")[0].strip().lower()


def _number(params: dict[str, Any], name: str, low: float, high: float | None) -> float | None:
    value = params.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DocumentError(f"parameter {name} must be a number, got {value!r}")
    if not (value > low and (high is None or value <= high)):
        bound = f"in ({low}, {high}]" if high is not None else f"> {low}"
        raise DocumentError(f"parameter {name}={value} must be {bound}")
    return float(value)


def _integer(params: dict[str, Any], name: str, minimum: int) -> int | None:
    value = params.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise DocumentError(f"parameter {name} must be an integer, got {value!r}")
    if value < minimum:
        raise DocumentError(f"parameter {name}={value} must be >= {minimum}")
    return value


def _json_schema(raw: dict[str, Any]) -> str | None:
    value = raw.get("json_schema")
    if value is None:
        return None
    if not isinstance(value, dict) or not value:
        raise DocumentError(
            f"parameter json_schema must be a non-empty JSON Schema object, got {value!r}"
        )
    # Key order kept: the properties are generated in the order the schema lists them.
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _choices(raw: dict[str, Any]) -> tuple[str, ...]:
    value = raw.get("choices")
    if value is None:
        return ()
    if not isinstance(value, list) or not value or not all(isinstance(c, str) and c for c in value):
        raise DocumentError("parameter choices must be a non-empty list of non-empty strings")
    if len(value) > MAX_CHOICES:
        raise DocumentError(f"at most {MAX_CHOICES} choices, got {len(value)}")
    return tuple(dict.fromkeys(value))


def parse_params(raw: Any) -> Params:
    """Validate a document's ``parameters`` object into ``Params`` (DocumentError if invalid)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise DocumentError(f"parameters must be a JSON object, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(PARAMETER_NAMES))
    if unknown:
        raise DocumentError(f"unknown parameter(s) {unknown}; supported: {list(PARAMETER_NAMES)}")
    max_new = _integer(raw, "max_new_tokens", 1)
    do_sample = raw.get("do_sample", False)
    if not isinstance(do_sample, bool):
        raise DocumentError(f"parameter do_sample must be true or false, got {do_sample!r}")
    stop_raw = raw.get("stop")
    stops: list[Any] = (
        [] if stop_raw is None else [stop_raw] if isinstance(stop_raw, str) else stop_raw
    )
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise DocumentError("parameter stop must be a non-empty string or a list of them")
    if len(stops) > MAX_STOP_STRINGS:
        raise DocumentError(f"at most {MAX_STOP_STRINGS} stop strings, got {len(stops)}")
    temperature = _number(raw, "temperature", 0.0, None)
    top_p = _number(raw, "top_p", 0.0, 1.0)
    top_k = _integer(raw, "top_k", 0)
    seed = _integer(raw, "seed", 0)
    json_schema, choices = _json_schema(raw), _choices(raw)
    if json_schema is not None and choices:
        raise DocumentError("give at most one of parameters json_schema and choices")
    if stops and (json_schema is not None or choices):
        raise DocumentError(
            "parameter stop cannot be combined with json_schema or choices: a stop string "
            "would cut the constrained output; leave stop out"
        )
    return Params(
        max_new_tokens=max_new or env_int("DOCFLOW_MAX_NEW_TOKENS", DEFAULT_MAX_NEW_TOKENS),
        do_sample=do_sample,
        temperature=temperature if do_sample else None,
        top_p=top_p if do_sample else None,
        top_k=top_k if do_sample else None,
        repetition_penalty=_number(raw, "repetition_penalty", 0.0, None),
        stop=tuple(dict.fromkeys(stops)),
        seed=seed if do_sample else None,
        json_schema=json_schema,
        choices=choices,
    )


def _messages(raw: Any) -> list[dict[str, str]]:
    if not isinstance(raw, list) or not raw:
        raise DocumentError("messages must be a non-empty list of {role, content} objects")
    out: list[dict[str, str]] = []
    for i, message in enumerate(raw):
        if (
            not isinstance(message, dict)
            or not isinstance(message.get("role"), str)
            or not isinstance(message.get("content"), str)
        ):
            raise DocumentError(f"messages[{i}] must be an object with string role and content")
        out.append({"role": message["role"], "content": message["content"]})
    if not any(m["content"].strip() for m in out):
        raise DocumentError("empty prompt: every message's content is empty")
    return out


def parse_document(obj: Any, fallback_id: str) -> Entry:
    """One JSON value into a Document, or a Rejected entry that says what is wrong."""
    if not isinstance(obj, dict):
        return Rejected(fallback_id, f"{fallback_id} is not a JSON object with id and prompt")
    doc_id = obj.get("id")
    if not isinstance(doc_id, str) or not doc_id:
        return Rejected(fallback_id, f"{fallback_id} has no 'id' (a non-empty string); add one")
    try:
        params = parse_params(obj.get("parameters"))
        if "inputs" in obj:  # the TGI/LMI key: a string is the prompt, a list the messages
            if "prompt" in obj or "messages" in obj:
                raise DocumentError("give one of 'inputs', 'prompt' or 'messages', not several")
            inputs = obj["inputs"]
            obj = {"messages" if isinstance(inputs, list) else "prompt": inputs}
        has_prompt, has_messages = "prompt" in obj, "messages" in obj
        if has_prompt == has_messages:
            raise DocumentError(
                "give exactly one of 'prompt' or 'inputs' (a string), or 'messages' (a chat list)"
            )
        if has_messages:
            return Document(doc_id, params, messages=_messages(obj["messages"]))
        prompt = obj["prompt"]
        if not isinstance(prompt, str):
            raise DocumentError(f"prompt must be a string, got {type(prompt).__name__}")
        if not prompt.strip():
            raise DocumentError("empty prompt: send some text to generate from")
        return Document(doc_id, params, prompt=prompt)
    except DocumentError as exc:
        return Rejected(doc_id, str(exc))


def _decode_body(body: Any) -> str:
    if isinstance(body, str):
        return body
    if hasattr(body, "read"):
        body = body.read()
    if isinstance(body, bytes | bytearray | memoryview):
        try:
            return bytes(body).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(
                f"request body is not UTF-8 text ({exc}); send JSON Lines encoded as UTF-8"
            ) from None
    raise ValueError(f"request body must be bytes or str, got {type(body).__name__}")


def _json_request(text: str) -> list[Entry]:
    try:
        request = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"application/json body is not valid JSON ({exc}); send "
            '{"inputs": "...", "parameters": {...}} or use application/jsonlines'
        ) from None
    if not isinstance(request, dict) or not {"inputs", "prompt", "messages"} & set(request):
        raise ValueError(
            'application/json requests look like {"inputs": "...", "parameters": {...}} '
            '(or "prompt"/"messages" as in JSON Lines); for batches send application/jsonlines'
        )
    inputs, params = request.get("inputs"), request.get("parameters")
    if isinstance(inputs, list) and inputs and all(isinstance(i, str) for i in inputs):
        return [
            parse_document({"id": str(i), "prompt": p, "parameters": params}, str(i))
            for i, p in enumerate(inputs)
        ]
    return [parse_document({**request, "id": str(request.get("id") or "0")}, "0")]


def parse_body(body: Any, content_type: str | None) -> list[Entry]:
    """Parse a JSON Lines batch or a single JSON request into documents and rejected lines."""
    media = media_type(content_type) or JSONLINES_TYPES[0]
    if media not in (*JSONLINES_TYPES, JSON_TYPE):
        raise ValueError(
            f"unsupported content type {content_type!r}; send application/jsonlines "
            '(one document per line) or application/json ({"inputs": ...})'
        )
    text = _decode_body(body)
    if text.startswith("\ufeff"):
        text = text[1:]
    if media == JSON_TYPE:
        return _json_request(text)
    entries: list[Entry] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            entries.append(Rejected(f"line {number}", f"line {number} is not valid JSON: {exc}"))
            continue
        entries.append(parse_document(obj, f"line {number}"))
    if not entries:
        raise ValueError("request body has no documents; send one JSON object per line")
    return entries


def prompt_ids(document: Document, tokenizer: Any) -> list[int]:
    """Token ids of the document's prompt: chat-templated when the tokenizer has a template."""
    if getattr(tokenizer, "chat_template", None):
        chat = document.chat()
        try:
            try:
                text = tokenizer.apply_chat_template(
                    chat, tokenize=False, add_generation_prompt=True
                )
            except Exception:
                folded = fold_system(chat)
                if folded is None:
                    raise
                text = tokenizer.apply_chat_template(
                    folded, tokenize=False, add_generation_prompt=True
                )
        except Exception as exc:  # jinja raises on e.g. roles that do not alternate
            raise DocumentError(f"the model's chat template rejected the messages: {exc}") from None
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    elif document.messages is not None:
        text = "".join(f"{m['role']}: {m['content']}\n" for m in document.messages) + "assistant:"
        ids = tokenizer(text)["input_ids"]
    else:
        ids = tokenizer(document.prompt or "")["input_ids"]
    return [int(i) for i in ids]


def fold_system(chat: list[dict[str, str]]) -> list[dict[str, str]] | None:
    """A leading system message folded into the first user turn (for templates without a system
    role, e.g. Mistral Instruct's); None when there is nothing to fold."""
    if len(chat) < 2 or chat[0]["role"] != "system" or chat[1]["role"] != "user":
        return None
    first = {"role": "user", "content": f"{chat[0]['content']}\n\n{chat[1]['content']}"}
    return [first, *chat[2:]]


Decode = Callable[[Sequence[int]], str]


def finish(
    tokens: Sequence[int],
    eos_ids: Sequence[int],
    stopped_at: int | None,
    stop: Sequence[str],
    decode: Decode,
) -> tuple[str, int, str]:
    """(text, completion_tokens, finish_reason) of one generated row, padding excluded.

    ``stopped_at`` is the number of tokens after which a stop string was complete, if one was.
    A row that met neither EOS nor a stop string ran to ``max_new_tokens`` (generation only
    ends early when every row has finished), so its whole length counts.
    """
    eos_at = next((i for i, t in enumerate(tokens) if t in eos_ids), None)
    if stopped_at is not None and (eos_at is None or stopped_at <= eos_at):
        text = decode(tokens[:stopped_at])
        hits = [text.find(s) for s in stop if s in text]
        return (text[: min(hits)] if hits else text), stopped_at, "stop"
    if eos_at is not None:
        return decode(tokens[:eos_at]), eos_at + 1, "stop"
    return decode(tokens), len(tokens), "length"
