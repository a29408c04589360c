"""docflow's serving image, checked offline: the Dockerfile's parts, and ``serve`` over real HTTP.

No Docker engine runs here, so the image itself is not built: the test checks what the
Dockerfile relies on (the files it copies, the base image docflow resolves, the entrypoint) and
runs the very ``serve`` it starts as a subprocess on a tiny random model, by its shebang, with
only the model's ``code/`` as handler code, as SageMaker starts a container.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tasks.endpoint.images import resolve_image_uri
from tasks.model.archive import code_files
from tests.inference.conftest import jsonl, without_cached
from tests.inference.served import ROOT, SERVE, Served, handler_code, lines, model_with_code

DOCKERFILE = ROOT / "docker" / "serving" / "Dockerfile"
DOCS: list[dict[str, Any]] = [
    {"id": "a", "prompt": "Summarise the lease. " * 3, "parameters": {"max_new_tokens": 12}},
    {"id": "b", "messages": [{"role": "user", "content": "Hello"}], "parameters": {"max_new_tokens": 5}},
    {"id": "bad", "prompt": "x", "parameters": {"max_new_tokens": 0}},
]  # fmt: skip


def _instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def test_the_dockerfile_builds_on_the_resolved_image_and_starts_serve() -> None:
    steps = _instructions()
    (base,) = [rest for word, rest in steps if word == "ARG" and rest.startswith("BASE_IMAGE=")]
    assert base.removeprefix("BASE_IMAGE=") == resolve_image_uri("us-east-1", "ml.g5.2xlarge")
    assert ("FROM", "${BASE_IMAGE}") in steps
    copied = [rest.split()[:-1] for word, rest in steps if word == "COPY"]
    sources = [source for group in copied for source in group]
    assert "inference/container_server.py" in sources and "docker/serving/serve" in sources
    for source in sources:  # the build context is the repository root
        assert (ROOT / source).is_file(), source
    # the context sends only those files (BuildKit's <Dockerfile>.dockerignore)
    ignore = DOCKERFILE.with_name("Dockerfile.dockerignore").read_text().split("\n")
    rules = [r for r in ignore if r and not r.startswith("#")]
    assert rules[0] == "*" and {r.removeprefix("!") for r in rules[1:]} == set(sources)
    assert ("ENTRYPOINT", '["/opt/docflow/serve"]') in steps and ("CMD", '["serve"]') in steps
    assert os.access(SERVE, os.X_OK)
    # the image's, not the artifact's: the served code/ below lacks it, so serve runs its own
    assert "container_server.py" not in code_files(ROOT / "inference")
    mode = subprocess.run(
        ["git", "ls-files", "-s", "docker/serving/serve"], cwd=ROOT, capture_output=True, text=True
    ).stdout
    assert mode.startswith("100755"), mode  # executable in a clone, not just here


def test_the_server_libraries_are_the_ones_docflow_runs_and_make_installs() -> None:
    pins = dict(
        re.findall(r"^([a-z0-9_-]+)==(\S+)$", (ROOT / "docker/serving/requirements.txt").read_text(), re.M)
    )  # fmt: skip
    assert set(pins) == {"uvicorn", "starlette"}
    lock = (ROOT / "requirements.lock").read_text()
    for name, version in pins.items():
        assert f"\n{name}=={version} " in lock, name  # localcloud runs the server on these
    assert "-r docker/serving/requirements.txt" in (ROOT / "Makefile").read_text()


@pytest.fixture(scope="module")
def served_model(tiny_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("served")
    return model_with_code(tiny_dirs["llama"], handler_code(root / "code"), root / "model")


def test_serve_answers_ping_invocations_streams_and_sessions(
    served_model: Path, handler: ModuleType, tiny_dirs: dict[str, Path], tmp_path: Path
) -> None:
    here = handler.model_fn(str(tiny_dirs["llama"]))
    expected = without_cached(
        [json.loads(x) for x in handler.output_fn(
            handler.predict_fn(handler.input_fn(jsonl(DOCS), None), here), None
        ).splitlines()]
    )  # fmt: skip
    here.generator.close()
    server = Served(sys.executable, served_model, tmp_path, DOCFLOW_SESSION_TTL_S="60")
    try:
        seen = server.wait_ready()
        assert seen[-1] == 200 and set(seen) <= {0, 503, 200}
        # a JSON Lines payload: one line per document, the error line included, in order
        status, headers, body = server.invoke(jsonl(DOCS), content_type="application/jsonlines")
        assert status == 200 and headers["content-type"].startswith("application/jsonlines")
        assert without_cached(lines(body)) == expected

        # streamed: chunked, a line per token then the summary, the same text as asked whole
        one = jsonl(DOCS[:1])
        status, headers, chunks = server.stream(one, content_type="application/jsonlines")
        assert status == 200 and headers["transfer-encoding"] == "chunked"
        assert headers["content-type"].startswith("application/jsonlines")
        streamed = lines(chunks)
        *tokens, last = streamed
        assert len(chunks) > 1 and len(tokens) == last["completion_tokens"] == 12
        assert "".join(t["token"]["text"] for t in tokens) == last["generated_text"]
        assert last["generated_text"] == expected[0]["text"]

        # sessions: the headers in and out, the document served from the prefix cache
        session = {"X_Amzn_SageMaker_Session_Id": "NEW_SESSION"}
        status, headers, body = server.invoke(
            json.dumps({"document": "The rent is 900 euros. " * 4}).encode(),
            content_type="application/json",
            **session,
        )
        assert status == 200, body
        sid = headers["x-amzn-sagemaker-session-id"].split(";")[0]
        assert json.loads(body)["session_id"] == sid
        question = json.dumps({"prompt": "How much?", "parameters": {"max_new_tokens": 4}}).encode()
        status, _, body = server.invoke(
            question, content_type="application/json", X_Amzn_SageMaker_Session_Id=sid
        )
        answer = json.loads(body)
        assert status == 200 and answer["cached_tokens"] > 0 and answer["session_id"] == sid
        _, _, chunks = server.stream(question, content_type="application/json",
                                     X_Amzn_SageMaker_Session_Id=sid)  # fmt: skip
        assert lines(chunks)[-1]["generated_text"] == answer["text"]
        status, headers, _ = server.invoke(
            b'{"requestType": "CLOSE"}', content_type="application/json",
            X_Amzn_SageMaker_Session_Id=sid,
        )  # fmt: skip
        assert status == 200 and headers["x-amzn-sagemaker-closed-session-id"] == sid

        # errors: a closed session is a 400 naming it; a bad body a 500 with the reason, also
        # when streamed (before the first chunk: an error answer, not a broken stream)
        status, _, body = server.invoke(
            question, content_type="application/json", X_Amzn_SageMaker_Session_Id=sid
        )
        assert status == 400 and sid in json.loads(body)["message"]
        status, _, body = server.invoke(b"x", content_type="text/csv")
        assert status == 500 and "unsupported content type" in json.loads(body)["message"]
        status, _, chunks = server.stream(jsonl(DOCS[:2]), content_type="application/jsonlines")
        assert status == 500 and "one document" in lines(chunks)[0]["message"]
    finally:
        code, printed = server.stop()
    assert code == 0, printed[-3000:]
    assert "terminate called" not in printed


def test_serve_exits_with_the_reason_when_the_model_does_not_load(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    server = Served(sys.executable, tmp_path / "model", tmp_path)
    code = server.proc.wait(timeout=120)
    _, printed = server.stop()
    assert code == 1
    assert "docflow serve: the model did not load: FileNotFoundError" in printed
    assert "code/inference.py" in printed


def test_serve_refuses_other_commands() -> None:
    done = subprocess.run(
        [str(SERVE), "train"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"},
    )
    assert done.returncode == 2 and "usage: serve" in done.stderr
