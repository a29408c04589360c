"""IAM enforcement for localcloud: every signed request is checked against the caller's IAM policies.

A WSGI guard in front of the dispatcher. It works out the IAM action, resource ARN and condition
keys of each request (S3, SQS, SNS, IAM, STS, CloudWatch, Application Auto Scaling, SageMaker and
SageMaker runtime), finds the caller from the access key in moto's IAM backend, verifies the SigV4
signature and evaluates the caller's policies with moto's ``IAMRequest``/``IAMPolicyStatement``,
answering AWS's AccessDenied shape for the service. The LocalCloud's own key is the account root
(not checked). Off by default; ``LocalCloud(enforce_iam=True)`` or ``cloud.iam.enabled = True``.
moto's own switch (``INITIAL_NO_AUTH_ACTION_COUNT``) is process-wide and checks most services
against resource ``*``; see docs/security.md for what it covers.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from io import BytesIO
from typing import Any
from urllib.parse import parse_qs, unquote
from xml.sax.saxutils import escape

from werkzeug.datastructures import EnvironHeaders
from werkzeug.wrappers import Response

from localcloud.sagemaker.records import ACCOUNT_ID

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
log = logging.getLogger(__name__)

PASS_THROUGH = ("/_localcloud/", "/moto-api/")
# Signing names whose IAM action prefix differs.
IAM_PREFIX = {"monitoring": "cloudwatch"}
# AWS authorises batch calls as their single-item action.
SINGULAR = {
    "SendMessageBatch": "SendMessage",
    "DeleteMessageBatch": "DeleteMessage",
    "ChangeMessageVisibilityBatch": "ChangeMessageVisibility",
    "HeadBucket": "ListBucket",
}
ALWAYS_ALLOWED = frozenset({"sts:GetCallerIdentity"})
SERVICE_LINKED_ROLES = {
    "sagemaker.application-autoscaling.amazonaws.com": (
        "AWSServiceRoleForApplicationAutoScaling_SageMakerEndpoint"
    ),
}
# (error code, HTTP status) of an access denial per signing name; AWS's own.
DENIAL = {
    "sagemaker": ("AccessDeniedException", 400),
    "application-autoscaling": ("AccessDeniedException", 400),
}
DEFAULT_DENIAL = ("AccessDenied", 403)


class Decision(Enum):
    """The outcome of evaluating policies for one request."""

    ALLOW = "allow"
    DENY = "deny"
    NEUTRAL = "neutral"


@dataclass(frozen=True)
class Check:
    """One authorisation a request needs: an IAM action on a resource, with condition keys."""

    action: str
    resource: str = "*"
    context: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Target:
    """What a request asks of IAM: its service (signing name), wire protocol and checks."""

    service: str
    protocol: str
    checks: tuple[Check, ...]


# --- policy evaluation ----------------------------------------------------------------------------


def _like(pattern: str, value: str) -> bool:
    """IAM wildcard match: ``*`` any run of characters, ``?`` exactly one."""
    regex = "".join(".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in pattern)
    return re.fullmatch(regex, value, flags=re.DOTALL) is not None


_TESTS: dict[str, Callable[[str, str], bool]] = {
    "StringEquals": lambda e, v: e == v,
    "StringEqualsIgnoreCase": lambda e, v: e.lower() == v.lower(),
    "StringLike": _like,
    "ArnEquals": _like,
    "ArnLike": _like,
    "Bool": lambda e, v: e.lower() == v.lower(),
}
_NEGATED = {
    "StringNotEquals": "StringEquals",
    "StringNotEqualsIgnoreCase": "StringEqualsIgnoreCase",
    "StringNotLike": "StringLike",
    "ArnNotEquals": "ArnEquals",
    "ArnNotLike": "ArnLike",
}


def _as_list(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def conditions_hold(conditions: Mapping[str, Any], context: Mapping[str, Any]) -> bool:
    """AWS's Condition semantics for the common operators; an unknown operator never holds."""
    lowered = {k.lower(): v for k, v in context.items()}
    for operator, block in conditions.items():
        if_exists = operator.endswith("IfExists")
        base = operator.removesuffix("IfExists")
        negated = base in _NEGATED
        test = _TESTS.get(_NEGATED.get(base, base))
        if test is None or not isinstance(block, Mapping):
            return False
        for key, expected in block.items():
            actual = lowered.get(key.lower())
            if actual is None:
                if if_exists or negated:
                    continue
                return False
            hit = any(test(e, a) for e in _as_list(expected) for a in _as_list(actual))
            if hit == negated:
                return False
    return True


def _principal_matches(stated: Any, principal: Mapping[str, str]) -> bool:
    if stated is None:
        return False
    if stated == "*":
        return True
    if not isinstance(stated, Mapping):
        return False
    return any(
        "*" in _as_list(stated.get(kind, [])) or value in _as_list(stated.get(kind, []))
        for kind, value in principal.items()
    )


def evaluate(
    policy: Mapping[str, Any] | str,
    action: str,
    resource: str = "*",
    context: Mapping[str, Any] | None = None,
    principal: Mapping[str, str] | None = None,
) -> Decision:
    """One policy's verdict on ``action`` on ``resource`` (``principal``: resource policies only).

    Action and Resource matching is moto's ``IAMPolicyStatement``; Condition and Principal are
    evaluated here, since moto knows only ``StringEquals``.
    """
    from moto.iam.access_control import IAMPolicyStatement, PermissionResult

    doc = json.loads(policy) if isinstance(policy, str) else policy
    statements = doc.get("Statement", [])
    if isinstance(statements, Mapping):
        statements = [statements]
    verdict = Decision.NEUTRAL
    for statement in statements:
        if principal is not None and not _principal_matches(statement.get("Principal"), principal):
            continue
        if not conditions_hold(statement.get("Condition") or {}, context or {}):
            continue
        core = {
            k: v
            for k, v in statement.items()
            if k not in ("Condition", "Principal", "NotPrincipal", "Sid")
        }
        if "Resource" not in core and "NotResource" not in core:
            core["Resource"] = "*"
        result = IAMPolicyStatement(core).is_action_permitted(action, resource)
        if result == PermissionResult.DENIED:
            return Decision.DENY
        if result == PermissionResult.PERMITTED:
            verdict = Decision.ALLOW
    return verdict


def evaluate_all(
    policies: Iterable[Mapping[str, Any] | str],
    action: str,
    resource: str = "*",
    context: Mapping[str, Any] | None = None,
) -> Decision:
    """Identity-policy evaluation: an explicit Deny wins, else any Allow, else implicit deny."""
    verdict = Decision.NEUTRAL
    for policy in policies:
        result = evaluate(policy, action, resource, context)
        if result is Decision.DENY:
            return Decision.DENY
        if result is Decision.ALLOW:
            verdict = Decision.ALLOW
    return verdict


# --- requests -> IAM actions and resources -------------------------------------------------------


def credential_scope(environ: Mapping[str, Any]) -> list[str] | None:
    """``[key id, date, region, service, aws4_request]`` from the Authorization header or a presigned URL."""
    auth = environ.get("HTTP_AUTHORIZATION", "")
    start = auth.find("Credential=")
    if start >= 0:
        scope = auth[start + len("Credential=") :].split(",", 1)[0].strip()
    else:
        query = parse_qs(environ.get("QUERY_STRING", ""))
        scope = (query.get("X-Amz-Credential") or [""])[0]
    parts = scope.split("/")
    return parts if len(parts) == 5 else None


def _params(environ: Mapping[str, Any], body: bytes) -> tuple[str, dict[str, Any], str]:
    """(operation, parameters, protocol) of a JSON (X-Amz-Target) or query (Action=) request."""
    target = environ.get("HTTP_X_AMZ_TARGET", "")
    if target:
        try:
            data = json.loads(body or b"{}")
        except ValueError:
            data = {}
        return target.rsplit(".", 1)[-1], data if isinstance(data, dict) else {}, "json"
    form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
    form.update({k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()})
    return str(form.get("Action", "")), form, "query"


def _s3_target(environ: Mapping[str, Any], region: str) -> Target:
    from moto.s3.responses import ACTION_MAP

    path = unquote(environ.get("PATH_INFO", "/")).lstrip("/")
    bucket, _, key = path.partition("/")
    query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
    method = environ.get("REQUEST_METHOD", "GET")
    if not bucket:
        return Target("s3", "rest-xml", (Check("s3:ListAllMyBuckets"),))
    kind = "KEY" if key else "BUCKET"
    table = ACTION_MAP[kind].get(method, {})
    action = next((a for q, a in table.items() if q in query), table.get("DEFAULT"))
    if method == "POST" and kind == "BUCKET" and "delete" in query:
        action, key = "DeleteObject", "*"
    action = SINGULAR.get(action or "", action) or f"{method.title()}{kind.title()}"
    resource = f"arn:aws:s3:::{bucket}/{key}" if key else f"arn:aws:s3:::{bucket}"
    context = {"s3:prefix": query["prefix"][0]} if "prefix" in query else {}
    checks = [Check(f"s3:{action}", resource, context)]
    source = environ.get("HTTP_X_AMZ_COPY_SOURCE")
    if source and method == "PUT":
        checks.append(Check("s3:GetObject", f"arn:aws:s3:::{unquote(source).lstrip('/')}"))
    return Target("s3", "rest-xml", tuple(checks))


def _sagemaker_target(environ: Mapping[str, Any], body: bytes, region: str) -> Target:
    arn = f"arn:aws:sagemaker:{region}:{ACCOUNT_ID}"
    match = re.match(r"^/endpoints/([^/]+)/(async-invocations|invocations)$", environ["PATH_INFO"])
    if match and not environ.get("HTTP_X_AMZ_TARGET"):
        action = "InvokeEndpointAsync" if match[2] == "async-invocations" else "InvokeEndpoint"
        resource = f"{arn}:endpoint/{unquote(match[1]).lower()}"
        return Target("sagemaker", "rest-json", (Check(f"sagemaker:{action}", resource),))
    op, params, protocol = _params(environ, body)
    names = (
        ("EndpointConfigName", "endpoint-config"),
        ("ModelName", "model"),
        ("EndpointName", "endpoint"),
    )
    checks = [
        Check(f"sagemaker:{op}", f"{arn}:{kind}/{str(params[name]).lower()}")
        for name, kind in names
        if params.get(name) and (not op.startswith("List"))
    ] or [Check(f"sagemaker:{op}")]
    if op == "CreateModel" and params.get("ExecutionRoleArn"):
        checks.append(
            Check(
                "iam:PassRole",
                str(params["ExecutionRoleArn"]),
                {"iam:PassedToService": "sagemaker.amazonaws.com"},
            )
        )
    return Target("sagemaker", protocol, tuple(checks))


def _generic_target(service: str, environ: Mapping[str, Any], body: bytes, region: str) -> Target:
    op, p, protocol = _params(environ, body)
    prefix = IAM_PREFIX.get(service, service)
    op = SINGULAR.get(op, op)
    resources: list[str] = []
    context: dict[str, str] = {}
    if service == "sqs":
        name = p.get("QueueName") or str(p.get("QueueUrl") or "").rstrip("/").rsplit("/", 1)[-1]
        if name:
            resources = [f"arn:aws:sqs:{region}:{ACCOUNT_ID}:{name}"]
    elif service == "sns":
        arn = p.get("TopicArn") or p.get("TargetArn") or p.get("SubscriptionArn")
        arn = arn or p.get("ResourceArn")
        if not arn and op == "CreateTopic" and p.get("Name"):
            arn = f"arn:aws:sns:{region}:{ACCOUNT_ID}:{p['Name']}"
        resources = [str(arn)] if arn else []
    elif service == "iam":
        if op == "CreateServiceLinkedRole":
            svc = str(p.get("AWSServiceName", ""))
            role = SERVICE_LINKED_ROLES.get(svc, "*")
            resources = [f"arn:aws:iam::{ACCOUNT_ID}:role/aws-service-role/{svc}/{role}"]
            context = {"iam:AWSServiceName": svc}
        elif p.get("RoleName"):
            path = str(p.get("Path") or "/")
            resources = [f"arn:aws:iam::{ACCOUNT_ID}:role{path}{p['RoleName']}"]
        elif p.get("UserName"):
            resources = [f"arn:aws:iam::{ACCOUNT_ID}:user/{p['UserName']}"]
        elif p.get("PolicyArn"):
            resources = [str(p["PolicyArn"])]
    elif service == "sts" and p.get("RoleArn"):
        resources = [str(p["RoleArn"])]
    elif service == "monitoring":
        names = p.get("AlarmNames") or ([p["AlarmName"]] if p.get("AlarmName") else [])
        if isinstance(names, str):
            names = [names]
        names = names or ([f"{p['AlarmNamePrefix']}*"] if p.get("AlarmNamePrefix") else [])
        resources = [f"arn:aws:cloudwatch:{region}:{ACCOUNT_ID}:alarm:{n}" for n in names]
        if protocol == "query":
            resources += [
                f"arn:aws:cloudwatch:{region}:{ACCOUNT_ID}:alarm:{v}"
                for k, v in p.items()
                if k.startswith("AlarmNames.member.")
            ]
    elif service == "application-autoscaling" and p.get("ResourceId") and "Describe" not in op:
        target = f"{p.get('ServiceNamespace', '')}/{p['ResourceId']}"
        resources = [
            f"arn:aws:application-autoscaling:{region}:{ACCOUNT_ID}:scalable-target/{target}"
        ]
    checks = tuple(Check(f"{prefix}:{op}", r, context) for r in resources) or (
        Check(f"{prefix}:{op}", "*", context),
    )
    return Target(service, protocol, checks)


def describe_request(environ: Mapping[str, Any], body: bytes) -> Target | None:
    """The IAM checks a signed request needs (None when it is not signed)."""
    scope = credential_scope(environ)
    if scope is None:
        return None
    region, service = scope[2], scope[3].lower()
    if service == "s3":
        return _s3_target(environ, region)
    if service == "sagemaker":
        return _sagemaker_target(environ, body, region)
    return _generic_target(service, environ, body, region)


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


def denial_message(principal_arn: str, check: Check, explicit: bool) -> str:
    """AWS's AccessDenied wording, naming the principal, the action and the resource."""
    why = (
        "with an explicit deny in an identity-based policy"
        if explicit
        else f"because no identity-based policy allows the {check.action} action"
    )
    return (
        f"User: {principal_arn} is not authorized to perform: {check.action} "
        f"on resource: {check.resource} {why}"
    )


def _policy_documents(policies: Sequence[Any]) -> list[str]:
    """moto's collected user/role policies as JSON documents."""
    docs = []
    for policy in policies:
        if hasattr(policy, "versions"):
            docs.append(next(v.document for v in policy.versions if v.is_default))
        elif isinstance(policy, str):
            docs.append(policy)
        else:
            docs.append(policy["policy_document"])
    return docs


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
        policies = _policy_documents(caller.collect_policies())
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
