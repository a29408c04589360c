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

    {"id": "doc-17", "text": "...", "prompt_tokens": 41, "cached_tokens": 32, "completion_tokens": 64, "finish_reason": "length"}
    {"id": "doc-18", "error": "prompt is 9000 tokens + max_new_tokens 128 > the model's context of 8192; ..."}

``prompt_tokens`` counts the tokens of the (chat-templated) prompt, padding excluded;
``cached_tokens`` how many of them were served from the prefix cache (0 on the static path).
``completion_tokens`` counts the tokens generated for that document, padding excluded: up to and
including the EOS token when the model stopped there, up to and including the token that
completed a stop string when one did. ``finish_reason`` is ``stop`` (EOS or a stop string) or
``length`` (``max_new_tokens`` reached; then ``completion_tokens == max_new_tokens``). ``text``
is decoded without special tokens and ends before the stop string. A document that cannot be
run (malformed line, missing id, empty prompt, prompt too long for the context, bad
parameters, prompt + max_new_tokens over the engine's token budget, cancelled or timed out)
gets an ``error`` line (id ``"line N"`` when the line has no readable id) and the rest of the
batch completes; documents whose generation fails are retried one at a time on the static path,
so only the documents that fail alone get ``generation failed`` lines. A body that is not
UTF-8, has no documents or has an unsupported content type raises ``ValueError`` (an async
*failure*). Accept: the JSON Lines types, ``*/*`` or none give JSON Lines;
``application/json`` gives one JSON object for a single document, else a JSON array; anything
else raises ``ValueError``.

Serving: one ``Engine`` per instance (see "The serving engine" below) generates for every
concurrent invocation and every document at once, at token granularity (continuous batching);
``stream_fn`` yields one document's text as it is generated. ``DOCFLOW_ENGINE``: ``continuous``
(the default with transformers >= 5) or ``static`` (the default under transformers 4.x, e.g. the
AWS Hugging Face container's 4.51: length-sorted micro-batches, one at a time per instance; it
needs nothing that container lacks, so an endpoint without internet works either way).
Engine limits: ``DOCFLOW_MAX_BATCH_TOKENS`` (keys/values of the running batch in tokens, padding
included; default from memory: 5 % of RAM on CPU, 80 % of the GPU memory left after the weights,
at most ``DOCFLOW_MAX_SEQUENCES`` x context), ``DOCFLOW_MAX_SEQUENCES`` (documents in flight;
default 16 on CPU, 64 on GPU), ``DOCFLOW_PREFILL_CHUNK`` (prompt tokens prefilled per step,
default 512), ``DOCFLOW_PREFIX_CACHE_TOKENS`` (prefix cache size, default an eighth of the batch
budget; 0 turns it off), ``DOCFLOW_PREFIX_BLOCK`` (its granularity, 16 tokens),
``DOCFLOW_INVOCATION_TIMEOUT_S`` (cancel an invocation's unfinished documents after it; unset:
never). A Mistral ``sliding_window`` (v0.1: 4096) is applied as in transformers.

Environment: ``DOCFLOW_MAX_BATCH_SIZE`` (static path: documents per micro-batch, default 8;
documents are sorted by length and only documents with equal parameters share a micro-batch),
``DOCFLOW_MAX_NEW_TOKENS`` (default ``max_new_tokens``, 128), ``DOCFLOW_NUM_THREADS`` (torch CPU
threads), ``DOCFLOW_MAX_CONTEXT`` (caps the context length taken from the model's config),
``DOCFLOW_DEVICE`` (``cpu``/``cuda``; default: cuda when available).
"""

from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import inspect
import itertools
import json
import logging
import os
import queue
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
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
    RepetitionPenaltyLogitsProcessor,
    StoppingCriteria,
    StoppingCriteriaList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
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
        # The serving engine (continuous batching); None: the static micro-batch path.
        self.engine: Engine | None = None

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
    loaded = LoadedModel(model, tokenizer, device, context)
    if engine_kind() == "continuous":
        loaded.engine = Engine(loaded, engine_limits(model, device, context))
    logger.info(
        "loaded %s (%s) on %s as %s; context %d tokens; %s",
        model_dir,
        model.config.model_type,
        device,
        dtype,
        context,
        f"engine {loaded.engine.limits}" if loaded.engine else "static micro-batches",
    )
    return loaded


def engine_kind() -> str:
    """DOCFLOW_ENGINE: ``continuous`` (default with transformers >= 5) or ``static``.

    The engine drives the model's forward directly with its own key/value cache, an interface
    only tested with transformers 5; under 4.x (e.g. the AWS container's 4.51) the default is
    the static path, which needs nothing beyond what that container has.
    """
    wanted = os.environ.get("DOCFLOW_ENGINE", "").strip().lower()
    if not wanted:
        return "continuous" if _major_version() >= 5 else "static"
    if wanted not in ("continuous", "static"):
        raise ValueError(f"DOCFLOW_ENGINE={wanted!r}: use 'continuous' or 'static'")
    return wanted


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
                "cached_tokens": 0,
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


# ---------------------------------------------------------------------------------------------
# The serving engine: one per instance, shared by every concurrent invocation and document.
#
# Continuous batching at token granularity over a hand-written decode loop: each step prefills
# at most DOCFLOW_PREFILL_CHUNK prompt tokens of newly admitted documents (one document at a
# time, chunked, from the longest cached prefix) and then decodes one token for every running
# document. The running batch keeps its keys/values in one buffer per layer, rows left-padded
# and right-aligned, so every step writes one column in place; a finished document frees its
# row at once and the next one is written into it. Admission keeps rows x columns within the
# token budget, so memory is bounded whatever the payloads look like.

DEFAULT_PREFILL_CHUNK = 512
DEFAULT_PREFIX_BLOCK = 16
CPU_KV_MEMORY_SHARE = 0.05  # of physical memory, for the running batch's keys and values
GPU_KV_MEMORY_SHARE = 0.80  # of the memory left free once the weights are loaded
DEFAULT_MAX_SEQUENCES = {"cpu": 16, "cuda": 64}


class EngineLimits(NamedTuple):
    """How much the engine may hold at once (environment variables, defaults from memory)."""

    max_tokens: int  # keys/values of the running batch, in tokens, padding included
    max_sequences: int
    prefill_chunk: int
    prefix_cache_tokens: int  # 0: no prefix cache
    prefix_block: int


def _env_count(name: str, default: int) -> int:
    """A whole number >= 0 from the environment (0 switches a feature off)."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit():
        raise ValueError(f"{name}={raw!r} must be a whole number >= 0")
    return int(raw)


def _kv_bytes_per_token(model: Any) -> int:
    """Bytes of keys + values one token takes across all layers."""
    config = (
        model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    )
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    element = torch.finfo(model.dtype).bits // 8
    return 2 * int(config.num_hidden_layers) * kv_heads * head_dim * element


def engine_limits(model: Any, device: torch.device, context_length: int) -> EngineLimits:
    """The engine's limits from DOCFLOW_MAX_BATCH_TOKENS etc., else from the device's memory."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        memory = int(free * GPU_KV_MEMORY_SHARE)
    else:
        memory = int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") * CPU_KV_MEMORY_SHARE)
    max_sequences = _env_int("DOCFLOW_MAX_SEQUENCES", DEFAULT_MAX_SEQUENCES.get(device.type, 16))
    from_memory = max(memory // _kv_bytes_per_token(model), context_length)
    max_tokens = _env_int(
        "DOCFLOW_MAX_BATCH_TOKENS", min(from_memory, max_sequences * context_length)
    )
    return EngineLimits(
        max_tokens=max_tokens,
        max_sequences=max_sequences,
        prefill_chunk=_env_int("DOCFLOW_PREFILL_CHUNK", DEFAULT_PREFILL_CHUNK),
        prefix_cache_tokens=_env_count("DOCFLOW_PREFIX_CACHE_TOKENS", max_tokens // 8),
        prefix_block=_env_int("DOCFLOW_PREFIX_BLOCK", DEFAULT_PREFIX_BLOCK),
    )


def _additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean [rows, queries, keys] mask as the additive 4-D float mask attention takes."""
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


class _PromptCache:
    """Keys/values of one document while its prompt is prefilled (batch of one, grows by chunk)."""

    def __init__(self, layers: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> None:
        self.layers = layers or []

    def update(
        self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append this chunk's keys/values of a layer; return the layer's whole keys/values."""
        if layer_idx < len(self.layers):
            old_k, old_v = self.layers[layer_idx]
            key, value = torch.cat([old_k, key], dim=2), torch.cat([old_v, value], dim=2)
            self.layers[layer_idx] = (key, value)
        else:
            self.layers.append((key, value))
        return key, value

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Tokens cached so far."""
        return int(self.layers[0][0].shape[2]) if self.layers else 0


class _PackedCache:
    """Keys/values for one packed prefill: every document's past, then the new chunks end to end."""

    def __init__(
        self, pasts: list[list[tuple[torch.Tensor, torch.Tensor]]], lengths: list[int]
    ) -> None:
        self.pasts = pasts
        self.lengths = lengths
        self.new: list[tuple[torch.Tensor, torch.Tensor]] = []

    def update(
        self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keep the chunks' keys/values of a layer; return the pasts and them, concatenated."""
        self.new.append((key, value))
        if not any(self.pasts):
            return key, value
        keys = [p[layer_idx][0] for p in self.pasts if p] + [key]
        values = [p[layer_idx][1] for p in self.pasts if p] + [value]
        return torch.cat(keys, dim=2), torch.cat(values, dim=2)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Tokens cached before this pass."""
        return sum(int(p[0][0].shape[2]) for p in self.pasts if p)

    def split(self) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
        """Each document's keys/values after the pass: its past, then its new chunk."""
        out = []
        at = 0
        for past, take in zip(self.pasts, self.lengths, strict=True):
            layers = []
            for layer, (key, value) in enumerate(self.new):
                k = key[:, :, at : at + take]
                v = value[:, :, at : at + take]
                if past:
                    k = torch.cat([past[layer][0], k], dim=2)
                    v = torch.cat([past[layer][1], v], dim=2)
                else:
                    k, v = k.contiguous(), v.contiguous()
                layers.append((k, v))
            out.append(layers)
            at += take
        return out


class _BatchCache:
    """The running batch's keys/values: one row per document, right-aligned, written in place."""

    def __init__(self) -> None:
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.valid = torch.zeros((0, 0), dtype=torch.bool)
        self.width = 0  # columns in use; the next token of every row goes to this column

    @property
    def capacity(self) -> int:
        """Columns allocated."""
        return int(self.valid.shape[1])

    def update(
        self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the step's key/value column of a layer; return the layer's keys/values so far."""
        end = self.width + 1
        self.keys[layer_idx][:, :, self.width : end] = key
        self.values[layer_idx][:, :, self.width : end] = value
        return self.keys[layer_idx][:, :, :end], self.values[layer_idx][:, :, :end]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Columns in use."""
        return self.width

    def layout(
        self,
        keep: list[int],
        lengths: list[int],
        new: list[list[tuple[torch.Tensor, torch.Tensor]]],
        columns: int,
    ) -> None:
        """Rebuild with rows ``keep`` (their ``lengths``) plus ``new`` prompts, ``columns`` wide."""
        new_lengths = [int(n[0][0].shape[2]) for n in new]
        width = max([*lengths, *new_lengths, 0])
        rows = len(keep) + len(new)
        like = new[0][0][0] if new else self.keys[0]
        layers = len(new[0]) if new else len(self.keys)
        heads, dim, dtype, device = like.shape[1], like.shape[3], like.dtype, like.device
        del like
        index = torch.tensor(keep, dtype=torch.long, device=device)
        shift = self.width - width  # leading columns that no kept row uses (>= 0 or < 0)
        src = slice(max(shift, 0), self.width)
        dst = slice(max(-shift, 0), width)
        # One allocation for every layer: large enough to be mapped (and unmapped) on its own,
        # so a re-layout returns the old cache to the system instead of fragmenting the heap.
        buffer = torch.zeros((layers, 2, rows, heads, columns, dim), dtype=dtype, device=device)
        keys, values = [], []
        for layer in range(layers):
            k, v = buffer[layer, 0], buffer[layer, 1]
            if keep:
                k[: len(keep), :, dst] = self.keys[layer][:, :, src].index_select(0, index)
                v[: len(keep), :, dst] = self.values[layer][:, :, src].index_select(0, index)
            for row, prompt in enumerate(new, start=len(keep)):
                pk, pv = prompt[layer]
                k[row, :, width - pk.shape[2] : width] = pk[0]
                v[row, :, width - pv.shape[2] : width] = pv[0]
            keys.append(k)
            values.append(v)
        valid = torch.zeros((rows, columns), dtype=torch.bool, device=device)
        for row, length in enumerate([*lengths, *new_lengths]):
            valid[row, width - length : width] = True
        self.keys, self.values, self.valid, self.width = keys, values, valid, width

    def place(self, row: int, prompt: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Write a prefilled prompt into a free row, right-aligned at the current width."""
        length = int(prompt[0][0].shape[2])
        for layer, (pk, pv) in enumerate(prompt):
            self.keys[layer][row, :, self.width - length : self.width] = pk[0]
            self.values[layer][row, :, self.width - length : self.width] = pv[0]
        self.valid[row] = False
        self.valid[row, self.width - length : self.width] = True

    def step_mask(self, dtype: torch.dtype, window: int | None = None) -> torch.Tensor:
        """The decode step's 4-D mask: each row sees its own tokens (within ``window``) and the new column."""
        allowed = self.valid[:, : self.width + 1].clone()
        allowed[:, self.width] = True
        if window is not None and self.width + 1 > window:
            allowed[:, : self.width + 1 - window] = False
        return _additive_mask(allowed[:, None, :], dtype)

    def advance(self) -> None:
        """The step's column is written: count it."""
        self.valid[:, self.width] = True
        self.width += 1

    def clear(self) -> None:
        """Drop everything (after a failed step)."""
        self.__init__()  # type: ignore[misc]


class _PrefixCache:
    """Keys/values of prompt blocks already computed, keyed by the whole prefix up to them (LRU)."""

    def __init__(self, max_tokens: int, block: int) -> None:
        self.max_tokens = max_tokens
        self.block = block
        self.blocks: OrderedDict[
            int, tuple[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]]
        ] = OrderedDict()
        self.lock = threading.Lock()

    def _keys(self, prompt: Sequence[int], blocks: int) -> list[tuple[int, tuple[int, ...]]]:
        keys, chained = [], 0
        for n in range(blocks):
            tokens = tuple(prompt[n * self.block : (n + 1) * self.block])
            chained = hash((chained, tokens))
            keys.append((chained, tokens))
        return keys

    def lookup(self, prompt: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """The longest cached prefix of ``prompt`` (whole blocks, at least one token left over)."""
        if self.max_tokens < self.block:
            return None
        found: list[list[tuple[torch.Tensor, torch.Tensor]]] = []
        hits: list[int] = []
        with self.lock:
            for key, tokens in self._keys(prompt, (len(prompt) - 1) // self.block):
                entry = self.blocks.get(key)
                if entry is None or entry[0] != tokens:
                    break
                found.append(entry[1])
                hits.append(key)
            for key in reversed(hits):  # parents end up more recent than their children
                self.blocks.move_to_end(key)
        if not found:
            return None
        layers = len(found[0])
        return [
            (
                torch.cat([f[layer][0] for f in found], dim=2),
                torch.cat([f[layer][1] for f in found], dim=2),
            )
            for layer in range(layers)
        ]

    def insert(
        self, prompt: Sequence[int], layers: list[tuple[torch.Tensor, torch.Tensor]]
    ) -> None:
        """Remember the whole blocks of a prefilled prompt, evicting the least recently used."""
        capacity = self.max_tokens // self.block
        if capacity == 0:
            return
        keys = self._keys(prompt, min(len(prompt) // self.block, capacity))
        with self.lock:
            for n, (key, tokens) in reversed(list(enumerate(keys))):
                if key in self.blocks:
                    self.blocks.move_to_end(key)
                    continue
                cut = slice(n * self.block, (n + 1) * self.block)
                self.blocks[key] = (
                    tokens,
                    [(k[:, :, cut].clone(), v[:, :, cut].clone()) for k, v in layers],
                )
            while len(self.blocks) > capacity:
                self.blocks.popitem(last=False)

    @property
    def tokens(self) -> int:
        """Tokens held."""
        return len(self.blocks) * self.block


class Generation:
    """One document inside the engine: a handle to wait on, stream from, or cancel."""

    def __init__(
        self, item: Item, invocation: int, eos_ids: list[int], decode: Decode, device: torch.device
    ) -> None:
        self.index, self.document, self.prompt = item
        self.params = self.document.params
        self.invocation = invocation
        self.eos_ids = eos_ids
        self.decode = decode
        self.final_length = len(self.prompt) + self.params.max_new_tokens
        self.tokens: list[int] = []
        self.stopped_at: int | None = None
        self.cached_tokens = 0
        self.prefill: _PromptCache | None = None
        self.prefilled = 0  # prompt tokens whose keys/values exist
        self.result: dict[str, Any] | None = None
        self.failure: BaseException | None = None
        self.cancel_reason: str | None = None
        self.done = threading.Event()
        self._events: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self.generator: torch.Generator | None = None
        if self.params.do_sample and self.params.seed is not None:
            self.generator = torch.Generator(device=device).manual_seed(self.params.seed)
        self.window = 4 * max((len(s) for s in self.params.stop), default=0) + 4
        self.wake: Callable[[], None] = lambda: None  # tells the engine something changed

    @property
    def length(self) -> int:
        """Tokens in its cache once the pending token is written: prompt + generated - 1."""
        return len(self.prompt) + len(self.tokens) - 1

    def cancel(self, reason: str = "cancelled") -> None:
        """Stop generating; the engine frees its slot at the next step and it gets an error line."""
        if not self.done.is_set():
            self.cancel_reason = reason
            self.wake()

    def wait(self, timeout: float | None = None) -> bool:
        """True once it has a result (or failed, or was cancelled)."""
        return self.done.wait(timeout)

    def stream(self) -> Iterator[str]:
        """The generated text as it is produced; the pieces join to the final ``text``."""
        tokens: list[int] = []
        emitted = ""
        hold = max((len(s) for s in self.params.stop), default=1) - 1
        while (token := self._events.get()) is not None:
            tokens.append(token)
            text = self.decode([t for t in tokens if t not in self.eos_ids]).rstrip("\ufffd")
            safe = text[: max(len(text) - hold, 0)]
            if len(safe) > len(emitted) and safe.startswith(emitted):
                yield safe[len(emitted) :]
                emitted = safe
        final = (self.result or {}).get("text")
        if final is None:
            raise RuntimeError(str((self.result or {}).get("error") or self.failure))
        if final.startswith(emitted) and len(final) > len(emitted):
            yield final[len(emitted) :]

    def choose(self, scores: torch.Tensor) -> int:
        """The next token from this row's logits ([1, vocab], float32) under its parameters."""
        params = self.params
        ids = None
        if params.repetition_penalty is not None or params.do_sample:
            ids = torch.tensor([self.prompt + self.tokens], dtype=torch.long, device=scores.device)
        if params.repetition_penalty is not None:
            scores = RepetitionPenaltyLogitsProcessor(params.repetition_penalty)(ids, scores)
        if not params.do_sample:
            return int(scores.argmax(-1))
        # The warpers generate() applies, in its order; unset knobs mean plain sampling.
        if params.temperature not in (None, 1.0):
            scores = TemperatureLogitsWarper(params.temperature)(ids, scores)
        if params.top_k not in (None, 0):
            scores = TopKLogitsWarper(top_k=params.top_k)(ids, scores)
        if params.top_p not in (None, 1.0):
            scores = TopPLogitsWarper(top_p=params.top_p)(ids, scores)
        probs = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probs, num_samples=1, generator=self.generator))

    def append(self, token: int) -> bool:
        """Record a generated token; True when the document is finished."""
        self.tokens.append(token)
        self._events.put(token)
        count = len(self.tokens)
        if self.params.stop and self.stopped_at is None:
            tail = self.decode(self.tokens[-self.window :])
            if any(s in tail for s in self.params.stop):
                self.stopped_at = count
        return (
            token in self.eos_ids
            or self.stopped_at is not None
            or count >= self.params.max_new_tokens
        )

    def finish(
        self, result: dict[str, Any] | None = None, failure: BaseException | None = None
    ) -> None:
        """Set the outcome (the result line, or a failure to retry alone) and wake the waiters."""
        if result is None and failure is None:
            text, count, reason = finish(
                self.tokens, self.eos_ids, self.stopped_at, self.params.stop, self.decode
            )
            result = {
                "id": self.document.doc_id,
                "text": text,
                "prompt_tokens": len(self.prompt),
                "cached_tokens": self.cached_tokens,
                "completion_tokens": count,
                "finish_reason": reason,
            }
        self.result, self.failure = result, failure
        self.prefill = None
        self.done.set()
        self._events.put(None)


def _return_free_memory() -> None:
    """Give freed heap memory back to the system (glibc), so an idle instance shrinks again."""
    with suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)


_ENGINES: weakref.WeakSet[Engine] = weakref.WeakSet()


@atexit.register
def _close_engines() -> None:
    """Stop engine threads before the interpreter tears torch down under them."""
    for engine in list(_ENGINES):
        engine.close()


class Engine:
    """Continuous batching for one loaded model; ``submit`` from any thread."""

    def __init__(self, loaded: LoadedModel, limits: EngineLimits) -> None:
        self.loaded = loaded
        self.limits = limits
        self.model = loaded.model
        self.prefix = _PrefixCache(limits.prefix_cache_tokens, limits.prefix_block)
        self.cache = _BatchCache()
        self.rows: list[Generation | None] = []  # the batch cache's rows; None: free
        self.prefilling: list[Generation] = []
        self.waiting: deque[Generation] = deque()
        self.cond = threading.Condition()
        self.holds = 0
        self.credits = 0
        self.trimmed_at = 0
        self.closed = False
        self.invocations = itertools.count(1)
        self.thread: threading.Thread | None = None
        # Mistral's sliding window (None for v0.2+): each token sees at most this many tokens.
        config = self.model.config
        window = getattr(config, "sliding_window", None) if config.model_type == "mistral" else None
        self.window: int | None = int(window) if window else None
        params = inspect.signature(self.model.forward).parameters
        self.cache_arg = "cache" if "cache" in params else "past_key_values"
        self.stats: dict[str, int] = {
            "submitted": 0,
            "finished": 0,
            "cancelled": 0,
            "rejected": 0,
            "failed": 0,
            "steps": 0,
            "decode_steps": 0,
            "decoded_rows": 0,
            "shared_steps": 0,  # decode steps with documents of two or more invocations
            "max_rows": 0,
            "max_invocations_in_step": 0,
            "prefill_tokens": 0,
            "cached_tokens": 0,
            "layouts": 0,
            "peak_cache_tokens": 0,
        }

    # -- the callers' side -----------------------------------------------------------------

    def submit(self, items: list[Item], invocation: int | None = None) -> list[Generation]:
        """Queue documents (one invocation's); each gets a Generation to wait on."""
        invocation = next(self.invocations) if invocation is None else invocation
        tokenizer = self.loaded.tokenizer

        def decode(ids: Sequence[int]) -> str:
            return str(tokenizer.decode(list(ids), skip_special_tokens=True))

        eos_ids = self.loaded.eos_ids()
        made = [Generation(item, invocation, eos_ids, decode, self.loaded.device) for item in items]
        for generation in made:
            generation.wake = self._wake
        with self.cond:
            for generation in made:
                self.stats["submitted"] += 1
                if generation.final_length > self.limits.max_tokens:
                    self.stats["rejected"] += 1
                    generation.finish(
                        {
                            "id": generation.document.doc_id,
                            "error": (
                                f"prompt is {len(generation.prompt)} tokens + max_new_tokens "
                                f"{generation.params.max_new_tokens} > the engine's budget of "
                                f"{self.limits.max_tokens} tokens (DOCFLOW_MAX_BATCH_TOKENS); "
                                "shorten or split the document, lower max_new_tokens, or raise "
                                "DOCFLOW_MAX_BATCH_TOKENS"
                            ),
                        }
                    )
                    continue
                self.waiting.append(generation)
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(
                    target=self._loop, name="docflow-engine", daemon=True
                )
                self.thread.start()
            self.cond.notify_all()
        return made

    def _wake(self) -> None:
        with self.cond:
            self.cond.notify_all()

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Pause scheduling at a step boundary (tests use it to queue work deterministically)."""
        with self.cond:
            self.holds += 1
        try:
            yield
        finally:
            with self.cond:
                self.holds -= 1
                self.cond.notify_all()

    def allow(self, steps: int = 1) -> None:
        """While held, let exactly ``steps`` more steps run."""
        with self.cond:
            self.credits += steps
            self.cond.notify_all()

    def wait_until(self, predicate: Callable[[Engine], bool], timeout: float = 60.0) -> bool:
        """Block until ``predicate(engine)`` holds (checked whenever the engine's state changes)."""
        with self.cond:
            return self.cond.wait_for(lambda: predicate(self), timeout)

    def snapshot(self) -> dict[str, int]:
        """Counters plus what is queued, prefilling and running now."""
        with self.cond:
            return {
                **self.stats,
                "waiting": len(self.waiting),
                "prefilling": len(self.prefilling),
                "running": sum(r is not None for r in self.rows),
                "cache_tokens": len(self.rows) * self.cache.capacity,
                "prefix_cache_tokens": self.prefix.tokens,
            }

    def close(self) -> None:
        """Stop the engine thread once the current step ends (queued documents are cancelled)."""
        with self.cond:
            self.closed = True
            for generation in self.waiting:
                generation.cancel("cancelled: the model server is shutting down")
            self.cond.notify_all()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(timeout=30)

    # -- the engine thread ------------------------------------------------------------------

    def _loop(self) -> None:
        with torch.inference_mode():
            while not self.closed:
                if not self._schedule():
                    break
                try:
                    self._step()
                except Exception as exc:  # e.g. out of memory: retry each document alone
                    logger.exception("engine step failed; its documents are retried one by one")
                    self._fail_all(exc)
                with self.cond:
                    self.stats["steps"] += 1
                    self.cond.notify_all()

    def _live(self) -> list[Generation]:
        return [r for r in self.rows if r is not None]

    def _schedule(self) -> bool:
        """Wait for work; admit waiting documents while rows x columns stay within the budget."""
        with self.cond:
            while True:
                for generation in [g for g in self.waiting if g.cancel_reason]:
                    self.waiting.remove(generation)
                    self._cancelled(generation)
                if self.closed and not (self.prefilling or self._live()):
                    return False
                idle = not (self.waiting or self.prefilling or self._live())
                if idle and self.stats["steps"] != self.trimmed_at:
                    self.trimmed_at = self.stats["steps"]
                    _return_free_memory()
                if (self.holds == 0 or self.credits > 0) and (
                    self.waiting or self.prefilling or self._live()
                ):
                    self.credits = max(self.credits - 1, 0)
                    break
                self.cond.wait()
            admitted = [*self._live(), *self.prefilling]
            while self.waiting and len(admitted) < self.limits.max_sequences:
                candidate = [*admitted, self.waiting[0]]
                if self._columns(candidate) * len(candidate) > self.limits.max_tokens:
                    break
                generation = self.waiting.popleft()
                admitted.append(generation)
                self.prefilling.append(generation)
        return True

    @staticmethod
    def _columns(generations: list[Generation]) -> int:
        """Columns a batch of these documents may need before the next re-layout (an upper bound)."""
        longest = max(max(len(g.prompt), g.length) for g in generations)
        return longest + max(g.final_length - max(len(g.prompt), g.length) for g in generations)

    def _cancelled(self, generation: Generation) -> None:
        self.stats["cancelled"] += 1
        generation.finish({"id": generation.document.doc_id, "error": generation.cancel_reason})

    def _step(self) -> None:
        for generation in [g for g in self.prefilling if g.cancel_reason]:
            self.prefilling.remove(generation)
            self._cancelled(generation)
        pack = self._pack()
        if pack:
            self._prefill(pack)
        for row, seated in enumerate(self.rows):
            if seated is not None and seated.cancel_reason:
                self.rows[row] = None
                self._cancelled(seated)
        if self._live():
            self._decode()
        self._compact()

    def _pack(self) -> list[tuple[Generation, int]]:
        """The prompt chunks to prefill this step: up to DOCFLOW_PREFILL_CHUNK tokens in all.

        A document that starts with the same block as another one starting in this pack waits a
        step, so that it finds the other's prefix in the cache instead of computing it again.
        """
        budget = self.limits.prefill_chunk
        pack: list[tuple[Generation, int]] = []
        starting: set[tuple[int, ...]] = set()
        for generation in self.prefilling:
            if budget <= 0:
                break
            prompt = generation.prompt
            if generation.prefill is None:
                head = tuple(prompt[: self.limits.prefix_block])
                cached = self.prefix.lookup(prompt)
                if cached is None and self.prefix.max_tokens and head in starting:
                    continue
                starting.add(head)
                generation.prefill = _PromptCache(cached)
                generation.prefilled = generation.cached_tokens = (
                    int(cached[0][0].shape[2]) if cached else 0
                )
                self.stats["cached_tokens"] += generation.cached_tokens
            take = min(len(prompt) - generation.prefilled, budget)
            pack.append((generation, take))
            budget -= take
        return pack

    def _forward(
        self,
        ids: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor,
        cache: Any,
        keep: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits float32 [rows, vocab]: each row's last position, or positions ``keep`` of row 0."""
        device = self.loaded.device
        out = self.model(
            input_ids=ids.to(device),
            position_ids=positions.to(device),
            attention_mask=mask,
            use_cache=True,
            logits_to_keep=1 if keep is None else keep,
            **{self.cache_arg: cache},
        )
        if keep is not None:
            return out.logits[0].float()
        return out.logits[:, -1, :].float()

    def _prefill(self, pack: list[tuple[Generation, int]]) -> None:
        """Prefill the pack's chunks in one forward pass, each document seeing only its own tokens.

        The chunks are laid end to end as one sequence after every document's cached keys/values;
        a block mask keeps documents apart. A document whose prompt is then complete gets its
        first token and a row in the running batch.
        """
        device, dtype = self.loaded.device, self.model.dtype
        cache = _PackedCache(
            [g.prefill.layers if g.prefill else [] for g, _ in pack], [take for _, take in pack]
        )
        past = sum(g.prefilled for g, _ in pack)
        total = sum(take for _, take in pack)
        allowed = torch.zeros((total, past + total), dtype=torch.bool)
        ids: list[int] = []
        positions: list[int] = []
        last: list[int] = []
        past_at = new_at = 0
        for generation, take in pack:
            start = generation.prefilled
            ids.extend(generation.prompt[start : start + take])
            positions.extend(range(start, start + take))
            rows = slice(new_at, new_at + take)
            query_at = torch.arange(start, start + take)[:, None]
            seen = torch.arange(start + take)[None, :] <= query_at
            if self.window is not None:
                seen &= torch.arange(start + take)[None, :] > query_at - self.window
            allowed[rows, past_at : past_at + start] = seen[:, :start]
            allowed[rows, past + new_at : past + new_at + take] = seen[:, start:]
            past_at += start
            new_at += take
            last.append(new_at - 1)
        try:
            logits = self._forward(
                torch.tensor([ids], dtype=torch.long),
                torch.tensor([positions], dtype=torch.long),
                _additive_mask(allowed[None].to(device), dtype),
                cache,
                keep=torch.tensor(last, device=device),
            )
        except Exception as exc:
            logger.exception("prefill failed for %d documents", len(pack))
            for generation, _ in pack:
                self.prefilling.remove(generation)
                self.stats["failed"] += 1
                generation.finish(failure=exc)
            return
        self.stats["prefill_tokens"] += total
        ready: list[tuple[Generation, list[tuple[torch.Tensor, torch.Tensor]]]] = []
        for n, ((generation, take), layers) in enumerate(zip(pack, cache.split(), strict=True)):
            generation.prefilled += take
            if generation.prefill is not None:
                generation.prefill.layers = layers
            if generation.prefilled < len(generation.prompt):
                continue
            self.prefilling.remove(generation)
            self.prefix.insert(generation.prompt, layers)
            generation.prefill = None
            if generation.append(generation.choose(logits[n : n + 1])):
                self._done(generation)
            else:
                ready.append((generation, layers))
        if ready:
            self._seat(ready)

    def _seat(
        self, ready: list[tuple[Generation, list[tuple[torch.Tensor, torch.Tensor]]]]
    ) -> None:
        """Put prefilled documents into the running batch: free rows where they fit, else one re-layout."""
        rest = []
        for generation, layers in ready:
            free = [row for row, g in enumerate(self.rows) if g is None]
            columns = self.cache.capacity
            fits = all(
                self.cache.width - g.length + g.final_length <= columns
                for g in [*self._live(), generation]
            )
            if free and len(generation.prompt) <= self.cache.width and fits:
                self.cache.place(free[0], layers)
                self.rows[free[0]] = generation
            else:
                rest.append((generation, layers))
        if not rest:
            return
        live = self._live()
        everyone = [*live, *(g for g, _ in rest)]
        keep = [row for row, g in enumerate(self.rows) if g is not None]
        self.cache.layout(
            keep, [g.length for g in live], [layers for _, layers in rest], self._columns(everyone)
        )
        self.rows = list[Generation | None](everyone)
        self.stats["layouts"] += 1
        self.stats["peak_cache_tokens"] = max(
            self.stats["peak_cache_tokens"], len(self.rows) * self.cache.capacity
        )

    def _decode(self) -> None:
        """One token for every running document (free rows compute a throwaway token)."""
        rows = self.rows
        pad = int(self.loaded.tokenizer.pad_token_id)
        ids = torch.tensor([[g.tokens[-1] if g else pad] for g in rows], dtype=torch.long)
        positions = torch.tensor([[g.length if g else 0] for g in rows], dtype=torch.long)
        mask = self.cache.step_mask(self.model.dtype, self.window)
        try:
            logits = self._forward(ids, positions, mask, self.cache)
        except Exception:
            self.cache.clear()
            raise
        self.cache.advance()
        live = [(row, g) for row, g in enumerate(rows) if g is not None]
        greedy = logits.argmax(-1).tolist()
        invocations = {g.invocation for _, g in live}
        self.stats["decode_steps"] += 1
        self.stats["decoded_rows"] += len(live)
        self.stats["shared_steps"] += len(invocations) > 1
        self.stats["max_rows"] = max(self.stats["max_rows"], len(live))
        self.stats["max_invocations_in_step"] = max(
            self.stats["max_invocations_in_step"], len(invocations)
        )
        for row, generation in live:
            params = generation.params
            plain = not params.do_sample and params.repetition_penalty is None
            token = greedy[row] if plain else generation.choose(logits[row : row + 1])
            if generation.append(token):
                self.rows[row] = None
                self._done(generation)

    def _done(self, generation: Generation) -> None:
        self.stats["finished"] += 1
        generation.finish()

    def _compact(self) -> None:
        """Drop free rows (and unused leading columns) when a quarter or more of the rows are free."""
        free = sum(g is None for g in self.rows)
        if not free:
            return
        live = self._live()
        if not live:
            self.rows = []
            self.cache.clear()
            return
        if free * 4 < len(self.rows) or self.prefilling:
            return
        keep = [row for row, g in enumerate(self.rows) if g is not None]
        self.cache.layout(keep, [g.length for g in live], [], self._columns(live))
        self.rows = list[Generation | None](live)
        self.stats["layouts"] += 1

    def _fail_all(self, exc: BaseException) -> None:
        """A step failed: every running document is retried alone on the static path."""
        for generation in self._live():
            self.stats["failed"] += 1
            generation.finish(failure=exc)
        self.rows = []
        self.cache.clear()


def _runnable(
    data: Sequence[Entry | dict[str, Any]], model: LoadedModel, results: list[dict[str, Any] | None]
) -> list[Item]:
    """Parse and tokenize every document; unrunnable ones get their error line in ``results``."""
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
    return runnable


def _invocation_timeout() -> float | None:
    """DOCFLOW_INVOCATION_TIMEOUT_S: after it, an invocation's unfinished documents are cancelled."""
    raw = os.environ.get("DOCFLOW_INVOCATION_TIMEOUT_S", "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(
            f"DOCFLOW_INVOCATION_TIMEOUT_S={raw!r} must be a number of seconds"
        ) from None
    if value <= 0:
        raise ValueError(f"DOCFLOW_INVOCATION_TIMEOUT_S={value} must be > 0")
    return value


def _run_on_engine(
    engine: Engine, model: LoadedModel, items: list[Item], results: list[dict[str, Any] | None]
) -> None:
    """Submit the invocation's documents to the shared engine and collect their lines."""
    generations = engine.submit(items)
    timeout = _invocation_timeout()
    deadline = None if timeout is None else time.monotonic() + timeout
    for generation in generations:
        remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        if not generation.wait(remaining):
            reason = (
                f"timed out: the invocation ran past DOCFLOW_INVOCATION_TIMEOUT_S={timeout:g} s "
                "and its unfinished documents were cancelled; send smaller payloads or raise it"
            )
            for other in generations:
                other.cancel(reason)
            generation.wait()
    for generation, item in zip(generations, items, strict=True):
        if generation.failure is not None:  # the engine step failed: this document alone, static
            results[item[0]] = _run_batch(model, [item])[0]
        else:
            results[item[0]] = generation.result


def predict_fn(data: Sequence[Entry | dict[str, Any]], model: LoadedModel) -> list[dict[str, Any]]:
    """Generate every document on the instance's engine (or in static micro-batches); input order."""
    started = time.monotonic()
    results: list[dict[str, Any] | None] = [None] * len(data)
    runnable = _runnable(data, model, results)
    engine = model.engine
    if engine is not None:
        _run_on_engine(engine, model, runnable, results)
        how = "on the engine"
    else:
        batches = plan_batches(runnable, model.max_batch_size)
        for batch in batches:
            for (index, _, _), result in zip(batch, _run_batch(model, batch), strict=True):
                results[index] = result
        how = f"in {len(batches)} micro-batches"
    done = [r for r in results if r is not None]
    logger.info(
        "%d documents (%d errors) %s: %d prompt (%d cached) + %d completion tokens, %.2f s",
        len(done),
        sum("error" in r for r in done),
        how,
        sum(r.get("prompt_tokens", 0) for r in done),
        sum(r.get("cached_tokens", 0) for r in done),
        sum(r.get("completion_tokens", 0) for r in done),
        time.monotonic() - started,
    )
    return done


def stream_fn(document: Entry | dict[str, Any], model: LoadedModel) -> Iterator[str]:
    """One document's text as it is generated (the engine's token stream; static: all at once)."""
    results: list[dict[str, Any] | None] = [None]
    runnable = _runnable([document], model, results)
    if not runnable:
        raise DocumentError(str((results[0] or {}).get("error")))
    if model.engine is None:
        (result,) = _run_batch(model, runnable)
        if "error" in result:
            raise RuntimeError(result["error"])
        yield result["text"]
        return
    (generation,) = model.engine.submit(runnable)
    try:
        yield from generation.stream()
    finally:
        generation.cancel("cancelled: the stream's reader went away")


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
