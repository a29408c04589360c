"""Section 6: asking 5 questions of a ~1,000-token document, with a session vs resending it.

One real-time endpoint per configuration on localcloud, SmolLM2 on CPU (one instance each):
``sessions`` opens a session per document (its prefix prefilled once and pinned) and asks the 5
questions on it; ``resend`` sends the whole document with every question to an endpoint whose
prefix cache is off (each question prefills the document again, as on an endpoint where
requests land on different instances); ``resend_prefix_cache`` sends the same requests to an
endpoint with the engine's block prefix cache on (same instance, so blocks may be reused).
Documents are fresh per round and the configurations interleave. Streaming: time to first token
vs time to last token of one streamed answer per document on its session.
"""

from __future__ import annotations

import json
import random
import statistics
import time
from typing import Any

from rich.table import Table

from benchmarks.corpus import _WORDS
from benchmarks.formatting import fmt

QUESTIONS = (
    "What is this document about?",
    "Who is involved?",
    "What is the most important fact?",
    "Is anything urgent?",
    "What should happen next?",
)
TARGET = 3.0  # follow-ups with a session at least this many times faster than resending
# Per mode: documents (rounds), words per document (~1,000 SmolLM2 tokens), answer tokens.
SIZES = {"full": (3, 740, 8), "quick": (1, 120, 4)}
STREAM_TOKENS = 48
CONFIGS = {"sessions_and_resend": {"DOCFLOW_PREFIX_CACHE_TOKENS": "0"}, "prefix_cache": {}}


def documents(n: int, words: int, seed: int = 21) -> list[str]:
    """Fresh random documents of ``words`` words each."""
    rng = random.Random(seed)
    return [" ".join(rng.choices(_WORDS, k=words)) for _ in range(n)]


def _deploy(bench: Any, artifact: dict[str, Any], environment: dict[str, str]) -> str:
    """A real-time endpoint (docflow's spec with realtime=True) on one instance."""
    from tasks.aws.iam import ensure_execution_role
    from tasks.endpoint.deploy import apply_endpoint
    from tasks.endpoint.spec import build_endpoint_spec

    name = bench.env.new_endpoint_name("sessions")
    profile = bench.env.profile.model_copy(update={"endpoint_name": name})
    role_arn, _ = ensure_execution_role(profile, endpoint_name=name)
    spec = build_endpoint_spec(
        profile,
        model=artifact,
        execution_role_arn=role_arn,
        success_topic_arn="arn:aws:sns:us-east-1:000000000000:unused",
        error_topic_arn="arn:aws:sns:us-east-1:000000000000:unused",
        endpoint_name=name,
        instance_count=1,
        environment={"DOCFLOW_NUM_THREADS": str(bench.cfg.model_threads), **environment},
        realtime=True,
        # It streams: docflow's own serving contract, not the HF image (MMS does not stream;
        # localcloud refuses response streams there as AWS does; docs/guide/aws-stacks.md).
        image_uri="docflow-serving:local",
    )
    apply_endpoint(profile, spec, delay_s=1, max_attempts=600)
    return name


def _resend(
    runtime: Any, endpoint: str, document: str, question: str, tokens: int
) -> dict[str, Any]:
    """The document and the question as one prompt (the same text a session's question makes)."""
    body = {
        "id": "q",
        "prompt": f"{document}\n\n{question}",
        "parameters": {"max_new_tokens": tokens},
    }
    response = runtime.invoke_endpoint(
        EndpointName=endpoint,
        Body=json.dumps(body) + "\n",
        ContentType="application/jsonlines",
        Accept="application/jsonlines",
    )
    answer: dict[str, Any] = json.loads(response["Body"].read().splitlines()[0])
    if "error" in answer:
        raise RuntimeError(f"{endpoint}: {answer['error']}")
    return answer


def _timed(call: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    out = call()
    return time.perf_counter() - started, out


def _round(runtime: Any, names: dict[str, str], document: str, tokens: int) -> dict[str, Any]:
    """One document through every configuration; times per follow-up and in total."""
    from tasks.ask.session_client import ask, close_session, open_session, stream

    out: dict[str, Any] = {}
    plain, cached = names["sessions_and_resend"], names["prefix_cache"]
    params = {"max_new_tokens": tokens}
    open_s, session = _timed(lambda: open_session(runtime, plain, document))
    asks = [_timed(lambda q=q: ask(runtime, plain, session, q, params)) for q in QUESTIONS]
    started = time.perf_counter()
    first = last = None
    streamed_tokens = 0
    for line in stream(runtime, plain, session, QUESTIONS[0], {"max_new_tokens": STREAM_TOKENS}):
        if "token" in line and first is None:
            first = time.perf_counter() - started
        if "generated_text" in line:
            last = time.perf_counter() - started
            streamed_tokens = line["completion_tokens"]
    close_s, _ = _timed(lambda: close_session(runtime, plain, session))
    out["sessions"] = {
        "open_s": open_s,
        "close_s": close_s,
        "follow_up_s": [t for t, _ in asks],
        "total_s": open_s + sum(t for t, _ in asks) + close_s,
        "cached_tokens": [a["cached_tokens"] for _, a in asks],
        "prompt_tokens": [a["prompt_tokens"] for _, a in asks],
    }
    out["streaming"] = {"first_token_s": first, "last_token_s": last, "tokens": streamed_tokens}
    for mode, endpoint in (("resend", plain), ("resend_prefix_cache", cached)):
        sends = [
            _timed(lambda q=q, e=endpoint: _resend(runtime, e, document, q, tokens))
            for q in QUESTIONS
        ]
        out[mode] = {
            "follow_up_s": [t for t, _ in sends],
            "total_s": sum(t for t, _ in sends),
            "cached_tokens": [a["cached_tokens"] for _, a in sends],
            "prompt_tokens": [a["prompt_tokens"] for _, a in sends],
        }
    return out


def sessions(bench: Any) -> dict[str, Any]:
    """Section 6: per-follow-up and total time, session vs resend; streaming first vs last token."""
    from flows.package_model import package_model
    from tasks.aws.clients import aws_client

    n_docs, words, tokens = SIZES["quick" if bench.cfg.name.startswith("quick") else "full"]
    artifact = dict(package_model(source=bench.cfg.model_source, profile="local"))
    names: dict[str, str] = {}
    runtime = aws_client("sagemaker-runtime", bench.env.profile, read_timeout_s=600)
    try:
        for config, environment in CONFIGS.items():
            bench.log(f"sessions: deploying {config} ({environment})")
            names[config] = _deploy(bench, artifact, environment)
        _round(runtime, names, documents(1, 30, seed=1)[0], 2)  # warm-up: torch's first calls
        rounds = []
        for n, document in enumerate(documents(n_docs, words)):
            rounds.append(_round(runtime, names, document, tokens))
            r = rounds[-1]
            bench.log(
                f"sessions: document {n}: follow-up {statistics.mean(r['sessions']['follow_up_s']):.2f} s "
                f"with a session, {statistics.mean(r['resend']['follow_up_s']):.2f} s resent"
            )
    finally:
        for name in names.values():
            aws_client("sagemaker", bench.env.profile).delete_endpoint(EndpointName=name)
    modes: dict[str, Any] = {}
    for mode in ("sessions", "resend", "resend_prefix_cache"):
        follow = [t for r in rounds for t in r[mode]["follow_up_s"]]
        modes[mode] = {
            "follow_up_mean_s": statistics.mean(follow),
            "follow_up_median_s": statistics.median(follow),
            "total_per_document_s": statistics.mean(r[mode]["total_s"] for r in rounds),
            "prompt_tokens_mean": statistics.mean(
                t for r in rounds for t in r[mode]["prompt_tokens"]
            ),
            "cached_tokens_mean": statistics.mean(
                t for r in rounds for t in r[mode]["cached_tokens"]
            ),
        }
    modes["sessions"]["open_mean_s"] = statistics.mean(r["sessions"]["open_s"] for r in rounds)
    speedup = modes["resend"]["follow_up_mean_s"] / modes["sessions"]["follow_up_mean_s"]
    streaming = [r["streaming"] for r in rounds]
    return {
        "model_source": bench.cfg.model_source,
        "documents": n_docs,
        "words_per_document": words,
        "questions": len(QUESTIONS),
        "answer_tokens": tokens,
        "modes": modes,
        "follow_up_speedup": speedup,
        "total_speedup": modes["resend"]["total_per_document_s"]
        / modes["sessions"]["total_per_document_s"],
        "streaming": {
            "answer_tokens": STREAM_TOKENS,
            "first_token_mean_s": statistics.mean(s["first_token_s"] for s in streaming),
            "last_token_mean_s": statistics.mean(s["last_token_s"] for s in streaming),
            "tokens_mean": statistics.mean(s["tokens"] for s in streaming),
        },
        "rounds": rounds,
        "targets": {
            "follow_up_speedup": {"target": TARGET, "value": speedup, "met": speedup >= TARGET}
        },
    }


def sessions_table(section: dict[str, Any]) -> Table:
    """The sessions section: per mode, time per follow-up and per document; streaming."""
    table = Table(
        title=(
            f"6. Sessions vs resending, {section['model_source']} on CPU: "
            f"{section['documents']} documents of {section['words_per_document']} words "
            f"(~{section['modes']['resend']['prompt_tokens_mean']:.0f} prompt tokens) x "
            f"{section['questions']} questions, {section['answer_tokens']} answer tokens"
        )
    )
    for col in ("mode", "follow-up mean s", "follow-up median s", "per document s",
                "prompt tok", "cached tok", "vs resend"):  # fmt: skip
        table.add_column(col, justify="left" if col == "mode" else "right")
    base = section["modes"]["resend"]["follow_up_mean_s"]
    for mode, m in section["modes"].items():
        table.add_row(
            mode, fmt(m["follow_up_mean_s"], 3), fmt(m["follow_up_median_s"], 3),
            fmt(m["total_per_document_s"], 2), fmt(m["prompt_tokens_mean"], 0),
            fmt(m["cached_tokens_mean"], 0), f"{base / m['follow_up_mean_s']:.2f}x",
        )  # fmt: skip
    s = section["streaming"]
    t = section["targets"]["follow_up_speedup"]
    table.caption = (
        f"streaming {s['tokens_mean']:.0f} tokens on a session: first token {s['first_token_mean_s']:.3f} s, "
        f"last token {s['last_token_mean_s']:.3f} s; follow-up speedup {t['value']:.2f}x "
        f"(target >= {t['target']}, {'met' if t['met'] else 'NOT met'})"
    )
    return table
