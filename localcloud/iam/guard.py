"""IAM enforcement for localcloud: every signed request is checked against the caller's IAM policies.

A WSGI guard in front of the dispatcher. It asks ``localcloud.iam.requests`` for the IAM action,
resource ARN and condition keys of each request (S3, SQS, SNS, IAM, STS, CloudWatch, Application
Auto Scaling, SageMaker and SageMaker runtime), finds the caller from the access key in moto's IAM backend, verifies the SigV4
signature and evaluates the caller's policies (``localcloud.iam.policy``, on moto's ``IAMRequest``/``IAMPolicyStatement``),
answering AWS's AccessDenied shape for the service. The LocalCloud's own key is the account root
(not checked). Off by default; ``LocalCloud(enforce_iam=True)`` or ``cloud.iam.enabled = True``.
moto's own switch (``INITIAL_NO_AUTH_ACTION_COUNT``) is process-wide and checks most services
against resource ``*``; see docs/security.md for what it covers.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from io import BytesIO
from typing import Any
from xml.sax.saxutils import escape

from werkzeug.datastructures import EnvironHeaders
from werkzeug.wrappers import Response

from localcloud.accounts import ACCOUNT_ID
from localcloud.iam.policy import Decision, denial_message, evaluate, evaluate_all, policy_documents
from localcloud.iam.requests import Target, credential_scope, describe_request

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
log = logging.getLogger(__name__)

PASS_THROUGH = ("/_localcloud/", "/moto-api/")
ALWAYS_ALLOWED = frozenset({"sts:GetCallerIdentity"})
# (error code, HTTP status) of an access denial per signing name; AWS's own.
DENIAL = {
    "sagemaker": ("AccessDeniedException", 400),
    "application-autoscaling": ("AccessDeniedException", 400),
}
DEFAULT_DENIAL = ("AccessDenied", 403)


# --- answers ---------------------------------------------------------------------------------------


def error_response(target: Target | None, code: str, message: str, status: int) -> Response:
    """AWS's error shape for the request's protocol."""
    request_id = str(uuid.uuid4())
    protocol = target.protocol if target else "query"
    headers = {"x-amzn-RequestId": request_id, "x-amzn-ErrorType": code}
    if protocol in ("json", "rest-json"):
        if target and target.service in ("sqs", "monitoring"):
            headers["x-amzn-query-error"] = f"{code};Sender"
        body = json.dumps({"__type": code, "message": message, "Message": message})
        return Response(body, status, headers, content_type="application/x-amz-json-1.1")
    if protocol == "rest-xml":
        xml = (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{escape(code)}</Code>'
            f"<Message>{escape(message)}</Message><RequestId>{request_id}</RequestId></Error>"
        )
    else:
        xml = (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<ErrorResponse><Error><Type>Sender</Type>'
            f"<Code>{escape(code)}</Code><Message>{escape(message)}</Message></Error>"
            f"<RequestId>{request_id}</RequestId></ErrorResponse>"
        )
    return Response(xml, status, headers, content_type="text/xml")


class IamGuard:
    """WSGI middleware enforcing IAM on every signed request while ``enabled``."""

    def __init__(self, app: WSGIApp, *, root_access_key: str, enabled: bool = False) -> None:
        self.app = app
        self.root_access_key = root_access_key
        self.denials: deque[str] = deque(maxlen=200)
        self._lock = threading.Lock()
        self._enabled = False
        self.enabled = enabled

    @property
    def enabled(self) -> bool:
        """Whether requests are checked (and SNS deliveries honour queue policies)."""
        return self._enabled

    @enabled.setter
    def enabled(self, value: bool) -> None:
        if value:
            _install_delivery_check()
            with _install_lock:  # SNS delivery threads iterate the set under the same lock
                _GUARDS.add(self)
        self._enabled = bool(value)

    def record(self, message: str) -> None:
        """Keep a denial message (the last 200) for tests and debugging."""
        with self._lock:
            self.denials.append(message)

    @contextmanager
    def enforced(self) -> Iterator[IamGuard]:
        """Enforce IAM inside the block, restore the previous setting after."""
        previous, self.enabled = self.enabled, True
        try:
            yield self
        finally:
            self.enabled = previous

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        """Check the request, then hand it on (or answer AccessDenied)."""
        if not self.enabled or environ.get("PATH_INFO", "").startswith(PASS_THROUGH):
            return self.app(environ, start_response)
        scope = credential_scope(environ)
        if scope is not None and scope[0] == self.root_access_key:
            return self.app(environ, start_response)
        body = b""
        length = int(environ.get("CONTENT_LENGTH") or 0)
        if length and (scope is None or scope[3].lower() != "s3"):
            body = environ["wsgi.input"].read(length)
            environ["wsgi.input"] = BytesIO(body)
        denied = self.authorize(environ, body)
        if denied is not None:
            return denied(environ, start_response)
        return self.app(environ, start_response)

    def authorize(self, environ: dict[str, Any], body: bytes) -> Response | None:
        """None when the caller may proceed, else the error answer."""
        target = describe_request(environ, body)
        if target is None:
            return self._deny(
                None,
                "MissingAuthenticationToken",
                "Request is missing Authentication Token; sign it with an IAM user's access key.",
                403,
            )
        if all(c.action in ALWAYS_ALLOWED for c in target.checks):
            return None
        from moto.core.exceptions import SignatureDoesNotMatchError
        from moto.iam.access_control import (
            CreateAccessKeyFailure,
            IAMRequest,
            S3IAMRequest,
            create_access_key,
        )
        from moto.s3.exceptions import (
            BucketSignatureDoesNotMatchError,
            S3SignatureDoesNotMatchError,
        )

        headers = EnvironHeaders(environ)
        key_id = credential_scope(environ)[0]  # type: ignore[index]
        try:
            caller = create_access_key(ACCOUNT_ID, "aws", key_id, dict(headers.items()))
        except CreateAccessKeyFailure:
            code = "InvalidAccessKeyId" if target.service == "s3" else "InvalidClientTokenId"
            return self._deny(
                target,
                code,
                f"The security token included in the request is invalid: access key {key_id} "
                "belongs to no IAM user or role session here; create one with iam CreateAccessKey.",
                403,
            )
        if environ.get("HTTP_AUTHORIZATION"):
            request_cls = S3IAMRequest if target.service == "s3" else IAMRequest
            path = environ.get("RAW_URI") or environ.get("REQUEST_URI") or environ["PATH_INFO"]
            iam_request = request_cls(
                account_id=ACCOUNT_ID,
                method=environ.get("REQUEST_METHOD", "GET"),
                path=path,
                data={},
                body=body,
                headers=headers,  # type: ignore[arg-type]
                action=target.checks[0].action.split(":", 1)[1],
            )
            try:
                iam_request.check_signature()
            except (
                SignatureDoesNotMatchError,
                S3SignatureDoesNotMatchError,
                BucketSignatureDoesNotMatchError,
            ):
                return self._deny(
                    target,
                    "SignatureDoesNotMatch",
                    "The request signature we calculated does not match the signature you "
                    "provided. Check your AWS Secret Access Key and signing method.",
                    403,
                )
        policies = policy_documents(caller.collect_policies())
        for check in target.checks:
            verdict = evaluate_all(policies, check.action, check.resource, check.context)
            if verdict is not Decision.ALLOW:
                code, status = DENIAL.get(target.service, DEFAULT_DENIAL)
                message = denial_message(caller.arn, check, verdict is Decision.DENY)
                return self._deny(target, code, message, status)
        return None

    def _deny(self, target: Target | None, code: str, message: str, status: int) -> Response:
        self.record(f"{code}: {message}")
        return error_response(target, code, message, status)


# --- SNS -> SQS delivery honours the queue policy ------------------------------------------------

_GUARDS: weakref.WeakSet[IamGuard] = weakref.WeakSet()
_install_lock = threading.Lock()


def delivery_allowed(queue_policy: str | None, queue_arn: str, topic_arn: str) -> bool:
    """Whether a queue policy lets SNS deliver ``topic_arn``'s messages (no policy: it does not)."""
    if not queue_policy:
        return False
    context = {"aws:SourceArn": topic_arn, "aws:SourceAccount": topic_arn.split(":")[4]}
    verdict = evaluate(
        queue_policy, "sqs:SendMessage", queue_arn, context, {"Service": "sns.amazonaws.com"}
    )
    return verdict is Decision.ALLOW


def _sqs_delivery_allowed(subscription: Any) -> bool:
    """moto delivers SNS -> SQS regardless of the queue policy; while a guard enforces, check it."""
    with _install_lock:
        enforcing = [g for g in _GUARDS if g.enabled]
    if not enforcing or subscription.protocol != "sqs":
        return True
    from moto.sqs.models import sqs_backends

    _, _, _, region, account, name = subscription.endpoint.split(":", 5)
    try:
        queue = sqs_backends[account][region].get_queue(name)
    except Exception:
        return True  # moto reports the missing queue its own way
    if delivery_allowed(queue.policy, queue.queue_arn, subscription.topic.arn):
        return True
    message = (
        f"SNS did not deliver from {subscription.topic.arn} to {queue.queue_arn}: the queue policy "
        "does not allow sns.amazonaws.com to sqs:SendMessage with that aws:SourceArn"
    )
    log.warning("localcloud: %s", message)
    for guard in enforcing:
        guard.record(f"AccessDenied: {message}")
    return False


def _install_delivery_check() -> None:
    """Wrap moto's ``Subscription.publish`` once per process; a no-op while no guard enforces."""
    from moto.sns.models import Subscription

    with _install_lock:
        if getattr(Subscription.publish, "_localcloud_checked", False):
            return
        original = Subscription.publish

        def publish(self: Any, *args: Any, **kwargs: Any) -> None:
            if _sqs_delivery_allowed(self):
                original(self, *args, **kwargs)

        publish._localcloud_checked = True  # type: ignore[attr-defined]
        Subscription.publish = publish  # type: ignore[method-assign]
