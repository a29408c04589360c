"""Stage a run's batch payloads in S3 in the background, in the order the fan-out invokes them.

The fan-out starts invoking as soon as the first payloads are in S3 instead of waiting for all of
them: ``PayloadStager`` puts payloads from a few worker threads (one conditional PUT each, kept
when the key already exists) and the fan-out only submits batches that ``is_staged``. Each
payload's bytes are dropped once written, so the run never holds more than the unstaged rest.
A payload sent inline (InvokeEndpointAsync ``Body``, at most 128,000 bytes) is never put: it is
held until its batch ends.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Collection, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from tasks.aws.clients import aws_client
from tasks.aws.s3 import put_object_if_absent
from tasks.aws.sagemaker_runtime import CONTENT_TYPE, describe_error
from tasks.run.plan.batching import BatchPayload
from tasks.run.plan.layout import input_key
from tasks.settings import Profile

STAGE_WORKERS = 8


class StagedInput(BaseModel):
    """One payload to put at an S3 key (skipped when the key already exists)."""

    key: str
    body: bytes


def staged_input(profile: Profile, run_key: str, payload: BatchPayload) -> StagedInput:
    """The S3 object a payload is staged as."""
    return StagedInput(key=input_key(profile, run_key, payload.batch_id), body=payload.body)


def put_staged(profile: Profile, item: StagedInput) -> int:
    """One conditional PUT of a payload; 1 when written, 0 when the key already holds one."""
    client = aws_client("s3", profile)
    written = put_object_if_absent(client, profile.bucket, item.key, item.body, CONTENT_TYPE)
    return int(written)


def stage_inputs(profile: Profile, inputs: Sequence[StagedInput], *, workers: int = 8) -> int:
    """Put each payload at its key unless an object is already there; returns how many were written."""
    if not inputs:
        return 0
    with ThreadPoolExecutor(max_workers=min(workers, len(inputs))) as pool:
        return sum(pool.map(partial(put_staged, profile), inputs))


class StagingError(RuntimeError):
    """A payload could not be put in S3; nothing of the run is lost (resume it with its run key)."""


class PayloadStager:
    """Puts payloads in S3 from worker threads; tells the fan-out which batches are there."""

    def __init__(
        self,
        profile: Profile,
        run_key: str,
        payloads: Iterable[BatchPayload],
        *,
        inline: Collection[str] = (),
        workers: int = STAGE_WORKERS,
    ) -> None:
        self.profile = profile
        self.run_key = run_key
        self.workers = workers
        # Payloads sent inline are kept until their batch ends instead of being put in S3.
        self._bodies: dict[str, bytes] = {}
        self._todo: deque[BatchPayload] = deque()
        for payload in payloads:
            if payload.batch_id in inline:
                self._bodies[payload.batch_id] = payload.body
            else:
                self._todo.append(payload)
        self._unstaged = {p.batch_id for p in self._todo}
        self.total = len(self._todo)
        self.written = 0
        self.error: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def body_of(self, batch_id: str) -> bytes | None:
        """The payload of a batch sent inline (None: it is in S3)."""
        return self._bodies.get(batch_id)

    def drop(self, batch_id: str) -> None:
        """Forget an inline payload once its batch has ended."""
        self._bodies.pop(batch_id, None)

    def is_staged(self, batch_id: str) -> bool:
        """Whether the batch can be invoked: its payload is in S3, or held to be sent inline."""
        return batch_id not in self._unstaged

    @property
    def finished(self) -> bool:
        """Every payload is in S3."""
        return not self._unstaged

    def check(self) -> None:
        """Raise ``StagingError`` once a payload has failed to stage."""
        if self.error is not None:
            raise StagingError(self.error)

    def stop(self) -> None:
        """Ask the workers to stop after their current PUT."""
        self._stop.set()

    def run(self) -> int:
        """Stage everything (blocking); returns how many objects were new. Raises ``StagingError``."""
        threads = [
            threading.Thread(target=self._work, name=f"docflow-stage-{i}", daemon=True)
            for i in range(min(self.workers, self.total))
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.check()
        return self.written

    def _next(self) -> BatchPayload | None:
        with self._lock:
            return self._todo.popleft() if self._todo and not self._stop.is_set() else None

    def _work(self) -> None:
        while (payload := self._next()) is not None:
            item = staged_input(self.profile, self.run_key, payload)
            try:
                wrote = put_staged(self.profile, item)
            except Exception as exc:
                self.error = (
                    f"staging the payload of batch {payload.batch_id} in S3 failed: "
                    f"{describe_error(exc)}; fix the cause and run again with the same run_key "
                    "to resume"
                )
                self._stop.set()
                return
            with self._lock:
                self._unstaged.discard(payload.batch_id)
                self.written += wrote


@task(name="stage-payloads", cache_policy=NO_CACHE)
def stage_payloads(stager: PayloadStager) -> int:
    """Stage the run's payloads while the fan-out invokes the ones already staged."""
    started = time.monotonic()
    written = stager.run()
    get_run_logger().info(
        "staged %d payloads (%d new) in %.1f s",
        stager.total,
        written,
        time.monotonic() - started,
    )
    return written
