"""Least-privilege IAM for docflow: render deployments/iam/*.json for a profile, create the execution role."""

from __future__ import annotations

import argparse
import json
import re
import string
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from tasks.aws.clients import aws_client
from tasks.endpoint.spec import resolve_image_uri, runs_topic_name, topic_names
from tasks.run.plan.layout import queue_prefix
from tasks.settings import Profile, load_profile

IAM_DIR = Path(__file__).resolve().parents[2] / "deployments" / "iam"
ORCHESTRATOR_POLICY = "orchestrator-policy.json"
EXECUTION_POLICY = "execution-role-policy.json"
EXECUTION_TRUST = "execution-role-trust.json"
EXECUTION_POLICY_NAME = "docflow-execution"
# Actions AWS authorises only on Resource "*": they have no resource type to scope to.
ACTIONS_WITHOUT_RESOURCE = frozenset(
    {
        "ecr:GetAuthorizationToken",
        "cloudwatch:PutMetricData",
        "sagemaker:ListModels",
        "sagemaker:ListEndpointConfigs",
        "application-autoscaling:DescribeScalableTargets",
        "application-autoscaling:DescribeScalingPolicies",
        "application-autoscaling:DescribeScalingActivities",
    }
)
_ECR_IMAGE = re.compile(
    r"^(?P<account>\d{12})\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?:\.cn)?/(?P<repo>[^:@]+)"
)


class IamError(ValueError):
    """A policy cannot be rendered or the role cannot be made; the message says what to do."""


@cache
def _account_id(profile: Profile) -> str:
    return str(aws_client("sts", profile).get_caller_identity()["Account"])


def account_id(profile: Profile) -> str:
    """The AWS account of the profile's credentials (STS GetCallerIdentity, cached per profile)."""
    return _account_id(profile)


def execution_role_name(endpoint_name: str) -> str:
    """The execution role docflow creates for an endpoint (IAM role names are ≤ 64 chars)."""
    return f"docflow-{endpoint_name}"[:54] + "-sagemaker"


def image_repository_arn(image_uri: str) -> str | None:
    """The ECR repository ARN of an image URI, or None when the image is not in ECR."""
    match = _ECR_IMAGE.match(image_uri)
    if not match:
        return None
    partition = "aws-cn" if ".amazonaws.com.cn/" in image_uri else "aws"
    return f"arn:{partition}:ecr:{match['region']}:{match['account']}:repository/{match['repo']}"


def kms_key_arn(key: str | None, region: str, account: str) -> str | None:
    """A KMS key id, alias or ARN as an ARN (None when no key is set)."""
    if not key:
        return None
    if key.startswith("arn:"):
        return key
    if key.startswith("alias/"):
        return f"arn:aws:kms:{region}:{account}:{key}"
    return f"arn:aws:kms:{region}:{account}:key/{key}"


def policy_context(
    profile: Profile,
    *,
    account: str,
    endpoint_name: str | None = None,
    image_uri: str | None = None,
) -> dict[str, str | None]:
    """The placeholder values for one profile and endpoint."""
    endpoint = endpoint_name or profile.endpoint_name
    success, error = topic_names(endpoint)
    return {
        "partition": "aws-cn" if profile.region.startswith("cn-") else "aws",
        "region": profile.region,
        "account": account,
        "bucket": profile.bucket,
        "models_prefix": profile.prefixes.models,
        "runs_prefix": profile.prefixes.runs,
        "outputs_prefix": profile.prefixes.outputs,
        "failures_prefix": profile.prefixes.failures,
        "endpoint": endpoint,
        "endpoint_arn_name": endpoint.lower(),
        "success_topic": success,
        "error_topic": error,
        "runs_topic": runs_topic_name(endpoint),
        "queue_prefix": queue_prefix(endpoint),
        "execution_role_name": execution_role_name(endpoint),
        "image_repository_arn": image_repository_arn(image_uri) if image_uri else None,
        "kms_key_arn": kms_key_arn(profile.kms_key_id, profile.region, account),
    }


def _placeholders(node: Any) -> set[str]:
    if isinstance(node, str):
        found: set[str] = set()
        for _, named, braced, _ in string.Template.pattern.findall(node):
            found.add(named or braced)
        return found - {""}
    if isinstance(node, dict):
        return set().union(*(_placeholders(v) for v in node.values())) if node else set()
    if isinstance(node, list):
        return set().union(*(_placeholders(v) for v in node)) if node else set()
    return set()


def _substitute(node: Any, values: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return string.Template(node).substitute(values)
    if isinstance(node, dict):
        return {k: _substitute(v, values) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute(v, values) for v in node]
    return node


def render_template(
    template: Mapping[str, Any], context: Mapping[str, str | None]
) -> dict[str, Any]:
    """Fill a policy template; statements that need a placeholder without a value are left out."""
    unknown = _placeholders(template) - set(context)
    if unknown:
        raise IamError(f"policy template uses unknown placeholders {sorted(unknown)}")
    missing = {k for k, v in context.items() if v is None}
    values = {k: v for k, v in context.items() if v is not None}
    statements = [
        _substitute(s, values) for s in template["Statement"] if not (_placeholders(s) & missing)
    ]
    return {"Version": template["Version"], "Statement": statements}


def load_template(name: str) -> dict[str, Any]:
    """One template from deployments/iam/."""
    path = IAM_DIR / name
    try:
        loaded: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise IamError(f"IAM template {path} is missing; restore it from git") from exc
    return loaded


def render_policies(
    profile: Profile,
    *,
    account: str,
    endpoint_name: str | None = None,
    image_uri: str | None = None,
) -> dict[str, dict[str, Any]]:
    """The orchestrator policy, execution-role policy and trust policy for a profile."""
    context = policy_context(
        profile, account=account, endpoint_name=endpoint_name, image_uri=image_uri
    )
    return {
        "orchestrator": render_template(load_template(ORCHESTRATOR_POLICY), context),
        "execution": render_template(load_template(EXECUTION_POLICY), context),
        "trust": render_template(load_template(EXECUTION_TRUST), context),
    }


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def ensure_execution_role(
    profile: Profile,
    *,
    endpoint_name: str | None = None,
    image_uri: str | None = None,
) -> tuple[str, list[str]]:
    """(role ARN, actions taken): create the role or bring its inline policy up to date."""
    iam = aws_client("iam", profile)
    endpoint = endpoint_name or profile.endpoint_name
    name = execution_role_name(endpoint)
    docs = render_policies(
        profile, account=account_id(profile), endpoint_name=endpoint, image_uri=image_uri
    )
    actions: list[str] = []
    try:
        arn = str(iam.get_role(RoleName=name)["Role"]["Arn"])
    except ClientError as exc:
        if _error_code(exc) != "NoSuchEntity":
            raise
        made = iam.create_role(
            RoleName=name,
            AssumeRolePolicyDocument=json.dumps(docs["trust"]),
            Description=f"SageMaker execution role for docflow endpoint {endpoint}",
        )
        arn = str(made["Role"]["Arn"])
        actions.append("CreateRole")
    try:
        current = iam.get_role_policy(RoleName=name, PolicyName=EXECUTION_POLICY_NAME)
        current_doc = current["PolicyDocument"]
        if isinstance(current_doc, str):
            current_doc = json.loads(current_doc)
    except ClientError as exc:
        if _error_code(exc) != "NoSuchEntity":
            raise
        current_doc = None
    if current_doc != docs["execution"]:
        iam.put_role_policy(
            RoleName=name,
            PolicyName=EXECUTION_POLICY_NAME,
            PolicyDocument=json.dumps(docs["execution"]),
        )
        actions.append("PutRolePolicy")
    return arn, actions


def main(argv: list[str] | None = None) -> int:
    """Print the rendered policy documents for a profile (review them before applying)."""
    parser = argparse.ArgumentParser(prog="python -m tasks.aws.iam", description=main.__doc__)
    parser.add_argument("--profile", default=None, help="profile name or YAML path")
    parser.add_argument("--account", default=None, help="account id (default: STS)")
    parser.add_argument("--image-uri", default=None, help="image to allow pulling")
    args = parser.parse_args(argv)
    profile = load_profile(args.profile)
    image = (
        args.image_uri
        or profile.image_uri
        or resolve_image_uri(profile.region, profile.instance_type, stack=profile.serving_stack)
    )
    docs = render_policies(profile, account=args.account or account_id(profile), image_uri=image)
    print(json.dumps(docs, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
