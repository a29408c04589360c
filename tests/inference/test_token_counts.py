"""The token count before invoking equals the handler's ``prompt_tokens`` exactly, for a system
prompt and for a messages-column conversation, on tiny Mistral (no system role in its template:
the system prompt is folded into the first user turn) and tiny Llama."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tasks.corpus.documents import Document
from tasks.run.request.prompts import PromptTemplate
from tasks.run.request.tokens import TokenCounter
from tests.inference.conftest import Run

SYSTEM = "You are a terse assistant. Answer in French."
TEXT = "Acme sells Bob 3 chairs for 120.50 EUR on 2024-03-01, delivered in May."
CHAT = [
    {"role": "user", "content": "Who sells the chairs?"},
    {"role": "assistant", "content": "Acme."},
    {"role": "user", "content": f"And to whom? {TEXT}"},
]


def _cases() -> list[tuple[str, PromptTemplate, Document]]:
    text = Document(doc_id="t", text=TEXT)
    chat = Document(doc_id="m", text=json.dumps(CHAT))
    own_system = Document(
        doc_id="o", text=json.dumps([{"role": "system", "content": SYSTEM}, *CHAT])
    )
    return [
        ("system prompt", PromptTemplate(kind="summarize", system=SYSTEM), text),
        ("messages", PromptTemplate(from_messages=True), chat),
        ("messages + system prompt", PromptTemplate(from_messages=True, system=SYSTEM), chat),
        ("messages with their own system turn", PromptTemplate(from_messages=True), own_system),
        ("plain prompt", PromptTemplate(kind="summarize"), text),
    ]


def test_counts_equal_the_handlers_prompt_tokens(
    tiny_dirs: dict[str, Path], loaded: Any, arch: str, run: Run
) -> None:
    counter = TokenCounter.from_folder(tiny_dirs[arch])
    cases = _cases()
    lines = [
        {"id": name, **template.request(doc), "parameters": {"max_new_tokens": 2}}
        for name, template, doc in cases
    ]
    reported = {row["id"]: row for row in run(loaded, lines)}
    for name, template, doc in cases:
        row = reported[name]
        assert "error" not in row, row
        assert counter.request_tokens(template.request(doc)) == row["prompt_tokens"], (arch, name)
    # The system prompt is counted: rendering the template as one user turn undercounts it.
    name, template, doc = cases[0]
    assert counter.prompt_tokens(template.render(doc)) < reported[name]["prompt_tokens"]
    if arch == "mistral":  # no system role: folded into the first user turn, as the handler does
        folded = [{"role": "user", "content": f"{SYSTEM}\n\n{template.render(doc)}"}]
        assert counter.request_tokens({"messages": folded}) == reported[name]["prompt_tokens"]
