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
        self.without_notification = 0

    def install(self) -> CompletionRecorder:
        """Instrument the manifest class of this process (the real method still does the work)."""
        from tasks.run.plan.manifest import BatchStatus, RunManifest

        original = RunManifest.mark
        recorder = self

        @wraps(original)
        def mark(manifest: Any, batch_id: str, status: Any, **fields: Any) -> bool:
            changed = bool(original(manifest, batch_id, status, **fields))
            if changed and BatchStatus(status) is BatchStatus.COMPLETED:
                recorded = time.time()
                record = manifest.batches[batch_id]
                with recorder._lock:
                    if record.received_time is None or record.completed_at is None:
                        recorder.without_notification += 1  # found by reconciliation in S3
                    else:
                        recorder.delays_s.append(recorded - record.completed_at.timestamp())
            return changed

        setattr(RunManifest, "mark", mark)  # noqa: B010 - instrumenting, not replacing
        return self


def prepare(spec: ContenderSpec, profile: Profile) -> dict[str, Any]:
    """Import the flow and what Prefect imports to run it (not timed); instrument the manifest."""
    from benchmarks.prefect_floor import import_engine
    from flows.process_documents import process_documents

    import_engine()

    return {"flow": process_documents, "recorder": CompletionRecorder().install()}


def run(spec: ContenderSpec, profile: Profile, prepared: dict[str, Any]) -> Outcome:
    """One process_documents run over the corpus on the bench's endpoint."""
    from tasks.params.flat import grouped

    unknown = sorted(set(spec.parameters) - {"max_new_tokens"})
    if unknown:
        raise ValueError(f"process_documents takes only max_new_tokens of {unknown}")
    kwargs: dict[str, Any] = {
        "corpus": spec.corpus,
        "profile": profile.name,
        "endpoint": spec.endpoint.name,
        "batch_size": spec.batch_size,
        "run_key": f"bench{spec.run_id}",  # never resume another contender's run
    }
    if "max_new_tokens" in spec.parameters:
        kwargs["max_new_tokens"] = int(spec.parameters["max_new_tokens"])
    summary: dict[str, Any] = prepared["flow"](**grouped(kwargs))
    recorder: CompletionRecorder = prepared["recorder"]
    return Outcome(
        docs_completed=int(summary["completed"]),
        docs_failed=int(summary["failed"]) + int(summary["rejected"]),
        generated_tokens=int(summary["completion_tokens"]),
        extra={
            "completion_delays_s": recorder.delays_s,
            "completed_without_notification": recorder.without_notification,
            "summary": summary,
        },
    )
