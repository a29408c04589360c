"""docflow's LLM handler: runs inside the model container as ``code/inference.py``.

SageMaker inference toolkit contract (``model_fn``, ``input_fn``, ``predict_fn``, ``output_fn``).
The same file runs unchanged in the Hugging Face PyTorch inference container on AWS and in
localcloud's hosting emulator; it imports only the standard library, torch and transformers.

Model: a causal LM saved with ``save_pretrained(safe_serialization=True)`` at the root of the
model directory (``*.safetensors`` + ``config.json`` + tokenizer files), loaded with
``AutoModelForCausalLM``/``AutoTokenizer`` (Mistral, Llama and any other causal LM transformers
knows). bf16 on a GPU (fp16 where bf16 is unsupported), fp32 on CPU. A tokenizer without a pad
token pads with its EOS token; padding is always on the left. The model's own generation
defaults are ignored: the defaults below are the contract. Artifacts saved by transformers 5
also load under the 4.x of today's AWS containers (tokenizer class and ``rope_parameters`` are
mapped back).

Input (``application/jsonlines``, ``application/jsonl``, ``application/x-jsonlines`` or
``application/x-ndjson``; no content type means JSON Lines), one document per line::

    {"id": "doc-17", "prompt": "Summarise: ...", "parameters": {"max_new_tokens": 64}}
    {"id": "doc-18", "messages": [{"role": "user", "content": "..."}]}

``id`` is a non-empty string; exactly one of ``prompt`` (a single user turn) or ``messages`` (a
chat list of ``{"role", "content"}``); other top-level keys are ignored. The model's chat template
is applied (with the generation prompt) when the tokenizer has one; otherwise the plain prompt is
used (messages become ``role: content`` lines). ``application/json`` takes one request
``{"inputs": "text" | [messages], "parameters": {...}}`` (id ``"0"``), or ``"inputs"`` as a list
of strings (ids ``"0"``, ``"1"``, ...).

``parameters`` (all optional; unknown names are an error for that document):
``max_new_tokens`` (int >= 1, default ``$DOCFLOW_MAX_NEW_TOKENS`` or 128), ``do_sample`` (default
false: greedy), ``temperature`` (> 0), ``top_p`` (0 < p <= 1), ``top_k`` (int >= 0),
``repetition_penalty`` (> 0), ``stop`` (a string or a list of strings), ``seed`` (int >= 0).
When sampling, unset knobs mean plain sampling (temperature 1, top_p 1, top_k 0 = off); they
and ``seed`` are ignored when ``do_sample`` is false. A document with ``do_sample`` and a
``seed`` is generated on its own, so its text depends only on its prompt, parameters and seed.

Output (JSON Lines, one line per input document, in input order)::

    {"id": "doc-17", "text": "...", "prompt_tokens": 41, "completion_tokens": 64, "finish_reason": "length"}
    {"id": "doc-18", "error": "prompt is 9000 tokens + max_new_tokens 128 > the model's context of 8192; ..."}

``prompt_tokens`` counts the tokens of the (chat-templated) prompt, padding excluded.
``completion_tokens`` counts the tokens generated for that document, padding excluded: up to and
including the EOS token when the model stopped there, up to and including the token that
completed a stop string when one did. ``finish_reason`` is ``stop`` (EOS or a stop string) or
``length`` (``max_new_tokens`` reached; then ``completion_tokens == max_new_tokens``). ``text``
is decoded without special tokens and ends before the stop string. A document that cannot be
run (malformed line, missing id, empty prompt, prompt too long for the context, bad
parameters) gets an ``error`` line (id ``"line N"`` when the line has no readable id) and the
rest of the batch completes; a micro-batch whose generation fails is retried one document at a
time, so only the documents that fail alone get ``generation failed`` lines. A body that is not
UTF-8, has no documents or has an unsupported content type raises ``ValueError`` (an async
*failure*). Accept: the JSON Lines types, ``*/*`` or none give JSON Lines;
``application/json`` gives one JSON object for a single document, else a JSON array; anything
else raises ``ValueError``.

Environment: ``DOCFLOW_MAX_BATCH_SIZE`` (documents per micro-batch, default 8; documents are
sorted by length and only documents with equal parameters share a micro-batch),
``DOCFLOW_MAX_NEW_TOKENS`` (default ``max_new_tokens``, 128), ``DOCFLOW_NUM_THREADS`` (torch CPU
threads), ``DOCFLOW_MAX_CONTEXT`` (caps the context length taken from the model's config),
``DOCFLOW_DEVICE`` (``cpu``/``cuda``; default: cuda when available).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
import transformers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedTokenizerFast,
    StoppingCriteria,
    StoppingCriteriaList,
)

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
)
DEFAULT_MAX_BATCH_SIZE = 8
DEFAULT_MAX_NEW_TOKENS = 128
MAX_STOP_STRINGS = 16


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


class LoadedModel:
    """What ``model_fn`` returns: model, tokenizer, device and the context length."""

    def __init__(
        self, model: Any, tokenizer: Any, device: torch.device, context_length: int
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.context_length = context_length
        self.max_batch_size = _env_int("DOCFLOW_MAX_BATCH_SIZE", DEFAULT_MAX_BATCH_SIZE)
        # generate() and the global torch seed are not shared safely between threads.
        self.lock = threading.Lock()

    def eos_ids(self) -> list[int]:
        """Every token id that ends a completion (generation config and tokenizer)."""
        ids: set[int] = set()
        configured = self.model.generation_config.eos_token_id
        if isinstance(configured, int):
            ids.add(configured)
        elif configured is not None:
            ids.update(int(i) for i in configured)
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        return sorted(ids)


Entry = Document | Rejected
# (position in the request, document, prompt token ids)
Item = tuple[int, Document, list[int]]


def _env_int(name: str, default: int) -> int:
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


def _media_type(value: str | None) -> str:
    return (value or "").split(";")[0].strip().lower()


# ---------------------------------------------------------------------------------------------
# model_fn


def _context_length(config: Any, tokenizer: Any) -> int:
    """The model's context: its position limit, capped by the tokenizer's and DOCFLOW_MAX_CONTEXT."""
    limits = [
        int(value)
        for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")
        if isinstance(value := getattr(config, name, None), int) and value > 0
    ]
    tokenizer_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tokenizer_max, int) and 0 < tokenizer_max < 10**7:
        limits.append(tokenizer_max)
    if os.environ.get("DOCFLOW_MAX_CONTEXT"):
        limits.append(_env_int("DOCFLOW_MAX_CONTEXT", 1))
    if not limits:
        raise ValueError(
            "cannot tell the model's context length: config.json has no max_position_embeddings; "
            "set DOCFLOW_MAX_CONTEXT in the model's environment"
        )
    return min(limits)


def _device() -> torch.device:
    wanted = os.environ.get("DOCFLOW_DEVICE", "").strip().lower()
    if wanted:
        if wanted.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"DOCFLOW_DEVICE={wanted} but no CUDA device is visible")
        return torch.device(wanted)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _major_version() -> int:
    return int(transformers.__version__.split(".")[0])


def _token_text(value: Any) -> str | None:
    """A special token as saved: a string, or an AddedToken dict with ``content``."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _fast_tokenizer(model_dir: str) -> Any:
    """Build the tokenizer from tokenizer.json + tokenizer_config.json by hand."""
    root = Path(model_dir)
    config_path = root / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    kwargs: dict[str, Any] = {}
    for name in ("bos_token", "eos_token", "unk_token", "pad_token"):
        if (token := _token_text(config.get(name))) is not None:
            kwargs[name] = token
    if isinstance(config.get("model_max_length"), int):
        kwargs["model_max_length"] = config["model_max_length"]
    extra = config.get("extra_special_tokens") or config.get("additional_special_tokens")
    if isinstance(extra, list):
        kwargs["additional_special_tokens"] = [t for e in extra if (t := _token_text(e))]
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(root / "tokenizer.json"), **kwargs)
    if isinstance(config.get("chat_template"), str):
        tokenizer.chat_template = config["chat_template"]
    return tokenizer


def _load_tokenizer(model_dir: str) -> Any:
    """AutoTokenizer, or the fast tokenizer built by hand when the saved class is unknown here."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    except ValueError:
        # e.g. tokenizer_class "TokenizersBackend" (saved by transformers 5) read by 4.x.
        if not (Path(model_dir) / "tokenizer.json").is_file():
            raise
        logger.warning("AutoTokenizer failed for %s; building it from tokenizer.json", model_dir)
        tokenizer = _fast_tokenizer(model_dir)
    template = Path(model_dir) / "chat_template.jinja"
    if not getattr(tokenizer, "chat_template", None) and template.is_file():
        tokenizer.chat_template = template.read_text(encoding="utf-8")
    return tokenizer


def _legacy_config(model_dir: str) -> Any:
    """transformers 4.x: map transformers 5's ``rope_parameters`` back to ``rope_theta``/``rope_scaling``."""
    config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    rope = getattr(config, "rope_parameters", None)
    if isinstance(rope, dict):
        if "rope_theta" in rope:
            config.rope_theta = rope["rope_theta"]
        if rope.get("rope_type", "default") != "default":
            config.rope_scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
    return config


def model_fn(model_dir: str) -> LoadedModel:
    """Load the causal LM and its tokenizer from the safetensors in ``model_dir``."""
    root = Path(model_dir)
    if not any(root.glob("*.safetensors")):
        found = sorted(p.name for p in root.iterdir())[:20] if root.is_dir() else []
        raise ValueError(
            f"no *.safetensors weights in {model_dir} (found {found}); package the model with "
            "save_pretrained(safe_serialization=True) so the weights sit at the artifact's root"
        )
    threads = os.environ.get("DOCFLOW_NUM_THREADS")
    if threads:
        torch.set_num_threads(_env_int("DOCFLOW_NUM_THREADS", 1))
    device = _device()
    dtype = torch.float32
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    # transformers 5 renamed torch_dtype to dtype; the AWS container may still run 4.x.
    dtype_arg = "dtype" if _major_version() >= 5 else "torch_dtype"
    load_kwargs: dict[str, Any] = {
        dtype_arg: dtype,
        "use_safetensors": True,
        "local_files_only": True,
    }
    if device.type == "cuda":
        load_kwargs["device_map"] = {"": str(device)}
    if _major_version() < 5:
        load_kwargs["config"] = _legacy_config(model_dir)
    tokenizer = _load_tokenizer(model_dir)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise ValueError(
                f"the tokenizer in {model_dir} has neither a pad nor an EOS token; set eos_token "
                "in tokenizer_config.json"
            )
        tokenizer.pad_token = tokenizer.eos_token
    model: Any = AutoModelForCausalLM.from_pretrained(model_dir, **load_kwargs)
    if device.type != "cuda":
        model = model.to(device)
    model.eval()
    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = tokenizer.eos_token_id
    # The contract's defaults replace the checkpoint's (e.g. do_sample=True in Llama 3 Instruct).
    model.generation_config = GenerationConfig(
        bos_token_id=model.generation_config.bos_token_id,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id,
    )
    context = _context_length(model.config, tokenizer)
    logger.info(
        "loaded %s (%s) on %s as %s; context %d tokens",
        model_dir,
        model.config.model_type,
        device,
        dtype,
        context,
    )
    return LoadedModel(model, tokenizer, device, context)


# ---------------------------------------------------------------------------------------------
# input_fn


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
    return Params(
        max_new_tokens=max_new or _env_int("DOCFLOW_MAX_NEW_TOKENS", DEFAULT_MAX_NEW_TOKENS),
        do_sample=do_sample,
        temperature=temperature if do_sample else None,
        top_p=top_p if do_sample else None,
        top_k=top_k if do_sample else None,
        repetition_penalty=_number(raw, "repetition_penalty", 0.0, None),
        stop=tuple(dict.fromkeys(stops)),
        seed=seed if do_sample else None,
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
        has_prompt, has_messages = "prompt" in obj, "messages" in obj
        if has_prompt == has_messages:
            raise DocumentError(
                "give exactly one of 'prompt' (a string) or 'messages' (a chat list)"
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
    if not isinstance(request, dict) or "inputs" not in request:
        raise ValueError(
            'application/json requests look like {"inputs": "...", "parameters": {...}}; '
            "for batches send application/jsonlines"
        )
    inputs, params = request["inputs"], request.get("parameters")
    if isinstance(inputs, list) and inputs and all(isinstance(i, str) for i in inputs):
        return [
            parse_document({"id": str(i), "prompt": p, "parameters": params}, str(i))
            for i, p in enumerate(inputs)
        ]
    key = "messages" if isinstance(inputs, list) else "prompt"
    return [parse_document({"id": "0", key: inputs, "parameters": params}, "0")]


def input_fn(body: Any, content_type: str | None) -> list[Entry]:
    """Parse a JSON Lines batch or a single JSON request into documents and rejected lines."""
    media = _media_type(content_type) or JSONLINES_TYPES[0]
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


# ---------------------------------------------------------------------------------------------
# predict_fn


def prompt_ids(document: Document, tokenizer: Any) -> list[int]:
    """Token ids of the document's prompt: chat-templated when the tokenizer has a template."""
    if getattr(tokenizer, "chat_template", None):
        try:
            text = tokenizer.apply_chat_template(
                document.chat(), tokenize=False, add_generation_prompt=True
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


Decode = Callable[[Sequence[int]], str]


class StopStrings(StoppingCriteria):
    """Stops each row once its generated text holds a stop string; records how many tokens that took."""

    def __init__(self, stop: Sequence[str], decode: Decode, prompt_width: int, rows: int) -> None:
        self.stop = list(stop)
        self.decode = decode
        self.prompt_width = prompt_width
        # A character is at most 4 byte-level tokens: this tail always holds a whole stop string.
        self.window = 4 * max(len(s) for s in self.stop) + 4
        self.stopped_at: list[int | None] = [None] * rows

    def __call__(
        self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any
    ) -> torch.Tensor:
        """One flag per row: True once that row has produced a stop string."""
        generated = input_ids[:, self.prompt_width :]
        count = int(generated.shape[1])
        for row, seen in enumerate(self.stopped_at):
            if seen is None and count:
                tail = self.decode(generated[row, -self.window :].tolist())
                if any(s in tail for s in self.stop):
                    self.stopped_at[row] = count
        flags = [seen is not None for seen in self.stopped_at]
        return torch.tensor(flags, dtype=torch.bool, device=input_ids.device)


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


def _generate(loaded: LoadedModel, batch: list[Item]) -> list[dict[str, Any]]:
    """Run one micro-batch (same parameters) with left padding; results in batch order."""
    params = batch[0][1].params
    tokenizer = loaded.tokenizer
    pad_id = int(tokenizer.pad_token_id)
    width = max(len(ids) for _, _, ids in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for row, (_, _, ids) in enumerate(batch):
        input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        attention[row, width - len(ids) :] = 1

    def decode(ids: Sequence[int]) -> str:
        return str(tokenizer.decode(list(ids), skip_special_tokens=True))

    kwargs = params.generate_kwargs()
    eos_ids = loaded.eos_ids()
    stops = StopStrings(params.stop, decode, width, len(batch)) if params.stop else None
    if stops is not None:
        kwargs["stopping_criteria"] = StoppingCriteriaList([stops])
    # A seed applies to this micro-batch only: the global generator state is restored after it.
    cuda = [loaded.device] if loaded.device.type == "cuda" else []
    rng = torch.random.fork_rng(devices=cuda, enabled=params.seed is not None)
    with loaded.lock, torch.inference_mode(), rng:
        if params.seed is not None:
            torch.manual_seed(params.seed)
        output = loaded.model.generate(
            input_ids=input_ids.to(loaded.device),
            attention_mask=attention.to(loaded.device),
            pad_token_id=pad_id,
            eos_token_id=eos_ids,
            **kwargs,
        )
    generated = output[:, width:].tolist()
    results = []
    for row, ((_, document, ids), tokens) in enumerate(zip(batch, generated, strict=True)):
        stopped_at = stops.stopped_at[row] if stops is not None else None
        text, count, reason = finish(tokens, eos_ids, stopped_at, params.stop, decode)
        results.append(
            {
                "id": document.doc_id,
                "text": text,
                "prompt_tokens": len(ids),
                "completion_tokens": count,
                "finish_reason": reason,
            }
        )
    return results


def plan_batches(items: list[Item], max_batch_size: int) -> list[list[Item]]:
    """Group by parameters, sort by prompt length, cut into micro-batches of at most max size."""
    groups: dict[tuple[Any, ...], list[Item]] = {}
    for item in items:
        params = item[1].params
        # A seeded sampled document runs alone so its text does not depend on its neighbours.
        key = params.key() + ((item[0],) if params.do_sample and params.seed is not None else ())
        groups.setdefault(key, []).append(item)
    batches: list[list[Item]] = []
    for group in groups.values():
        group.sort(key=lambda item: len(item[2]))
        batches.extend(group[i : i + max_batch_size] for i in range(0, len(group), max_batch_size))
    return batches


def _run_batch(loaded: LoadedModel, batch: list[Item]) -> list[dict[str, Any]]:
    """Generate a micro-batch; if it fails, retry its documents alone so one bad one fails alone."""
    try:
        return _generate(loaded, batch)
    except Exception as exc:
        if loaded.device.type == "cuda":
            torch.cuda.empty_cache()
        if len(batch) == 1:
            logger.exception("generation failed for %s", batch[0][1].doc_id)
            return [{"id": batch[0][1].doc_id, "error": f"generation failed: {exc}"}]
        logger.warning("micro-batch of %d failed (%s); retrying one by one", len(batch), exc)
        return [result for item in batch for result in _run_batch(loaded, [item])]


def predict_fn(data: Sequence[Entry | dict[str, Any]], model: LoadedModel) -> list[dict[str, Any]]:
    """Generate for every document in length-sorted micro-batches; results in input order."""
    started = time.monotonic()
    results: list[dict[str, Any] | None] = [None] * len(data)
    runnable: list[Item] = []
    for index, raw in enumerate(data):
        # input_fn's entries, or plain document dicts from a caller that skipped input_fn.
        entry = (
            raw
            if isinstance(raw, Document | Rejected)
            else parse_document(raw, f"document {index + 1}")
        )
        if isinstance(entry, Rejected):
            results[index] = {"id": entry.doc_id, "error": entry.error}
            continue
        try:
            ids = prompt_ids(entry, model.tokenizer)
            if not ids:
                raise DocumentError("empty prompt: it has no tokens")
            budget = model.context_length - entry.params.max_new_tokens
            if len(ids) > budget:
                raise DocumentError(
                    f"prompt is {len(ids)} tokens + max_new_tokens {entry.params.max_new_tokens} > "
                    f"the model's context of {model.context_length} tokens; shorten or split the "
                    "document, or lower max_new_tokens"
                )
        except DocumentError as exc:
            results[index] = {"id": entry.doc_id, "error": str(exc)}
            continue
        runnable.append((index, entry, ids))
    batches = plan_batches(runnable, model.max_batch_size)
    for batch in batches:
        for (index, _, _), result in zip(batch, _run_batch(model, batch), strict=True):
            results[index] = result
    done = [r for r in results if r is not None]
    logger.info(
        "%d documents (%d errors) in %d micro-batches: %d prompt + %d completion tokens, %.2f s",
        len(done),
        sum("error" in r for r in done),
        len(batches),
        sum(r.get("prompt_tokens", 0) for r in done),
        sum(r.get("completion_tokens", 0) for r in done),
        time.monotonic() - started,
    )
    return done


# ---------------------------------------------------------------------------------------------
# output_fn


def output_fn(prediction: list[dict[str, Any]], accept: str | None) -> str:
    """JSON Lines, one line per document (``application/json``: an object, or an array)."""
    media = _media_type(accept)
    if media == JSON_TYPE:
        return json.dumps(prediction[0] if len(prediction) == 1 else prediction, ensure_ascii=False)
    if media not in ("", "*/*", *JSONLINES_TYPES):
        raise ValueError(f"unsupported accept type {accept!r}; use application/jsonlines")
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in prediction)
