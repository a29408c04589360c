"""moto behind localcloud's dispatcher: S3, SNS->SQS (raw, filtered), STS, IAM, CloudWatch, autoscaling."""

from __future__ import annotations

import json
import uuid
from typing import Any

import boto3
import requests

from tasks.aws.clients import aws_client
from tasks.settings import Profile


def test_s3_roundtrip(profile: Profile) -> None:
    s3 = aws_client("s3", profile)
    s3.put_object(Bucket=profile.bucket, Key="a/b.txt", Body=b"hello")
    assert s3.get_object(Bucket=profile.bucket, Key="a/b.txt")["Body"].read() == b"hello"


def test_sns_to_sqs_raw_delivery_with_body_filter(profile: Profile) -> None:
    sns = aws_client("sns", profile)
    sqs = aws_client("sqs", profile)
    topic = sns.create_topic(Name=f"{profile.endpoint_name}-ok")["TopicArn"]
    queue_url = sqs.create_queue(QueueName=f"{profile.endpoint_name}-q")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    sns.subscribe(
        TopicArn=topic,
        Protocol="sqs",
        Endpoint=queue_arn,
        Attributes={
            "RawMessageDelivery": "true",
            "FilterPolicyScope": "MessageBody",
            "FilterPolicy": json.dumps({"inferenceId": [{"prefix": "run1-"}]}),
        },
    )
    sns.publish(TopicArn=topic, Message=json.dumps({"inferenceId": "run1-a"}))
    sns.publish(TopicArn=topic, Message=json.dumps({"inferenceId": "other-b"}))
    got = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
    bodies = [json.loads(m["Body"]) for m in got.get("Messages", [])]
    assert bodies == [{"inferenceId": "run1-a"}]


def test_unmodified_boto3_from_environment(localcloud: Any) -> None:
    # No endpoint_url argument: AWS_ENDPOINT_URL from the fixture's environment routes it.
    assert boto3.client("sts").get_caller_identity()["Account"] == "123456789012"
    iam = boto3.client("iam")
    role = f"lc-test-role-{uuid.uuid4().hex[:6]}"
    iam.create_role(RoleName=role, AssumeRolePolicyDocument="{}")
    assert iam.get_role(RoleName=role)["Role"]["RoleName"] == role
    cw = boto3.client("cloudwatch")
    cw.put_metric_alarm(
        AlarmName="lc-test-alarm",
        MetricName="HasBacklogWithoutCapacity",
        Namespace="AWS/SageMaker",
        Statistic="Average",
        Period=60,
        EvaluationPeriods=1,
        Threshold=1,
        ComparisonOperator="GreaterThanOrEqualToThreshold",
    )
    assert cw.describe_alarms(AlarmNames=["lc-test-alarm"])["MetricAlarms"]
    aas = boto3.client("application-autoscaling")
    aas.register_scalable_target(
        ServiceNamespace="sagemaker",
        ResourceId="endpoint/lc-test/variant/AllTraffic",
        ScalableDimension="sagemaker:variant:DesiredInstanceCount",
        MinCapacity=0,
        MaxCapacity=2,
    )
    targets = aas.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]
    assert any(t["ResourceId"] == "endpoint/lc-test/variant/AllTraffic" for t in targets)
    aas.deregister_scalable_target(
        ServiceNamespace="sagemaker",
        ResourceId="endpoint/lc-test/variant/AllTraffic",
        ScalableDimension="sagemaker:variant:DesiredInstanceCount",
    )


def test_control_api_health_and_faults(localcloud: Any) -> None:
    assert requests.get(f"{localcloud.url}/_localcloud/health", timeout=5).json() == {
        "status": "ok"
    }
    bad = requests.put(f"{localcloud.url}/_localcloud/faults", json={"nope": 1}, timeout=5)
    assert bad.status_code == 400 and "unknown fault setting" in bad.json()["error"]
