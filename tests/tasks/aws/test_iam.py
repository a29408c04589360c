"""IAM documents: valid policy JSON, only the profile's resources, '*' only where AWS requires it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tasks.aws.clients import aws_client
from tasks.aws.iam import (
    ACTIONS_WITHOUT_RESOURCE,
    IamError,
    ensure_execution_role,
    execution_role_name,
    image_repository_arn,
    render_policies,
    render_template,
)
from tasks.settings import Profile, load_profile

ACCOUNT = "210987654321"
IMAGE = (
    "763104351884.dkr.ecr.eu-west-1.amazonaws.com/huggingface-pytorch-inference:"
    "2.6.0-transformers4.51.3-gpu-py312-cu124-ubuntu22.04"
)
IMAGE_REPO = "arn:aws:ecr:eu-west-1:763104351884:repository/huggingface-pytorch-inference"
# Not the profile's, but fixed by AWS: the autoscaling service-linked role, and scalable
# targets, whose ids Application Auto Scaling generates (so only the account can scope them).
AWS_OWNED = {
    IMAGE_REPO,
    f"arn:aws:iam::{ACCOUNT}:role/aws-service-role/sagemaker.application-autoscaling.amazonaws.com/AWSServiceRoleForApplicationAutoScaling_SageMakerEndpoint",
    f"arn:aws:application-autoscaling:eu-west-1:{ACCOUNT}:scalable-target/*",
}


def _profile(**update: Any) -> Profile:
    base = load_profile("aws").model_copy(
        update={"region": "eu-west-1", "bucket": "acme-docs", "endpoint_name": "acme-llm"}
    )
    return base.model_copy(update=update)


def _statements(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return list(doc["Statement"])


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _check_policy_shape(doc: dict[str, Any]) -> None:
    assert doc["Version"] == "2012-10-17"
    sids = [s["Sid"] for s in _statements(doc)]
    assert len(sids) == len(set(sids)), "Sids must be unique"
    for statement in _statements(doc):
        assert statement["Effect"] == "Allow"
        assert set(statement) <= {"Sid", "Effect", "Action", "Resource", "Condition", "Principal"}
        for action in _as_list(statement["Action"]):
            service, _, name = action.partition(":")
            assert service and name and "*" not in service, action
        json.dumps(statement)  # serialisable


@pytest.fixture
def docs() -> dict[str, dict[str, Any]]:
    return render_policies(_profile(), account=ACCOUNT, image_uri=IMAGE)


def test_documents_are_valid_policy_json(docs: dict[str, dict[str, Any]]) -> None:
    for name in ("orchestrator", "execution"):
        _check_policy_shape(docs[name])
        assert all("Principal" not in s for s in _statements(docs[name]))
        assert json.loads(json.dumps(docs[name])) == docs[name]
    trust = docs["trust"]
    (statement,) = _statements(trust)
    assert statement["Principal"] == {"Service": "sagemaker.amazonaws.com"}
    assert statement["Action"] == "sts:AssumeRole"
    assert statement["Condition"] == {"StringEquals": {"aws:SourceAccount": ACCOUNT}}


def test_no_placeholder_survives_rendering(docs: dict[str, dict[str, Any]]) -> None:
    assert "${" not in json.dumps(docs)


def test_star_resource_only_for_actions_aws_cannot_scope(docs: dict[str, dict[str, Any]]) -> None:
    for name in ("orchestrator", "execution"):
        for statement in _statements(docs[name]):
            if "*" in _as_list(statement["Resource"]):
                assert set(_as_list(statement["Action"])) <= ACTIONS_WITHOUT_RESOURCE, statement
    execution_star = {
        a
        for s in _statements(docs["execution"])
        if s["Resource"] == "*"
        for a in _as_list(s["Action"])
    }
    assert execution_star == {"ecr:GetAuthorizationToken", "cloudwatch:PutMetricData"}


def test_every_arn_names_only_the_profiles_resources(docs: dict[str, dict[str, Any]]) -> None:
    for name in ("orchestrator", "execution"):
        for statement in _statements(docs[name]):
            for arn in _as_list(statement["Resource"]):
                if arn == "*" or arn in AWS_OWNED:
                    continue
                parts = arn.split(":")
                service, region, account = parts[2], parts[3], parts[4]
                resource = ":".join(parts[5:])
                if service == "s3":
                    assert resource == "acme-docs" or resource.startswith("acme-docs/"), arn
                    continue
                assert account == ACCOUNT, arn
                assert region in {"eu-west-1", ""}, arn
                assert "acme-llm" in resource, arn


def test_s3_access_is_by_prefix_and_direction(docs: dict[str, dict[str, Any]]) -> None:
    by_sid = {s["Sid"]: s for s in _statements(docs["execution"])}
    assert _as_list(by_sid["WriteOutputsAndFailures"]["Resource"]) == [
        "arn:aws:s3:::acme-docs/async-outputs/*",
        "arn:aws:s3:::acme-docs/async-failures/*",
    ]
    assert by_sid["ReadModelAndInputs"]["Action"] == "s3:GetObject"
    orchestrator = {s["Sid"]: s for s in _statements(docs["orchestrator"])}
    listing = orchestrator["S3ListOwnPrefixes"]
    assert listing["Resource"] == "arn:aws:s3:::acme-docs"
    assert "models/*" in listing["Condition"]["StringLike"]["s3:prefix"]


def test_pass_role_is_conditioned_on_sagemaker(docs: dict[str, dict[str, Any]]) -> None:
    orchestrator = {s["Sid"]: s for s in _statements(docs["orchestrator"])}
    passing = orchestrator["PassExecutionRoleToSageMaker"]
    assert passing["Resource"] == f"arn:aws:iam::{ACCOUNT}:role/{execution_role_name('acme-llm')}"
    assert passing["Condition"] == {
        "StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}
    }
    queues = orchestrator["RunQueues"]
    assert queues["Resource"] == f"arn:aws:sqs:eu-west-1:{ACCOUNT}:docflow-acme-llm-*"
    sagemaker = orchestrator["SageMakerEndpointLifecycle"]["Resource"]
    assert f"arn:aws:sagemaker:eu-west-1:{ACCOUNT}:endpoint/acme-llm" in sagemaker
    # The real-time endpoint deployed beside the async one (endpoint_mode: both).
    assert f"arn:aws:sagemaker:eu-west-1:{ACCOUNT}:endpoint/acme-llm-rt" in sagemaker
    actions = orchestrator["SageMakerEndpointLifecycle"]["Action"]
    assert {"sagemaker:InvokeEndpoint", "sagemaker:InvokeEndpointAsync"} <= set(actions)


def test_kms_and_ecr_statements_only_when_known() -> None:
    without = render_policies(_profile(), account=ACCOUNT)
    sids = {s["Sid"] for s in _statements(without["execution"])}
    assert "EncryptOutputsWithKms" not in sids
    assert "PullInferenceImage" not in sids
    with_key = render_policies(_profile(kms_key_id="abcd-1234"), account=ACCOUNT, image_uri=IMAGE)
    by_sid = {s["Sid"]: s for s in _statements(with_key["execution"])}
    assert by_sid["EncryptOutputsWithKms"]["Resource"] == (
        f"arn:aws:kms:eu-west-1:{ACCOUNT}:key/abcd-1234"
    )
    assert by_sid["PullInferenceImage"]["Resource"] == IMAGE_REPO


def test_image_repository_arn() -> None:
    assert image_repository_arn(IMAGE) == IMAGE_REPO
    assert image_repository_arn("ghcr.io/acme/llm:1") is None


def test_unknown_placeholder_is_an_error() -> None:
    template = {"Version": "2012-10-17", "Statement": [{"Resource": "${nope}"}]}
    with pytest.raises(IamError, match="nope"):
        render_template(template, {"region": "x"})


def test_role_names_fit_iam_limits() -> None:
    assert len(execution_role_name("e" * 63)) <= 64


def test_execution_role_is_created_once_over_localcloud(profile: Profile) -> None:
    arn, actions = ensure_execution_role(profile, image_uri=IMAGE)
    assert actions == ["CreateRole", "PutRolePolicy"]
    name = execution_role_name(profile.endpoint_name)
    assert arn.endswith(f":role/{name}")
    iam = aws_client("iam", profile)
    role = iam.get_role(RoleName=name)["Role"]
    trust = role["AssumeRolePolicyDocument"]
    if isinstance(trust, str):
        trust = json.loads(trust)
    assert trust["Statement"][0]["Principal"] == {"Service": "sagemaker.amazonaws.com"}
    inline = iam.get_role_policy(RoleName=name, PolicyName="docflow-execution")["PolicyDocument"]
    assert "PublishCompletions" in json.dumps(inline)

    again_arn, again = ensure_execution_role(profile, image_uri=IMAGE)
    assert (again_arn, again) == (arn, [])


def test_cli_prints_only_the_json_documents(capsys: pytest.CaptureFixture[str]) -> None:
    from tasks.aws.iam import main

    assert main(["--profile", "aws", "--account", ACCOUNT]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed) == {"orchestrator", "execution", "trust"}
    pull = {s["Sid"]: s for s in printed["execution"]["Statement"]}["PullInferenceImage"]
    assert pull["Resource"].endswith(":repository/huggingface-pytorch-inference")
