"""Sticky sessions and response streaming over HTTP: unmodified boto3, localcloud, 2 instances.

A real-time endpoint (no AsyncInferenceConfig) serving the real handler on tiny random Llama
weights: a session opened on one instance gets every follow-up there (localcloud names the
instance that answered in ``X-Localcloud-Instance-Id``), with the document served from the
prefix cache; the streamed answer equals the whole one; refusals name the session.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError, EventStreamError

from tasks.aws.clients import aws_client
from tasks.settings import Profile
from tests.realtime import deploy_realtime

DOCUMENT = " ".join(
    f"Clause {n}: the tenant pays rent number {n * 7} on day {n}." for n in range(4)
)
SYSTEM = "Answer briefly."
TTL_S = 8


def _instance(response: dict[str, Any]) -> str:
    return str(response["ResponseMetadata"]["HTTPHeaders"]["x-localcloud-instance-id"])


def _invoke(rt: Any, name: str, body: dict[str, Any], session: str) -> dict[str, Any]:
    response: dict[str, Any] = rt.invoke_endpoint(
        EndpointName=name, Body=json.dumps(body), ContentType="application/json", SessionId=session
    )
    response["answer"] = json.loads(response["Body"].read())
    return response


def _open(rt: Any, name: str) -> tuple[str, str]:
    response = _invoke(rt, name, {"document": DOCUMENT, "system": SYSTEM}, "NEW_SESSION")
    session_id, _, expires = response["NewSessionId"].partition("; Expires=")
    assert session_id == response["answer"]["session_id"] and expires.endswith("Z")
    return session_id, _instance(response)


def _stream(
    rt: Any, name: str, body: dict[str, Any], session: str
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    response = rt.invoke_endpoint_with_response_stream(
        EndpointName=name, Body=json.dumps(body), ContentType="application/json", SessionId=session
    )
    buffer = b""
    for event in response["Body"]:
        buffer += event["PayloadPart"]["Bytes"]  # parts need not end at line ends: buffer
    return response, [json.loads(line) for line in buffer.decode().splitlines()]


def _refused(rt: Any, name: str, session: str, why: str) -> ClientError:
    with pytest.raises(ClientError) as caught:
        _invoke(rt, name, {"prompt": "Who pays?"}, session)
    error = caught.value.response
    assert 400 <= error["ResponseMetadata"]["HTTPStatusCode"] < 500, error
    assert session in error["Error"]["Message"] and why in error["Error"]["Message"], error
    return caught.value


def test_sessions_stick_to_their_instance_and_stream(
    profile: Profile, tiny_dirs: dict[str, Path], loaded_models: dict[str, Any], faults: Any
) -> None:
    import sessions

    model = loaded_models["llama"]
    prefix = len(sessions.prompt_prefix(model, SYSTEM, DOCUMENT)[1])
    document_tokens = len(model.tokenizer(DOCUMENT, add_special_tokens=False)["input_ids"])
    env = {
        "DOCFLOW_SESSION_TTL_S": str(TTL_S),
        "DOCFLOW_SESSION_TOKENS": str(2 * prefix + 1),  # two sessions per instance
    }
    name = deploy_realtime(profile, tiny_dirs["llama"], env)
    rt = aws_client("sagemaker-runtime", profile)

    # open / ask x5 / stream / close, every follow-up on the opening instance
    session_id, home = _open(rt, name)
    question = {"prompt": "Who pays the rent?", "parameters": {"max_new_tokens": 12}}
    answers = []
    for n in range(5):
        response = _invoke(
            rt,
            name,
            {**question, "prompt": f"Question {n}: who pays?"} if n else question,
            session_id,
        )
        assert _instance(response) == home
        answer = response["answer"]
        assert answer["cached_tokens"] >= prefix > document_tokens
        assert (
            answer["prompt_tokens"] > answer["cached_tokens"] and answer["completion_tokens"] >= 1
        )
        answers.append(answer)
    streamed, lines = _stream(rt, name, question, session_id)
    assert _instance(streamed) == home
    assert streamed["ContentType"] == "application/jsonlines"
    assert (
        streamed["ResponseMetadata"]["HTTPHeaders"]["content-type"]
        == "application/vnd.amazon.eventstream"
    )
    tokens, last = lines[:-1], lines[-1]
    assert (
        "".join(t["token"]["text"] for t in tokens) == last["generated_text"] == answers[0]["text"]
    )
    assert len(tokens) == last["completion_tokens"] == answers[0]["completion_tokens"]
    assert last["finish_reason"] == answers[0]["finish_reason"] and last["cached_tokens"] >= prefix
    closed = _invoke(rt, name, {"requestType": "CLOSE"}, session_id)
    assert closed["ClosedSessionId"] == session_id and _instance(closed) == home
    _refused(rt, name, session_id, "was closed")
    _refused(rt, name, "feedc0de", "is unknown")

    # a stream cannot open a session; a model failure mid-stream is a ModelStreamError
    with pytest.raises(ClientError, match="cannot open a session"):
        _stream(rt, name, question, "NEW_SESSION")
    session_id, home = _open(rt, name)
    faults.set(stream_break_rate=1.0)
    with pytest.raises(EventStreamError) as broken:
        _stream(rt, name, question, session_id)
    assert broken.value.response["Error"]["Code"] == "ModelStreamError"
    faults.reset()

    # evicted: five more sessions over two instances that hold two each
    opened = [_open(rt, name)[0] for _ in range(5)]
    evicted = []
    for sid in [session_id, *opened]:
        try:
            _invoke(rt, name, {"prompt": "Who?", "parameters": {"max_new_tokens": 2}}, sid)
        except ClientError as exc:
            assert sid in str(exc) and "was evicted" in str(exc), exc
            evicted.append(sid)
    assert evicted, "no session was evicted"

    # expired: idle past the TTL
    session_id, home = _open(rt, name)
    time.sleep(TTL_S + 1)
    _refused(rt, name, session_id, "expired")

    # the session's instance is killed: a clear 4xx at once, not a hang
    session_id, home = _open(rt, name)
    pid = int(
        _invoke(rt, name, question, session_id)["ResponseMetadata"]["HTTPHeaders"][
            "x-localcloud-instance-pid"
        ]
    )
    os.kill(pid, signal.SIGKILL)
    started = time.monotonic()
    error = _refused(rt, name, session_id, "is no longer available")
    assert error.response["Error"]["Code"] == "ValidationError"
    assert time.monotonic() - started < 10
