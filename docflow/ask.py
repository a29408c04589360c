"""``docflow ask``: ask questions of one document on a real-time endpoint, answers streamed.

Opens a session with the document (read once, cached on one instance), streams each answer to
the terminal as it is generated, then closes the session (``--keep-open`` leaves it open and
prints its id; ``--session ID`` continues an open one without sending the document again).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO


def _endpoint(args: argparse.Namespace, profile: Any) -> str:
    from tasks.endpoint.spec import realtime_endpoint_name

    if args.endpoint:
        return str(args.endpoint)
    if profile.endpoint_mode == "both":
        return realtime_endpoint_name(profile.endpoint_name)
    return str(profile.endpoint_name)


def _answer_lines(
    runtime: Any,
    endpoint: str,
    session: str,
    question: str,
    parameters: dict[str, Any],
    mode: dict[str, bool],
    err: TextIO,
) -> Iterator[dict[str, Any]]:
    """The answer's lines, streamed; on an endpoint that cannot stream, whole (said once)."""
    from tasks.ask.session_client import StreamUnsupportedError, ask, stream, whole_lines

    if not mode.get("whole"):
        try:
            yield from stream(runtime, endpoint, session, question, parameters)
            return
        except StreamUnsupportedError as exc:
            mode["whole"] = True
            print(f"[not streamed: {exc}; answers come whole]", file=err, flush=True)
    yield from whole_lines(ask(runtime, endpoint, session, question, parameters))


def ask_command(
    args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """Stream each question's answer; returns the exit code (1 when an answer failed)."""
    from botocore.exceptions import BotoCoreError, ClientError

    from tasks.ask.session_client import SessionGoneError, close_session, open_session
    from tasks.aws.clients import aws_client
    from tasks.settings import load_profile

    out, err = out or sys.stdout, err or sys.stderr
    if not args.session and not args.document:
        print("docflow ask: give --document FILE (or --session ID to continue one)", file=err)
        return 2
    profile = load_profile(args.profile)
    endpoint = _endpoint(args, profile)
    runtime = aws_client("sagemaker-runtime", profile, read_timeout_s=profile.read_timeout_s)
    session = args.session
    opened = False
    try:
        if session is None:
            text = Path(args.document).read_text(encoding="utf-8")
            session = open_session(runtime, endpoint, text, args.system)
            opened = True
            print(f"[session {session} on {endpoint}]", file=err, flush=True)
        parameters = {"max_new_tokens": args.max_new_tokens}
        mode: dict[str, bool] = {}  # "whole": the endpoint cannot stream (said once)
        for question in args.questions:
            print(f"Q: {question}", file=out)
            print("A: ", end="", file=out, flush=True)
            started = time.monotonic()
            first: float | None = None
            last: dict[str, Any] = {}
            for line in _answer_lines(runtime, endpoint, session, question, parameters, mode, err):
                if "token" in line:
                    first = first if first is not None else time.monotonic() - started
                    print(line["token"]["text"], end="", file=out, flush=True)
                if "generated_text" in line:
                    last = line
            print("", file=out, flush=True)
            print(
                f"[{last.get('completion_tokens')} tokens ({last.get('finish_reason')}), "
                f"{last.get('cached_tokens')} of {last.get('prompt_tokens')} prompt tokens cached, "
                f"first token {first or 0:.2f} s, total {time.monotonic() - started:.2f} s]",
                file=err,
                flush=True,
            )
    except SessionGoneError as exc:
        print(f"docflow ask: {exc}", file=err)
        return 1
    except (ClientError, BotoCoreError, OSError) as exc:
        hint = ""
        if "not found" in str(exc).lower():
            hint = (
                " (deploy a real-time endpoint first: deploy-endpoint with endpoint_mode realtime)"
            )
        print(f"docflow ask: {exc}{hint}", file=err)
        return 1
    finally:
        if opened and session and not args.keep_open:
            close_session(runtime, endpoint, session)
    if opened and args.keep_open:
        print(f"[session {session} left open: docflow ask --session {session} ...]", file=err)
    return 0


def add_parser(sub: Any) -> None:
    """The ``ask`` sub-command."""
    ask = sub.add_parser(
        "ask", help="ask questions of a document on a real-time endpoint (streamed)"
    )
    ask.add_argument("questions", nargs="+", help="one or more questions")
    ask.add_argument("--document", help="the document's text file (opens a session)")
    ask.add_argument("--session", help="continue this open session instead of opening one")
    ask.add_argument("--endpoint", help="real-time endpoint name; default from the profile")
    ask.add_argument("--profile", default="local", help="deployment profile name or path")
    ask.add_argument("--system", help="system prompt for a new session")
    ask.add_argument("--max-new-tokens", type=int, default=128)
    ask.add_argument("--keep-open", action="store_true", help="leave the session open at the end")
    ask.set_defaults(func=ask_command)
