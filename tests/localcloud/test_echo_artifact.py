"""The echo handler's contract and its model.tar.gz, exercised directly."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from localcloud.testing import echo_inference as echo
from localcloud.testing.artifacts import build_echo_artifact


def test_artifact_layout_and_handler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ECHO_FAIL_MODEL_FN", raising=False)
    monkeypatch.delenv("ECHO_SLEEP_S", raising=False)
    with tarfile.open(fileobj=io.BytesIO(build_echo_artifact(version="2")), mode="r:gz") as tar:
        assert sorted(tar.getnames()) == ["code/inference.py", "code/requirements.txt", "echo.json"]
        tar.extractall(tmp_path, filter="data")
    model = echo.model_fn(str(tmp_path))
    body = b'{"id": "a", "prompt": "hello world"}\n{"id": "b", "messages": [{"role": "user", "content": "hi"}]}\n'
    out = echo.output_fn(
        echo.predict_fn(echo.input_fn(body, "application/jsonlines"), model),
        "application/jsonlines",
    )
    rows = [json.loads(line) for line in out.splitlines()]
    assert rows == [
        {
            "id": "a",
            "text": "v2:HELLO WORLD",
            "prompt_tokens": 2,
            "completion_tokens": 2,
            "finish_reason": "stop",
        },
        {
            "id": "b",
            "text": "v2:HI",
            "prompt_tokens": 1,
            "completion_tokens": 1,
            "finish_reason": "stop",
        },
    ]
    single = echo.input_fn(b'{"inputs": "x y", "parameters": {}}', "application/json")
    assert (
        json.loads(echo.output_fn(echo.predict_fn(single, model), "application/json"))["id"] == "0"
    )
    with pytest.raises(RuntimeError, match="poison"):
        echo.predict_fn([{"id": "p", "prompt": "a __POISON__ b"}], model)
    with pytest.raises(ValueError, match="unsupported content type"):
        echo.input_fn(b"x", "text/csv")


def test_model_fn_failures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECHO_FAIL_MODEL_FN", "1")
    with pytest.raises(RuntimeError, match="ECHO_FAIL_MODEL_FN"):
        echo.model_fn(str(tmp_path))
    monkeypatch.delenv("ECHO_FAIL_MODEL_FN")
    (tmp_path / "echo.json").write_text('{"fail": true}')
    with pytest.raises(RuntimeError, match="fail=true"):
        echo.model_fn(str(tmp_path))
