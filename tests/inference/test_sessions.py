"""Sessions in the handler: the document cached once, questions answered with it in context.

The handler is driven as the model server drives it, with the TorchServe-style request context
localcloud also passes (headers in, headers out); tiny random Mistral/Llama weights.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from localcloud.sagemaker.hosting.context import Context, call_with_context

SESSION = "X-Amzn-SageMaker-Session-Id"
DOCUMENT = " ".join(
    f"Clause {n}: the tenant pays rent number {n * 7} on day {n}." for n in range(4)
)


def _call(
    handler: ModuleType, model: Any, body: dict[str, Any], session: str
) -> tuple[Any, Context]:
    """input_fn → predict_fn → output_fn with a context carrying the session header."""
    context = Context({SESSION: session, "Content-Type": "application/json"})
    raw = json.dumps(body).encode()
    data = call_with_context(handler.input_fn, context, raw, "application/json")
    prediction = call_with_context(handler.predict_fn, context, data, model)
    out = call_with_context(handler.output_fn, context, prediction, "application/json")
    return json.loads(out), context


def _open(handler: ModuleType, model: Any, document: str = DOCUMENT) -> str:
    answer, context = _call(
        handler, model, {"document": document, "system": "Answer briefly."}, "NEW_SESSION"
    )
    header = context.get_response_headers(0)[SESSION]
    session_id, _, expires = header.partition("; Expires=")
    assert session_id == answer["session_id"] and expires.endswith("Z") and len(expires) == 20
    return session_id


def _refused(handler: ModuleType, model: Any, session_id: str, why: str) -> None:
    from sessions import SessionError

    with pytest.raises(SessionError) as caught:
        _call(handler, model, {"prompt": "Who pays?"}, session_id)
    assert session_id in str(caught.value) and why in str(caught.value)
    assert caught.value.status == 400


def test_a_session_answers_follow_ups_from_the_cached_document(
    handler: ModuleType, loaded: Any
) -> None:
    session_id = _open(handler, loaded)
    document_tokens = len(loaded.tokenizer(DOCUMENT, add_special_tokens=False)["input_ids"])
    for question in ("Who pays?", "On which day?", "How much is rent 3?"):
        body = {"prompt": question, "parameters": {"max_new_tokens": 8}}
        answer, _ = _call(handler, loaded, body, session_id)
        assert answer["session_id"] == session_id
        assert answer["cached_tokens"] >= document_tokens, answer
        assert answer["prompt_tokens"] > answer["cached_tokens"]
        assert answer["finish_reason"] in ("stop", "length") and answer["completion_tokens"] >= 1
        # The same prompt without a session gives the same greedy text: the document is in context.
        stream = b"".join(
            handler.invoke_stream(
                loaded,
                json.dumps(body).encode(),
                "application/json",
                Context({SESSION: session_id}),
            )
        )
        lines = [json.loads(line) for line in stream.decode().splitlines()]
        assert "".join(line["token"]["text"] for line in lines[:-1]) == answer["text"]
        assert lines[-1]["generated_text"] == answer["text"]
        assert lines[-1]["completion_tokens"] == answer["completion_tokens"] == len(lines) - 1
        assert all(isinstance(line["token"]["id"], int) for line in lines[:-1])
    closed, context = _call(handler, loaded, {"requestType": "CLOSE"}, session_id)
    assert closed == {"session_id": session_id, "closed": True}
    assert context.get_response_headers(0)["X-Amzn-SageMaker-Closed-Session-Id"] == session_id
    _refused(handler, loaded, session_id, "was closed")
    _refused(handler, loaded, "0123abcd", "is unknown")


def test_messages_follow_ups_and_the_pinned_prefix_is_freed(
    handler: ModuleType, loaded: Any
) -> None:
    session_id = _open(handler, loaded)
    engine = loaded.generator
    assert engine.prefix.pinned_tokens(session_id) > 0
    body = {
        "messages": [{"role": "user", "content": "Summarise."}],
        "parameters": {"max_new_tokens": 4},
    }
    answer, _ = _call(handler, loaded, body, session_id)
    assert answer["cached_tokens"] == engine.prefix.pinned_tokens(session_id)
    _call(handler, loaded, {"requestType": "CLOSE"}, session_id)
    assert engine.prefix.pinned_tokens(session_id) == 0


def test_sessions_expire_and_the_least_recently_used_is_evicted(
    handler: ModuleType, tiny_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCFLOW_SESSION_TTL_S", "1.5")
    model = handler.model_fn(str(tiny_dirs["llama"]))
    probe = _open(handler, model)
    from sessions import store_for

    store = store_for(model)
    prefix_tokens = len(store.get(probe).prefix_ids)
    _call(handler, model, {"requestType": "CLOSE"}, probe)

    store.budget = 2 * prefix_tokens + 1  # room for two sessions
    first, second = _open(handler, model), _open(handler, model)
    _call(
        handler, model, {"prompt": "Who?", "parameters": {"max_new_tokens": 2}}, first
    )  # first: recent
    third = _open(handler, model)  # evicts the least recently used: second
    _refused(handler, model, second, "was evicted")
    _call(handler, model, {"prompt": "Who?", "parameters": {"max_new_tokens": 2}}, third)
    time.sleep(1.6)
    _refused(handler, model, first, "expired")
    model.generator.close()


def test_a_stream_cannot_open_a_session(handler: ModuleType, loaded: Any) -> None:
    from sessions import SessionError

    with pytest.raises(SessionError, match="cannot open a session"):
        handler.invoke_stream(
            loaded, b'{"document": "x"}', "application/json", Context({SESSION: "NEW_SESSION"})
        )
