"""Count prompt tokens before invoking, with the packaged model's own tokenizer, as the handler does.

The counting is the handler's own code (``request_contract.parse_document`` and ``prompt_ids``
with the chat template, a system prompt folded into the first user turn for templates without a
system role, ``loaded_model``'s tokenizer loader and context-length rule, imported by
``tasks.model.handler_code``), run on the tokenizer files fetched from the endpoint's artifact
(``tasks.model.tokenizer_files``) over what a document sends (``PromptTemplate.request``: a
prompt, or messages with a system prompt or from a messages column), so a count here is the
``prompt_tokens`` the endpoint reports for the same document.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from tasks.aws.clients import aws_client
from tasks.model.handler_code import handler_module
from tasks.model.tokenizer_files import fetch_tokenizer_files
from tasks.run.request.prompts import TemplateError
from tasks.settings import Profile

MAX_CONTEXT_ENV = "DOCFLOW_MAX_CONTEXT"
_loaded: dict[tuple[str, int | None], TokenCounter] = {}
_lock = threading.Lock()


class TokenCounter:
    """The model's tokenizer and context length; counts prompts exactly as the handler does."""

    def __init__(self, tokenizer: Any, context_length: int, source: str) -> None:
        self.tokenizer = tokenizer
        self.context_length = context_length
        self.source = source

    @classmethod
    def from_folder(cls, folder: Path, max_context: int | None = None) -> TokenCounter:
        """Load the tokenizer (and the context length from config.json) from a local folder."""
        from transformers import AutoConfig

        loading = handler_module("loaded_model")
        tokenizer = loading._load_tokenizer(str(folder))
        context = loading._context_length(AutoConfig.from_pretrained(str(folder)), tokenizer)
        if max_context is not None:
            context = min(context, max_context)
        return cls(tokenizer, context, str(folder))

    def prompt_tokens(self, prompt: str) -> int:
        """Tokens of ``prompt`` as the handler feeds it to the model (chat template included)."""
        return len(self.prompt_ids(prompt))

    def prompt_ids(self, prompt: str) -> list[int]:
        """The handler's token ids for a one-turn prompt."""
        contract = handler_module("request_contract")
        document = contract.Document("count", contract.Params(max_new_tokens=1), prompt=prompt)
        ids: list[int] = contract.prompt_ids(document, self.tokenizer)
        return ids

    def request_tokens(self, request: dict[str, Any]) -> int:
        """Tokens the handler feeds the model for what a document sends (``{"prompt": ...}`` or
        ``{"messages": [...]}``); TemplateError when the handler would refuse it."""
        contract = handler_module("request_contract")
        line = {"id": "count", **request, "parameters": {"max_new_tokens": 1}}
        entry = contract.parse_document(line, "count")
        if isinstance(entry, contract.Rejected):
            raise TemplateError(entry.error)
        try:
            return len(contract.prompt_ids(entry, self.tokenizer))
        except contract.DocumentError as exc:
            raise TemplateError(str(exc)) from None

    def text_ids(self, text: str) -> list[int]:
        """The ids of a piece of text alone (no special tokens), for cutting it by tokens."""
        return [int(i) for i in self.tokenizer(text, add_special_tokens=False)["input_ids"]]

    def decode(self, ids: list[int]) -> str:
        """Text of a slice of ``text_ids``."""
        return str(self.tokenizer.decode(ids, skip_special_tokens=False))


def token_counter(
    profile: Profile, model_artifact: str, environment: dict[str, str] | None = None
) -> TokenCounter | None:
    """The counter for an endpoint's model (loaded once per artifact and process); None when the
    artifact has no tokenizer (e.g. the echo model of the tests) or no artifact is known.

    ``environment``: the model container's environment; its DOCFLOW_MAX_CONTEXT caps the context
    as it does in the handler.
    """
    if not model_artifact:
        return None
    max_context = _max_context(environment or {})
    key = (model_artifact, max_context)
    with _lock:
        if key in _loaded:
            return _loaded[key]
        folder = fetch_tokenizer_files(aws_client("s3", profile), model_artifact)
        counter = None if folder is None else TokenCounter.from_folder(folder, max_context)
        if counter is not None:
            _loaded[key] = counter
        return counter


def _max_context(environment: dict[str, str]) -> int | None:
    raw = environment.get(MAX_CONTEXT_ENV, "").strip()
    try:
        value = int(raw) if raw else None
    except ValueError:
        return None
    return value if value and value > 0 else None
