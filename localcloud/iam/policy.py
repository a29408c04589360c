"""IAM policy evaluation: does a set of policy documents allow one action on one resource?

Explicit deny wins, then an allow; conditions (String*, Arn*, Bool and their negations) are
checked against the request's condition keys, and a resource policy's principal against the caller.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


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


def _like(pattern: str, value: str) -> bool:
    """IAM wildcard match: ``*`` any run of characters, ``?`` exactly one."""
    regex = "".join(".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in pattern)
    return re.fullmatch(regex, value, flags=re.DOTALL) is not None


_NEGATED = {
    "StringNotEquals": "StringEquals",
    "StringNotEqualsIgnoreCase": "StringEqualsIgnoreCase",
    "StringNotLike": "StringLike",
    "ArnNotEquals": "ArnEquals",
    "ArnNotLike": "ArnLike",
}


def _as_list(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


_TESTS: dict[str, Callable[[str, str], bool]] = {
    "StringEquals": lambda e, v: e == v,
    "StringEqualsIgnoreCase": lambda e, v: e.lower() == v.lower(),
    "StringLike": _like,
    "ArnEquals": _like,
    "ArnLike": _like,
    "Bool": lambda e, v: e.lower() == v.lower(),
}


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


def policy_documents(policies: Sequence[Any]) -> list[str]:
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
