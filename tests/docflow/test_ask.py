"""``docflow ask`` against a real-time endpoint on localcloud: answers streamed, sessions reused."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from docflow.cli import build_parser
from tasks.ask.session_client import ask, close_session, open_session
from tasks.aws.clients import aws_client
from tasks.settings import Profile
from tests.flows.endpoint_helpers import profile_file
from tests.realtime import deploy_realtime
from tests.tiny_models import make_tiny_model

DOCUMENT = "The lease starts on 1 May. The tenant, Ana, pays 900 euros on the first of each month."


def _run(argv: list[str]) -> tuple[int, str, str]:
    args = build_parser().parse_args(argv)
    out, err = io.StringIO(), io.StringIO()
    code = int(args.func(args, out, err))
    return code, out.getvalue(), err.getvalue()


def test_docflow_ask_streams_each_answer_and_continues_a_session(
    profile: Profile, tmp_path: Path
) -> None:
    model_dir = make_tiny_model(tmp_path / "model", "llama")
    name = deploy_realtime(profile, model_dir, {}, instances=1)
    path = profile_file(profile, tmp_path)
    document = tmp_path / "lease.txt"
    document.write_text(DOCUMENT)
    questions = ["Who pays?", "How much?"]
    params = {"max_new_tokens": 12}

    # The expected answers, asked whole (not streamed) on a session of the same document.
    runtime: Any = aws_client("sagemaker-runtime", profile)
    session = open_session(runtime, name, DOCUMENT)
    expected = [ask(runtime, name, session, q, params)["text"] for q in questions]

    code, out, err = _run(
        [
            "ask",
            "--profile",
            path,
            "--endpoint",
            name,
            "--document",
            str(document),
            "--max-new-tokens",
            "12",
            *questions,
        ]
    )
    assert code == 0, err
    assert out == "".join(f"Q: {q}\nA: {a}\n" for q, a in zip(questions, expected, strict=True))
    assert err.count("prompt tokens cached, first token") == 2

    code, out, err = _run(
        [
            "ask",
            "--profile",
            path,
            "--endpoint",
            name,
            "--session",
            session,
            "--max-new-tokens",
            "12",
            questions[1],
        ]
    )
    assert code == 0 and out == f"Q: {questions[1]}\nA: {expected[1]}\n", err
    assert close_session(runtime, name, session)
    code, out, err = _run(
        ["ask", "--profile", path, "--endpoint", name, "--session", session, "Again?"]
    )
    assert code == 1 and session in err and "was closed" in err


def test_docflow_ask_needs_a_document_or_a_session(profile: Profile, tmp_path: Path) -> None:
    code, _, err = _run(["ask", "--profile", profile_file(profile, tmp_path), "Why?"])
    assert code == 2 and "--document" in err


def test_the_orchestrator_policy_lets_docflow_ask_invoke(
    profile: Profile, tmp_path: Path, localcloud: Any
) -> None:
    """IAM enforced: a user holding only the orchestrator policy asks; without InvokeEndpoint it is refused."""
    from tests.reliability.test_security import acting_as, make_user, orchestrator_policy, without

    model_dir = make_tiny_model(tmp_path / "model", "llama")
    name = deploy_realtime(profile, model_dir, {}, instances=1)
    path = profile_file(profile, tmp_path)
    document = tmp_path / "lease.txt"
    document.write_text(DOCUMENT)
    argv = ["ask", "--profile", path, "--endpoint", name, "--document", str(document), "Who?"]
    allowed = make_user(profile, orchestrator_policy(profile))
    with acting_as(allowed, localcloud):
        code, out, err = _run(argv)
    assert code == 0 and out.startswith("Q: Who?\nA: "), err
    refused = make_user(
        profile,
        without(
            orchestrator_policy(profile), "SageMakerEndpointLifecycle", "sagemaker:InvokeEndpoint"
        ),
    )
    with acting_as(refused, localcloud):
        code, out, err = _run(argv)
    assert code == 1 and "AccessDenied" in err and "sagemaker:InvokeEndpoint" in err, err
