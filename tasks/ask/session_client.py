"""The session wire contract from the client's side (boto3 ``sagemaker-runtime``).

Open with ``SessionId="NEW_SESSION"`` and ``{"document", "system"}`` (the answer's
``NewSessionId`` is ``<id>; Expires=...``); ask with the id and ``{"prompt", "parameters"}``;
stream with ``invoke_endpoint_with_response_stream`` (JSON lines: one ``{"token": ...}`` per
token, then the summary with ``generated_text``); close with ``{"requestType": "CLOSE"}``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from botocore.exceptions import ClientError

JSON = "application/json"


class SessionGoneError(RuntimeError):
    """The session is no longer open (closed, expired, evicted or its instance gone)."""


class StreamUnsupportedError(RuntimeError):
    """The endpoint's container cannot stream (a Hugging Face inference image: MMS); ask whole."""


# What SageMaker (and localcloud) says when the container cannot stream a response.
_STREAM_REFUSED = "does not support response streaming"


def _gone(exc: ClientError) -> bool:
    message = str(exc.response.get("Error", {}).get("Message", ""))
    return any(
        why in message
        for why in ("no longer available", "was evicted", "expired", "is unknown", "was closed")
    )


def _invoke(runtime: Any, endpoint: str, body: dict[str, Any], session: str) -> dict[str, Any]:
    try:
        response: dict[str, Any] = runtime.invoke_endpoint(
            EndpointName=endpoint,
            Body=json.dumps(body).encode("utf-8"),
            ContentType=JSON,
            Accept=JSON,
            SessionId=session,
        )
    except ClientError as exc:
        if session != "NEW_SESSION" and _gone(exc):
            raise SessionGoneError(str(exc.response["Error"]["Message"])) from exc
        raise
    response["answer"] = json.loads(response["Body"].read())
    return response


def open_session(runtime: Any, endpoint: str, document: str, system: str | None = None) -> str:
    """Open a session with ``document`` cached on one instance; returns its id."""
    body: dict[str, Any] = {"document": document}
    if system:
        body["system"] = system
    response = _invoke(runtime, endpoint, body, "NEW_SESSION")
    header = response.get("NewSessionId")
    if not header:
        raise RuntimeError(
            f"endpoint {endpoint} did not open a session (no NewSessionId): is it a real-time "
            "endpoint running docflow's handler? deploy it with endpoint_mode='realtime'"
        )
    return str(header).split(";")[0].strip()


def ask(
    runtime: Any, endpoint: str, session: str, question: str, parameters: dict[str, Any]
) -> dict[str, Any]:
    """One question on the session: text, prompt/cached/completion tokens, finish_reason."""
    answer: dict[str, Any] = _invoke(
        runtime, endpoint, {"prompt": question, "parameters": parameters}, session
    )["answer"]
    return answer


def stream(
    runtime: Any, endpoint: str, session: str, question: str, parameters: dict[str, Any]
) -> Iterator[dict[str, Any]]:
    """The answer's JSON lines as they arrive (token lines, then the summary line)."""
    try:
        response = runtime.invoke_endpoint_with_response_stream(
            EndpointName=endpoint,
            Body=json.dumps({"prompt": question, "parameters": parameters}).encode("utf-8"),
            ContentType=JSON,
            SessionId=session,
        )
    except ClientError as exc:
        message = str(exc.response["Error"].get("Message", ""))
        if _gone(exc):
            raise SessionGoneError(message) from exc
        if _STREAM_REFUSED in message:
            raise StreamUnsupportedError(message) from exc
        raise
    buffer = b""
    for event in response["Body"]:
        buffer += event.get("PayloadPart", {}).get("Bytes", b"")
        *lines, buffer = buffer.split(b"\n")  # parts need not end at line ends
        for line in lines:
            if line.strip():
                yield json.loads(line)
    if buffer.strip():
        yield json.loads(buffer)


def whole_lines(answer: dict[str, Any]) -> list[dict[str, Any]]:
    """A non-streamed answer as the stream's lines: its text as one token line, then the summary."""
    summary = {k: v for k, v in answer.items() if k != "text"}
    return [
        {"token": {"id": None, "text": answer["text"]}},
        {"generated_text": answer["text"], **summary},
    ]


def close_session(runtime: Any, endpoint: str, session: str) -> bool:
    """Close the session; False when it was already gone."""
    try:
        _invoke(runtime, endpoint, {"requestType": "CLOSE"}, session)
    except SessionGoneError:
        return False
    return True
