"""The serving section's payloads: what the engine vs static comparison is measured on."""

from __future__ import annotations

import json
import statistics

from benchmarks.serving import DOCS_PER_PAYLOAD, INSTRUCTION, serving_payloads


def test_payloads_have_16_documents_a_long_tail_and_mixed_output_lengths() -> None:
    payloads = serving_payloads(4)
    assert payloads == serving_payloads(4)  # the same for every configuration
    rows = [json.loads(line) for body in payloads for line in body.splitlines()]
    assert len(rows) == 4 * DOCS_PER_PAYLOAD
    assert len({r["id"] for r in rows}) == len(rows)
    assert all(r["prompt"].startswith(INSTRUCTION) for r in rows)  # one shared template
    words = [len(r["prompt"][len(INSTRUCTION) :].split()) for r in rows]
    assert max(words) > 4 * statistics.median(words)  # a long tail of input lengths
    assert len({r["parameters"]["max_new_tokens"] for r in rows}) >= 3
