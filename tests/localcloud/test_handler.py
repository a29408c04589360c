"""The toolkit contract inside an instance: user functions where defined, the defaults otherwise."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from localcloud.sagemaker.hosting.handler import Handler, UnsupportedFormatError, load_module

ONLY_MODEL_FN = """
def model_fn(model_dir):
    return lambda data: {"n": len(data), "first": data[0]}
"""

TRANSFORM_FN = """
def model_fn(model_dir):
    return "m"

def transform_fn(model, body, content_type, accept):
    return body[::-1], "text/plain"
"""


def _handler(tmp_path: Path, source: str) -> Handler:
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "inference.py").write_text(source)
    try:
        return Handler(load_module(tmp_path), tmp_path)
    finally:
        sys.path.remove(str(tmp_path / "code"))
        sys.modules.pop("inference", None)


def test_defaults_decode_and_encode_json(tmp_path: Path) -> None:
    handler = _handler(tmp_path, ONLY_MODEL_FN)
    body, content_type = handler.invoke(
        b'[{"a": 1}, {"b": 2}]', "application/json", "application/json"
    )
    assert json.loads(body) == {"n": 2, "first": {"a": 1}}
    assert content_type == "application/json"
    lines, _ = handler.invoke(b'{"x": 1}\n{"y": 2}\n', "application/jsonlines", None)
    assert json.loads(lines) == {"n": 2, "first": {"x": 1}}
    with pytest.raises(UnsupportedFormatError, match="define input_fn"):
        handler.invoke(b"\x00", "application/x-npy", None)


def test_transform_fn_wins(tmp_path: Path) -> None:
    handler = _handler(tmp_path, TRANSFORM_FN)
    assert handler.invoke(b"abc", "text/plain", None) == (b"cba", "text/plain")


def test_missing_handler_says_where_it_belongs(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="code/inference.py"):
        load_module(tmp_path)
