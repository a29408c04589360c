"""The endpoint a run targets: its notification topics, output paths and model (from its endpoint config)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from botocore.exceptions import ClientError
from pydantic import BaseModel

from tasks.aws.clients import aws_client
from tasks.run.plan import layout
from tasks.settings import Profile


class EndpointOutputs(BaseModel):
    """Where an async endpoint sends results and notifications (from its endpoint config)."""

    endpoint: str
    success_topic: str
    error_topic: str
    output_path: str
    failure_path: str | None = None
    model_artifact: str = ""
    model_environment: dict[str, str] = {}
    # When the endpoint was created: a request sent before then went to one deleted since.
    created_at: datetime | None = None

    def output_uri(self, run_key: str, batch_id: str, attempt: int) -> str:
        """Where attempt ``attempt`` of a batch writes its result."""
        return layout.output_uri(self.output_path, run_key, batch_id, attempt)

    def failure_uri(self, run_key: str, batch_id: str, attempt: int) -> str:
        """Where attempt ``attempt`` of a batch writes its failure (the output path when unset)."""
        return layout.failure_uri(self.failure_path or self.output_path, run_key, batch_id, attempt)


def endpoint_outputs(profile: Profile, endpoint: str) -> EndpointOutputs:
    """Read the topics and S3 paths of ``endpoint``'s AsyncInferenceConfig."""
    sm = aws_client("sagemaker", profile)
    try:
        desc = sm.describe_endpoint(EndpointName=endpoint)
    except ClientError as exc:
        raise ValueError(
            f"endpoint {endpoint!r} not found ({exc}); deploy it first with the deploy-endpoint flow"
        ) from exc
    config = sm.describe_endpoint_config(EndpointConfigName=desc["EndpointConfigName"])
    async_cfg = config.get("AsyncInferenceConfig") or {}
    output = async_cfg.get("OutputConfig") or {}
    notify = output.get("NotificationConfig") or {}
    if not notify.get("SuccessTopic") or not notify.get("ErrorTopic"):
        raise ValueError(
            f"endpoint {endpoint!r} has no success and error topics in its AsyncInferenceConfig; "
            "redeploy it with the deploy-endpoint flow, which sets both"
        )
    return EndpointOutputs(
        endpoint=endpoint,
        success_topic=notify["SuccessTopic"],
        error_topic=notify["ErrorTopic"],
        output_path=output["S3OutputPath"],
        failure_path=output.get("S3FailurePath"),
        created_at=desc.get("CreationTime"),
        **_model_container(sm, config),
    )


def _model_container(sm: Any, config: dict[str, Any]) -> dict[str, Any]:
    """The S3 model location (part of the run key) and container environment of the first variant."""
    variants = config.get("ProductionVariants") or []
    if not variants:
        return {}
    model = sm.describe_model(ModelName=variants[0]["ModelName"])
    container = model.get("PrimaryContainer") or (model.get("Containers") or [{}])[0]
    source = (container.get("ModelDataSource") or {}).get("S3DataSource") or {}
    return {
        "model_artifact": str(container.get("ModelDataUrl") or source.get("S3Uri") or ""),
        "model_environment": dict(container.get("Environment") or {}),
    }
