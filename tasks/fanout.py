"""Drive a run's batches to terminal states: waves within the shared cap, notifications, reconciliation, recovery."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from tasks.invoke import InvokeRequest, InvokeResult, InvokeSettings, slot_pool, submit_wave
from tasks.manifest import BatchRecord, BatchStatus, RunManifest, save_manifest
from tasks.notifications import (
    EndpointOutputs,
    Outcome,
    Pending,
    RunQueue,
    delete,
    outcome_from_notification,
    receive,
    reconcile,
)
from tasks.recovery import (
    Decision,
    apply_outcome,
    expected_failure_uri,
    expected_output_uri,
    fail_outstanding,
    overdue,
    split_failed_batch,
)
from tasks.settings import Profile

MAX_INVOCATION_TIMEOUT_S = 3600
RECONCILE_MAX_INTERVAL_S = 60.0


class FanoutOptions(BaseModel):
    """How hard and how long to drive a run."""

    max_attempts: int = Field(3, ge=1)
    wave_size: int | None = Field(None, ge=1, description="Batches per wave; None: half the cap.")
    poll_wait_s: int = Field(1, ge=0, le=20)
    reconcile_every_s: float = Field(10.0, gt=0)
    reconcile_after_s: float = Field(5.0, ge=0)
    save_every_s: float = Field(10.0, gt=0)
    expiry_s: float = Field(21600 + 900 + 60, gt=0)
    deadline_s: float = Field((21600 + 900) * 3 + 300, gt=0)


class FanoutStats(BaseModel):
    """What driving the run took."""

    waves: int = 0
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
        output_uri=expected_output_uri(outputs, run_key, record.batch_id, attempt),
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
    for outcome in reconcile_batches(profile, lookups):
        record = manifest.batches[outcome.batch_id]
        if record.status is BatchStatus.PENDING:
            # Its next attempt's output exists: the killed run invoked it after its last save.
            manifest.mark(record.batch_id, BatchStatus.SUBMITTED, attempts=record.attempts + 1)
        decision = apply_outcome(manifest, outcome, max_attempts=max_attempts)
        if decision is Decision.SPLIT:
            split_failed_batch(profile, outputs, manifest, outcome.batch_id, outcome.reason or "")
        settled += decision is not Decision.IGNORED
    return settled


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
    ) -> None:
        self.profile = profile
        self.manifest = manifest
        self.outputs = outputs
        self.queue = queue
        self.invoke = invoke
        self.options = options
        self.cap = cap
        self.wave_size = min(cap, options.wave_size or max(1, cap // 2))
        self.on_progress = on_progress
        self.stats = FanoutStats()
        self._last_reconcile = time.monotonic()
        self._reconcile_interval = options.reconcile_every_s
        self._last_save = time.monotonic()
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
        with slot_pool(self.invoke.endpoint) as slots:
            while not self.manifest.is_done():
                if time.monotonic() > deadline:
                    self.stats.deadline_failed = fail_outstanding(
                        self.manifest,
                        f"run deadline of {self.options.deadline_s:.0f}s passed before a result "
                        "arrived; raise deadline_s or resume the run with the same run key",
                    )
                    logger.warning("deadline passed: %d batches failed", self.stats.deadline_failed)
                    break
                pending = [
                    r for r in self.manifest.outstanding() if r.status is BatchStatus.PENDING
                ]
                # Fill this run's free share of the cap, a wave (one lease) at a time.
                while pending and (free := self.cap - slots.held) > 0:
                    size = min(free, self.wave_size)
                    wave, pending = pending[:size], pending[size:]
                    if not slots.acquire(
                        [r.batch_id for r in wave], timeout_s=0.5 if slots.held else 5
                    ):
                        break
                    self._submit(wave)
                if any(r.status is BatchStatus.SUBMITTED for r in self.manifest.outstanding()):
                    self._poll()
                self._reconcile_if_due()
                slots.release_done(
                    lambda b: self.manifest.batches[b].status is not BatchStatus.SUBMITTED
                )
                self._save_if_due()
                if self.on_progress is not None:
                    self.on_progress(self.manifest)

    def _timeout_for(self, attempt: int) -> int | None:
        """The invocation timeout of an attempt: doubled on each re-invoke of an expired request."""
        base = self.invoke.invocation_timeout_s
        if base is None:
            return None
        return min(MAX_INVOCATION_TIMEOUT_S, base * 2 ** (attempt - 1))

    def _submit(self, wave: list[BatchRecord]) -> None:
        requests = [
            InvokeRequest(
                batch_id=r.batch_id,
                inference_id=r.inference_id,
                input_uri=r.input_uri,
                attempt=r.attempts + 1,
                invocation_timeout_s=self._timeout_for(r.attempts + 1),
            )
            for r in wave
        ]
        results = submit_wave(self.profile, self.invoke, requests)
        self.stats.waves += 1
        for request, result in zip(requests, results, strict=True):
            self._record_submission(request, result)
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
                or expected_output_uri(self.outputs, run_key, request.batch_id, request.attempt),
                failure_uri=result.failure_uri
                or expected_failure_uri(self.outputs, run_key, request.batch_id, request.attempt),
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

    def _poll(self) -> None:
        messages = receive(self.profile, self.queue, wait_s=self.options.poll_wait_s)
        counters = self.manifest.notifications
        for message in messages:
            counters.received += 1
            note = message.notification
            record = self.manifest.by_inference_id(note.inference_id) if note else None
            if note is None or record is None:
                counters.unknown += 1
                continue
            if self._apply(outcome_from_notification(record.batch_id, note)) is Decision.IGNORED:
                counters.duplicates += 1
        # Deleted only now: every message's effect is in the manifest (and S3 has the objects).
        delete(self.profile, self.queue, [m.receipt_handle for m in messages])

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
