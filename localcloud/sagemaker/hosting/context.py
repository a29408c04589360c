"""The model server's per-request ``context``, as TorchServe/MMS hand it to the HF toolkit.

The Hugging Face inference toolkit calls a handler function with one argument more than its
standard signature (``input_fn(body, content_type, context)``, ``predict_fn(data, model,
context)``, ``output_fn(prediction, accept, context)``) with the model server's ``Context``:
request headers in (``get_request_header(idx, key)``, ``get_all_request_header(idx)``), response
headers and status out (``set_response_header(idx, key, value)``,
``set_response_status(code, phrase, idx)``). localcloud passes the same interface, one request
(``idx`` 0) per invocation, so ``code/inference.py`` reads and sets headers the same way on AWS.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any


class RequestProcessor:
    """One request's headers in, and its response headers and status out."""

    def __init__(self, request_header: dict[str, str]) -> None:
        self._request_header = dict(request_header)
        self._response_header: dict[str, str] = {}
        self._status_code = 200
        self._reason_phrase: str | None = None

    def get_request_property(self, key: str) -> str | None:
        """A request header (exact name first, then any case)."""
        if key in self._request_header:
            return self._request_header[key]
        lowered = {k.lower(): v for k, v in self._request_header.items()}
        return lowered.get(key.lower())

    def get_request_properties(self) -> dict[str, str]:
        """Every request header."""
        return self._request_header

    def report_status(self, code: int, reason_phrase: str | None = None) -> None:
        """Set the response status."""
        self._status_code, self._reason_phrase = code, reason_phrase

    def get_response_status_code(self) -> int:
        """The response status (200 unless set)."""
        return self._status_code

    def add_response_property(self, key: str, value: str) -> None:
        """Set a response header."""
        self._response_header[key] = value

    def get_response_headers(self) -> dict[str, str]:
        """The response headers set so far."""
        return self._response_header


class Context:
    """The subset of TorchServe's ``Context`` a handler uses per request."""

    def __init__(self, request_header: dict[str, str], model_dir: str = "") -> None:
        self.system_properties = {"model_dir": model_dir, "batch_size": 1, "gpu_id": 0}
        self.request_processor = [RequestProcessor(request_header)]

    def get_request_header(self, idx: int, key: str) -> str | None:
        """A request header of request ``idx``."""
        return self.request_processor[idx].get_request_property(key)

    def get_all_request_header(self, idx: int) -> dict[str, str]:
        """Every request header of request ``idx``."""
        return self.request_processor[idx].get_request_properties()

    def set_response_header(self, idx: int, key: str, value: str) -> None:
        """Set a response header of request ``idx``."""
        self.request_processor[idx].add_response_property(key, value)

    def get_response_headers(self, idx: int) -> dict[str, str]:
        """The response headers of request ``idx``."""
        return self.request_processor[idx].get_response_headers()

    def set_response_content_type(self, idx: int, value: str) -> None:
        """Set the response content type of request ``idx``."""
        self.set_response_header(idx, "Content-Type", value)

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        """Set the response status of request ``idx``."""
        self.request_processor[idx].report_status(code, phrase)

    def response_status(self) -> int:
        """The status the handler set (200 unless it set one)."""
        return self.request_processor[0].get_response_status_code()


def call_with_context(func: Callable[..., Any], context: Context, *args: Any) -> Any:
    """Call ``func(*args)``, adding ``context`` when it takes one more parameter (the HF toolkit's rule)."""
    try:
        count = len(inspect.signature(func).parameters)
    except (TypeError, ValueError):
        return func(*args)
    if count == len(args) + 1:
        return func(*args, context)
    return func(*args)
