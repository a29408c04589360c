"""The runtime API's behaviour: InvokeEndpointAsync (queue + S3 + SNS) and InvokeEndpoint (synchronous)."""

from __future__ import annotations

import re
import uuid
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

from localcloud.accounts import ACCOUNT_ID
from localcloud.sagemaker.exceptions import ModelError, ServiceUnavailable, ValidationError
from localcloud.sagemaker.hosting.queue import Invocation, Reply
from localcloud.sagemaker.hosting.sticky import NEW_SESSION, SessionGone
from localcloud.sagemaker.images import image_profile, stream_refusal
from localcloud.sagemaker.models import SageMakerBackend
from localcloud.sagemaker.records import EndpointRecord

SESSION_ID = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9])*$")

MAX_INLINE_BODY = 128_000
REALTIME_LIMIT_S = 60.0
SERVING = ("InService", "Updating", "SystemUpdating")


@dataclass
class AsyncAccepted:
    """What InvokeEndpointAsync answers (202)."""

    inference_id: str
    output_location: str
    failure_location: str | None


def _join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


def output_keys(
    output_path: str, failure_path: str | None, name: str, extension: str | None
) -> tuple[str, str]:
    """Where the response and the failure go: ``<path>[/<ext>]/<name>.out`` and ``...-error.out``.

    ``name`` is the Filename when given (used as is), else the inference id (``<id>.out``).
    """
    out_name, stem = name, name.removesuffix(".out")
    base_out = _join(output_path.removeprefix("s3://"), extension or "")
    base_fail = _join((failure_path or output_path).removeprefix("s3://"), extension or "")
    return f"s3://{base_out}/{out_name}", f"s3://{base_fail}/{stem}-error.out"


class RuntimeBackend:
    """Accepts invocations for the endpoints of a SageMakerBackend."""

    def __init__(self, control: SageMakerBackend) -> None:
        self.control = control
        self.ctx = control.ctx

    def _serving(self, name: str) -> EndpointRecord:
        with self.control._lock:
            ep = self.control.endpoints.get(name)
        if ep is None:
            raise ValidationError(f"Endpoint {name} of account {ACCOUNT_ID} not found.")
        if ep.status not in SERVING:
            raise ValidationError(
                f"Endpoint {name} of account {ACCOUNT_ID} is not in service (status {ep.status}); "
                "wait for InService (the endpoint_in_service waiter) before invoking it."
            )
        if self.ctx.faults.roll("throttle_rate"):
            raise ServiceUnavailable(
                "Service Unavailable: the request was throttled. Retry it with backoff."
            )
        return ep

    def invoke_async(self, name: str, h: dict[str, Any], body: bytes | None) -> AsyncAccepted:
        """InvokeEndpointAsync: validate, queue, and say where the result will appear."""
        ep = self._serving(name)
        config = ep.config.async_config
        if config is None:
            raise ValidationError(
                f"Endpoint {name} of account {ACCOUNT_ID} is not an asynchronous inference endpoint: its endpoint "
                "configuration has no AsyncInferenceConfig. Use InvokeEndpoint, or deploy a config with AsyncInferenceConfig."
            )
        input_location = h.get("InputLocation")
        if input_location and body:
            raise ValidationError(
                "InputLocation and Body cannot both be specified: send one of them."
            )
        if not input_location and not body:
            raise ValidationError("Either InputLocation or Body must be specified.")
        if body and len(body) > MAX_INLINE_BODY:
            raise ValidationError(
                f"Body is {len(body)} bytes; inline payloads are limited to {MAX_INLINE_BODY} bytes. "
                "Stage larger payloads in S3 and pass InputLocation."
            )
        if input_location and not str(input_location).startswith("s3://"):
            raise ValidationError(f"InputLocation {input_location!r} must be an s3:// URI.")
        ttl = _int_header(h, "RequestTTLSeconds", 21600, 60, 21600)
        timeout = _int_header(h, "InvocationTimeoutSeconds", 900, 1, 3600)
        inference_id = h.get("InferenceId") or str(uuid.uuid4())
        if len(inference_id) > 64:
            raise ValidationError("InferenceId must be at most 64 characters.")
        filename = h.get("Filename")
        if filename is not None and (len(filename) > 32 or "/" in filename):
            raise ValidationError("Filename must be 1-32 characters without '/'.")
        output = config.get("OutputConfig") or {}
        notification = output.get("NotificationConfig") or {}
        out_loc, fail_loc = output_keys(
            output["S3OutputPath"],
            output.get("S3FailurePath"),
            filename or f"{inference_id}.out",
            h.get("S3OutputPathExtension"),
        )
        inv = Invocation(
            inference_id=inference_id,
            body=body if body else None,
            input_location=input_location,
            content_type=h.get("ContentType"),
            accept=h.get("Accept"),
            custom_attributes=h.get("CustomAttributes"),
            ttl_s=float(ttl),
            timeout_s=float(timeout),
            output_location=out_loc,
            failure_location=fail_loc,
            failure_location_reported=bool(output.get("S3FailurePath")),
            success_topic=notification.get("SuccessTopic"),
            error_topic=notification.get("ErrorTopic"),
            include_response="SUCCESS_NOTIFICATION_TOPIC"
            in (notification.get("IncludeInferenceResponseIn") or []),
        )
        ep.runtime.submit(inv)
        return AsyncAccepted(
            inference_id, out_loc, fail_loc if output.get("S3FailurePath") else None
        )

    def invoke(self, name: str, h: dict[str, Any], body: bytes, stream: bool = False) -> Reply:
        """InvokeEndpoint (or, with ``stream``, its response-stream form): run the handler now.

        A session id routes the request to the instance that opened the session; the answer's
        ``chunks`` carry a stream's body. Raises ModelError for the model's 4xx/5xx answers and
        ValidationError for bad input or a session whose instance is gone.
        """
        ep = self._serving(name)
        if stream:
            for pool in list(ep.runtime.pools.values()):
                if not image_profile(pool.container.image).streams:
                    raise ValidationError(stream_refusal(name, pool.container.image))
        session_id = h.get("SessionId")
        if session_id is not None:
            if session_id != NEW_SESSION and (
                len(session_id) > 256 or not SESSION_ID.match(session_id)
            ):
                raise ValidationError(
                    f"SessionId {session_id!r} must be NEW_SESSION or an id of at most 256 letters, "
                    "digits and hyphens."
                )
            if stream and session_id == NEW_SESSION:
                raise ValidationError(
                    "InvokeEndpointWithResponseStream cannot open a session: open it with "
                    "InvokeEndpoint (SessionId=NEW_SESSION), then stream with its id."
                )
        try:
            target = ep.runtime.sessions.target(session_id)
        except SessionGone as exc:
            raise ValidationError(str(exc)) from None
        reply: Future[Reply] = Future()
        inv = Invocation(
            inference_id=h.get("InferenceId") or str(uuid.uuid4()),
            body=body,
            input_location=None,
            content_type=h.get("ContentType"),
            accept=h.get("Accept"),
            custom_attributes=h.get("CustomAttributes"),
            ttl_s=REALTIME_LIMIT_S,
            timeout_s=REALTIME_LIMIT_S,
            reply=reply,
            session_id=session_id,
            target=target,
            stream=stream,
        )
        ep.runtime.submit(inv)
        try:
            answer = reply.result(timeout=REALTIME_LIMIT_S + 5)
        except FutureTimeout as exc:
            reply.cancel()
            raise ModelError(
                "Your invocation timed out while waiting for a response from container primary.",
                408,
                "",
            ) from exc
        if answer.session_gone:
            raise ValidationError(answer.body.decode("utf-8", "replace"))
        if answer.status >= 400:
            message = answer.body.decode("utf-8", "replace")
            raise ModelError(
                f'Received client error ({answer.status}) from primary with message "{message}". '
                f"See the endpoint's logs in account {ACCOUNT_ID} for more information."
                if answer.status < 500
                else f'Received server error ({answer.status}) from primary with message "{message}". '
                f"See the endpoint's logs in account {ACCOUNT_ID} for more information.",
                answer.status,
                message,
            )
        return answer

    def variant(self, name: str) -> str:
        """The endpoint's (first) production variant's name."""
        ep = self._serving(name)
        return str(next(iter(ep.config.spec["ProductionVariants"]))["VariantName"])


def _int_header(h: dict[str, Any], key: str, default: int, low: int, high: int) -> int:
    raw = h.get(key)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ValidationError(f"{key} must be an integer between {low} and {high}.") from exc
    if not low <= value <= high:
        raise ValidationError(f"{key} must be between {low} and {high}, got {value}.")
    return value
