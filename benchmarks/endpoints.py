"""Deploy the benchmark's async endpoints on localcloud with docflow's own deploy steps."""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Any

from benchmarks.environment import BenchEnvironment
from benchmarks.spec import EndpointInfo


def endpoint_info(profile: Any, name: str) -> EndpointInfo:
    """Read the output paths and topics of a deployed endpoint from its endpoint config."""
    from tasks.aws.clients import aws_client

    sm = aws_client("sagemaker", profile)
    config_name = sm.describe_endpoint(EndpointName=name)["EndpointConfigName"]
    config = sm.describe_endpoint_config(EndpointConfigName=config_name)
    output = config["AsyncInferenceConfig"]["OutputConfig"]
    notes = output["NotificationConfig"]
    return EndpointInfo(
        name=name,
        bucket=profile.bucket,
        output_path=output["S3OutputPath"],
        failure_path=output.get("S3FailurePath", ""),
        success_topic=notes["SuccessTopic"],
        error_topic=notes["ErrorTopic"],
    )


def deploy(
    env: BenchEnvironment,
    name: str,
    model: str | dict[str, Any],
    *,
    per_instance: int | None = None,
    environment: dict[str, str] | None = None,
) -> EndpointInfo:
    """Topics, execution role, model, config, endpoint InService and the shared invocation cap."""
    from tasks.aws.iam import ensure_execution_role
    from tasks.endpoint.deploy import apply_endpoint, ensure_invocation_limit
    from tasks.endpoint.spec import build_endpoint_spec
    from tasks.endpoint.topics import ensure_endpoint_topics

    profile = env.profile.model_copy(update={"endpoint_name": name})
    topics = ensure_endpoint_topics(profile, name)
    role_arn, _ = ensure_execution_role(profile, endpoint_name=name)
    spec = build_endpoint_spec(
        profile,
        model=model,
        execution_role_arn=role_arn,
        success_topic_arn=str(topics["success_topic_arn"]),
        error_topic_arn=str(topics["error_topic_arn"]),
        endpoint_name=name,
        max_concurrent_invocations_per_instance=per_instance,
        environment=environment,
    )
    apply_endpoint(profile, spec, delay_s=1, max_attempts=600)
    ensure_invocation_limit(name, env.cap)
    return endpoint_info(profile, name)


def deploy_echo(env: BenchEnvironment) -> EndpointInfo:
    """The instant echo model (localcloud/testing) on a fresh endpoint."""
    from localcloud.testing.artifacts import upload_echo_model
    from tasks.aws.clients import aws_client

    name = env.new_endpoint_name("echo")
    model_url = upload_echo_model(
        aws_client("s3", env.profile), env.profile.bucket, key=f"models/{name}/model.tar.gz"
    )
    return deploy(env, name, model_url)


def deploy_model(
    env: BenchEnvironment, source: str, threads: int
) -> tuple[EndpointInfo, dict[str, Any]]:
    """Package ``source`` with docflow's package_model flow and deploy it on ``threads`` CPU threads."""
    from flows.package_model import package_model

    artifact = dict(package_model(source=source, profile="local"))
    name = env.new_endpoint_name("llm")
    # One request at a time per instance, like the model alone running one batch after another.
    environment = {"DOCFLOW_NUM_THREADS": str(threads)}
    return deploy(env, name, artifact, per_instance=1, environment=environment), artifact


def download_model(env: BenchEnvironment, artifact: dict[str, Any], target: Path) -> Path:
    """Fetch the packaged model.tar.gz and unpack it, as an endpoint instance would."""
    from tasks.aws.clients import aws_client

    url = str(artifact.get("model_data_url") or "")
    if not url.endswith(".tar.gz"):
        raise ValueError(f"package_model returned no model.tar.gz URL (got {artifact!r})")
    bucket, _, key = url[len("s3://") :].partition("/")
    target.mkdir(parents=True, exist_ok=True)
    archive = target / "model.tar.gz"
    aws_client("s3", env.profile).download_file(bucket, key, str(archive))
    with tarfile.open(archive) as tar:
        tar.extractall(target, filter="data")
    archive.unlink()
    return target
