"""Drive a run's batches to terminal states: paced within the shared cap, notifications, reconciliation, recovery."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from datetime import UTC, datetime
from typing import Any

from prefect import get_run_logger

from tasks.aws.sagemaker_runtime import InvokeRequest, InvokeResult, InvokeSettings, invoke_one
from tasks.capacity.keeper import Chores, SlotKeeper
from tasks.capacity.limit import cap_share
from tasks.run.fanout.cancel import CancelWatch
from tasks.run.fanout.notifications import Outcome, Received, outcome_from_notification
from tasks.run.fanout.outcomes import Decision, apply_outcome, fail_outstanding, split_failed_batch
from tasks.run.fanout.policy import POLLING, DriveOptions
from tasks.run.fanout.poller import QueuePoller
from tasks.run.fanout.reconcile import expired, found_in_s3
from tasks.run.fanout.run_queue import RunQueue
from tasks.run.fanout.spool import OutputSpool
from tasks.run.fanout.staging import PayloadStager
from tasks.run.fanout.stats import DriveStats
from tasks.run.plan.manifest import BatchRecord, BatchStatus, RunManifest, save_manifest
from tasks.run.plan.target import EndpointOutputs
from tasks.settings import Profile


class RunDriver:
    """One run's submit/wait/recover loop; counts terminal batches to know when it is done."""

    def __init__(
        self,
        profile: Profile,
        manifest: RunManifest,
        outputs: EndpointOutputs,
        queue: RunQueue,
        invoke: InvokeSettings,
        options: DriveOptions,
        *,
        cap: int,
        on_progress: Callable[[RunManifest], None] | None = None,
        staging: PayloadStager | None = None,
        spool: OutputSpool | None = None,
        cancel: CancelWatch | None = None,
        chores: Chores | None = None,
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
        self.cancel = cancel
        # The loop's Prefect API calls (slots, demand, cancel checks) are made on this thread.
        self.chores = chores
        self.stats = DriveStats()
        self._last_progress = 0.0
        self._invoking: dict[str, tuple[InvokeRequest, Future[InvokeResult]]] = {}
        self._last_reconcile = time.monotonic()
        self._reconcile_interval = options.reconcile_every_s
        self._last_save = time.monotonic()
        self._last_grow = 0.0
        self._last_share = 0.0
        self._dirty = False

    def run(self) -> DriveStats:
        """Submit, wait and recover until every batch is terminal or the deadline passes."""
        from prefect.exceptions import TerminationSignal

        logger = get_run_logger()
        try:
            self._loop(logger)
        except TerminationSignal:
            # A runner cancels a deployment's run by terminating its process: when the flow run
            # is being cancelled, stop as for a cancel seen in the loop; otherwise a crash.
            reason = self.cancel.requested(now=True) if self.cancel is not None else None
            if reason is None:
                raise
            self._stop_for_cancel(f"{reason}; its process was terminated", logger)
        finally:
            # Also on an error: a resumed run then starts from what this one recorded.
            save_manifest(self.manifest, self.profile)
        return self.stats

    def _loop(self, logger: Any) -> None:
        deadline = time.monotonic() + self.options.deadline_s
        with (
            Chores() if self.chores is None else nullcontext(self.chores) as chores,
            cap_share(self.invoke.endpoint) as (share, demand),
            QueuePoller(self.profile, self.queue, wait_s=self.options.poll_wait_s) as poller,
            ThreadPoolExecutor(
                min(self.cap, POLLING.max_invoker_threads), thread_name_prefix="docflow-invoke"
            ) as invoker,
        ):
            keeper = SlotKeeper(share, demand, self.cap, chores, wake=poller.wake)
            try:
                while outstanding := self.manifest.outstanding():
                    chores.check()
                    if self.cancel is not None and (reason := self.cancel.poll(chores.submit)):
                        self._stop_for_cancel(reason, logger)
                        break
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
                    self._size_share(keeper, in_flight, len(pending))
                    free = keeper.held - in_flight
                    ready = [
                        r for r in pending[: free + POLLING.stage_lookahead] if self._staged(r)
                    ]
                    wave = ready[:free] if free > 0 else []
                    if wave:
                        self._submit(invoker, poller, wave)
                    self._publish_demand(keeper, in_flight + len(wave), len(pending) - len(wave))
                    # Wait for the next notification, a returned invocation, or a short idle tick.
                    wait_s = self._wait_s(
                        in_flight + len(wave), free - len(wave), len(pending) - len(wave)
                    )
                    self._handle(poller, poller.take(wait_s))
                    self._reconcile_if_due()
                    self._save_if_due()
                    self._report_progress()
                # Repeats are published right behind the original: take them off the queue too.
                while messages := poller.take(POLLING.drain_wait_s):
                    self._handle(poller, messages)
            finally:
                self._record_invocations(wait=True, raising=False)  # submitted stays on record
                chores.drain()  # every lease call made before cap_share gives back the rest
        if self.on_progress is not None:
            self.on_progress(self.manifest)

    def _stop_for_cancel(self, reason: str, logger: Any) -> None:
        """Invoke nothing more; leave unfinished batches as they are so that a resume runs them."""
        self._record_invocations(wait=True)  # an invocation under way is on record as submitted
        self.manifest.canceled = reason
        self._dirty = True
        counts = self.manifest.document_counts()
        self.stats.canceled_documents = counts["pending"] + counts["submitted"]
        logger.warning(
            "%s: stopped invoking; %d documents canceled (%d in flight: their results are picked "
            "up when the run resumes with run_key %s)",
            reason,
            self.stats.canceled_documents,
            counts["submitted"],
            self.manifest.run_key,
        )

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
            return POLLING.staging_wait_s  # a payload being staged will be ready in milliseconds
        return POLLING.idle_wait_s if in_flight else POLLING.busy_wait_s

    def _report_progress(self) -> None:
        now = time.monotonic()
        if self.on_progress is not None and now - self._last_progress >= POLLING.progress_every_s:
            self._last_progress = now
            self.on_progress(self.manifest)

    def _size_share(self, keeper: SlotKeeper, in_flight: int, pending: int) -> None:
        """Hold only the slots in use or about to be: grow when free, hand back as batches end.

        Above its fair share (``_publish_demand``) the run gives back each slot whose batch ends,
        so a run started beside it gets a slot as soon as one batch finishes. The API calls are
        made in the background (``SlotKeeper``): a slot taken wakes the loop.
        """
        want = min(self.cap, in_flight + pending)
        now = time.monotonic()
        target = min(want, keeper.target)
        held = keeper.held
        self.stats.slots_held_max = max(self.stats.slots_held_max, held)
        if held > target:
            # Never below what is in flight: those slots are in use until their batch ends.
            self.stats.slots_released += keeper.shrink_to(max(target, in_flight))
        elif (
            held < target
            and not keeper.growing
            and (not held or now - self._last_grow >= POLLING.grow_every_s)
        ):
            self._last_grow = now
            # Wait for a slot only once the run's demand is published (others make room for it).
            wait_s = POLLING.first_grow_wait_s if not held and keeper.published else 0
            keeper.grow(target - held, timeout_s=wait_s)

    def _publish_demand(self, keeper: SlotKeeper, in_flight: int, pending: int) -> None:
        """Say what this run could use and read what all runs want (after submitting: no delay)."""
        want = min(self.cap, in_flight + pending)
        now = time.monotonic()
        # More is said at once; less (each batch ending in the tail) at most every share_every_s:
        # three API calls per change cost a run's last seconds, and a shrinking want frees no slot.
        if now - self._last_share >= POLLING.share_every_s or want > keeper.asked:
            self._last_share = now
            keeper.publish(want)

    def _submit(
        self, invoker: ThreadPoolExecutor, poller: QueuePoller, wave: list[BatchRecord]
    ) -> None:
        """Start invoking ``wave`` on the invoker threads; each result wakes the loop."""
        for record in wave:
            request = InvokeRequest(
                batch_id=record.batch_id,
                inference_id=record.inference_id,
                input_uri=record.input_uri,
                body=self._inline_body(record),
                attempt=record.attempts + 1,
                invocation_timeout_s=self.options.timeout_for(
                    self.invoke.invocation_timeout_s, record.attempts + 1
                ),
            )
            future = invoker.submit(invoke_one, self.profile, self.invoke, request)
            future.add_done_callback(lambda _: poller.wake())
            self._invoking[record.batch_id] = (request, future)
        self.stats.waves += 1

    def _inline_body(self, record: BatchRecord) -> bytes | None:
        """The payload to send inline, or None for InputLocation."""
        if not record.inline:
            return None
        body = self.staging.body_of(record.batch_id) if self.staging is not None else None
        if body is None:
            raise RuntimeError(
                f"batch {record.batch_id} is sent inline but its payload was not rebuilt; "
                "this is a bug in docflow's resume, please report it"
            )
        return body

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
        budget_used = request.attempt - self.manifest.batches[request.batch_id].retried_after
        if result.retryable and budget_used < self.options.max_attempts:
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
            record = self.manifest.batches[outcome.batch_id]
            split_failed_batch(
                self.profile,
                self.outputs,
                self.manifest,
                outcome.batch_id,
                outcome.reason or "",
                body=self._inline_body(record),
            )
            self.stats.splits += 1
        if decision in (Decision.COMPLETED, Decision.FAILED, Decision.SPLIT) and self.staging:
            self.staging.drop(outcome.batch_id)
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
        after_s = self.options.reconcile_after_s
        for outcome in found_in_s3(self.profile, self.manifest, self.outputs, after_s, wall_now):
            found += self._apply(outcome) is not Decision.IGNORED
        self.stats.reconciled += found
        if found:
            get_run_logger().info("reconciled %d batches from S3 (notifications missing)", found)
            self._reconcile_interval = self.options.reconcile_every_s
        else:
            ceiling = max(POLLING.reconcile_max_interval_s, self.options.reconcile_every_s)
            self._reconcile_interval = min(self._reconcile_interval * 2, ceiling)
        for outcome in expired(self.manifest, self.options.expiry_s, wall_now):
            self._apply(outcome)

    def _save_if_due(self) -> None:
        now = time.monotonic()
        if self._dirty and now - self._last_save >= self.options.save_every_s:
            save_manifest(self.manifest, self.profile)
            self._last_save = now
            self._dirty = False
