"""The endpoint's success and error SNS topics: find them by ARN, create them only when missing."""

from __future__ import annotations

from botocore.exceptions import ClientError

from tasks.aws.clients import aws_client
from tasks.aws.iam import account_id
from tasks.endpoint.spec import topic_names
from tasks.settings import Profile


def topic_arn(profile: Profile, name: str) -> str:
    """The ARN a topic named ``name`` has (or would have) in the profile's account and region."""
    return f"arn:aws:sns:{profile.region}:{account_id(profile)}:{name}"


def ensure_topic(profile: Profile, name: str) -> tuple[str, bool]:
    """(ARN, created): GetTopicAttributes first so an existing topic costs no CreateTopic call."""
    sns = aws_client("sns", profile)
    arn = topic_arn(profile, name)
    try:
        sns.get_topic_attributes(TopicArn=arn)
        return arn, False
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in {"NotFound", "NotFoundException"}:
            raise
    made = sns.create_topic(Name=name)
    return str(made["TopicArn"]), True


def ensure_endpoint_topics(profile: Profile, endpoint_name: str) -> dict[str, str | list[str]]:
    """Create-or-find ``<endpoint>-success`` and ``<endpoint>-error``; says which were created."""
    success_name, error_name = topic_names(endpoint_name)
    success_arn, success_made = ensure_topic(profile, success_name)
    error_arn, error_made = ensure_topic(profile, error_name)
    created = [n for n, made in ((success_name, success_made), (error_name, error_made)) if made]
    return {"success_topic_arn": success_arn, "error_topic_arn": error_arn, "created": created}
