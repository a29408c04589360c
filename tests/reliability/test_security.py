"""Security: the pipeline runs on the orchestrator policy alone, each statement is needed, the run queue
admits only the endpoint's topics, and no secret reaches a log or an artifact."""

from __future__ import annotations

import copy
import json
import logging
import os
import traceback
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from localcloud.iam.policy import Decision, evaluate
from tasks.aws.clients import aws_client, clear_client_cache
from tasks.aws.iam import account_id, render_policies
from tasks.run.fanout.run_queue import close_run_queue, open_run_queue
from tasks.run.plan.target import EndpointOutputs
from tasks.settings import Profile, load_profile
from tests.reliability.ledger import ledger_of, read_results
from tests.runs import Deployment, run_flow, run_process, unique_run_key, write_corpus

pytestmark = pytest.mark.usefixtures("prefect_harness")

DOCS = 24
BATCH = 4
SNS = {"Service": "sns.amazonaws.com"}


@dataclass(frozen=True)
class Caller:
    """An IAM user made for one test, and its access key."""

    arn: str
    access_key_id: str
    secret_access_key: str


def orchestrator_policy(profile: Profile) -> dict[str, Any]:
    """deployments/iam/orchestrator-policy.json rendered for the test's profile (account from STS)."""
    return render_policies(profile, account=account_id(profile))["orchestrator"]


def without(policy: dict[str, Any], sid: str, action: str | None = None) -> dict[str, Any]:
    """``policy`` less one statement (or one action of it)."""
    out = copy.deepcopy(policy)
    sids = [s.get("Sid") for s in out["Statement"]]
    assert sid in sids, f"no statement {sid!r} in the orchestrator policy: {sids}"
    statements = []
    for statement in out["Statement"]:
        if statement.get("Sid") == sid:
            if action is None:
                continue
            actions = (
                [statement["Action"]]
                if isinstance(statement["Action"], str)
                else statement["Action"]
            )
            assert action in actions, f"{action} is not in statement {sid}"
            statement["Action"] = [a for a in actions if a != action]
        statements.append(statement)
    out["Statement"] = statements
    return out


def make_user(profile: Profile, policy: dict[str, Any]) -> Caller:
    """An IAM user carrying only ``policy`` (made with the root credentials), with an access key."""
    iam = aws_client("iam", profile)
    name = f"docflow-orchestrator-{uuid.uuid4().hex[:8]}"
    arn = iam.create_user(UserName=name)["User"]["Arn"]
    iam.put_user_policy(UserName=name, PolicyName="orchestrator", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return Caller(arn, key["AccessKeyId"], key["SecretAccessKey"])


@contextmanager
def acting_as(caller: Caller, localcloud: Any) -> Iterator[None]:
    """IAM enforced, and docflow's clients signing with ``caller``'s key (the default chain reads the env)."""
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    os.environ["AWS_ACCESS_KEY_ID"] = caller.access_key_id
    os.environ["AWS_SECRET_ACCESS_KEY"] = caller.secret_access_key
    clear_client_cache()
    try:
        with localcloud.iam.enforced():
            yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        clear_client_cache()


def denials_for(localcloud: Any, caller: Caller) -> list[str]:
    """The AccessDenied messages localcloud answered to ``caller``."""
    return [d for d in localcloud.iam.denials if caller.arn in d]


@pytest.fixture
def echo(deploy_echo: Any) -> Deployment:
    """An echo endpoint deployed with the root credentials (autoscaling off, as the suite does)."""
    deployment: Deployment = deploy_echo(cap=4, slots=2)
    return deployment


def test_orchestrator_policy_alone_runs_the_pipeline(
    echo: Deployment, localcloud: Any, tmp_path: Path
) -> None:
    """Load: 24 documents in 6 batches, every AWS call signed by a user holding only the orchestrator policy."""
    ids = write_corpus(tmp_path / "c.jsonl", DOCS)
    caller = make_user(echo.profile, orchestrator_policy(echo.profile))
    with acting_as(caller, localcloud):
        out = run_flow(echo, tmp_path / "c.jsonl", batch_size=BATCH, run_key=unique_run_key())
    ledger = ledger_of(
        "IAM enforced, orchestrator policy only",
        f"{DOCS} docs / {DOCS // BATCH} batches",
        out,
        ids,
        localcloud=localcloud,
        endpoint=echo.endpoint,
        denials=len(denials_for(localcloud, caller)),
    )
    assert ledger.balanced, ledger.line()
    assert out.result["completed"] == DOCS
    assert denials_for(localcloud, caller) == []


DENIALS = [
    # (statement, action removed from it or None for the whole statement, action the run is refused)
    ("S3WriteModelsAndInputs", None, "s3:PutObject"),
    ("RunQueues", "sqs:ReceiveMessage", "sqs:ReceiveMessage"),
    (
        "SageMakerEndpointLifecycle",
        "sagemaker:InvokeEndpointAsync",
        "sagemaker:InvokeEndpointAsync",
    ),
    ("CompletionTopics", "sns:Subscribe", "sns:Subscribe"),
]


@pytest.mark.parametrize(("sid", "removed", "refused"), DENIALS)
def test_each_statement_is_needed(
    echo: Deployment,
    localcloud: Any,
    tmp_path: Path,
    sid: str,
    removed: str | None,
    refused: str,
) -> None:
    """Load: 8 documents in 2 batches; the orchestrator policy less one statement (or action) fails the run."""
    write_corpus(tmp_path / "c.jsonl", 8)
    caller = make_user(echo.profile, without(orchestrator_policy(echo.profile), sid, removed))
    with acting_as(caller, localcloud):
        try:
            out = run_flow(
                echo,
                tmp_path / "c.jsonl",
                batch_size=BATCH,
                run_key=unique_run_key(),
                max_attempts=1,
            )
        except Exception as exc:
            error = "".join(traceback.format_exception(exc))
        else:
            # An invoke the service refuses is recorded per batch: the run ends with every document failed.
            assert out.result["completed"] == 0, out.result
            assert out.result["failed"] == 8, out.result
            error = "\n".join(out.table["reason"].astype(str))
    assert "AccessDenied" in error, error[-2000:]
    assert f"not authorized to perform: {refused}" in error, error[-2000:]
    assert any(f"perform: {refused} " in d for d in denials_for(localcloud, caller))


def test_run_queue_admits_only_the_endpoint_topics(profile: Profile, localcloud: Any) -> None:
    """The run queue's policy (as tasks/run/fanout/run_queue.py writes it) admits SNS from the endpoint's
    two topics only: evaluated directly, and honoured on delivery while IAM is enforced."""
    sns = aws_client("sns", profile)
    name = profile.endpoint_name
    success = sns.create_topic(Name=f"{name}-success")["TopicArn"]
    error = sns.create_topic(Name=f"{name}-error")["TopicArn"]
    foreign = sns.create_topic(Name=f"{name}-someone-else")["TopicArn"]
    outputs = EndpointOutputs(
        endpoint=name,
        success_topic=success,
        error_topic=error,
        output_path=profile.s3_uri("async-outputs"),
    )
    queue = open_run_queue(profile, outputs, unique_run_key())
    try:
        sqs = aws_client("sqs", profile)
        for url, arn in ((queue.queue_url, queue.queue_arn), (queue.dlq_url, queue.dlq_arn)):
            attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["Policy"])
            policy = attrs["Attributes"]["Policy"]

            def verdict(
                source: str | None,
                principal: dict[str, str] = SNS,
                resource: str = arn,
                doc: str = policy,
            ) -> Decision:
                context = {"aws:SourceArn": source} if source else {}
                return evaluate(doc, "sqs:SendMessage", resource, context, principal)

            assert verdict(success) is Decision.ALLOW
            assert verdict(error) is Decision.ALLOW
            assert (
                verdict(foreign) is Decision.NEUTRAL
            )  # implicit deny: the foreign topic cannot deliver
            assert verdict(None) is Decision.NEUTRAL  # SNS without a source topic
            assert verdict(success, {"AWS": "arn:aws:iam::123456789012:user/x"}) is Decision.NEUTRAL
            assert verdict(success, resource=arn + "-other") is Decision.NEUTRAL
            assert evaluate(policy, "sqs:ReceiveMessage", arn, {"aws:SourceArn": success}, SNS) is (
                Decision.NEUTRAL
            )
        # Delivery: subscribe the run queue to the foreign topic too (root may); while IAM is
        # enforced the queue policy stops its messages, and the endpoint's topics still deliver.
        foreign_sub = sns.subscribe(
            TopicArn=foreign,
            Protocol="sqs",
            Endpoint=queue.queue_arn,
            Attributes={"RawMessageDelivery": "true"},
            ReturnSubscriptionArn=True,
        )["SubscriptionArn"]
        body = json.dumps(
            {"eventName": "InferenceResult", "inferenceId": f"{queue.filter_prefix}x"}
        )

        def delivered(topic: str) -> list[str]:
            sns.publish(TopicArn=topic, Message=body)
            got = sqs.receive_message(QueueUrl=queue.queue_url, WaitTimeSeconds=1)
            messages = got.get("Messages", [])
            for m in messages:
                sqs.delete_message(QueueUrl=queue.queue_url, ReceiptHandle=m["ReceiptHandle"])
            return [m["Body"] for m in messages]

        with localcloud.iam.enforced():
            assert delivered(foreign) == []
            assert delivered(success) == [body]
            assert delivered(error) == [body]
        assert any(foreign in d and "did not deliver" in d for d in localcloud.iam.denials)
        # moto alone ignores queue policies: with enforcement off the foreign topic gets through.
        assert delivered(foreign) == [body]
        sns.unsubscribe(SubscriptionArn=foreign_sub)
    finally:
        close_run_queue(profile, queue)


CUSTOM_ATTRIBUTES_HEADER = "X-Amzn-SageMaker-Custom-Attributes"


def test_no_secret_in_logs_or_artifacts(
    echo: Deployment,
    localcloud: Any,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Load: 16 documents; every invoke carries CustomAttributes; keys are the caller's. Grep everything."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.logging.handlers import APILogWorker

    secret_attribute = f"tenant=acme;token={uuid.uuid4().hex}"
    write_corpus(tmp_path / "c.jsonl", 16)
    caller = make_user(echo.profile, orchestrator_policy(echo.profile))
    for name in ("prefect.flow_runs", "prefect.task_runs", "flows", "tasks", "localcloud"):
        caplog.set_level(logging.DEBUG, logger=name)
    caplog.set_level(logging.INFO)
    sent: list[str] = []

    def add_attributes(params: dict[str, Any], **_: Any) -> None:
        params["CustomAttributes"] = secret_attribute

    def record_header(request: Any, **_: Any) -> None:
        sent.append(request.headers.get(CUSTOM_ATTRIBUTES_HEADER, b"").decode())

    run_key = unique_run_key()
    with acting_as(caller, localcloud):
        runtime = aws_client("sagemaker-runtime", load_profile(echo.profile_path))
        runtime.meta.events.register(
            "before-parameter-build.sagemaker-runtime.InvokeEndpointAsync", add_attributes
        )
        runtime.meta.events.register(
            "before-send.sagemaker-runtime.InvokeEndpointAsync", record_header
        )
        state = run_process(
            corpus=str(tmp_path / "c.jsonl"),
            profile=echo.profile_path,
            batch_size=BATCH,
            max_new_tokens=16,
            run_key=run_key,
            return_state=True,
        )
        result = state.result()
    assert result["completed"] == 16, result
    assert sent and all(h == secret_attribute for h in sent), sent  # it really went over the wire
    APILogWorker.drain_all(timeout=10)
    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
        )
        artifacts = client.read_artifacts(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    captured = capfd.readouterr()
    s3 = aws_client("s3", echo.profile)
    objects = [
        s3.get_object(Bucket=echo.profile.bucket, Key=o["Key"])["Body"]
        .read()
        .decode("utf-8", "replace")
        for o in s3.list_objects_v2(
            Bucket=echo.profile.bucket, Prefix=f"{echo.profile.prefixes.runs}/"
        ).get("Contents", [])
        if not o["Key"].endswith(".parquet")
    ]
    table = read_results(result, echo.profile).to_json()
    haystacks = {
        "caplog": caplog.text + "\n".join(r.getMessage() for r in caplog.records),
        "stdout/stderr": captured.out + captured.err,
        "prefect logs": "\n".join(log.message for log in logs),
        "prefect artifacts": "\n".join(f"{a.key} {a.description} {a.data}" for a in artifacts),
        "s3 run objects": "\n".join(objects) + table,
    }
    print(
        {k: len(v) for k, v in haystacks.items()}, f"{len(logs)} logs, {len(artifacts)} artifacts"
    )
    assert run_key in haystacks["prefect logs"] and logs  # the capture saw the run
    assert {a.type for a in artifacts} >= {"markdown", "table"}, [a.type for a in artifacts]
    for where, text in haystacks.items():
        assert caller.secret_access_key not in text, f"the secret access key appears in {where}"
        assert secret_attribute not in text, f"CustomAttributes appear in {where}"
        assert secret_attribute.split("token=")[1] not in text, (
            f"CustomAttributes appear in {where}"
        )


def test_orchestrator_policy_alone_deploys_and_tears_down(
    profile: Profile, localcloud: Any, tmp_path: Path
) -> None:
    """Deploy (execution role, topics, model, config, endpoint, autoscaling, alarm), run 8 documents, tear
    down: all signed by the orchestrator user; only the bucket and the model upload use the root key."""
    from flows.deploy_endpoint import deploy_endpoint
    from flows.teardown_endpoint import teardown_endpoint
    from localcloud.testing.artifacts import upload_echo_model
    from tests.flows.endpoint_helpers import profile_file

    prof = profile.model_copy(update={"max_outstanding_invocations": 4})
    path = profile_file(prof, tmp_path)
    url = upload_echo_model(
        aws_client("s3", prof), prof.bucket, key="models/echo/v1/model.tar.gz", version="1"
    )
    caller = make_user(prof, orchestrator_policy(prof))
    ids = write_corpus(tmp_path / "c.jsonl", 8)
    with acting_as(caller, localcloud):
        deployed = deploy_endpoint(
            profile=path, model_data_url=url, wait_delay_s=1, wait_max_attempts=120
        )
        outcome = run_flow(
            Deployment(prof, path, prof.endpoint_name, url, 4),
            tmp_path / "c.jsonl",
            batch_size=BATCH,
            run_key=unique_run_key(),
        )
        removed = teardown_endpoint(
            profile=path, mode="delete", wait_delay_s=1, wait_max_attempts=120
        )
    print("deploy actions:", deployed["actions"], "teardown:", removed)
    assert denials_for(localcloud, caller) == []
    made = set(deployed["actions"])
    assert {
        "CreateRole",
        "PutRolePolicy",
        "CreateModel",
        "CreateEndpoint",
        "PutMetricAlarm",
    } <= made
    assert "RegisterScalableTarget" in made
    assert {"DeleteEndpoint", "DeregisterScalableTarget", "DeleteAlarms"} <= set(removed["actions"])
    assert outcome.result["completed"] == len(ids)


def test_enforcement_rejects_bad_credentials_and_honours_explicit_deny(
    profile: Profile, localcloud: Any
) -> None:
    """Wrong secret, unknown key, unsigned request, explicit Deny: each refused with AWS's code."""
    import urllib.request

    import boto3
    from botocore.exceptions import ClientError

    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "s3:*", "Resource": "*"},
            {
                "Effect": "Deny",
                "Action": "s3:GetObject",
                "Resource": f"arn:aws:s3:::{profile.bucket}/private/*",
            },
        ],
    }
    caller = make_user(profile, policy)
    aws_client("s3", profile).put_object(Bucket=profile.bucket, Key="private/a", Body=b"x")

    def s3(key_id: str, secret: str) -> Any:
        session = boto3.session.Session(key_id, secret, region_name=profile.region)
        return session.client("s3", endpoint_url=localcloud.url)

    def code(call: Any) -> tuple[str, str]:
        with pytest.raises(ClientError) as info:
            call()
        return info.value.response["Error"]["Code"], info.value.response["Error"]["Message"]

    with localcloud.iam.enforced():
        good = s3(caller.access_key_id, caller.secret_access_key)
        good.put_object(Bucket=profile.bucket, Key="public/a", Body=b"x")
        assert good.get_object(Bucket=profile.bucket, Key="public/a")["Body"].read() == b"x"
        denied = code(lambda: good.get_object(Bucket=profile.bucket, Key="private/a"))
        assert denied[0] == "AccessDenied" and "explicit deny" in denied[1], denied
        assert "s3:GetObject" in denied[1]
        wrong = s3(caller.access_key_id, "not-the-secret")
        assert code(lambda: wrong.list_buckets())[0] == "SignatureDoesNotMatch"
        unknown = s3("AKIAUNKNOWNUNKNOWN00", "whatever")
        assert code(lambda: unknown.list_buckets())[0] == "InvalidAccessKeyId"
        with pytest.raises(urllib.error.HTTPError) as unsigned:
            urllib.request.urlopen(f"{localcloud.url}/{profile.bucket}/public/a", timeout=10)
        assert unsigned.value.code == 403
        assert b"MissingAuthenticationToken" in unsigned.value.read()
    # Off again: nothing is checked, not even the signature.
    assert wrong.get_object(Bucket=profile.bucket, Key="private/a")["Body"].read() == b"x"
