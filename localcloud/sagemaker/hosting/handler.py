"""The inference toolkit contract inside an instance: model_fn / input_fn / predict_fn / output_fn.

Missing functions fall back to defaults in the spirit of the SageMaker inference toolkit. As the
Hugging Face toolkit does, a function that takes one parameter more than its standard signature
gets the model server's request context (``localcloud.sagemaker.hosting.context``). Response streaming
calls ``invoke_stream(model, body, content_type, context)`` (an iterator of bytes) when the
module defines it.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from localcloud.sagemaker.hosting.context import Context, call_with_context

JSON_TYPES = ("application/json",)
JSONLINES_TYPES = ("application/jsonlines", "application/jsonl", "application/x-jsonlines")


class UnsupportedFormatError(ValueError):
    """The default input_fn/output_fn cannot handle this content type."""


def _media(content_type: str | None) -> str:
    return (content_type or "application/json").split(";")[0].strip().lower()


def default_input_fn(body: bytes, content_type: str | None) -> Any:
    """JSON, JSON Lines or text bodies; anything else is refused with the type named."""
    media = _media(content_type)
    if media in JSON_TYPES:
        return json.loads(body)
    if media in JSONLINES_TYPES:
        return [json.loads(line) for line in body.decode("utf-8").splitlines() if line.strip()]
    if media.startswith("text/"):
        return body.decode("utf-8")
    raise UnsupportedFormatError(
        f"content type {content_type!r} is not supported by the default input_fn; define input_fn in code/inference.py"
    )


def default_predict_fn(data: Any, model: Any) -> Any:
    """Call the model on the data."""
    if not callable(model):
        raise TypeError(
            "the model returned by model_fn is not callable; define predict_fn in code/inference.py"
        )
    return model(data)


def default_output_fn(prediction: Any, accept: str | None) -> bytes:
    """Encode as JSON (or JSON Lines for a list); bytes and str pass through."""
    if isinstance(prediction, bytes):
        return prediction
    if isinstance(prediction, str):
        return prediction.encode("utf-8")
    media = _media(accept)
    if media in JSONLINES_TYPES:
        rows = prediction if isinstance(prediction, list) else [prediction]
        return "".join(json.dumps(row) + "\n" for row in rows).encode("utf-8")
    if media in JSON_TYPES or media == "*/*":
        return json.dumps(prediction).encode("utf-8")
    raise UnsupportedFormatError(
        f"accept type {accept!r} is not supported by the default output_fn; define output_fn in code/inference.py"
    )


def load_module(model_dir: Path) -> ModuleType:
    """Import ``code/inference.py`` from the model directory (with ``code/`` on sys.path)."""
    code_dir = model_dir / "code"
    script = code_dir / "inference.py"
    if not script.is_file():
        raise FileNotFoundError(
            "the model artifact has no code/inference.py; put the handler at code/inference.py inside model.tar.gz"
        )
    sys.path.insert(0, str(code_dir))
    spec = importlib.util.spec_from_file_location("inference", script)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {script}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["inference"] = module
    spec.loader.exec_module(module)
    return module


class Handler:
    """A loaded model plus the four functions (user-defined or default)."""

    def __init__(self, module: ModuleType, model_dir: Path) -> None:
        self.module = module
        self.model_dir = str(model_dir)
        model_fn = getattr(module, "model_fn", None)
        if model_fn is None:
            raise AttributeError(
                "code/inference.py defines no model_fn(model_dir); add one that loads the model"
            )
        self.model = model_fn(str(model_dir))
        self.transform_fn = getattr(module, "transform_fn", None)
        self.input_fn = getattr(module, "input_fn", default_input_fn)
        self.predict_fn = getattr(module, "predict_fn", default_predict_fn)
        self.output_fn = getattr(module, "output_fn", default_output_fn)
        self.stream_fn = getattr(module, "invoke_stream", None)

    def invoke(
        self,
        body: bytes,
        content_type: str | None,
        accept: str | None,
        context: Context | None = None,
    ) -> tuple[bytes, str]:
        """Run one request through the handler; returns (response body, its content type)."""
        context = context or Context({})
        response_type = (
            accept if accept and accept != "*/*" else (content_type or "application/json")
        )
        if self.transform_fn is not None:
            result = call_with_context(
                self.transform_fn, context, self.model, body, content_type, accept
            )
        else:
            data = call_with_context(self.input_fn, context, body, content_type)
            prediction = call_with_context(self.predict_fn, context, data, self.model)
            result = call_with_context(self.output_fn, context, prediction, accept or content_type)
        if isinstance(result, tuple):
            result, response_type = result[0], result[1]
        if isinstance(result, str):
            result = result.encode("utf-8")
        if not isinstance(result, bytes | bytearray):
            result = json.dumps(result).encode("utf-8")
        return bytes(result), response_type

    def stream(self, body: bytes, content_type: str | None, context: Context) -> Iterator[bytes]:
        """The response stream's bytes (the module's ``invoke_stream``)."""
        if self.stream_fn is None:
            raise NotImplementedError(
                "code/inference.py defines no invoke_stream(model, body, content_type, context); "
                "add one to serve InvokeEndpointWithResponseStream"
            )
        chunks: Iterator[bytes] = self.stream_fn(self.model, body, content_type, context)
        return chunks
