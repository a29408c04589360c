"""Section 5: the model container's serving engine vs its static path, SmolLM2 on CPU.

Each configuration runs on one localcloud instance of its own endpoint (MaxConcurrentInvocations
PerInstance 4), all deployed at once and measured interleaved (per level: static, engine, engine
without prefix cache), on the same payloads: 16 documents each, a long tail of input lengths,
mixed output lengths, one instruction template ahead of every document; every level gets fresh
documents, so only the template can come from the prefix cache. A client keeps 1, 2 or 4
invocations in flight and counts generated tokens.
"""

from __future__ import annotations

import json
import math
import random
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from rich.table import Table

from benchmarks.corpus import _WORDS
from benchmarks.formatting import fmt

DOCS_PER_PAYLOAD = 16
CONCURRENCY = (1, 2, 4)
OUTPUT_LENGTHS = (8, 16, 32, 64)
INSTRUCTION = (
    "You are a careful analyst. Read the document below and summarize it in two or three "
    "sentences for a busy reader: say what kind of document it is, who it concerns, and the one "
    "fact that matters most. Do not add facts that are not in the document.\n\nDocument:\n"
)
TARGETS = {"engine_vs_static_at_4": 1.5, "engine_vs_static_at_1": 0.9}
# Per mode: payloads per concurrency level (the same ones for every configuration), the longest
# document in words, the output lengths. --quick only checks that the section works.
SIZES: dict[str, tuple[int, int, tuple[int, ...]]] = {
    "full": (4, 700, OUTPUT_LENGTHS),
    "quick": (1, 40, (4, 8)),
}
MODES: dict[str, dict[str, str]] = {
    "static": {"DOCFLOW_ENGINE": "static"},
    "engine": {"DOCFLOW_ENGINE": "continuous"},
    "engine_no_prefix_cache": {"DOCFLOW_ENGINE": "continuous", "DOCFLOW_PREFIX_CACHE_TOKENS": "0"},
}


def serving_payloads(
    n_payloads: int,
    max_words: int = 700,
    output_lengths: tuple[int, ...] = OUTPUT_LENGTHS,
    seed: int = 13,
) -> list[bytes]:
    """JSON Lines payloads of 16 documents: lognormal lengths (median ~60 words, long tail)."""
    rng = random.Random(seed)
    payloads = []
    for p in range(n_payloads):
        lines = []
        for d in range(DOCS_PER_PAYLOAD):
            words = min(max(int(rng.lognormvariate(math.log(60), 1.0)), 5), max_words)
            text = " ".join(rng.choices(_WORDS, k=words))
            params = {"max_new_tokens": rng.choice(output_lengths)}
            row = {"id": f"p{p}-d{d}", "prompt": INSTRUCTION + text, "parameters": params}
            lines.append(json.dumps(row))
        payloads.append(("\n".join(lines) + "\n").encode())
    return payloads


def _peak_rss_mb(pids: list[int]) -> float:
    """Peak resident memory (VmHWM) of the instance processes, MiB."""
    peak = 0.0
    for pid in pids:
        status = Path(f"/proc/{pid}/status")
        if not status.exists():
            continue
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                peak = max(peak, int(line.split()[1]) / 1024)
    return peak


def _invoke(profile: Any, endpoint: str, body: bytes, timeout_s: float) -> list[dict[str, Any]]:
    """One async invocation (payload staged in S3); waits for its output and parses the lines."""
    from tasks.aws.clients import aws_client

    s3 = aws_client("s3", profile)
    key = f"serving-inputs/{uuid.uuid4().hex}.jsonl"
    s3.put_object(Bucket=profile.bucket, Key=key, Body=body)
    runtime = aws_client("sagemaker-runtime", profile)
    answer = runtime.invoke_endpoint_async(
        EndpointName=endpoint,
        InputLocation=f"s3://{profile.bucket}/{key}",
        ContentType="application/jsonlines",
        Accept="application/jsonlines",
        InvocationTimeoutSeconds=3600,
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for location, failed in (
            (answer["OutputLocation"], False),
            (answer.get("FailureLocation"), True),
        ):
            if not location:
                continue
            bucket, _, out_key = location.removeprefix("s3://").partition("/")
            try:
                data = s3.get_object(Bucket=bucket, Key=out_key)["Body"].read()
            except s3.exceptions.NoSuchKey:
                continue
            if failed:
                raise RuntimeError(f"invocation failed on {endpoint}: {data[:300]!r}")
            return [json.loads(line) for line in data.splitlines() if line.strip()]
        time.sleep(0.1)
    raise TimeoutError(f"no output from {endpoint} within {timeout_s:.0f} s")


def run_level(
    profile: Any,
    endpoint: str,
    payloads: list[bytes],
    concurrency: int,
    timeout_s: float,
    *,
    keep_rows: bool = False,
) -> dict[str, Any]:
    """Keep ``concurrency`` invocations in flight until every payload is answered (``keep_rows``:
    the result lines too, under ``rows``)."""
    pending = list(reversed(payloads))
    rows: list[dict[str, Any]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                if not pending or errors:
                    return
                body = pending.pop()
            try:
                got = _invoke(profile, endpoint, body, timeout_s)
            except BaseException as exc:  # reported below, after the other workers stop
                with lock:
                    errors.append(exc)
                return
            with lock:
                rows.extend(got)

    started = time.monotonic()
    workers = [threading.Thread(target=worker) for _ in range(concurrency)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    wall = time.monotonic() - started
    if errors:
        raise errors[0]
    done = [r for r in rows if "error" not in r]
    generated = sum(int(r["completion_tokens"]) for r in done)
    kept = {"rows": rows} if keep_rows else {}
    return kept | {
        "concurrency": concurrency,
        "payloads": len(payloads),
        "docs": len(rows),
        "failed": len(rows) - len(done),
        "wall_s": wall,
        "generated_tokens": generated,
        "prompt_tokens": sum(int(r["prompt_tokens"]) for r in done),
        "cached_tokens": sum(int(r.get("cached_tokens", 0)) for r in done),
        "tokens_per_s": generated / wall if wall > 0 else 0.0,
        "docs_per_s": len(done) / wall if wall > 0 else 0.0,
    }


def _deploy_modes(bench: Any, artifact: dict[str, Any]) -> dict[str, str]:
    """One endpoint (one instance) per configuration, all up at once."""
    from benchmarks.endpoints import deploy

    names = {}
    for mode, extra in MODES.items():
        name = bench.env.new_endpoint_name(f"serve-{mode.replace('_', '-')}")
        environment = {"DOCFLOW_NUM_THREADS": str(bench.cfg.model_threads), **extra}
        bench.log(f"serving: deploying {mode} ({environment})")
        deploy(bench.env, name, artifact, per_instance=max(CONCURRENCY), environment=environment)
        names[mode] = name
    return names


def _measure(
    bench: Any, names: dict[str, str], sizes: tuple[int, int, tuple[int, ...]]
) -> dict[str, Any]:
    """Every level with fresh documents (the same for every configuration), modes interleaved."""
    n_payloads, max_words, output_lengths = sizes
    env, timeout = bench.env, bench.cfg.contender_timeout_s
    modes: dict[str, Any] = {m: {"environment": MODES[m], "levels": {}} for m in names}
    # Warm-up: one document each, so no configuration pays torch's first-call costs in a level.
    warm = serving_payloads(1, 40, (4,), seed=1)[0]
    for name in names.values():
        run_level(env.profile, name, [warm[: warm.index(b"\n") + 1]], 1, timeout)
    largest = max(serving_payloads(8, max_words, output_lengths, seed=2), key=len)
    steps: list[tuple[str, int, list[bytes]]] = [("largest_payload", 1, [largest])]
    for n, c in enumerate(CONCURRENCY):
        steps.append((str(c), c, serving_payloads(n_payloads, max_words, output_lengths, 10 + n)))
    for label, c, payloads in steps:
        for mode, name in names.items():
            if mode == "engine_no_prefix_cache" and c == 2:
                continue
            result = run_level(env.profile, name, payloads, c, timeout)
            result["peak_rss_mb"] = _peak_rss_mb(env.cloud.instance_pids(name))
            if label == "largest_payload":
                modes[mode]["largest_payload"] = result
            else:
                modes[mode]["levels"][label] = result
            bench.log(
                f"serving: {mode} {label}: {result['tokens_per_s']:.1f} generated tok/s, "
                f"{result['wall_s']:.1f} s, peak RSS {result['peak_rss_mb']:.0f} MiB"
            )
    return modes


def serving(bench: Any) -> dict[str, Any]:
    """Section 5: engine vs static path at 1, 2 and 4 concurrent invocations; prefix cache on/off."""
    from flows.package_model import package_model
    from tasks.aws.clients import aws_client

    sizes = SIZES["quick" if bench.cfg.name.startswith("quick") else "full"]
    artifact = dict(package_model(source=bench.cfg.model_source, profile="local"))
    names: dict[str, str] = {}
    try:
        names = _deploy_modes(bench, artifact)
        modes = _measure(bench, names, sizes)
    finally:
        for name in names.values():
            aws_client("sagemaker", bench.env.profile).delete_endpoint(EndpointName=name)

    def rate(mode: str, c: int) -> float:
        return float(modes[mode]["levels"][str(c)]["tokens_per_s"])

    ratios = {
        f"engine_vs_static_at_{c}": rate("engine", c) / rate("static", c) for c in CONCURRENCY
    }
    prefix = {
        f"prefix_cache_on_vs_off_at_{c}": rate("engine", c) / rate("engine_no_prefix_cache", c)
        for c in (1, 4)
    }
    return {
        "model_source": bench.cfg.model_source,
        "torch_threads": bench.cfg.model_threads,
        "docs_per_payload": DOCS_PER_PAYLOAD,
        "payloads_per_level": sizes[0],
        "max_words": sizes[1],
        "output_lengths": list(sizes[2]),
        "modes": modes,
        "ratios": ratios,
        "prefix_cache": prefix,
        "targets": {
            name: {"target": target, "value": ratios[name], "met": ratios[name] >= target}
            for name, target in TARGETS.items()
        },
    }


def serving_table(section: dict[str, Any]) -> Table:
    """The serving section as one table: configuration x concurrency."""
    table = Table(
        title=(
            f"5. Serving engine vs static path, {section['model_source']} on CPU "
            f"({section['torch_threads']} thread), {section['payloads_per_level']} payloads x "
            f"{section['docs_per_payload']} documents per level"
        )
    )
    for col in ("configuration", "concurrent", "generated tok/s", "docs/s", "wall s",
                "prompt tok", "cached tok", "failed", "peak RSS MiB", "vs static"):  # fmt: skip
        table.add_column(col, justify="left" if col == "configuration" else "right")
    for mode, result in section["modes"].items():
        largest = result["largest_payload"]
        table.add_row(
            mode, "largest payload", fmt(largest["tokens_per_s"]), fmt(largest["docs_per_s"], 2),
            fmt(largest["wall_s"]), str(largest["prompt_tokens"]), str(largest["cached_tokens"]),
            str(largest["failed"]), fmt(largest["peak_rss_mb"], 0), "",
        )  # fmt: skip
        for c, r in result["levels"].items():
            static = section["modes"]["static"]["levels"].get(c)
            vs = f"{r['tokens_per_s'] / static['tokens_per_s']:.2f}x" if static else ""
            table.add_row(
                mode, c, fmt(r["tokens_per_s"]), fmt(r["docs_per_s"], 2), fmt(r["wall_s"]),
                str(r["prompt_tokens"]), str(r["cached_tokens"]), str(r["failed"]),
                fmt(r["peak_rss_mb"], 0), vs,
            )  # fmt: skip
    for name, t in section["targets"].items():
        table.caption = (table.caption or "") + (
            f"{name}: {t['value']:.2f} (target >= {t['target']}, {'met' if t['met'] else 'NOT met'}); "
        )
    return table
