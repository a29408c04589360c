"""Stateful sessions: one document cached on the instance, many questions asked of it.

SageMaker's sticky-session contract (real-time endpoints). The request header
``X-Amzn-SageMaker-Session-Id`` is ``NEW_SESSION`` on the opening request, whose body is
``{"document": "<text>", "system": "<optional system prompt>"}``; the answer carries the header
``X-Amzn-SageMaker-Session-Id: <id>; Expires=<YYYY-MM-DDTHH:MM:SSZ>`` (SageMaker hands it to the
client as ``NewSessionId`` and routes every later request with that id to this instance). A
request with the id and ``{"prompt": ..., "parameters": {...}}`` or ``{"messages": [...]}`` is
answered with the document in context (the document is prepended to the first user turn);
``{"requestType": "CLOSE"}`` frees the session and answers with
``X-Amzn-SageMaker-Closed-Session-Id: <id>``.

The document's prompt prefix (system prompt, the user turn's start, the document) is prefilled
once at open and pinned in the serving engine's prefix cache, so a follow-up prefills only its
own tokens (``cached_tokens`` >= the document's tokens). Sessions expire after
``DOCFLOW_SESSION_TTL_S`` (default 1,200 s, LMI's default) since their last use; when the pinned
prefixes would exceed ``DOCFLOW_SESSION_TOKENS`` (default: half the engine's batch budget) the
least recently used sessions are evicted. Unknown, expired, closed and evicted ids are refused
with :class:`SessionError` (HTTP 400) naming the session and why.

Headers travel through the model server's request ``context`` (TorchServe/MMS ``Context``:
``get_request_header(0, name)``, ``set_response_header(0, name, value)``), which the Hugging Face
inference toolkit passes to handler functions that take one more argument.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from loaded_model import LoadedModel
from request_contract import Document, DocumentError, Item, Rejected, parse_document

SESSION_HEADER = "X-Amzn-SageMaker-Session-Id"
CLOSED_HEADER = "X-Amzn-SageMaker-Closed-Session-Id"
NEW_SESSION = "NEW_SESSION"
DEFAULT_TTL_S = 1200.0
SEPARATOR = "\n\n"
_PLACEHOLDER = "\x00docflow-question\x00"
_GONE_REMEMBERED = 10_000


class SessionError(ValueError):
    """A session request that cannot be served; ``status`` is its HTTP status (4xx)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Session:
    """One open session: the document's prompt prefix and when it expires."""

    id: str
    system: str | None
    document: str
    prefix_text: str
    prefix_ids: list[int]
    document_tokens: int
    expires_at: float  # wall clock (time.time())

    def expires_header(self) -> str:
        """``<id>; Expires=<YYYY-MM-DDTHH:MM:SSZ>`` as the opening answer's header value."""
        when = datetime.fromtimestamp(self.expires_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return f"{self.id}; Expires={when}"


@dataclass
class SessionRequest:
    """What ``input_fn`` makes of a request that carries a session header."""

    session_id: str  # NEW_SESSION or an id
    body: dict[str, Any]


# -- headers through the model server's context ------------------------------------------------


def request_header(context: Any, name: str) -> str | None:
    """A request header from a TorchServe/MMS-style context (any case); None without one."""
    if context is None:
        return None
    headers = context.get_all_request_header(0) or {}
    wanted = name.lower()
    for key, value in headers.items():
        if str(key).lower() == wanted:
            return value.decode() if isinstance(value, bytes) else str(value)
    return None


def set_response_header(context: Any, name: str, value: str) -> None:
    """Set a response header on the context (no context: nothing to set)."""
    if context is not None:
        context.set_response_header(0, name, value)


def session_request(body: Any, context: Any) -> SessionRequest | None:
    """The session request when the context carries a session id header, else None."""
    session_id = request_header(context, SESSION_HEADER)
    if not session_id:
        return None
    session_id = session_id.split(";")[0].strip()
    text = body.decode("utf-8") if isinstance(body, bytes | bytearray) else str(body)
    try:
        parsed = json.loads(text)
    except ValueError:
        raise SessionError(
            f"session {session_id}: the body must be one JSON object "
            '({"document": ...}, {"prompt": ...}, {"messages": ...} or {"requestType": "CLOSE"})'
        ) from None
    if not isinstance(parsed, dict):
        raise SessionError(f"session {session_id}: the body must be a JSON object")
    return SessionRequest(session_id, parsed)


# -- settings -----------------------------------------------------------------------------------


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} must be a number") from None
    if value <= 0:
        raise ValueError(f"{name}={value} must be > 0")
    return value


def session_ttl_s() -> float:
    """DOCFLOW_SESSION_TTL_S: idle seconds before a session expires (default 1,200)."""
    return _env_float("DOCFLOW_SESSION_TTL_S", DEFAULT_TTL_S)


def session_budget(model: LoadedModel) -> int:
    """DOCFLOW_SESSION_TOKENS: pinned prefix tokens of all sessions together (LRU beyond it)."""
    return int(_env_float("DOCFLOW_SESSION_TOKENS", model.generator.session_tokens()))


# -- prompts ------------------------------------------------------------------------------------


def _render(model: LoadedModel, system: str | None, turns: list[dict[str, str]]) -> str:
    """The prompt text of ``turns`` (chat template with the generation prompt, or plain lines).

    A template without a system role (e.g. Mistral's) gets the system prompt at the start of the
    first user turn.
    """
    messages = ([{"role": "system", "content": system}] if system else []) + turns
    tokenizer = model.tokenizer
    if not getattr(tokenizer, "chat_template", None):
        return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
    try:
        return str(
            tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        )
    except Exception as exc:  # jinja raises on e.g. roles that do not alternate
        if system:
            return _render(model, None, _prepend(system, turns))
        raise DocumentError(f"the model's chat template rejected the messages: {exc}") from None


def _prepend(text: str, turns: list[dict[str, str]]) -> list[dict[str, str]]:
    """The turns with ``text`` + a blank line at the start of the first user turn."""
    out = [dict(t) for t in turns]
    for turn in out:
        if turn["role"] == "user":
            turn["content"] = text + SEPARATOR + turn["content"]
            return out
    raise DocumentError("a session's messages need a user turn to ask about the document")


def _with_document(document: str, turns: list[dict[str, str]]) -> list[dict[str, str]]:
    """The turns with the document prepended to the first user turn."""
    return _prepend(document, turns)


def _tokens(model: LoadedModel, text: str, special: bool) -> list[int]:
    return [int(i) for i in model.tokenizer(text, add_special_tokens=special)["input_ids"]]


def _templated(model: LoadedModel) -> bool:
    return bool(getattr(model.tokenizer, "chat_template", None))


def prompt_prefix(model: LoadedModel, system: str | None, document: str) -> tuple[str, list[int]]:
    """The prompt text every question of the session starts with, and its token ids."""
    rendered = _render(
        model, system, _with_document(document, [{"role": "user", "content": _PLACEHOLDER}])
    )
    text = rendered[: rendered.index(_PLACEHOLDER)]
    return text, _tokens(model, text, special=not _templated(model))


def session_prompt(model: LoadedModel, session: Session, document: Document) -> list[int]:
    """Token ids of a question on the session: the cached prefix's ids + the question's own."""
    text = _render(model, session.system, _with_document(session.document, document.chat()))
    if not text.startswith(session.prefix_text):  # a template that moves the document: no reuse
        return _tokens(model, text, special=not _templated(model))
    return session.prefix_ids + _tokens(model, text[len(session.prefix_text) :], special=False)


# -- the store ----------------------------------------------------------------------------------


class SessionStore:
    """The open sessions of one loaded model (one instance)."""

    def __init__(self, model: LoadedModel) -> None:
        self.model = model
        self.ttl_s = session_ttl_s()
        self.budget = session_budget(model)
        self.sessions: OrderedDict[str, Session] = OrderedDict()  # least recently used first
        self.gone: OrderedDict[str, str] = OrderedDict()  # id -> why it is no longer open
        self.lock = threading.Lock()

    def _forget(self, session: Session, why: str) -> None:
        """Drop a session (caller holds the lock) and remember why, for a clear refusal later."""
        self.sessions.pop(session.id, None)
        self.model.generator.drop_prefix(session.id)
        self.gone[session.id] = why
        while len(self.gone) > _GONE_REMEMBERED:
            self.gone.popitem(last=False)

    def _expire(self) -> None:
        now = time.time()
        for session in [s for s in self.sessions.values() if s.expires_at <= now]:
            when = datetime.fromtimestamp(session.expires_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            self._forget(
                session, f"expired at {when} (DOCFLOW_SESSION_TTL_S={self.ttl_s:g} s idle)"
            )

    def get(self, session_id: str) -> Session:
        """The open session ``session_id`` (its expiry renewed), or SessionError saying why not."""
        with self.lock:
            self._expire()
            session = self.sessions.get(session_id)
            if session is None:
                why = self.gone.get(session_id, "is unknown on this instance")
                raise SessionError(
                    f"session {session_id} {why}; open a new one with SessionId=NEW_SESSION"
                )
            session.expires_at = time.time() + self.ttl_s
            self.sessions.move_to_end(session_id)
            return session

    def open(self, body: dict[str, Any]) -> Session:
        """Cache a document's prefix and return the new session (LRU sessions evicted for room)."""
        document, system = body.get("document"), body.get("system")
        if not isinstance(document, str) or not document.strip():
            raise SessionError(
                'opening a session needs {"document": "<text>"} (a non-empty string) in the body'
            )
        if system is not None and not isinstance(system, str):
            raise SessionError('"system" must be a string when given')
        model = self.model
        text, ids = prompt_prefix(model, system, document)
        if len(ids) + 1 > model.context_length:
            raise SessionError(
                f"the document is {len(ids)} tokens with its prompt, over the model's context of "
                f"{model.context_length}; shorten or split it"
            )
        if len(ids) > self.budget:
            raise SessionError(
                f"the document is {len(ids)} tokens with its prompt, over the session cache of "
                f"{self.budget} tokens (DOCFLOW_SESSION_TOKENS); shorten it or raise that"
            )
        session = Session(
            id=uuid.uuid4().hex,
            system=system,
            document=document,
            prefix_text=text,
            prefix_ids=ids,
            document_tokens=len(_tokens(model, document, special=False)),
            expires_at=time.time() + self.ttl_s,
        )
        with self.lock:
            self._expire()
            used = sum(len(s.prefix_ids) for s in self.sessions.values())
            while self.sessions and used + len(ids) > self.budget:
                _, oldest = next(iter(self.sessions.items()))
                used -= len(oldest.prefix_ids)
                self._forget(
                    oldest,
                    f"was evicted (least recently used) to make room in the session cache of "
                    f"{self.budget} tokens (DOCFLOW_SESSION_TOKENS)",
                )
            self.sessions[session.id] = session
        self._prefill(session)
        return session

    def _prefill(self, session: Session) -> None:
        """Compute the prefix's keys/values once and pin them in the engine's prefix cache."""
        error = self.model.generator.cache_prefix(session.id, session.prefix_ids)
        if error is not None:
            with self.lock:
                self._forget(session, "failed to open")
            raise SessionError(f"session {session.id} could not cache the document: {error}", 424)

    def close(self, session_id: str) -> None:
        """Free a session (SessionError when it is not open)."""
        session = self.get(session_id)
        with self.lock:
            self._forget(session, "was closed")

    def question(self, session_id: str, body: dict[str, Any]) -> tuple[Session, Item]:
        """The engine item for a question on the session: the document's prefix + the question."""
        session = self.get(session_id)
        entry = parse_document({"id": session_id, **body}, f"session {session_id}")
        if isinstance(entry, Rejected):
            raise SessionError(f"session {session_id}: {entry.error}")
        try:
            ids = session_prompt(self.model, session, entry)
        except DocumentError as exc:
            raise SessionError(f"session {session_id}: {exc}") from None
        if len(ids) + entry.params.max_new_tokens > self.model.context_length:
            raise SessionError(
                f"session {session_id}: the document and question are {len(ids)} tokens + "
                f"max_new_tokens {entry.params.max_new_tokens} > the model's context of "
                f"{self.model.context_length}; lower max_new_tokens or open a shorter document"
            )
        return session, (0, entry, ids)


_STORES: weakref.WeakKeyDictionary[LoadedModel, SessionStore] = weakref.WeakKeyDictionary()
_STORES_LOCK = threading.Lock()


def store_for(model: LoadedModel) -> SessionStore:
    """The model's session store (made on first use)."""
    with _STORES_LOCK:
        store = _STORES.get(model)
        if store is None:
            store = _STORES[model] = SessionStore(model)
        return store
