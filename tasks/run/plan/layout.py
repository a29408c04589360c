"""Every name a run gives to things outside itself, in one place.

A run lives under ``s3://<bucket>/<prefixes.runs>/<run key>/``: ``manifest.json``,
``inputs/<batch id>.jsonl`` (the staged payloads) and what aggregation writes (``results.*``,
``failures.*``, ``summary.json``). An ask_documents run keeps one object per answered
(document, question) pair under ``answers/``, its table in ``ask-results.jsonl`` and its counts
in ``summary.json``. A shard of a sharded run is a run of its own under
``<run key>.sNNNofMMM``. The endpoint writes attempt ``n`` of a batch to
``<S3OutputPath>/<run key>/<batch id>.a<n>.out`` (a failure to
``<S3FailurePath>/<run key>/<batch id>.a<n>-error.out``). Its InferenceId is
``<run key>-<batch id>``; ``<run key>-`` is the prefix the run's queue filters on. The run's SQS
queues are ``docflow-<endpoint>-<run key>[suffix]`` and its Prefect artifacts
``docflow-<run key>-<kind>``; its local copy (when the profile has ``local_results_dir``)
``<local_results_dir>/<run key>/``. Nothing else in docflow writes these formats.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from tasks.artifacts import artifact_key
from tasks.aws.s3 import split_s3_uri
from tasks.settings import Profile

BATCH_ID_CHARS = 16
RUN_KEY_CHARS = 12
MAX_INFERENCE_ID = 64
MAX_QUEUE_NAME = 80
# A user-named run key may not contain "-": "<key>-" must never prefix another run's ids.
_RUN_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.]*$")
MAX_RUN_KEY = MAX_INFERENCE_ID - 1 - BATCH_ID_CHARS


def digest_key(parts: list[object], prefix: str = "") -> str:
    """The one run-key recipe: ``prefix`` + the first RUN_KEY_CHARS hex of the sha256 of the
    parts' canonical JSON (every run key derived from its inputs is made here)."""
    material = json.dumps(parts, separators=(",", ":"), sort_keys=True)
    return prefix + hashlib.sha256(material.encode("utf-8")).hexdigest()[:RUN_KEY_CHARS]


def validate_run_key(run_key: str) -> str:
    """Check a user-named run key; ValueError says what a valid one looks like."""
    if not _RUN_KEY.match(run_key) or len(run_key) > MAX_RUN_KEY:
        raise ValueError(
            f"run_key {run_key!r} is invalid: use 1-{MAX_RUN_KEY} letters, digits, '_' or '.', "
            "starting with a letter or digit (no '-': it separates the run key from the batch id)"
        )
    return run_key


def reduce_run_key(run_key: str, corpus_fingerprint: str) -> str:
    """The run key of a run's reduce step (``long_documents='map_reduce'``):
    ``<run key>_r<8 hex of its corpus>``, shortened with a hash when too long. The reduce corpus is
    part of it, so a retry that completes more documents gets a reduce run of its own, and a
    resumed run (same chunk answers) finds its own again. Never starts with ``<run key>-``."""
    tail = f"_r{corpus_fingerprint[:8]}"
    if len(run_key) + len(tail) <= MAX_RUN_KEY:
        return f"{run_key}{tail}"
    digest = hashlib.sha256(run_key.encode()).hexdigest()[:8]
    return f"{run_key[: MAX_RUN_KEY - len(digest) - 1 - len(tail)]}_{digest}{tail}"


def run_uri(profile: Profile, run_key: str, *parts: str) -> str:
    """s3://bucket/<prefixes.runs>/<run_key>/<parts…> — where everything a run writes lives."""
    return profile.s3_uri(profile.prefixes.runs, run_key, *parts)


def summary_uri(profile: Profile, run_key: str) -> str:
    """s3://bucket/<prefixes.runs>/<run_key>/summary.json: a finished run's counts (every flow's
    runs write one; a sharded run's parent reads its children's)."""
    return run_uri(profile, run_key, "summary.json")


def manifest_uri(profile: Profile, run_key: str) -> str:
    """s3://bucket/<prefixes.runs>/<run_key>/manifest.json."""
    return run_uri(profile, run_key, "manifest.json")


def input_key(profile: Profile, run_key: str, batch_id: str) -> str:
    """Key of a batch's staged payload: <prefixes.runs>/<run_key>/inputs/<batch_id>.jsonl."""
    return split_s3_uri(run_uri(profile, run_key, "inputs", f"{batch_id}.jsonl"))[1]


def output_filename(batch_id: str, attempt: int) -> str:
    """The output object name of one attempt (the key is S3OutputPath/<run_key>/<this>)."""
    return f"{batch_id}.a{max(1, attempt)}.out"


def output_uri(output_path: str, run_key: str, batch_id: str, attempt: int) -> str:
    """Where attempt ``attempt`` of a batch writes its result: S3OutputPath/<run_key>/<filename>."""
    return "/".join([output_path.rstrip("/"), run_key, output_filename(batch_id, attempt)])


def failure_uri(failure_path: str, run_key: str, batch_id: str, attempt: int) -> str:
    """Where attempt ``attempt`` of a batch writes a failure: S3FailurePath/<run_key>/<stem>-error.out."""
    stem = output_filename(batch_id, attempt).removesuffix(".out")
    return "/".join([failure_path.rstrip("/"), run_key, f"{stem}-error.out"])


def inference_id(run_key: str, batch_id: str) -> str:
    """The InferenceId of a batch: "<run_key>-<batch_id>" (≤ 64 chars)."""
    value = f"{inference_prefix(run_key)}{batch_id}"
    if len(value) > MAX_INFERENCE_ID:
        raise ValueError(f"inference id {value!r} is over {MAX_INFERENCE_ID} characters")
    return value


def inference_prefix(run_key: str) -> str:
    """The prefix every InferenceId of this run starts with (the notification filter)."""
    return f"{validate_run_key(run_key)}-"


def batch_id_of(inference_id: str) -> str:
    """The batch id an InferenceId names (the part after the run key)."""
    return inference_id.rpartition("-")[2]


def queue_prefix(endpoint: str) -> str:
    """What every run queue on ``endpoint`` is named from (IAM policies grant it with a ``*``)."""
    return f"docflow-{endpoint}-"


def queue_name(endpoint: str, run_key: str, suffix: str = "") -> str:
    """``docflow-<endpoint>-<run_key>[suffix]``, shortened with a hash to SQS's 80 characters.

    SQS names take letters, digits, '-' and '_': a run key's '.' becomes '-' (run keys have no
    '-' of their own, so two run keys never share a queue).
    """
    run_key = run_key.replace(".", "-")
    name = f"{queue_prefix(endpoint)}{run_key}{suffix}"
    if len(name) <= MAX_QUEUE_NAME:
        return name
    digest = hashlib.sha256(endpoint.encode()).hexdigest()[:8]
    room = MAX_QUEUE_NAME - len(f"docflow--{digest}-{run_key}{suffix}")
    return f"docflow-{endpoint[:room]}-{digest}-{run_key}{suffix}"


def run_artifact_key(run_key: str, kind: str) -> str:
    """The Prefect artifact key of a run's ``kind`` (summary, results, failures, progress)."""
    return artifact_key("docflow", run_key, kind)


def shard_run_key(run_key: str, index: int, count: int) -> str:
    """``<run_key>.s<index+1>of<count>`` (3 digits each): the run key of one shard's child run."""
    key = f"{run_key}.s{index + 1:03d}of{count:03d}"
    if len(key) > MAX_RUN_KEY:
        room = MAX_RUN_KEY - len(key) + len(run_key)
        raise ValueError(
            f"run_key {run_key!r} is too long for a sharded run: its shards' keys add "
            f"{len(key) - len(run_key)} characters; use a run_key of at most {room} characters"
        )
    return key


def shard_idempotency_key(run_key: str, index: int, attempt: int) -> str:
    """The idempotency key of a shard's child flow run: one flow run per (shard, attempt)."""
    return f"docflow:{run_key}:shard{index}:attempt{attempt}"


def local_run_dir(profile: Profile, run_key: str) -> str | None:
    """``<local_results_dir>/<run key>`` as an absolute path (None: the profile keeps no local copy)."""
    if not profile.local_results_dir:
        return None
    return str((Path(profile.local_results_dir) / run_key).resolve())


def answer_key(profile: Profile, run_key: str, doc_id: str, question: int) -> str:
    """Key of one answered pair of an ask run: <runs>/<run_key>/answers/<doc hash>/q<n>.json."""
    digest = hashlib.sha256(doc_id.encode()).hexdigest()[:BATCH_ID_CHARS]
    return f"{answers_prefix(profile, run_key)}{digest}/q{question}.json"


def answers_prefix(profile: Profile, run_key: str) -> str:
    """The key prefix under which an ask run keeps its answered pairs."""
    return split_s3_uri(run_uri(profile, run_key, "answers"))[1] + "/"


def ask_results_uri(profile: Profile, run_key: str) -> str:
    """s3://bucket/<runs>/<run_key>/ask-results.jsonl: one row per (document, question)."""
    return run_uri(profile, run_key, "ask-results.jsonl")


def ask_results_file(output_dir: str, run_key: str) -> Path:
    """``<output_dir>/ask-<run_key>.jsonl``: the local copy of an ask run's results table."""
    return Path(output_dir) / f"ask-{run_key}.jsonl"
