"""From a signed request to what IAM must allow: the action, resource ARN and condition keys per
service and wire protocol (S3 REST, SageMaker JSON, and the query/JSON protocols of the rest)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote

from localcloud.accounts import ACCOUNT_ID
from localcloud.iam.policy import Check

SERVICE_LINKED_ROLES = {
    "sagemaker.application-autoscaling.amazonaws.com": (
        "AWSServiceRoleForApplicationAutoScaling_SageMakerEndpoint"
    ),
}
# Signing names whose IAM action prefix differs.
IAM_PREFIX = {"monitoring": "cloudwatch"}


# AWS authorises batch calls as their single-item action.
SINGULAR = {
    "SendMessageBatch": "SendMessage",
    "DeleteMessageBatch": "DeleteMessage",
    "ChangeMessageVisibilityBatch": "ChangeMessageVisibility",
    "HeadBucket": "ListBucket",
}


@dataclass(frozen=True)
class Target:
    """What a request asks of IAM: its service (signing name), wire protocol and checks."""

    service: str
    protocol: str
    checks: tuple[Check, ...]


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
    match = re.match(
        r"^/endpoints/([^/]+)/(async-invocations|invocations|invocations-response-stream)$",
        environ["PATH_INFO"],
    )
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
