"""Section 6: the cost of constrained decoding, SmolLM2 on CPU through localcloud.

The sample corpus's documents as docflow's own extract payload lines (a 3-field schema), run on
one SmolLM2 endpoint (the serving engine) three ways, one invocation in flight, interleaved
payload by payload: unconstrained (the same prompts, free text up to max_new_tokens),
constrained (``json_schema``: xgrammar's token mask in the engine's sampling step), and
unconstrained again with each document's max_new_tokens set to what its constrained answer took
(the same prompts and the same number of generated tokens, so only the constraint differs: the
ratio, target >= 0.8x, is constrained vs this). Free-length answers are longer, so prefill weighs
less per generated token there; their tokens/s is shown, not compared. Also: the share of rows
that are valid answers.

Then classification (the issue's "0 of 135 answers were one of the labels", re-tried on the
sample corpus): docflow's classify lines with a label set, once without the constraint (the
parameters without ``choices``: free text, as before constraints) and once with it; counted: the
answers that are exactly one of the labels (what the typed ``label`` column accepts), and, for
comparison, those that are one once trimmed of spaces, quotes and a full stop and lower-cased.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.table import Table

from benchmarks.formatting import fmt
from benchmarks.serving import run_level

SAMPLE = Path(__file__).resolve().parents[1] / "datasets" / "sample" / "documents.jsonl"
FIELDS: dict[str, Any] = {
    "place": {"type": "string", "maxLength": 40},
    "category": ["politics", "business", "science", "sports", "culture", "other"],
    "year": {"type": "integer", "minimum": 1900, "maximum": 2100},
}
TARGET = 0.8
DOCS_PER_PAYLOAD = 10
# Per mode: documents of the sample corpus, max_new_tokens. --quick only checks that it works.
SIZES = {"full": (50, 64), "quick": (10, 48)}
MODES = ("unconstrained", "constrained", "unconstrained_same_lengths")
LABELS = [
    "local government",
    "economy",
    "science",
    "transport",
    "environment",
    "billing",
    "technical problem",
    "feature request",
    "delivery",
    "other",
]
# Documents (every second one of the sample corpus, news and tickets alike) and max_new_tokens.
LABEL_SIZES = {"full": (20, 16), "quick": (6, 12)}


def constrained_payloads(n_docs: int, max_new_tokens: int) -> tuple[dict[str, list[bytes]], Any]:
    """Per mode, JSON Lines payloads of docflow's extract lines; and the typed answer parser."""
    from tasks.corpus.documents import ColumnMapping, load_corpus
    from tasks.run.plan.batching import payload_line
    from tasks.run.request.controls import run_controls

    corpus = load_corpus(str(SAMPLE), ColumnMapping())
    template, params, answers = run_controls(
        template="extract",
        fields=FIELDS,
        max_new_tokens=max_new_tokens,
    )
    free = params.model_copy(update={"json_schema": None})
    docs = corpus.documents[:n_docs]
    payloads: dict[str, list[bytes]] = {}
    for mode, mode_params in (("unconstrained", free), ("constrained", params)):
        lines = [payload_line(doc, template, mode_params) for doc in docs]
        payloads[mode] = [
            b"".join(lines[i : i + DOCS_PER_PAYLOAD])
            for i in range(0, len(lines), DOCS_PER_PAYLOAD)
        ]
    return payloads, answers


def _with_lengths(body: bytes, lengths: dict[str, int]) -> bytes:
    """The payload with each document's max_new_tokens set to its constrained answer's length."""
    lines = []
    for raw in body.splitlines():
        line = json.loads(raw)
        line["parameters"]["max_new_tokens"] = max(lengths.get(line["id"], 1), 1)
        lines.append(json.dumps(line, ensure_ascii=False).encode() + b"\n")
    return b"".join(lines)


def classify_payloads(n_docs: int, max_new_tokens: int) -> tuple[dict[str, bytes], Any]:
    """Per mode (unconstrained, constrained), one JSON Lines payload of docflow's classify
    lines; and the typed answer parser (a label, exactly)."""
    from tasks.corpus.documents import ColumnMapping, load_corpus
    from tasks.run.plan.batching import payload_line
    from tasks.run.request.controls import run_controls

    corpus = load_corpus(str(SAMPLE), ColumnMapping())
    template, params, answers = run_controls(
        template="classify", labels=LABELS, max_new_tokens=max_new_tokens
    )
    free = params.model_copy(update={"choices": None})
    docs = corpus.documents[::2][:n_docs]
    return {
        "unconstrained": b"".join(payload_line(doc, template, free) for doc in docs),
        "constrained": b"".join(payload_line(doc, template, params) for doc in docs),
    }, answers


def _trimmed(text: Any) -> str:
    return str(text or "").strip().strip("\"'`.").strip().lower()


def classify_labels(
    bench: Any, endpoint: str, timeout: float, n_docs: int, max_new_tokens: int
) -> dict[str, Any]:
    """Answers that are exactly one of the labels, without and with the constraint."""
    payloads, answers = classify_payloads(n_docs, max_new_tokens)
    lowered = {label.lower() for label in LABELS}
    modes: dict[str, Any] = {}
    for mode, body in payloads.items():
        result = run_level(bench.env.profile, endpoint, [body], 1, timeout, keep_rows=True)
        rows = result.pop("rows")
        modes[mode] = {
            "docs": result["docs"],
            "failed": result["failed"],
            "exact_labels": _valid(rows, answers),
            "labels_once_trimmed": sum(_trimmed(r.get("text")) in lowered for r in rows),
            "examples": [str(r.get("text"))[:60] for r in rows[:3]],
        }
        bench.log(
            f"constrained: classify {mode}: {modes[mode]['exact_labels']} of "
            f"{result['docs']} answers are labels"
        )
    return {
        "documents": n_docs,
        "max_new_tokens": max_new_tokens,
        "labels": LABELS,
        "modes": modes,
    }


def _valid(rows: list[dict[str, Any]], answers: Any) -> int:
    """Rows whose text is a valid answer (parses and validates as the typed columns would)."""
    count = 0
    for row in rows:
        try:
            answers.parse(row.get("text"))
        except ValueError:
            continue
        count += 1
    return count


def constrained(bench: Any) -> dict[str, Any]:
    """Section 6: constrained vs unconstrained generated tokens/s, and the share of valid rows."""
    from benchmarks.endpoints import deploy
    from flows.package_model import package_model
    from tasks.aws.clients import aws_client

    size = "quick" if bench.cfg.name.startswith("quick") else "full"
    n_docs, max_new_tokens = SIZES[size]
    payloads, answers = constrained_payloads(n_docs, max_new_tokens)
    artifact = dict(package_model(source=bench.cfg.model_source, profile="local"))
    name = bench.env.new_endpoint_name("constrained")
    environment = {"DOCFLOW_NUM_THREADS": str(bench.cfg.model_threads)}
    timeout = bench.cfg.contender_timeout_s
    totals = {
        m: {"wall_s": 0.0, "generated_tokens": 0, "docs": 0, "failed": 0, "valid": 0} for m in MODES
    }
    try:
        deploy(bench.env, name, artifact, per_instance=1, environment=environment)
        # Warm-up: torch's first calls, and the grammar's one compilation, out of the timing.
        for mode in payloads:
            first = payloads[mode][0]
            run_level(bench.env.profile, name, [first[: first.index(b"\n") + 1]], 1, timeout)
        for index in range(len(payloads["constrained"])):
            lengths: dict[str, int] = {}
            for mode in MODES:
                body = payloads.get(mode, payloads["unconstrained"])[index]
                if mode == "unconstrained_same_lengths":
                    body = _with_lengths(body, lengths)
                result = run_level(bench.env.profile, name, [body], 1, timeout, keep_rows=True)
                if mode == "constrained":
                    lengths = {r["id"]: int(r["completion_tokens"]) for r in result["rows"]}
                total = totals[mode]
                for key in ("wall_s", "generated_tokens", "docs", "failed"):
                    total[key] += result[key]
                total["valid"] += _valid(result.pop("rows"), answers)
                bench.log(
                    f"constrained: {mode} payload {index + 1}: "
                    f"{result['tokens_per_s']:.1f} generated tok/s"
                )
        labels = classify_labels(bench, name, timeout, *LABEL_SIZES[size])
    finally:
        aws_client("sagemaker", bench.env.profile).delete_endpoint(EndpointName=name)
    for total in totals.values():
        total["tokens_per_s"] = total["generated_tokens"] / total["wall_s"]
        total["valid_pct"] = 100.0 * total["valid"] / total["docs"] if total["docs"] else 0.0
    ratio = (
        totals["constrained"]["tokens_per_s"] / totals["unconstrained_same_lengths"]["tokens_per_s"]
    )
    free_ratio = totals["constrained"]["tokens_per_s"] / totals["unconstrained"]["tokens_per_s"]
    return {
        "model_source": bench.cfg.model_source,
        "torch_threads": bench.cfg.model_threads,
        "documents": n_docs,
        "max_new_tokens": max_new_tokens,
        "fields": FIELDS,
        "modes": totals,
        "ratio": ratio,
        "ratio_vs_free_length": free_ratio,
        "classify": labels,
        "targets": {
            "constrained_vs_unconstrained_tokens_per_s": {
                "target": TARGET,
                "value": ratio,
                "met": ratio >= TARGET,
            }
        },
    }


def constrained_table(section: dict[str, Any]) -> Table:
    """The constrained section: one row per mode."""
    table = Table(
        title=(
            f"6. Constrained vs unconstrained decoding, {section['model_source']} on CPU "
            f"({section['torch_threads']} thread), {section['documents']} sample documents, "
            f"3-field schema, max_new_tokens {section['max_new_tokens']}"
        )
    )
    for col in ("mode", "generated tok/s", "generated tok", "wall s", "docs", "valid rows %"):
        table.add_column(col, justify="left" if col == "mode" else "right")
    for mode, r in section["modes"].items():
        table.add_row(
            mode,
            fmt(r["tokens_per_s"]),
            str(r["generated_tokens"]),
            fmt(r["wall_s"]),
            str(r["docs"]),
            fmt(r["valid_pct"], 0),
        )
    target = section["targets"]["constrained_vs_unconstrained_tokens_per_s"]
    table.caption = (
        f"constrained / unconstrained with the same lengths, tokens/s: {section['ratio']:.2f}x "
        f"(target >= {target['target']}, {'met' if target['met'] else 'NOT met'}); "
        f"vs free-length unconstrained: {section['ratio_vs_free_length']:.2f}x"
    )
    return table


def labels_table(section: dict[str, Any]) -> Table:
    """The classification part of the constrained section: answers that are labels, per mode."""
    labels = section["classify"]
    table = Table(
        title=(
            f"6b. Classification into {len(labels['labels'])} labels, {section['model_source']}, "
            f"{labels['documents']} sample documents, max_new_tokens {labels['max_new_tokens']}"
        )
    )
    for col in ("mode", "exactly a label", "a label once trimmed", "docs", "first answers"):
        table.add_column(col, justify="left" if col in ("mode", "first answers") else "right")
    for mode, r in labels["modes"].items():
        table.add_row(
            mode,
            str(r["exact_labels"]),
            str(r["labels_once_trimmed"]),
            str(r["docs"]),
            " | ".join(repr(e) for e in r["examples"]),
        )
    return table
