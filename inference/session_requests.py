"""Serving a session request: open, ask (whole or streamed), close; headers via the context."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from loaded_model import LoadedModel
from request_contract import Item
from sessions import (
    CLOSED_HEADER,
    NEW_SESSION,
    SESSION_HEADER,
    SessionError,
    SessionRequest,
    set_response_header,
    store_for,
)
from token_stream import lines


def _is_close(body: dict[str, Any]) -> bool:
    return str(body.get("requestType", "")).upper() == "CLOSE"


def _answer(model: LoadedModel, item: Item) -> dict[str, Any]:
    """One question's result line (on the engine, from the session's cached prefix)."""
    (handle,) = model.generator.submit([item])
    return handle.line()


def handle(request: SessionRequest, model: LoadedModel, context: Any) -> dict[str, Any]:
    """Open, close or answer on a session; the session headers go on the context."""
    store = store_for(model)
    body, session_id = request.body, request.session_id
    if session_id == NEW_SESSION:
        session = store.open(body)
        set_response_header(context, SESSION_HEADER, session.expires_header())
        return {
            "session_id": session.id,
            "expires": session.expires_header().split("Expires=")[1],
            "document_tokens": session.document_tokens,
            "prompt_tokens": len(session.prefix_ids),
        }
    if _is_close(body):
        store.close(session_id)
        set_response_header(context, CLOSED_HEADER, session_id)
        return {"session_id": session_id, "closed": True}
    _, item = store.question(session_id, body)
    result = _answer(model, item)
    if "error" in result:
        raise SessionError(f"session {session_id}: {result['error']}")
    result["session_id"] = session_id
    return result


def stream(request: SessionRequest | None, item: Item, model: LoadedModel) -> Iterator[bytes]:
    """JSON lines of one answer as it is generated (``item`` from the session or the body)."""
    extra = {"session_id": request.session_id} if request is not None else {}
    (handle,) = model.generator.submit([item])

    def answer() -> Iterator[bytes]:
        try:
            yield from lines(handle, extra)
        finally:
            handle.cancel("cancelled: the stream's reader went away")

    return answer()


def stream_item(request: SessionRequest, model: LoadedModel) -> Item:
    """The question to stream on a session (a stream can continue a session, not open one)."""
    if request.session_id == NEW_SESSION:
        raise SessionError(
            "a response stream cannot open a session: open it with InvokeEndpoint "
            "(SessionId=NEW_SESSION), then stream with its id"
        )
    if _is_close(request.body):
        raise SessionError(f"session {request.session_id}: close it with InvokeEndpoint")
    return store_for(model).question(request.session_id, request.body)[1]
