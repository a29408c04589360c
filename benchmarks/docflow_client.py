"""docflow's contender: the ``process_documents`` flow, and when it recorded each batch as done."""

from __future__ import annotations

import threading
import time
from functools import wraps
from typing import Any

from benchmarks.spec import ContenderSpec, Outcome
from tasks.settings import Profile


class CompletionRecorder:
    """Wraps ``RunManifest.mark`` to note the wall-clock moment a batch is recorded as completed.

    The delay reported is that moment minus the batch's ``completed_at`` (the notification's
    eventTime, set by the emulator when the output object has been written).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.delays_s: list[float] = []

    def install(self) -> CompletionRecorder:
        """Instrument the manifest class of this process (the real method still does the work)."""
        from tasks.manifest import BatchStatus, RunManifest

        original = RunManifest.mark
        recorder = self

        @wraps(original)
        def mark(manifest: Any, batch_id: str, status: Any, **fields: Any) -> bool:
            changed = bool(original(manifest, batch_id, status, **fields))
            if changed and BatchStatus(status) is BatchStatus.COMPLETED:
                recorded = time.time()
                written = manifest.batches[batch_id].completed_at
                if written is not None:
                    with recorder._lock:
                        recorder.delays_s.append(recorded - written.timestamp())
            return changed

        setattr(RunManifest, "mark", mark)  # noqa: B010 - instrumenting, not replacing
        return self


def prepare(spec: ContenderSpec, profile: Profile) -> dict[str, Any]:
    """Import the flow (not timed) and instrument the manifest."""
    from flows.process_documents import process_documents

    return {"flow": process_documents, "recorder": CompletionRecorder().install()}


def _count(summary: Any, *names: str) -> int:
    for name in names:
        value = summary.get(name) if isinstance(summary, dict) else getattr(summary, name, None)
        if value is not None:
            return int(value)
    raise KeyError(f"process_documents' summary has none of {names}: {summary!r}")


def run(spec: ContenderSpec, profile: Profile, prepared: dict[str, Any]) -> Outcome:
    """One process_documents run over the corpus on the bench's endpoint."""
    kwargs: dict[str, Any] = {
        "corpus": spec.corpus,
        "profile": profile.name,
        "endpoint": spec.endpoint.name,
        "batch_size": spec.batch_size,
    }
    if spec.parameters:
        kwargs["parameters"] = spec.parameters
    summary = prepared["flow"](**kwargs)
    recorder: CompletionRecorder = prepared["recorder"]
    return Outcome(
        docs_completed=_count(summary, "completed", "documents_completed"),
        docs_failed=_count(summary, "failed", "documents_failed"),
        generated_tokens=_count(summary, "completion_tokens", "tokens_out"),
        extra={"completion_delays_s": recorder.delays_s, "summary": summary},
    )
