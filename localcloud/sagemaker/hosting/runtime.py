"""A live endpoint: its request queue, variant pools, TTL reaper, and how one invocation is carried out."""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from typing import Any

from localcloud.faults import Faults
from localcloud.sagemaker.hosting.notifications import Notifier, inference_result
from localcloud.sagemaker.hosting.pool import VariantPool
from localcloud.sagemaker.hosting.process import (
    Answer,
    InstanceDied,
    InstanceProcess,
    InvocationTimeout,
    StreamBroken,
)
from localcloud.sagemaker.hosting.queue import Chunks, Invocation, Reply, RequestQueue
from localcloud.sagemaker.hosting.sticky import (
    NEW_SESSION,
    SESSION_HEADER,
    SessionRoutes,
    gone_message,
)
from localcloud.stats import Stats

log = logging.getLogger(__name__)


@dataclass
class Context:
    """What every endpoint shares: clients to moto, the switchboard, the counters."""

    region: str
    s3: Any
    notifier: Notifier
    faults: Faults
    stats: Stats
    aws_env: dict[str, str]


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> (bucket, key)."""
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


class EndpointRuntime:
    """Serves one endpoint: requests queue here and the active pools' slots take them."""

    def __init__(self, ctx: Context, name: str) -> None:
        self.ctx = ctx
        self.name = name
        self.queue = RequestQueue()
        self.sessions = SessionRoutes()
        self.pools: dict[str, VariantPool] = {}
        self._retiring: list[VariantPool] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._reaper = threading.Thread(target=self._reap, name=f"{name}-ttl", daemon=True)
        self._reaper.start()

    # --- pools -----------------------------------------------------------------------------------

    def activate(self, pools: dict[str, VariantPool]) -> None:
        """Make ``pools`` the serving ones; the previous pools drain their in-flight requests and stop."""
        with self._lock:
            old = list(self.pools.values())
            self.pools = pools
            self._retiring.extend(old)
        for pool in pools.values():
            pool.active.set()
        for pool in old:
            threading.Thread(
                target=self._retire, args=(pool,), name=f"{self.name}-retire", daemon=True
            ).start()

    def _retire(self, pool: VariantPool) -> None:
        pool.close(drain=True)
        with self._lock:
            if pool in self._retiring:
                self._retiring.remove(pool)

    def capacity(self) -> int:
        """Loaded instances x slots across the active pools."""
        with self._lock:
            return sum(p.ready_count * p.slots for p in self.pools.values())

    def pids(self) -> list[int]:
        """Every live instance PID of this endpoint."""
        with self._lock:
            pools = list(self.pools.values()) + list(self._retiring)
        return [pid for p in pools for pid in p.pids()]

    def close(self) -> None:
        """Stop serving now: kill instances, drop queued requests."""
        self._stop.set()
        with self._lock:
            pools = list(self.pools.values()) + list(self._retiring)
            self.pools = {}
        for pool in pools:
            pool.close(drain=False)
        for inv in self.queue.drain():
            self.ctx.stats.dequeued(self.name)
            self._finish_failed(
                inv, "ClientError: the endpoint was deleted before the request ran.", ran=False
            )

    # --- requests --------------------------------------------------------------------------------

    def submit(self, inv: Invocation) -> None:
        """Queue a request."""
        self.ctx.stats.received(self.name)
        self.queue.put(inv)

    def _reap(self) -> None:
        """Fail requests whose RequestTTLSeconds passed while they waited (e.g. scaled to zero)."""
        while not self._stop.wait(0.2):
            for inv in self.queue.remove_expired(self._ttl_scale()):
                self.ctx.stats.dequeued(self.name)
                self._expire(inv)
            # A session's request queued for an instance that died since: refuse it now.
            for inv in self.queue.remove_where(
                lambda i: i.target is not None and not i.target.alive()
            ):
                self.ctx.stats.dequeued(self.name)
                self._session_gone(inv, inv.target)

    def _session_gone(self, inv: Invocation, inst: InstanceProcess) -> None:
        self.ctx.stats.finished(self.name, ok=False, ran=False)
        if inv.reply is not None and not inv.reply.done():
            message = gone_message(inv.session_id or "", inst.id)
            inv.reply.set_result(Reply(400, message.encode(), "text/plain", session_gone=True))

    def _ttl_scale(self) -> float:
        return float(self.ctx.faults.snapshot()["settings"]["ttl_scale"])

    def _expire(self, inv: Invocation) -> None:
        reason = (
            f"ExpiredRequest: the request waited longer than RequestTTLSeconds ({inv.ttl_s:.0f} s) "
            "in the endpoint queue and was not processed."
        )
        self._finish_failed(inv, reason, ran=False)

    def execute(self, inv: Invocation, inst: InstanceProcess) -> None:
        """Run one request on ``inst`` and deliver its outcome (S3 + SNS, or the real-time reply)."""
        self.ctx.stats.dequeued(self.name)
        if inv.reply is not None and inv.reply.done():
            self.ctx.stats.finished(self.name, ok=False, ran=False)
            return
        if inv.expired(self._ttl_scale()):
            self._expire(inv)
            return
        self.ctx.stats.started(self.name)
        try:
            self._run(inv, inst)
        except Exception as exc:  # never let a slot thread die
            log.exception("localcloud: invocation %s crashed", inv.inference_id)
            self._finish_failed(inv, f"InternalFailure: {exc}", ran=True)

    def _run(self, inv: Invocation, inst: InstanceProcess) -> None:
        body = inv.body
        if body is None and inv.input_location:
            try:
                bucket, key = split_s3(inv.input_location)
                body = self.ctx.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            except Exception as exc:
                self._finish_failed(
                    inv,
                    f"ClientError: Failed to download input data from {inv.input_location}: {exc}",
                    ran=True,
                )
                return
        fault = ""
        if self.ctx.faults.roll("kill_instance_rate"):
            fault = "die"
        elif self.ctx.faults.roll("model_error_rate"):
            fault = "model-error"
        if inv.stream and self.ctx.faults.roll("stream_break_rate"):
            fault = "stream-break"
        chunks: Chunks | None = None

        def on_head(answer: Answer) -> None:
            nonlocal chunks
            chunks = Chunks()
            self._answered(inv, inst, answer, chunks)

        def on_chunk(data: bytes) -> None:
            assert chunks is not None
            chunks.put(data)

        extra = {SESSION_HEADER: inv.session_id} if inv.session_id else {}
        try:
            answer = inst.invoke(
                body or b"",
                inv.content_type,
                inv.accept,
                inv.custom_attributes,
                inv.timeout_s,
                fault,
                extra_headers=extra,
                on_chunk=on_chunk if inv.stream else None,
                on_head=on_head if inv.stream else None,
            )
        except StreamBroken as exc:
            assert chunks is not None
            chunks.put(exc)
            self.ctx.stats.finished(self.name, ok=False, ran=True)
            return
        except InvocationTimeout:
            reason = f"ModelTimeoutError: the model did not respond within InvocationTimeoutSeconds ({inv.timeout_s:.0f} s)."
            self._finish_failed(inv, reason, ran=True, status=408)
            return
        except InstanceDied as exc:
            if chunks is not None:  # the stream had started: it breaks
                chunks.put(StreamBroken(str(exc)))
                self.ctx.stats.finished(self.name, ok=False, ran=True)
                return
            if inv.session_id and inv.session_id != NEW_SESSION:
                self._session_gone(inv, inst)
                return
            reason = f"ClientError: The instance serving this request terminated unexpectedly ({exc}); it is being replaced."
            self._finish_failed(inv, reason, ran=True, status=500)
            return
        if chunks is not None:
            chunks.put(None)
            self.ctx.stats.finished(self.name, ok=True)
            return
        status, out, out_type = answer.status, answer.body, answer.content_type
        if status >= 400:
            message = _model_message(out)
            reason = f'ClientError: Received server error ({status}) from model with message "{message}".'
            self._finish_failed(inv, reason, ran=True, status=status, detail=out, message=message)
            return
        if inv.reply is not None:
            self.ctx.stats.finished(self.name, ok=True)
            self._answered(inv, inst, answer, None)
            return
        self._finish_ok(inv, out, out_type)

    def _answered(
        self, inv: Invocation, inst: InstanceProcess, answer: Answer, chunks: Chunks | None
    ) -> None:
        """Hand a real-time answer (or a stream's head) back, learning the session it opened or closed."""
        self.sessions.observe(inv.session_id, answer.headers, inst)
        assert inv.reply is not None
        if not inv.reply.done():
            inv.reply.set_result(
                Reply(
                    answer.status,
                    answer.body,
                    answer.content_type,
                    answer.headers,
                    inst.id,
                    inst.pid,
                    chunks,
                )
            )

    # --- outcomes --------------------------------------------------------------------------------

    def _notification(self, inv: Invocation, *, ok: bool, **outcome: Any) -> dict[str, Any]:
        """The AWS-shaped notification for ``inv``: its request fields plus the outcome's."""
        return inference_result(
            region=self.ctx.region,
            endpoint_name=self.name,
            inference_id=inv.inference_id,
            received=inv.received,
            content_type=inv.content_type,
            input_location=inv.input_location,
            custom_attributes=inv.custom_attributes,
            ok=ok,
            **outcome,
        )

    def _finish_ok(self, inv: Invocation, out: bytes, out_type: str) -> None:
        if inv.reply is not None:
            self.ctx.stats.finished(self.name, ok=True)
            if not inv.reply.done():
                inv.reply.set_result(Reply(200, out, out_type))
            return
        assert inv.output_location is not None
        bucket, key = split_s3(inv.output_location)
        self.ctx.s3.put_object(Bucket=bucket, Key=key, Body=out, ContentType=out_type)
        self.ctx.stats.finished(self.name, ok=True)
        message = self._notification(
            inv,
            ok=True,
            response_content_type=out_type,
            output_location=inv.output_location,
            response_body=out if inv.include_response else None,
        )
        self.ctx.notifier.publish(inv.success_topic, message)

    def _finish_failed(
        self,
        inv: Invocation,
        reason: str,
        *,
        ran: bool,
        status: int = 500,
        detail: bytes | None = None,
        message: str | None = None,
    ) -> None:
        if inv.reply is not None:
            self.ctx.stats.finished(self.name, ok=False, ran=ran)
            if not inv.reply.done():
                inv.reply.set_result(
                    Reply(status, detail if detail is not None else reason.encode(), "text/plain")
                )
            return
        failure_object = detail if detail is not None else reason.encode()
        target = inv.failure_location
        try:
            if target:
                bucket, key = split_s3(target)
                self.ctx.s3.put_object(Bucket=bucket, Key=key, Body=failure_object)
        except Exception as exc:
            log.warning("localcloud: writing failure object %s failed: %s", target, exc)
        self.ctx.stats.finished(self.name, ok=False, ran=ran)
        note = self._notification(
            inv,
            ok=False,
            failure_location=inv.failure_location if inv.failure_location_reported else None,
            failure_reason=reason,
        )
        self.ctx.notifier.publish(inv.error_topic, note)


def _model_message(out: bytes) -> str:
    """The model's error message from its 4xx/5xx answer."""
    text = out.decode("utf-8", "replace")
    try:
        data = json.loads(text)
    except ValueError:
        return text[:1000]
    if isinstance(data, dict) and "message" in data:
        return str(data["message"])[:1000]
    return text[:1000]
