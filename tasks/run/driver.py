"""Drive a run's batches to terminal states: paced within the shared cap, notifications, reconciliation, recovery."""

from __future__ import annotations

import queue as queue_module
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from tasks.aws.sagemaker_runtime import InvokeRequest, InvokeResult, InvokeSettings, invoke_one
from tasks.run.capacity import CapShare, cap_share
from tasks.run.manifest import BatchRecord, BatchStatus, RunManifest, save_manifest
from tasks.run.notifications import (
    EndpointOutputs,
    Outcome,
    Pending,
    Received,
    RunQueue,
    delete,
    outcome_from_notification,
    receive,
    reconcile,
)
from tasks.run.outcomes import (
    Decision,
    apply_outcome,
    fail_outstanding,
    overdue,
    split_failed_batch,
)
from tasks.run.quoting import unwalked
from tasks.run.spool import OutputSpool
from tasks.run.staging import PayloadStager
from tasks.settings import Profile

MAX_INVOCATION_TIMEOUT_S = 3600
RECONCILE_MAX_INTERVAL_S = 60.0
IDLE_WAIT_S = 0.5  # longest the loop sleeps on the inbox before checking deadline, reconcile, save
STAGING_WAIT_S = 0.01  # a slot is free but the next payload is still being staged
PROGRESS_EVERY_S = 0.5
# Invocations return in milliseconds and are paced by invoke_rate_per_second: a larger cap
# needs more slots held, not more threads (botocore's connection pool is 64).
MAX_INVOKER_THREADS = 32
STAGE_LOOKAHEAD = 64  # pending batches looked at for a staged one, beyond the free slots
GROW_EVERY_S = 0.5  # while holding slots, how often to ask for more of the shared cap
POLL_ERRORS_TOLERATED = 5
DRAIN_WAIT_S = 0.1  # once every batch is terminal, how long to wait for late repeats to delete


class FanoutOptions(BaseModel):
    """How hard and how long to drive a run."""

    max_attempts: int = Field(3, ge=1)
    poll_wait_s: int = Field(1, ge=0, le=20)
    reconcile_every_s: float = Field(10.0, gt=0)
    reconcile_after_s: float = Field(5.0, ge=0)
    save_every_s: float = Field(10.0, gt=0)
    expiry_s: float = Field(21600 + 900 + 60, gt=0)
    deadline_s: float = Field((21600 + 900) * 3 + 300, gt=0)


class FanoutStats(BaseModel):
    """What driving the run took."""

    waves: int = Field(0, description="Submission rounds (a refill of one or more batches).")
    invocations: int = 0
    invoke_errors: int = 0
    reconciled: int = 0
    retries: int = 0
    splits: int = 0
    expired: int = 0
    deadline_failed: int = 0


@task(name="reconcile-batches", cache_policy=NO_CACHE)
def reconcile_batches(profile: Profile, pending: list[Pending]) -> list[Outcome]:
    """Look up submitted batches' output and failure objects in S3 (notifications can be lost)."""
    return reconcile(profile, pending)


def _pending_lookup(record: BatchRecord, outputs: EndpointOutputs, run_key: str) -> Pending:
    """Where a batch's result would be: its recorded locations, or the next attempt's for a pending one."""
    if record.status is BatchStatus.SUBMITTED:
        return Pending(
            batch_id=record.batch_id, output_uri=record.output_uri, failure_uri=record.failure_uri
        )
    attempt = record.attempts + 1
    return Pending(
        batch_id=record.batch_id,
        output_uri=outputs.output_uri(run_key, record.batch_id, attempt),
        failure_uri=None,
    )


def resume_reconcile(
    profile: Profile, manifest: RunManifest, outputs: EndpointOutputs, *, max_attempts: int
) -> int:
    """Before invoking anything on a resumed run, settle its unfinished batches from S3."""
    outstanding = manifest.outstanding()
    if not outstanding:
        return 0
    lookups = [_pending_lookup(r, outputs, manifest.run_key) for r in outstanding]
    settled = 0
    for outcome in reconcile_batches(profile, unwalked(lookups)):
        record = manifest.batches[outcome.batch_id]
        if record.status is BatchStatus.PENDING:
            # Its next attempt's output exists: the killed run invoked it after its last save.
            manifest.mark(record.batch_id, BatchStatus.SUBMITTED, attempts=record.attempts + 1)
        decision = apply_outcome(manifest, outcome, max_attempts=max_attempts)
        if decision is Decision.SPLIT:
            split_failed_batch(profile, outputs, manifest, outcome.batch_id, outcome.reason or "")
        settled += decision is not Decision.IGNORED
    return settled


class QueuePoller:
    """Long-polls the run's queue on a background thread so submitting never waits behind a poll.

    Messages land in an inbox for the run's loop; their receipt handles come back through
    ``ack`` once the loop has recorded their effect, and only then are they deleted.
    """

    def __init__(self, profile: Profile, run_queue: RunQueue, *, wait_s: int) -> None:
        self.profile = profile
        self.queue = run_queue
        self.wait_s = wait_s
        self.inbox: queue_module.Queue[Received | None] = queue_module.Queue()
        self._acked: queue_module.Queue[str] = queue_module.Queue()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="docflow-sqs-poller", daemon=True)

    def __enter__(self) -> QueuePoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        # The thread ends after its current long poll (at most ``wait_s``); the run does not wait
        # for it. Whatever that poll still takes is left undeleted and comes back after the
        # visibility timeout, where a resumed run would see it again.
        self._stop.set()
        self._delete_acked()

    def take(self, timeout_s: float) -> list[Received]:
        """Messages received so far, waiting up to ``timeout_s`` for the first (or a ``wake``).

        Raises when polling has failed for good.
        """
        if self._error is not None:
            raise RuntimeError(f"polling the run's queue failed: {self._error}") from self._error
        items: list[Received | None] = []
        try:
            items.append(
                self.inbox.get(timeout=timeout_s) if timeout_s > 0 else self.inbox.get_nowait()
            )
        except queue_module.Empty:
            return []
        while True:
            try:
                items.append(self.inbox.get_nowait())
            except queue_module.Empty:
                return [m for m in items if m is not None]

    def wake(self) -> None:
        """End a ``take`` that is waiting now (an invocation has returned)."""
        self.inbox.put(None)

    def ack(self, receipt_handles: list[str]) -> None:
        """Hand back messages whose effect is recorded, to be deleted."""
        for handle in receipt_handles:
            self._acked.put(handle)

    def _delete_acked(self) -> None:
        handles: list[str] = []
        while True:
            try:
                handles.append(self._acked.get_nowait())
            except queue_module.Empty:
                break
        if handles:
            delete(self.profile, self.queue, handles)

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                self._delete_acked()
                received = receive(self.profile, self.queue, wait_s=self.wait_s)
                if self._stop.is_set():
                    return
                for message in received:
                    self.inbox.put(message)
                failures = 0
            except Exception as exc:  # surfaced to the run's loop once it keeps failing
                failures += 1
                if failures >= POLL_ERRORS_TOLERATED:
                    self._error = exc
                    return
                self._stop.wait(min(5.0, 0.2 * 2**failures))


class Fanout:
    """One run's wait/recover loop; counts terminal batches to know when it is done."""

    def __init__(
        self,
        profile: Profile,
        manifest: RunManifest,
        outputs: EndpointOutputs,
        queue: RunQueue,
        invoke: InvokeSettings,
        options: FanoutOptions,
        *,
        cap: int,
        on_progress: Callable[[RunManifest], None] | None = None,
        staging: PayloadStager | None = None,
        spool: OutputSpool | None = None,
    ) -> None:
        self.profile = profile
        self.manifest = manifest
        self.outputs = outputs
        self.queue = queue
        self.invoke = invoke
        self.options = options
        self.cap = cap
        self.on_progress = on_progress
        self.staging = staging
        self.spool = spool
        self.stats = FanoutStats()
        self._last_progress = 0.0
        self._invoking: dict[str, tuple[InvokeRequest, Future[InvokeResult]]] = {}
        self._last_reconcile = time.monotonic()
        self._reconcile_interval = options.reconcile_every_s
        self._last_save = time.monotonic()
        self._last_grow = 0.0
        self._dirty = False

    def run(self) -> FanoutStats:
        """Submit, wait and recover until every batch is terminal or the deadline passes."""
        logger = get_run_logger()
        try:
            self._loop(logger)
        finally:
            # Also on an error: a resumed run then starts from what this one recorded.
            save_manifest(self.manifest, self.profile)
        return self.stats

    def _loop(self, logger: Any) -> None:
        deadline = time.monotonic() + self.options.deadline_s
        with (
            cap_share(self.invoke.endpoint) as share,
            QueuePoller(self.profile, self.queue, wait_s=self.options.poll_wait_s) as poller,
            ThreadPoolExecutor(
                min(self.cap, MAX_INVOKER_THREADS), thread_name_prefix="docflow-invoke"
            ) as invoker,
        ):
            try:
                while outstanding := self.manifest.outstanding():
                    if time.monotonic() > deadline:
                        self._record_invocations(wait=True)
                        self.stats.deadline_failed = fail_outstanding(
                            self.manifest,
                            f"run deadline of {self.options.deadline_s:.0f}s passed before a "
                            "result arrived; raise deadline_s or resume the run with the same "
                            "run key",
                        )
                        logger.warning(
                            "deadline passed: %d batches failed", self.stats.deadline_failed
                        )
                        break
                    self._note_staging()
                    self._record_invocations(wait=False)
                    pending = [
                        r
                        for r in outstanding
                        if r.status is BatchStatus.PENDING and r.batch_id not in self._invoking
                    ]
                    in_flight = len(outstanding) - len(pending)
                    self._size_share(share, in_flight, len(pending))
                    free = share.held - in_flight
                    ready = [r for r in pending[: free + STAGE_LOOKAHEAD] if self._staged(r)]
                    wave = ready[:free] if free > 0 else []
                    if wave:
                        self._submit(invoker, poller, wave)
                    # Wait for the next notification, a returned invocation, or a short idle tick.
                    wait_s = self._wait_s(
                        in_flight + len(wave), free - len(wave), len(pending) - len(wave)
                    )
                    self._handle(poller, poller.take(wait_s))
                    self._reconcile_if_due()
                    self._save_if_due()
                    self._report_progress()
                # Repeats are published right behind the original: take them off the queue too.
                while messages := poller.take(DRAIN_WAIT_S):
                    self._handle(poller, messages)
            finally:
                self._record_invocations(wait=True, raising=False)  # submitted stays on record
        if self.on_progress is not None:
            self.on_progress(self.manifest)

    def _staged(self, record: BatchRecord) -> bool:
        return self.staging is None or self.staging.is_staged(record.batch_id)

    def _note_staging(self) -> None:
        """Raise a staging failure; record in the manifest once every payload is in S3."""
        if self.staging is None:
            return
        self.staging.check()
        if self.staging.finished and not self.manifest.staged:
            self.manifest.staged = True
            self._dirty = True

    def _wait_s(self, in_flight: int, free: int, pending: int) -> float:
        """How long to wait for a notification before looking again."""
        staging = self.staging is not None and not self.staging.finished
        if staging and pending and free > 0:
            return STAGING_WAIT_S  # a payload being staged will be ready in milliseconds
        return IDLE_WAIT_S if in_flight else 0.05

    def _report_progress(self) -> None:
        now = time.monotonic()
        if self.on_progress is not None and now - self._last_progress >= PROGRESS_EVERY_S:
            self._last_progress = now
            self.on_progress(self.manifest)

    def _size_share(self, share: CapShare, in_flight: int, pending: int) -> None:
        """Hold as much of the shared cap as the remaining work can use: grow when free, shrink at the tail."""
        want = min(self.cap, in_flight + pending)
        if share.held > want:
            share.shrink_to(want)
            return
        if share.held >= want:
            return
        now = time.monotonic()
        if share.held and now - self._last_grow < GROW_EVERY_S:
            return
        self._last_grow = now
        share.grow(want - share.held, timeout_s=0 if share.held else 5)

    def _timeout_for(self, attempt: int) -> int | None:
        """The invocation timeout of an attempt: doubled on each re-invoke of an expired request."""
        base = self.invoke.invocation_timeout_s
        if base is None:
            return None
        return min(MAX_INVOCATION_TIMEOUT_S, base * 2 ** (attempt - 1))

    def _submit(
        self, invoker: ThreadPoolExecutor, poller: QueuePoller, wave: list[BatchRecord]
    ) -> None:
        """Start invoking ``wave`` on the invoker threads; each result wakes the loop."""
        for record in wave:
            request = InvokeRequest(
                batch_id=record.batch_id,
                inference_id=record.inference_id,
                input_uri=record.input_uri,
                attempt=record.attempts + 1,
                invocation_timeout_s=self._timeout_for(record.attempts + 1),
            )
            future = invoker.submit(invoke_one, self.profile, self.invoke, request)
            future.add_done_callback(lambda _: poller.wake())
            self._invoking[record.batch_id] = (request, future)
        self.stats.waves += 1

    def _record_invocations(self, *, wait: bool, raising: bool = True) -> None:
        """Record the invocations that have returned (with ``wait``, all of them).

        ``invoke_one`` returns errors as results; an exception here is a bug or a crash, raised
        unless ``raising`` is off (while already unwinding from another error).
        """
        for batch_id, (_, future) in list(self._invoking.items()):
            if not wait and not future.done():
                continue
            if not raising and future.exception() is not None:
                del self._invoking[batch_id]
                continue
            self._record_invocation(batch_id)

    def _record_invocation(self, batch_id: str) -> None:
        """Wait for the batch's InvokeEndpointAsync (if it is under way) and record its result."""
        invoking = self._invoking.pop(batch_id, None)
        if invoking is not None:
            request, future = invoking
            self._record_submission(request, future.result())
            self._dirty = True

    def _record_submission(self, request: InvokeRequest, result: InvokeResult) -> None:
        run_key = self.manifest.run_key
        if result.error is None:
            self.stats.invocations += 1
            self.manifest.mark(
                request.batch_id,
                BatchStatus.SUBMITTED,
                attempts=request.attempt,
                output_uri=result.output_uri
                or self.outputs.output_uri(run_key, request.batch_id, request.attempt),
                failure_uri=result.failure_uri
                or self.outputs.failure_uri(run_key, request.batch_id, request.attempt),
                submitted_at=datetime.fromtimestamp(result.submitted_at or time.time(), UTC),
            )
            return
        self.stats.invoke_errors += 1
        if result.retryable and request.attempt < self.options.max_attempts:
            self.manifest.mark(
                request.batch_id, BatchStatus.PENDING, attempts=request.attempt, reason=result.error
            )
            self.stats.retries += 1
        else:
            self.manifest.mark(
                request.batch_id,
                BatchStatus.FAILED,
                attempts=request.attempt,
                reason=result.error,
                completed_at=datetime.now(UTC),
            )

    def _apply(self, outcome: Outcome) -> Decision:
        decision = apply_outcome(self.manifest, outcome, max_attempts=self.options.max_attempts)
        if decision is Decision.COMPLETED and self.spool is not None:
            self.spool.fetch(self.manifest.batches[outcome.batch_id].output_uri)
        if decision is Decision.SPLIT:
            split_failed_batch(
                self.profile, self.outputs, self.manifest, outcome.batch_id, outcome.reason or ""
            )
            self.stats.splits += 1
        elif decision is Decision.RETRY:
            self.stats.retries += 1
            self.stats.expired += outcome.expired
        if decision is not Decision.IGNORED:
            self._dirty = True
        return decision

    def _handle(self, poller: QueuePoller, messages: list[Received]) -> None:
        """Record what each notification says (repeats ignored), then let the poller delete them."""
        counters = self.manifest.notifications
        for message in messages:
            counters.received += 1
            note = message.notification
            record = self.manifest.by_inference_id(note.inference_id) if note else None
            if note is None or record is None:
                counters.unknown += 1
                continue
            # The result can arrive before InvokeEndpointAsync's response: record that first.
            self._record_invocation(record.batch_id)
            if self._apply(outcome_from_notification(record.batch_id, note)) is Decision.IGNORED:
                counters.duplicates += 1
        # Deleted only now: every message's effect is in the manifest (and S3 has the objects).
        poller.ack([m.receipt_handle for m in messages])

    def _reconcile_if_due(self) -> None:
        """Look in S3 for outstanding batches; backs off while it finds nothing (no task run each time)."""
        now = time.monotonic()
        if now - self._last_reconcile < self._reconcile_interval:
            return
        self._last_reconcile = now
        wall_now = datetime.now(UTC)
        found = 0
        waiting = overdue(self.manifest, now=wall_now, after_s=self.options.reconcile_after_s)
        if waiting:
            lookups = [_pending_lookup(r, self.outputs, self.manifest.run_key) for r in waiting]
            for outcome in reconcile(self.profile, lookups):
                found += self._apply(outcome) is not Decision.IGNORED
        self.stats.reconciled += found
        if found:
            get_run_logger().info("reconciled %d batches from S3 (notifications missing)", found)
            self._reconcile_interval = self.options.reconcile_every_s
        else:
            ceiling = max(RECONCILE_MAX_INTERVAL_S, self.options.reconcile_every_s)
            self._reconcile_interval = min(self._reconcile_interval * 2, ceiling)
        for record in overdue(self.manifest, now=wall_now, after_s=self.options.expiry_s):
            self._apply(
                Outcome(
                    batch_id=record.batch_id,
                    status="failed",
                    expired=True,
                    reason=f"no result {self.options.expiry_s:.0f}s after submission (expired)",
                    failure_uri=record.failure_uri,
                    source="reconcile",
                )
            )

    def _save_if_due(self) -> None:
        now = time.monotonic()
        if self._dirty and now - self._last_save >= self.options.save_every_s:
            save_manifest(self.manifest, self.profile)
            self._last_save = now
            self._dirty = False
