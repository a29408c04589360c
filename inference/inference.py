"""docflow's LLM handler: runs inside the model container as ``code/inference.py``.

SageMaker inference toolkit contract (``model_fn``, ``input_fn``, ``predict_fn``, ``output_fn``).
The same file runs unchanged in the Hugging Face PyTorch inference container on AWS, under
docflow's serving image's server (``container_server``, which calls the same functions and
``invoke_stream``) and in localcloud's hosting emulator; it imports only the standard library, torch, transformers and
its sibling modules under ``code/`` (the toolkit puts that directory on ``sys.path``):
``request_contract`` (bodies in, result lines out), ``loaded_model`` (``model_fn``'s loading),
``generator`` (the one interface in front of generation), ``serving`` (engine or static path,
chosen at load), ``static_batches`` (the static path), the engine in vLLM v1's parts
(``engine_core``, ``scheduler``, ``model_runner``, ``sampler``, ``request_state``, ``kv_cache``,
``prefix_cache``), ``result_line`` (every result line) and
``constraints`` (constrained output: xgrammar, the one package it needs beyond those above,
listed in ``code/requirements.txt`` and imported only when a document is constrained).

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
``repetition_penalty`` (> 0), ``stop`` (a string or a list of strings), ``seed`` (int >= 0),
``json_schema`` (a JSON Schema object: the text is compact JSON that validates against it) or
``choices`` (a list of strings: the text is exactly one of them); constrained documents cannot
have ``stop``. The grammar is compiled once per distinct schema or choice list on an instance
(``constraints.py``, xgrammar) and masks every token; a constrained document whose budget runs out
before its answer is complete gets an ``error`` line ("constrained output incomplete: ...").
When sampling, unset knobs mean plain sampling (temperature 1, top_p 1, top_k 0 = off); they
and ``seed`` are ignored when ``do_sample`` is false. A document with ``do_sample`` and a
``seed`` is generated on its own, so its text depends only on its prompt, parameters and seed.

Output (JSON Lines, one line per input document, in input order)::

    {"id": "doc-17", "text": "...", "prompt_tokens": 41, "cached_tokens": 32, "completion_tokens": 64, "finish_reason": "length"}
    {"id": "doc-18", "error": "prompt is 9000 tokens + max_new_tokens 128 > the model's context of 8192; ..."}

``prompt_tokens`` counts the tokens of the (chat-templated) prompt, padding excluded;
``cached_tokens`` how many of them were served from the prefix cache (0 on the static path).
A constrained document's line also has ``grammar_compilations``: how many grammars the instance
has compiled so far (one per distinct ``json_schema`` / ``choices``, not one per document).
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

Serving: one ``Engine`` per instance (``engine_core``; its scheduling rules in ``scheduler``) generates for every
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

Real-time endpoints: sessions and streaming. ``input_fn``/``predict_fn``/``output_fn`` take the
model server's request ``context`` as an optional last argument (the Hugging Face toolkit passes
it to functions that accept one); a request with the ``X-Amzn-SageMaker-Session-Id`` header is a
session request (``sessions``: ``{"document", "system"}`` with ``NEW_SESSION`` opens one, the
document's prefix pinned in the prefix cache; ``{"prompt"|"messages", "parameters"}`` asks on it
and answers one JSON object with ``text``, ``prompt_tokens``, ``cached_tokens``,
``completion_tokens``, ``finish_reason``; ``{"requestType": "CLOSE"}`` closes it;
``DOCFLOW_SESSION_TTL_S``, ``DOCFLOW_SESSION_TOKENS``). ``invoke_stream`` serves
InvokeEndpointWithResponseStream: one document (or a question on a session) as JSON lines, one
``{"token": {"id", "text"}}`` per token and a last line with ``generated_text``, the token counts
and ``finish_reason`` (``token_stream``; the LMI convention).

Environment: ``DOCFLOW_MAX_BATCH_SIZE`` (static path: documents per micro-batch, default 8;
documents are sorted by length and only documents with equal parameters share a micro-batch),
``DOCFLOW_MAX_NEW_TOKENS`` (default ``max_new_tokens``, 128), ``DOCFLOW_NUM_THREADS`` (torch CPU
threads), ``DOCFLOW_MAX_CONTEXT`` (caps the context length taken from the model's config),
``DOCFLOW_DEVICE`` (``cpu``/``cuda``; default: cuda when available).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from typing import Any

from constraints import Constraint, ConstraintError
from loaded_model import LoadedModel, load_model
from request_contract import (
    JSON_TYPE,
    JSONLINES_TYPES,
    Document,
    DocumentError,
    Entry,
    Item,
    Rejected,
    media_type,
    parse_body,
    parse_document,
    prompt_ids,
)
from serving import start
from session_requests import handle as handle_session
from session_requests import stream as stream_answer
from session_requests import stream_item
from sessions import SessionRequest, session_request

logger = logging.getLogger(__name__)


def model_fn(model_dir: str) -> LoadedModel:
    """Load the causal LM and its tokenizer, and start its generator (engine or static path)."""
    loaded = load_model(model_dir)
    loaded.generator = start(loaded)
    logger.info("generating with the %s", loaded.generator.kind)
    return loaded


def input_fn(
    body: Any, content_type: str | None, context: Any = None
) -> list[Entry] | SessionRequest:
    """Parse a JSON Lines batch or a single JSON request into documents and rejected lines.

    With the model server's request ``context`` (see ``sessions``): a request carrying
    ``X-Amzn-SageMaker-Session-Id`` is a session request instead.
    """
    request = session_request(body, context)
    if request is not None:
        return request
    return parse_body(body, content_type)


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
            constraint = Constraint.of(entry.params)
            if constraint is not None:  # compiled once per constraint, here, for either path
                model.grammars.compiled(constraint)
        except (DocumentError, ConstraintError) as exc:
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


def _generate(model: LoadedModel, items: list[Item], results: list[dict[str, Any] | None]) -> None:
    """Submit the invocation's documents to the instance's generator and collect their lines."""
    handles = model.generator.submit(items)
    timeout = _invocation_timeout()
    deadline = None if timeout is None else time.monotonic() + timeout
    for handle in handles:
        remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        if not handle.wait(remaining):
            reason = (
                f"timed out: the invocation ran past DOCFLOW_INVOCATION_TIMEOUT_S={timeout:g} s "
                "and its unfinished documents were cancelled; send smaller payloads or raise it"
            )
            for other in handles:
                other.cancel(reason)
            handle.wait()
    for handle, item in zip(handles, items, strict=True):
        results[item[0]] = handle.line()


def predict_fn(
    data: Sequence[Entry | dict[str, Any]] | SessionRequest, model: LoadedModel, context: Any = None
) -> Any:
    """Generate every document on the instance's engine (or in static micro-batches); input order.

    A session request (open, question, close) gets its one answer object (``sessions``).
    """
    if isinstance(data, SessionRequest):
        return handle_session(data, model, context)
    return _predict(data, model)


def _predict(data: Sequence[Entry | dict[str, Any]], model: LoadedModel) -> list[dict[str, Any]]:
    started = time.monotonic()
    results: list[dict[str, Any] | None] = [None] * len(data)
    runnable = _runnable(data, model, results)
    _generate(model, runnable, results)
    for index, document, _ in runnable:
        line = results[index]
        if line is not None and "text" in line and Constraint.of(document.params):
            # The instance's count so far: one per distinct schema / choice list, not per document.
            line["grammar_compilations"] = model.grammars.compilations
    done = [r for r in results if r is not None]
    logger.info(
        "%d documents (%d errors) on the %s: %d prompt (%d cached) + %d completion tokens, %.2f s",
        len(done),
        sum("error" in r for r in done),
        model.generator.kind,
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
    (handle,) = model.generator.submit(runnable)
    try:
        yield from (piece for _, piece in handle.pieces() if piece)
    finally:
        handle.cancel("cancelled: the stream's reader went away")


# ---------------------------------------------------------------------------------------------
# output_fn


def invoke_stream(
    model: LoadedModel, body: Any, content_type: str | None, context: Any = None
) -> Iterator[bytes]:
    """InvokeEndpointWithResponseStream: one answer as JSON lines, token by token (LMI style).

    The body is one document (or a question on the session named by the context's header);
    errors before the first token raise (an error answer), later ones break the stream.
    """
    request = session_request(body, context)
    if request is not None:
        item = stream_item(request, model)
    else:
        entries = parse_body(body, content_type)
        if len(entries) != 1:
            raise DocumentError(f"a response stream takes one document, got {len(entries)}")
        results: list[dict[str, Any] | None] = [None]
        runnable = _runnable(entries, model, results)
        if not runnable:
            raise DocumentError(str((results[0] or {}).get("error")))
        item = runnable[0]
    return stream_answer(request, item, model)


def output_fn(prediction: Any, accept: str | None, context: Any = None) -> str:
    """JSON Lines, one line per document (``application/json``: an object, or an array).

    A session answer (one object) is JSON.
    """
    if isinstance(prediction, dict):
        return json.dumps(prediction, ensure_ascii=False)
    media = media_type(accept)
    if media == JSON_TYPE:
        return json.dumps(prediction[0] if len(prediction) == 1 else prediction, ensure_ascii=False)
    if media not in ("", "*/*", *JSONLINES_TYPES):
        raise ValueError(f"unsupported accept type {accept!r}; use application/jsonlines")
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in prediction)
