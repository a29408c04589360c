"""What tests that run documents through an endpoint share: the echo endpoint they deploy, exact
counts of its requests, corpora, running process_documents and counting its invocations."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import pandas as pd

from tasks.aws.clients import aws_client
from tasks.settings import Profile, load_profile
from tests.reliability.ledger import read_results


@dataclass
class Deployment:
    """An echo-model endpoint deployed for one test, and the profile file flows are given."""

    profile: Profile
    profile_path: str
    endpoint: str
    model_data_url: str
    cap: int


class EndpointProbe:
    """Exact counts of one endpoint's requests, hooked on localcloud's own counters (no sampling).

    ``outstanding`` is accepted minus finished (queued or running); ``max_outstanding`` its peak.
    """

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.accepted = 0
        self.finished = 0
        self.not_run = 0
        self.max_outstanding = 0
        self._lock = threading.Lock()
        self._triggers: dict[int, Callable[[], None]] = {}

    def when_accepted(self, n: int, action: Callable[[], None]) -> None:
        """Call ``action`` once, as the ``n``-th invocation is accepted (under the count's lock)."""
        self._triggers[n] = action

    def on_received(self, endpoint: str) -> None:
        """localcloud accepted an invocation into ``endpoint``'s queue."""
        if endpoint != self.endpoint:
            return
        with self._lock:
            self.accepted += 1
            self.max_outstanding = max(self.max_outstanding, self.accepted - self.finished)
            action = self._triggers.pop(self.accepted, None)
            if action is not None:
                action()

    def on_finished(self, endpoint: str, ran: bool = True) -> None:
        """An invocation of ``endpoint`` ended (``ran``: on an instance, not expired in the queue)."""
        if endpoint != self.endpoint:
            return
        with self._lock:
            self.finished += 1
            self.not_run += not ran

    @property
    def outstanding(self) -> int:
        """Accepted and not yet finished, now."""
        with self._lock:
            return self.accepted - self.finished


def write_corpus(
    path: Path,
    n: int,
    *,
    poison: Collection[int] | None = None,
    words: int = 6,
    prefix: str = "doc",
) -> list[str]:
    """A JSONL corpus of ``n`` short documents; indexes in ``poison`` carry ``__POISON__``. Returns the ids."""
    poison = poison or set()
    ids = [f"{prefix}-{i:05d}" for i in range(n)]
    with path.open("w", encoding="utf-8") as fh:
        for i, doc_id in enumerate(ids):
            body = " ".join(f"w{i}x{j}" for j in range(words))
            text = f"{body} __POISON__" if i in poison else body
            fh.write(json.dumps({"id": doc_id, "text": text, "n": i}) + "\n")
    return ids


@dataclass
class RunOutcome:
    """A finished process_documents run: its returned summary, the results table, the wall time."""

    result: dict[str, Any]
    table: pd.DataFrame
    wall_s: float


def run_process(**params: Any) -> Any:
    """process_documents with flat parameter names (``batch_size=4``), grouped as a replayed
    manifest or the CLI groups them (``tasks.params.flat.grouped``)."""
    from flows.process_documents import process_documents
    from tasks.params.flat import grouped

    return process_documents(**grouped(params))


def run_ask(**params: Any) -> Any:
    """ask_documents with flat parameter names (``max_new_tokens=4``, ``system="..."``), grouped."""
    from flows.ask_documents import ask_documents
    from tasks.params.flat import ASK_GROUPS, grouped

    return ask_documents(**grouped(params, ASK_GROUPS))


def run_flow(deployment: Deployment, corpus: Path | str, **params: Any) -> RunOutcome:
    """Run process_documents in this process on the deployment and read back the results table."""
    params.setdefault("max_new_tokens", 16)
    started = time.monotonic()
    result = run_process(corpus=str(corpus), profile=deployment.profile_path, **params)
    wall = time.monotonic() - started
    return RunOutcome(result, read_results(result, deployment.profile), wall)


class InvokeCounter:
    """Counts InvokeEndpointAsync calls per InferenceId that the service accepted (boto event hook)."""

    def __init__(self, profile_path: str) -> None:
        self.client = aws_client("sagemaker-runtime", load_profile(profile_path))
        self.by_id: dict[str, int] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> Self:
        self.client.meta.events.register(
            "after-call.sagemaker-runtime.InvokeEndpointAsync", self._count
        )
        return self

    def __exit__(self, *exc: Any) -> None:
        self.client.meta.events.unregister(
            "after-call.sagemaker-runtime.InvokeEndpointAsync", self._count
        )

    def _count(self, http_response: Any, parsed: dict[str, Any], **_: Any) -> None:
        if http_response.status_code < 300:
            with self._lock:
                key = parsed["InferenceId"]
                self.by_id[key] = self.by_id.get(key, 0) + 1

    @property
    def total(self) -> int:
        return sum(self.by_id.values())


def unique_run_key() -> str:
    """A fresh user-named run key (letters and digits only)."""
    return "rel" + uuid.uuid4().hex[:10]
